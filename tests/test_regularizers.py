"""Tests of rnn_jax.regularizers: zoneout and weight_drop against the plain layers and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import checks
import reference

B, T, I, H = 3, 6, 2, 4
LENGTHS = jnp.array([6, 2, 4])


def _xs(seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((B, T, I)), jnp.float32)


def _params(layer, seed=1):
  return layer.init(jax.random.key(seed), I)


run = jax.jit(lambda layer, p, xs, key, lengths=None: rnn_jax.rnn(
    layer, p, xs, lengths=lengths, dropout_rng=key), static_argnums=0)


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("wrap", [lambda c: rnn_jax.zoneout(c, 0.0),
                                  lambda c: rnn_jax.zoneout(c, 0, cell_rate=0.0),
                                  lambda c: rnn_jax.weight_drop(c, 0.0)],
                         ids=["zoneout", "zoneout_cell_rate", "weight_drop"])
def test_rate_zero_is_bitwise_the_plain_layer(wrap):
  cell = rnn_jax.lstm(H)
  layer = wrap(cell)
  params, xs = _params(cell), _xs()
  want = run(cell, params, xs, None, LENGTHS)
  _assert_trees_equal(run(layer, params, xs, jax.random.key(3), LENGTHS), want)
  _assert_trees_equal(run(layer, params, xs, None, LENGTHS), want)
  assert not rnn_jax.uses_dropout(layer)


def test_zoneout_rate_one_keeps_the_initial_carry():
  cell = rnn_jax.gru(H)
  layer = rnn_jax.zoneout(cell, 1.0)
  params, xs = _params(cell), _xs()
  carry = jnp.asarray(np.random.default_rng(5).standard_normal((B, H)), jnp.float32)
  for key in (jax.random.key(0), None):
    outputs, final = rnn_jax.rnn(layer, params, xs, initial_carry=carry, dropout_rng=key)
    np.testing.assert_array_equal(final, carry)
    np.testing.assert_array_equal(outputs, jnp.broadcast_to(carry[:, None], outputs.shape))


def test_zoneout_lstm_cell_and_hidden_rates_apart():
  cell = rnn_jax.lstm(H)
  params, xs = _params(cell), _xs()
  carry = cell.initial_carry((B,))
  carry = rnn_jax.LSTMState(carry.h + 0.5, carry.c - 0.25)
  frozen_c = rnn_jax.zoneout(cell, 0.0, cell_rate=1.0)
  outputs, final = rnn_jax.rnn(frozen_c, params, xs, initial_carry=carry,
                               dropout_rng=jax.random.key(1))
  np.testing.assert_array_equal(final.c, carry.c)
  assert np.all(np.asarray(final.h) != np.asarray(carry.h))
  np.testing.assert_array_equal(outputs[:, -1], final.h)  # The output is the (zoned) h.
  frozen_h = rnn_jax.zoneout(cell, 1.0, cell_rate=0.0)
  _, final = rnn_jax.rnn(frozen_h, params, xs, initial_carry=carry, dropout_rng=jax.random.key(1))
  np.testing.assert_array_equal(final.h, carry.h)
  assert np.all(np.asarray(final.c) != np.asarray(carry.c))


def test_zoneout_without_a_key_is_the_expectation_numpy_reference():
  cell = rnn_jax.simple_rnn(H)
  rate = 0.3
  layer = rnn_jax.zoneout(cell, rate)
  params, xs = _params(cell), _xs()
  outputs, final = rnn_jax.rnn(layer, params, xs, lengths=LENGTHS)
  p64 = reference.as_float64(params)
  for b in range(B):
    h = np.zeros(H)
    for t in range(T):
      if t < int(LENGTHS[b]):
        new, _ = reference.elman_step(p64, h, np.asarray(xs[b, t], np.float64))
        h = rate * h + (1.0 - rate) * new
        np.testing.assert_allclose(outputs[b, t], h, atol=1e-6)
      else:
        np.testing.assert_array_equal(outputs[b, t], 0.0)
    np.testing.assert_allclose(final[b], h, atol=1e-6)


def test_zoneout_in_training_keeps_or_updates_each_unit_with_a_fresh_mask_per_step():
  """Every unit at every step is either its previous value or the cell's update of the
  previous carry; about ``rate`` of them keep, and the kept set changes from step to step."""
  cell = rnn_jax.simple_rnn(32)
  rate = 0.4
  layer = rnn_jax.zoneout(cell, rate)
  params = cell.init(jax.random.key(2), I)
  xs = jnp.asarray(np.random.default_rng(3).standard_normal((8, 40, I)), jnp.float32)
  outputs = np.asarray(run(layer, params, xs, jax.random.key(4))[0], np.float64)
  p64 = reference.as_float64(params)
  previous = np.zeros((8, 32))
  kept = np.zeros((8, 40, 32), bool)
  for t in range(40):
    update = np.stack([reference.elman_step(p64, previous[b], np.asarray(xs[b, t], np.float64))[0]
                       for b in range(8)])
    is_kept = np.abs(outputs[:, t] - previous) < 1e-6
    is_new = np.abs(outputs[:, t] - update) < 1e-5
    assert np.all(is_kept | is_new)
    kept[:, t] = is_kept & ~is_new
    previous = outputs[:, t]
  assert abs(kept.mean() - rate) < 0.03
  assert not np.array_equal(kept[:, 10], kept[:, 11])
  # A fixed key gives a fixed mask; another key another one.
  _assert_trees_equal(run(layer, params, xs, jax.random.key(4)), run(layer, params, xs,
                                                                     jax.random.key(4)))
  assert not np.array_equal(run(layer, params, xs, jax.random.key(5))[0], outputs)


def test_weight_drop_rate_one_is_the_layer_without_w_hh():
  cell = rnn_jax.lstm(H)
  params, xs = _params(cell), _xs()
  got = run(rnn_jax.weight_drop(cell, 1.0), params, xs, jax.random.key(0), LENGTHS)
  want = run(cell, dict(params, w_hh=jnp.zeros_like(params["w_hh"])), xs, None, LENGTHS)
  _assert_trees_equal(got, want)


def test_weight_drop_one_mask_per_call_the_same_at_every_step():
  cell = rnn_jax.gru(H)
  layer = rnn_jax.weight_drop(cell, 0.5)
  params, xs = _params(cell), _xs()
  key = jax.random.key(7)
  dropped = layer.dropped(params, jax.random.split(key)[0])
  w, w_dropped = np.asarray(params["w_hh"]), np.asarray(dropped["w_hh"])
  zero = w_dropped == 0.0
  assert 0.3 < zero.mean() < 0.7
  np.testing.assert_allclose(w_dropped[~zero], 2.0 * w[~zero], rtol=1e-6)  # inverted scaling
  # The run with the key is the plain cell with that one dropped matrix at every step.
  got = run(layer, params, xs, key, LENGTHS)
  want = run(cell, dropped, xs, None, LENGTHS)
  for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w_, atol=1e-6)
  _assert_trees_equal(run(layer, params, xs, key), run(layer, params, xs, key))
  other = layer.dropped(params, jax.random.split(jax.random.key(8))[0])
  assert not np.array_equal(other["w_hh"], dropped["w_hh"])
  assert not np.array_equal(run(layer, params, xs, jax.random.key(8))[0], got[0])
  # No key: the plain layer, deterministic.
  _assert_trees_equal(run(layer, params, xs, None), run(cell, params, xs, None))


@pytest.mark.parametrize("make", [
    pytest.param(lambda: rnn_jax.zoneout(rnn_jax.lstm(H), 0.2, cell_rate=0.5), id="zoneout_lstm"),
    pytest.param(lambda: rnn_jax.weight_drop(rnn_jax.zoneout(rnn_jax.lstm(H, proj_size=3), 0.1),
                                             0.3), id="weight_drop_zoneout_proj",
                 marks=pytest.mark.slow),
    pytest.param(lambda: rnn_jax.stack([rnn_jax.zoneout(rnn_jax.remat(rnn_jax.gru(H)), 0.3),
                                        rnn_jax.weight_drop(rnn_jax.simple_rnn(H), 0.5)]),
                 id="stack_remat", marks=pytest.mark.slow),
])
def test_values_compose_and_evaluation_runs_as_steps(make):
  layer = make()
  assert layer == make() and hash(layer) == hash(make())
  assert eval(repr(layer), vars(rnn_jax)) == layer
  assert rnn_jax.uses_dropout(layer)
  params, xs = _params(layer), _xs()
  checks.assert_run_matches_steps(layer, params, xs, lengths=LENGTHS, reverse=True)
  both = rnn_jax.bidirectional(layer, layer)
  params = both.init(jax.random.key(0), I)
  loss = jax.jit(jax.value_and_grad(
      lambda p, key: (lambda out: (out.sum(), out))(rnn_jax.rnn(
          both, p, xs, lengths=LENGTHS, dropout_rng=key)[0]), has_aux=True))
  (_, outputs), grads = loss(params, jax.random.key(1))
  (_, again), _ = loss(params, jax.random.key(1))
  np.testing.assert_array_equal(outputs, again)  # A fixed key, fixed masks.
  np.testing.assert_array_equal(outputs[1, 2:], 0.0)  # Zero past the lengths.
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.any(g != 0.0) for g in jax.tree.leaves(grads["backward"]))


def test_remat_goes_inside_the_regularisers():
  cell = rnn_jax.lstm(H)
  outer = rnn_jax.remat(rnn_jax.stack([rnn_jax.weight_drop(rnn_jax.zoneout(cell, 0.1), 0.2)]))
  inner = rnn_jax.stack([rnn_jax.weight_drop(rnn_jax.zoneout(rnn_jax.remat(cell), 0.1), 0.2)])
  assert outer == inner
  assert rnn_jax.remat(rnn_jax.zoneout(cell, 0.1), every=3) == rnn_jax.zoneout(
      rnn_jax.remat(cell, every=3), 0.1)


def test_remat_inside_zoneout_gives_the_same_numbers():
  cell = rnn_jax.lstm(H)
  params, xs = _params(cell), _xs()
  key = jax.random.key(3)
  plain = run(rnn_jax.zoneout(cell, 0.3), params, xs, key, LENGTHS)
  rematted = run(rnn_jax.zoneout(rnn_jax.remat(cell), 0.3), params, xs, key, LENGTHS)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(rematted)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\], got 1.5"):
    rnn_jax.zoneout(rnn_jax.lstm(H), 1.5)
  with pytest.raises(ValueError, match="cell_rate must be"):
    rnn_jax.zoneout(rnn_jax.lstm(H), 0.1, cell_rate=-0.1)
  with pytest.raises(ValueError, match="weight_drop: layer must be a cell"):
    rnn_jax.weight_drop(rnn_jax.stack([rnn_jax.lstm(H)]), 0.1)
  with pytest.raises(TypeError, match="expected an rnn_jax layer"):
    rnn_jax.zoneout("lstm", 0.1)


@pytest.mark.parametrize("wrap", [lambda l: rnn_jax.zoneout(l, 0.3, cell_rate=0.6),
                                  lambda l: rnn_jax.weight_drop(l, 0.4)],
                         ids=["zoneout", "weight_drop"])
def test_resets_pass_through_the_wrappers(wrap):
  """Without a key both are deterministic layers: a run with resets equals stepping each segment
  (rnn_jax.checks' reference), forwards and backwards, with lengths; with a key they run too."""
  from rnn_jax.checks import assert_run_matches_steps  # pylint: disable=import-outside-toplevel
  layer = wrap(rnn_jax.lstm(3))
  params = layer.init(jax.random.key(0), 2)
  xs = np.random.default_rng(0).standard_normal((2, 7, 2)).astype(np.float32)
  resets = np.zeros((2, 7), bool)
  resets[0, 3] = resets[1, 1] = resets[1, 5] = True
  for reverse in (False, True):
    assert_run_matches_steps(layer, params, xs, lengths=np.array([7, 6]), reverse=reverse,
                             resets=resets)
  outputs, _ = rnn_jax.rnn(layer, params, xs, resets=resets, dropout_rng=jax.random.key(1))
  assert outputs.shape == (2, 7, 3) and bool(jnp.all(jnp.isfinite(outputs)))
