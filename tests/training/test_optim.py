"""Tests of rnn_jax.training.optim: TF1's RMSProp, SGD with and without momentum, clipping,
schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax.training import optim


def test_rmsprop_is_tf1s_variant():
  """TF1 RMSPropOptimizer: ms starts at 1, ms = d ms + (1-d) g^2, w -= lr g / sqrt(ms + eps)."""
  optimizer = optim.make_optimizer("rmsprop", 0.1, decay=0.9)
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
  optimizer = optim.make_optimizer("sgd", 0.5, momentum=0.9, clip_norm=1.0)
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
    optim.make_optimizer("adagrad", 0.1)


def test_sgd_without_momentum_is_plain_gradient_descent():
  """momentum=0: w -= lr * g at every step, and no momentum trace in the optimizer state."""
  optimizer = optim.make_optimizer("sgd", 0.5, momentum=0.0)
  params = {"w": jnp.array([1.0, -2.0])}
  state = optimizer.init(params)
  assert jax.tree.leaves(state) == []
  w = np.array([1.0, -2.0])
  for grad in ([3.0, 4.0], [-0.5, 0.25]):
    updates, state = optimizer.update({"w": jnp.array(grad)}, state, params)
    params = optax.apply_updates(params, updates)
    w = w - 0.5 * np.array(grad)
  np.testing.assert_array_equal(params["w"], w.astype(np.float32))


def test_every_listed_optimizer_is_built():
  for name in optim.OPTIMIZERS:
    assert isinstance(optim.make_optimizer(name, 0.1), optax.GradientTransformation)


def test_warmup_cosine_schedule_values():
  schedule = optim.make_schedule(1.0, total_steps=110, warmup_steps=10, cosine=True)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(schedule(60), 0.5 * (1 + np.cos(np.pi * 0.5)), atol=1e-6)
  np.testing.assert_allclose(schedule(110), 0.0, atol=1e-6)
  assert optim.make_schedule(0.3, 100) == 0.3
  assert optim.steps_for(600, 128, 2.5, None) == 10 and optim.steps_for(600, 128, 2, 7) == 7
