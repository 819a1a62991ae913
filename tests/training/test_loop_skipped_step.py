"""A skipped (non-finite) step of loop.make_train_step leaves the whole train state as it was.

The task is a linear regression trained with Adam whose ``aux`` changes at
every step (a step counter and a running mean of the predictions), so a step
that kept the parameters but overwrote ``aux``, the optimizer state or the
parameter average with the bad step's values is caught. The finite step after
it is checked against a NumPy re-implementation of Adam (optax's defaults), of
the average's decay and of ``aux``'s update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax.training import loop

LEARNING_RATE, EMA_DECAY, SEED = 0.1, 0.5, 0
B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults.
INPUTS, OUTPUTS, ROWS = 3, 2, 4


def regression_loss(params, batch, rng, aux):
  """Mean squared error of ``x @ w + b``; ``aux``: steps taken and a running mean of predictions."""
  del rng
  inputs, targets = batch
  predictions = inputs @ params["w"] + params["b"]
  loss = jnp.mean((predictions - targets) ** 2)
  aux = {"steps": aux["steps"] + 1.0,
         "mean_prediction": 0.5 * aux["mean_prediction"] + 0.5 * predictions.mean(0)}
  return loss, {"mean_abs_prediction": jnp.abs(predictions).mean()}, aux


TRAIN_STEP = loop.make_train_step(regression_loss, optax.adam(LEARNING_RATE), seed=SEED,
                                  ema_decay=EMA_DECAY)


def batch(seed, nan=False):
  rng = np.random.default_rng(seed)
  inputs = rng.standard_normal((ROWS, INPUTS)).astype(np.float32)
  if nan:
    inputs[1, 2] = np.nan
  return jnp.asarray(inputs), jnp.asarray(rng.standard_normal((ROWS, OUTPUTS)), jnp.float32)


def fresh_state():
  rng = np.random.default_rng(10)
  params = {"w": jnp.asarray(rng.standard_normal((INPUTS, OUTPUTS)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(OUTPUTS), jnp.float32)}
  aux = {"steps": jnp.zeros((), jnp.float32), "mean_prediction": jnp.zeros(OUTPUTS, jnp.float32)}
  return loop.init_state(params, optax.adam(LEARNING_RATE), aux=aux)


def host_copy(state):
  return jax.tree.map(lambda leaf: np.array(leaf, copy=True), state)


def assert_bit_equal(got, want):
  got_leaves, got_tree = jax.tree.flatten(host_copy(got))
  want_leaves, want_tree = jax.tree.flatten(want)
  assert got_tree == want_tree
  for got_leaf, want_leaf in zip(got_leaves, want_leaves):
    assert got_leaf.dtype == want_leaf.dtype
    np.testing.assert_array_equal(got_leaf, want_leaf, strict=True)


def reference_step(state, inputs, targets):
  """One finite step in float64 NumPy: ``(params, ema_params, adam (count, mu, nu), aux)``."""
  adam = state.opt_state[0]
  params = {name: np.float64(value) for name, value in state.params.items()}
  inputs, targets = np.float64(inputs), np.float64(targets)
  predictions = inputs @ params["w"] + params["b"]
  d_predictions = 2.0 * (predictions - targets) / predictions.size
  grads = {"w": inputs.T @ d_predictions, "b": d_predictions.sum(0)}
  count = int(adam.count) + 1
  mu = {name: B1 * adam.mu[name] + (1 - B1) * grads[name] for name in grads}
  nu = {name: B2 * adam.nu[name] + (1 - B2) * grads[name] ** 2 for name in grads}
  new_params = {name: params[name] - LEARNING_RATE * (mu[name] / (1 - B1 ** count)) / (
      np.sqrt(nu[name] / (1 - B2 ** count)) + EPS) for name in grads}
  step = int(state.step)
  decay = min(EMA_DECAY, (1 + step) / (10 + step))
  ema = {name: decay * state.ema_params[name] + (1 - decay) * new_params[name] for name in grads}
  aux = {"steps": state.aux["steps"] + 1.0,
         "mean_prediction": 0.5 * state.aux["mean_prediction"] + 0.5 * predictions.mean(0)}
  return new_params, ema, (count, mu, nu), aux


def assert_moved_as_reference(state, reference):
  params, ema, (count, mu, nu), aux = reference
  adam = state.opt_state[0]
  close = lambda got, want: np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)
  assert int(adam.count) == count
  for name in params:
    close(state.params[name], params[name])
    close(state.ema_params[name], ema[name])
    close(adam.mu[name], mu[name])
    close(adam.nu[name], nu[name])
  close(state.aux["steps"], aux["steps"])
  close(state.aux["mean_prediction"], aux["mean_prediction"])


def test_a_nonfinite_step_keeps_step_params_aux_opt_state_and_average_bit_equal():
  state = fresh_state()
  for seed in (1, 2):  # Two finite steps first: Adam's moments, aux and the average are not zero.
    state, _ = TRAIN_STEP(state, batch(seed))
  before = host_copy(state)
  assert int(before.step) == 2 and int(before.bad_step) == -1
  assert float(before.aux["steps"]) == 2.0 and np.abs(before.opt_state[0].mu["w"]).min() > 0

  state, metrics = TRAIN_STEP(state, batch(3, nan=True))
  assert np.isnan(float(metrics["loss"]))
  assert int(state.bad_step) == 2
  assert_bit_equal(state._replace(bad_step=before.bad_step), before)

  # Once a step went bad, later finite steps are no-ops (the run stops at the next fetch).
  state, metrics = TRAIN_STEP(state, batch(4))
  assert np.isfinite(float(metrics["loss"])) and int(state.bad_step) == 2
  assert_bit_equal(state._replace(bad_step=before.bad_step), before)

  # The state the skipped steps left, with the mark cleared, moves on a finite step exactly as
  # the state before them does: one Adam step, one average update, one aux update.
  state, _ = TRAIN_STEP(state._replace(bad_step=jnp.full((), -1, jnp.int32)), batch(4))
  assert int(state.step) == 3 and int(state.bad_step) == -1
  assert_moved_as_reference(state, reference_step(before, *batch(4)))


def test_finite_steps_follow_the_numpy_adam_reference():
  """The reference itself is checked on the first steps from a fresh state (Adam's count 0, 1)."""
  state = fresh_state()
  for seed in (1, 2):
    before = host_copy(state)
    state, _ = TRAIN_STEP(state, batch(seed))
    assert int(state.step) == int(before.step) + 1
    assert_moved_as_reference(state, reference_step(before, *batch(seed)))
