"""Tests of rnn_jax.training.classification: the classifier against NumPy, dropout, remat, eval."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax.training import classification
from tiny_task import fresh_state, setup, synthetic


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_lstm_classifier(params, xs, lengths, forget_bias=1.0):
  """LSTM over [B, T, I] with a plain loop, the output at each length, then dense."""
  core = {k: np.asarray(v, np.float64) for k, v in params["core"].items()}
  w, b = (np.asarray(params["dense"][k], np.float64) for k in ("w", "b"))
  batch, steps, _ = xs.shape
  hidden = core["w_hh"].shape[0]
  logits = np.zeros((batch, w.shape[1]))
  for n in range(batch):
    h, c = np.zeros(hidden), np.zeros(hidden)
    for t in range(lengths[n]):
      z = xs[n, t] @ core["w_ih"] + h @ core["w_hh"] + core["b"]
      i, f, g, o = z[:hidden], z[hidden:2 * hidden], z[2 * hidden:3 * hidden], z[3 * hidden:]
      c = _sigmoid(f + forget_bias) * c + _sigmoid(i) * np.tanh(g)
      h = _sigmoid(o) * np.tanh(c)
    logits[n] = h @ w + b
  return logits


def test_classifier_matches_numpy_with_lengths():
  rng = np.random.default_rng(0)
  model = classification.classifier(classification.build_core("lstm", 5), num_classes=3)
  params = model.init(jax.random.key(1), 4)
  params["core"]["b"] = jnp.asarray(rng.normal(size=20), jnp.float32)
  params["dense"]["b"] = jnp.asarray([0.1, -0.2, 0.3])
  xs = rng.normal(size=(3, 6, 4)).astype(np.float32)
  lengths = np.array([6, 2, 4])
  apply = jax.jit(model.apply)
  got = apply(params, xs, jnp.asarray(lengths))
  np.testing.assert_allclose(got, _numpy_lstm_classifier(params, xs, lengths), atol=1e-5)
  full = apply(params, xs)
  np.testing.assert_allclose(full, _numpy_lstm_classifier(params, xs, [6, 6, 6]), atol=1e-5)
  step_logits = jax.jit(model.step_logits)(params, xs)
  assert step_logits.shape == (3, 6, 3)
  # The prediction after the last step is the classifier's logits.
  np.testing.assert_allclose(step_logits[:, -1], full, atol=1e-6)


def test_cross_entropy_matches_numpy_log_softmax():
  logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]], np.float32)
  labels = np.array([0, 1])
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.mean(log_probs[np.arange(2), labels])
  np.testing.assert_allclose(classification.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_dropout_after_the_last_layer_zeroes_or_scales_features():
  hidden = 64
  model = classification.classifier(classification.build_core("gru", hidden), num_classes=hidden, dropout=0.5)
  params = model.init(jax.random.key(0), 3)
  params["dense"] = {"w": jnp.eye(hidden), "b": jnp.zeros(hidden)}
  xs = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 3)), jnp.float32)
  apply = jax.jit(model.apply)
  features = np.asarray(apply(params, xs))  # No key: no dropout.
  dropped = np.asarray(apply(params, xs, None, jax.random.key(3)))
  kept = dropped != 0
  np.testing.assert_allclose(dropped[kept], 2.0 * features[kept], rtol=1e-6)
  assert 0.3 < kept.mean() < 0.7


def test_stack_dropout_between_layers_only_with_a_key():
  core = classification.build_core("lstm", 8, num_layers=2, dropout=0.5)
  assert isinstance(core, rnn_jax.Stack) and core.dropout == 0.5
  model = classification.classifier(core, 4)
  params = model.init(jax.random.key(0), 3)
  xs = jnp.ones((2, 5, 3))
  apply = jax.jit(model.apply)
  deterministic = apply(params, xs)
  np.testing.assert_array_equal(deterministic, apply(params, xs))
  assert not np.allclose(apply(params, xs, None, jax.random.key(0)), deterministic)


_DROPOUT_CORES = {
    "stack": lambda: classification.build_core("gru", 4, num_layers=2, dropout=0.5),
    "bidirectional(stack)": lambda: rnn_jax.bidirectional(
        classification.build_core("gru", 4, num_layers=2, dropout=0.5), rnn_jax.gru(4)),
    "stack(stack)": lambda: rnn_jax.stack(
        [classification.build_core("gru", 4, num_layers=2, dropout=0.5), rnn_jax.gru(4)]),
}


@pytest.mark.parametrize("name", sorted(_DROPOUT_CORES))
def test_training_loss_uses_dropout_anywhere_in_the_core(name):
  """The training loss drops inside the core at any depth; the classifier itself has none."""
  model = classification.classifier(_DROPOUT_CORES[name](), num_classes=3)
  assert classification.uses_dropout(model)
  params = model.init(jax.random.key(0), 2)
  rng = np.random.default_rng(0)
  batch = classification.IndexedBatch(jnp.asarray(rng.normal(size=(6, 4, 2)), jnp.float32),
                              jnp.asarray([0, 1, 2, 0, 1, 2]), np.arange(6))
  loss = jax.jit(classification.loss_function(model))
  evaluation = float(classification.cross_entropy(jax.jit(model.apply)(params, batch.inputs),
                                          batch.labels))
  training = [float(loss(params, batch, jax.random.key(seed), None)[0]) for seed in (0, 1)]
  assert evaluation not in training and training[0] != training[1]


def test_training_loss_without_dropout_ignores_the_key():
  model = setup()[0]
  assert not classification.uses_dropout(model)
  inputs, labels = synthetic(8)
  batch = classification.IndexedBatch(jnp.asarray(inputs), jnp.asarray(labels), np.arange(8))
  loss = jax.jit(classification.loss_function(model))
  params = fresh_state().params
  first, metrics, aux = loss(params, batch, jax.random.key(0), None)
  assert float(first) == float(loss(params, batch, jax.random.key(1), None)[0])
  assert set(metrics) == {"accuracy"} and aux is None
  np.testing.assert_allclose(first, classification.cross_entropy(model.apply(params, inputs), labels),
                             rtol=1e-6)


def test_evaluate_counts_the_last_partial_batch_exactly():
  inputs, labels = synthetic(23)
  model = setup()[0]
  params = fresh_state().params
  logits = np.asarray(model.apply(params, inputs), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected_loss = -np.mean(log_probs[np.arange(23), labels])
  expected_correct = int(np.sum(np.argmax(logits, -1) == labels))
  eval_step = classification.make_eval_step(model)
  for batch_size in (10, 23, 64):  # 3 batches with a partial one; exact; one padded batch.
    result = classification.evaluate(eval_step, params, inputs, labels, batch_size)
    assert result["count"] == 23 and result["correct"] == expected_correct
    np.testing.assert_allclose(result["accuracy"], expected_correct / 23)
    np.testing.assert_allclose(result["loss"], expected_loss, rtol=1e-5)


def test_a_bidirectional_core_is_read_by_its_summary():
  """The classifier reads the backward half at step 0 (it has read the whole sequence there)."""
  core = rnn_jax.bidirectional(rnn_jax.gru(3), rnn_jax.gru(2))
  model = classification.classifier(core, 4)
  params = model.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (3, 5, 2))
  lengths = jnp.array([5, 2, 4])
  outputs, (forward_h, backward_h) = rnn_jax.rnn(core, params["core"], xs, lengths=lengths)
  features = np.concatenate([forward_h, backward_h], axis=-1)  # GRU final carries = summaries.
  want = features @ np.asarray(params["dense"]["w"]) + np.asarray(params["dense"]["b"])
  np.testing.assert_allclose(model.apply(params, xs, lengths), want, rtol=1e-5, atol=1e-6)
