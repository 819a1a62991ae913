"""Tests of rnn_jax.models: the classifier against a NumPy re-implementation, dropout, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import models


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
  model = models.classifier(models.build_core("lstm", 5), num_classes=3)
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
  np.testing.assert_allclose(models.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_dropout_after_the_last_layer_zeroes_or_scales_features():
  hidden = 64
  model = models.classifier(models.build_core("gru", hidden), num_classes=hidden, dropout=0.5)
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
  core = models.build_core("lstm", 8, num_layers=2, dropout=0.5)
  assert isinstance(core, rnn_jax.Stack) and core.dropout == 0.5
  model = models.classifier(core, 4)
  params = model.init(jax.random.key(0), 3)
  xs = jnp.ones((2, 5, 3))
  apply = jax.jit(model.apply)
  deterministic = apply(params, xs)
  np.testing.assert_array_equal(deterministic, apply(params, xs))
  assert not np.allclose(apply(params, xs, None, jax.random.key(0)), deterministic)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_remat_cell_same_outputs_and_gradients(name):
  plain = models.build_core(name, 6)
  remat = models.build_core(name, 6, remat=True)
  params = plain.init(jax.random.key(0), 2)
  xs = jnp.asarray(np.random.default_rng(1).normal(size=(3, 7, 2)), jnp.float32)

  def loss(core, params):
    return jnp.sum(rnn_jax.rnn(core, params, xs)[0] ** 2)

  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  expected_value, expected = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  np.testing.assert_allclose(value, expected_value, rtol=1e-6)
  for key in expected:
    np.testing.assert_allclose(grads[key], expected[key], rtol=1e-5, atol=1e-6)


def test_registry_names_and_irnn_initialisation():
  assert {"lstm", "gru", "rnn", "irnn"} <= set(models.CELLS)
  irnn = models.CELLS["irnn"](4)
  params = irnn.init(jax.random.key(0), 3)
  np.testing.assert_array_equal(params["w_hh"], np.eye(4))
  assert float(jnp.std(params["w_ih"])) < 0.01
  assert dict(irnn.config)["activation"] == "relu"
  assert models.CELLS["rnn"](4) is rnn_jax.simple_rnn(4, "tanh")
  with pytest.raises(ValueError, match="cell_name"):
    models.build_core("nope", 4)
