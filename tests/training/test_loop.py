"""Tests of rnn_jax.training.loop: the train step, resume, the non-finite guard, signals, ``aux``.

The classification tests share tiny_task's model and jitted train steps; the
``aux`` slot is tested on a toy truncated-BPTT regression whose carry is
threaded from step to step.
"""

import functools
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnn_jax
from rnn_jax.training import batching, checkpoint, classification, loop
from tiny_task import (BATCH, EMA_DECAY, NUM_EXAMPLES, SEED, as_numpy, assert_trees_equal, fit,
                       fresh_state, setup, synthetic)


def _loss(params, inputs, labels):
  model = setup()[0]
  return float(classification.cross_entropy(model.apply(params, inputs), labels))


def _batch(inputs, labels, indices):
  return classification.IndexedBatch(jnp.asarray(inputs), jnp.asarray(labels), indices)


def test_one_train_step_decreases_the_loss():
  inputs, labels = synthetic()
  state = fresh_state()
  index = np.arange(BATCH)
  before = _loss(state.params, inputs[index], labels[index])
  state, metrics = setup()[2](state, _batch(inputs, labels, index))
  assert int(state.step) == 1 and int(state.bad_step) == -1
  np.testing.assert_allclose(float(metrics["loss"]), before, rtol=1e-5)
  after = _loss(state.params, inputs[index], labels[index])
  assert after < before - 1e-3


def test_parameter_average_follows_tf_num_updates_formula():
  inputs, labels = synthetic()
  state = fresh_state()
  average = jax.tree.map(np.asarray, state.params)
  for step in range(3):
    state, _ = setup()[2](state, _batch(inputs, labels, np.arange(step, step + BATCH)))
    decay = min(EMA_DECAY, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25; then EMA_DECAY.
    average = jax.tree.map(lambda avg, new: decay * avg + (1 - decay) * np.asarray(new),
                           average, state.params)
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7),
               jax.tree.map(np.asarray, state.ema_params), average)


def test_nonfinite_step_keeps_the_state_and_is_recorded():
  inputs, labels = synthetic()
  inputs[5, 2, 1] = np.nan
  state = fresh_state()
  step_fn = setup()[2]
  params_before = jax.tree.map(np.asarray, state.params)
  state, _ = step_fn(state, _batch(inputs, labels, np.arange(BATCH)))
  assert int(state.step) == 0 and int(state.bad_step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params),
               params_before)
  # Later steps, even on finite data, are no-ops once a step went bad.
  state, _ = step_fn(state, _batch(inputs, labels, np.arange(10, 18)))
  assert int(state.step) == 0 and int(state.bad_step) == 0


def test_dropout_key_differs_between_steps_and_repeats_within_one():
  """Same parameters and batch: step 0 twice gives the same update, steps 0 and 1 do not."""
  inputs, labels = synthetic()
  batch = _batch(inputs, labels, np.arange(BATCH))

  def step_at(number):
    state = fresh_state(dropout=0.5)._replace(step=jnp.asarray(number, jnp.int32))
    state, metrics = setup(dropout=0.5)[2](state, batch)
    return float(metrics["loss"]), as_numpy(state.params)

  loss, params = step_at(0)
  repeated_loss, repeated_params = step_at(0)
  next_loss, next_params = step_at(1)
  assert repeated_loss == loss
  assert_trees_equal(repeated_params, params)
  assert next_loss != loss
  assert not np.array_equal(next_params["dense"]["w"], params["dense"]["w"])


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_resumed_run_equals_uninterrupted_bitwise(tmp_path, dropout):
  uninterrupted = fit(fresh_state(dropout), 12, dropout=dropout, log_every=4)
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"), max_to_keep=2)
  fit(fresh_state(dropout), 7, store, dropout=dropout, checkpoint_every=3)  # Saves 3, 6, 7.
  assert store.steps() == [6, 7]
  step, restored = store.restore_latest(fresh_state(dropout))
  assert step == 7 and int(restored.step) == 7
  resumed = fit(restored, 12, store, dropout=dropout, checkpoint_every=3)
  assert int(resumed.step) == 12
  assert_trees_equal(resumed, uninterrupted)


def test_progress_lines_and_records():
  lines, records = [], []
  fit(fresh_state(), 5, log_every=2, log=lines.append, on_log=records.append)
  assert [line.split("  ")[0] for line in lines] == ["step 2/5", "step 4/5", "step 5/5"]
  assert lines[0].startswith("step 2/5  epoch 0.40  loss ") and " acc " in lines[0]
  assert [list(record)[:3] for record in records] == [["step", "loss", "accuracy"]] * 3
  assert [record["step"] for record in records] == [2, 4, 5]


def test_nan_loss_stops_fit_and_keeps_the_last_good_checkpoint(tmp_path):
  inputs, labels = synthetic()
  inputs[:, 0, 0] = np.where(np.arange(NUM_EXAMPLES) == 0, np.nan, inputs[:, 0, 0])
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))
  # Example 0 is drawn at some step of epoch 0 or 1; steps before it are saved.
  order = np.concatenate([batching.batch_indices(SEED, e, NUM_EXAMPLES, BATCH)
                          for e in range(2)])
  bad = int(np.argmax((order == 0).any(axis=1)))
  with pytest.raises(loop.NonFiniteLoss, match=f"NaN/inf at step {bad};") as raised:
    fit(fresh_state(), 10, store, data=(inputs, labels), checkpoint_every=1, log_every=1)
  assert raised.value.step == bad
  assert store.steps()[-1] == bad and f"last good checkpoint (step {bad})" in str(raised.value)
  _, restored = store.restore_latest(fresh_state())
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored.params))


