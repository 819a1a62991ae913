"""Tests of rnn_jax.train and rnn_jax.checkpoint on a tiny synthetic task.

One tiny model and one jitted train step are shared by all tests so that the
module compiles a handful of functions in total.
"""

import functools
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax import checkpoint, models, train

SEED = 3
NUM_EXAMPLES, STEPS, FEATURES, CLASSES, BATCH = 40, 5, 3, 4, 8
EMA_DECAY = 0.6


def _synthetic(num_examples=NUM_EXAMPLES):
  """Sequences whose class is the sign pattern of the first features (learnable)."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, CLASSES, num_examples).astype(np.int32)
  inputs = rng.normal(size=(num_examples, STEPS, FEATURES)).astype(np.float32) * 0.3
  inputs[:, :, 0] += (labels[:, None] % 2) * 1.0
  inputs[:, :, 1] += (labels[:, None] // 2) * 1.0
  return inputs, labels


@functools.lru_cache(maxsize=None)
def _setup(learning_rate=1e-2):
  model = models.classifier(models.build_core("gru", 8), CLASSES)
  optimizer = train.make_optimizer("adam", learning_rate, clip_norm=5.0)
  return model, optimizer, train.make_train_step(model, optimizer, SEED, ema_decay=EMA_DECAY)


def _fresh_state(learning_rate=1e-2):
  model, optimizer, _ = _setup(learning_rate)
  return train.create_state(model, optimizer, jax.random.key(0), FEATURES)


def _loss(params, inputs, labels):
  model = _setup()[0]
  return float(models.cross_entropy(model.apply(params, inputs), labels))


def test_one_train_step_decreases_the_loss():
  inputs, labels = _synthetic()
  state = _fresh_state()
  index = np.arange(BATCH)
  before = _loss(state.params, inputs[index], labels[index])
  state, metrics = _setup()[2](state, jnp.asarray(inputs), jnp.asarray(labels), index)
  assert int(state.step) == 1 and int(state.bad_step) == -1
  np.testing.assert_allclose(float(metrics["loss"]), before, rtol=1e-5)
  after = _loss(state.params, inputs[index], labels[index])
  assert after < before - 1e-3


def test_parameter_average_follows_tf_num_updates_formula():
  inputs, labels = map(jnp.asarray, _synthetic())
  state = _fresh_state()
  average = jax.tree.map(np.asarray, state.params)
  for step in range(3):
    state, _ = _setup()[2](state, inputs, labels, np.arange(step, step + BATCH))
    decay = min(EMA_DECAY, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25; then EMA_DECAY.
    average = jax.tree.map(lambda avg, new: decay * avg + (1 - decay) * np.asarray(new),
                           average, state.params)
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7),
               jax.tree.map(np.asarray, state.ema_params), average)


def test_evaluate_counts_the_last_partial_batch_exactly():
  inputs, labels = _synthetic(23)
  model = _setup()[0]
  params = _fresh_state().params
  logits = np.asarray(model.apply(params, inputs), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected_loss = -np.mean(log_probs[np.arange(23), labels])
  expected_correct = int(np.sum(np.argmax(logits, -1) == labels))
  eval_step = train.make_eval_step(model)
  for batch_size in (10, 23, 64):  # 3 batches with a partial one; exact; one padded batch.
    result = train.evaluate(eval_step, params, inputs, labels, batch_size)
    assert result["count"] == 23 and result["correct"] == expected_correct
    np.testing.assert_allclose(result["accuracy"], expected_correct / 23)
    np.testing.assert_allclose(result["loss"], expected_loss, rtol=1e-5)


def test_rmsprop_is_tf1s_variant():
  """TF1 RMSPropOptimizer: ms starts at 1, ms = d ms + (1-d) g^2, w -= lr g / sqrt(ms + eps)."""
  optimizer = train.make_optimizer("rmsprop", 0.1, decay=0.9)
  params = {"w": jnp.array([1.0, -2.0])}
  state = optimizer.init(params)
  ms, w = np.ones(2), np.array([1.0, -2.0])
  for grad in ([0.5, -3.0], [2.0, 1.0]):
    updates, state = optimizer.update({"w": jnp.array(grad)}, state, params)
    params = optax.apply_updates(params, updates)
    ms = 0.9 * ms + 0.1 * np.square(grad)
    w = w - 0.1 * np.array(grad) / np.sqrt(ms + 1e-10)
  np.testing.assert_allclose(params["w"], w, rtol=1e-6)


def test_sgd_momentum_and_clipping():
  optimizer = train.make_optimizer("sgd", 0.5, momentum=0.9, clip_norm=1.0)
  params = {"w": jnp.zeros(2)}
  state = optimizer.init(params)
  velocity, w = np.zeros(2), np.zeros(2)
  for grad in ([3.0, 4.0], [0.3, 0.4]):  # Norm 5 is clipped to 1; norm 0.5 is not.
    updates, state = optimizer.update({"w": jnp.array(grad)}, state, params)
    params = optax.apply_updates(params, updates)
    clipped = np.array(grad) / max(1.0, np.linalg.norm(grad))
    velocity = 0.9 * velocity + clipped
    w = w - 0.5 * velocity
  np.testing.assert_allclose(params["w"], w, rtol=1e-6)
  with pytest.raises(ValueError, match="optimizer"):
    train.make_optimizer("adagrad", 0.1)


def test_warmup_cosine_schedule_values():
  schedule = train.make_schedule(1.0, total_steps=110, warmup_steps=10, cosine=True)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(schedule(60), 0.5 * (1 + np.cos(np.pi * 0.5)), atol=1e-6)
  np.testing.assert_allclose(schedule(110), 0.0, atol=1e-6)
  assert train.make_schedule(0.3, 100) == 0.3
  assert train.steps_for(600, 128, 2.5, None) == 10 and train.steps_for(600, 128, 2, 7) == 7


def test_nonfinite_step_keeps_the_state_and_is_recorded():
  inputs, labels = _synthetic()
  inputs[5, 2, 1] = np.nan
  state = _fresh_state()
  step_fn = _setup()[2]
  params_before = jax.tree.map(np.asarray, state.params)
  state, _ = step_fn(state, jnp.asarray(inputs), jnp.asarray(labels), np.arange(BATCH))
  assert int(state.step) == 0 and int(state.bad_step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params),
               params_before)
  # Later steps, even on finite data, are no-ops once a step went bad.
  state, _ = step_fn(state, jnp.asarray(inputs), jnp.asarray(labels), np.arange(10, 18))
  assert int(state.step) == 0 and int(state.bad_step) == 0


def _fit(state, num_steps, store=None, **kwargs):
  inputs, labels = kwargs.pop("data", _synthetic())
  return train.fit(state, _setup()[2], inputs, labels, seed=SEED, batch_size=BATCH,
                   num_steps=num_steps, store=store, log=lambda line: None, **kwargs)


def test_resumed_run_equals_uninterrupted_bitwise(tmp_path):
  uninterrupted = _fit(_fresh_state(), 12, log_every=4)
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"), max_to_keep=2)
  _fit(_fresh_state(), 7, store, checkpoint_every=3)  # Saves 3, 6 and 7 (keeps 6, 7).
  assert store.steps() == [6, 7]
  step, restored = store.restore_latest(_fresh_state())
  assert step == 7 and int(restored.step) == 7
  resumed = _fit(restored, 12, store, checkpoint_every=3)
  assert int(resumed.step) == 12
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, resumed),
               jax.tree.map(np.asarray, uninterrupted))


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
  messages = []
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"), log=messages.append)
  first = _fit(_fresh_state(), 2, store, checkpoint_every=2)
  first_params = jax.tree.map(np.asarray, first.params)
  _fit(first, 4, store, checkpoint_every=2)  # Donates `first`.
  assert store.steps() == [2, 4]
  for root, _, files in os.walk(tmp_path / "ckpt" / "4"):
    for name in files:
      with open(os.path.join(root, name), "r+b") as stream:
        size = stream.seek(0, 2)
        stream.seek(0)
        stream.write(b"\x00garbage" * (size // 8 + 1))
  step, restored = store.restore_latest(_fresh_state())
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored.params),
               first_params)
  assert len(messages) == 1 and "step 4 is unreadable" in messages[0]
  assert store.steps() == [2]
  assert len(os.listdir(tmp_path / "corrupt_checkpoints")) == 1  # Kept, not deleted.


def test_nan_loss_stops_fit_and_keeps_the_last_good_checkpoint(tmp_path):
  inputs, labels = _synthetic()
  inputs[:, 0, 0] = np.where(np.arange(NUM_EXAMPLES) == 0, np.nan, inputs[:, 0, 0])
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))
  # Example 0 is drawn at some step of epoch 0 or 1; steps before it are saved.
  order = np.concatenate([train.data_lib.batch_indices(SEED, e, NUM_EXAMPLES, BATCH)
                          for e in range(2)])
  bad = int(np.argmax((order == 0).any(axis=1)))
  with pytest.raises(train.NonFiniteLoss, match=f"NaN/inf at step {bad};") as raised:
    _fit(_fresh_state(), 10, store, data=(inputs, labels), checkpoint_every=1, log_every=1)
  assert raised.value.step == bad
  assert store.steps()[-1] == bad and f"last good checkpoint (step {bad})" in str(raised.value)
  _, restored = store.restore_latest(_fresh_state())
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored.params))


def test_sigterm_saves_a_checkpoint_and_raises_interrupted(tmp_path):
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))

  def on_log(record):
    if record["step"] == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(train.Interrupted, match="SIGTERM received: stopped at step 3/10"):
    _fit(_fresh_state(), 10, store, log_every=1, on_log=on_log, checkpoint_every=100)
  assert store.steps() == [3]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
      signal.getsignal(signal.SIGTERM))