def _sigterm_at(step):
  def on_log(record):
    if record["step"] == step:
      os.kill(os.getpid(), signal.SIGTERM)
  return on_log


def test_sigterm_saves_a_checkpoint_and_raises_interrupted(tmp_path):
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))
  with pytest.raises(loop.Interrupted, match="SIGTERM received: stopped at step 3/10"):
    fit(fresh_state(), 10, store, log_every=1, on_log=_sigterm_at(3), checkpoint_every=100)
  assert store.steps() == [3]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
      signal.getsignal(signal.SIGTERM))


def test_sigterm_on_a_checkpoint_step_stops_cleanly(tmp_path):
  """The periodic save and the signal's save are the same step: the second is a no-op."""
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))
  with pytest.raises(loop.Interrupted, match="SIGTERM received: stopped at step 4/10") as raised:
    fit(fresh_state(), 10, store, log_every=1, on_log=_sigterm_at(4), checkpoint_every=2)
  assert raised.value.signum == signal.SIGTERM and raised.value.step == 4
  assert store.steps() == [2, 4]


# ----------------------------------------------------------------------------- aux: TBPTT

# Two stateful streams cut into windows of 4 steps; the target is the next input.
STREAMS, WINDOW, NUM_WINDOWS, INPUTS, HIDDEN = 2, 4, 5, 2, 3
_CELL = rnn_jax.simple_rnn(HIDDEN)


def _windows():
  """``(inputs [W, S, 4, I], targets [W, S, 4, I])``: window ``w`` of every stream."""
  stream = np.random.default_rng(1).normal(size=(STREAMS, NUM_WINDOWS * WINDOW + 1, INPUTS))
  stream = stream.astype(np.float32)
  cut = lambda xs: xs.reshape(STREAMS, NUM_WINDOWS, WINDOW, INPUTS).swapaxes(0, 1)
  return cut(stream[:, :-1]), cut(stream[:, 1:])


def _next_input_loss(params, batch, rng, carry):
  """Predicts the next input; the carry of the previous window starts this one."""
  del rng
  inputs, targets = batch
  outputs, carry = rnn_jax.rnn(_CELL, params["cell"], inputs,
                               initial_carry=jax.lax.stop_gradient(carry))
  error = jnp.mean((outputs @ params["readout"] - targets) ** 2)
  return error, {}, carry


@functools.lru_cache(maxsize=None)
def _tbptt_step():
  return loop.make_train_step(_next_input_loss, optax.sgd(0.1), seed=0)


def _tbptt_state():
  keys = jax.random.split(jax.random.key(7))
  params = {"cell": _CELL.init(keys[0], INPUTS),
            "readout": jax.random.normal(keys[1], (HIDDEN, INPUTS)) * 0.3}
  return loop.init_state(params, optax.sgd(0.1), aux=_CELL.initial_carry((STREAMS,)))


def _tbptt_fit(state, num_steps, store=None, checkpoint_every=1000, **reporting):
  inputs, targets = _windows()
  batch_for_step = lambda step: (inputs[step % NUM_WINDOWS], targets[step % NUM_WINDOWS])
  reporting.setdefault("log", lambda line: None)
  return loop.fit(state, _tbptt_step(), batch_for_step, num_steps=num_steps, store=store,
                  checkpoint_every=checkpoint_every, reporter=loop.Reporter(**reporting))


def test_aux_carries_the_state_from_step_to_step():
  inputs, _ = _windows()
  state = _tbptt_state()
  first_params = as_numpy(state.params)
  state = _tbptt_fit(state, 1)
  _, carry = rnn_jax.rnn(_CELL, first_params["cell"], inputs[0])
  np.testing.assert_allclose(state.aux, carry, rtol=1e-6)
  second_params = as_numpy(state.params)
  state = _tbptt_fit(state, 2)
  _, carry = rnn_jax.rnn(_CELL, second_params["cell"], inputs[1], initial_carry=carry)
  np.testing.assert_allclose(state.aux, carry, rtol=1e-6)


def test_aux_is_checkpointed_and_resume_is_bitwise(tmp_path):
  lines = []
  uninterrupted = _tbptt_fit(_tbptt_state(), 12, log_every=6, log=lines.append)
  assert lines[0].startswith("step 6/12  loss ")  # No epochs, the default metric format.
  assert np.abs(np.asarray(uninterrupted.aux)).min() > 0
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))
  _tbptt_fit(_tbptt_state(), 7, store, checkpoint_every=3)
  step, restored = store.restore_latest(_tbptt_state())
  assert step == 7 and not np.array_equal(restored.aux, _tbptt_state().aux)
  resumed = _tbptt_fit(restored, 12, store)
  assert_trees_equal(resumed, uninterrupted)
