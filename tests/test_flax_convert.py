"""rnn_jax.flax_convert against Flax's own cells: same numbers to 1e-6, both ways."""

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import flax_convert

INPUT, HIDDEN, BATCH = 3, 4, 2
LINEN = {"LSTMCell": lambda: nn.LSTMCell(HIDDEN),
         "OptimizedLSTMCell": lambda: nn.OptimizedLSTMCell(HIDDEN),
         "GRUCell": lambda: nn.GRUCell(HIDDEN),
         "SimpleCell": lambda: nn.SimpleCell(HIDDEN),
         "SimpleCell-relu": lambda: nn.SimpleCell(HIDDEN, activation_fn=jax.nn.relu)}
NNX = {"LSTMCell": lambda: nnx.LSTMCell(INPUT, HIDDEN, rngs=nnx.Rngs(0)),
       "OptimizedLSTMCell": lambda: nnx.OptimizedLSTMCell(INPUT, HIDDEN, rngs=nnx.Rngs(0)),
       "GRUCell": lambda: nnx.GRUCell(INPUT, HIDDEN, rngs=nnx.Rngs(0)),
       "SimpleCell": lambda: nnx.SimpleCell(INPUT, HIDDEN, rngs=nnx.Rngs(0))}
EXPECTED = {"LSTMCell": rnn_jax.lstm(HIDDEN, forget_bias=0.0),
            "OptimizedLSTMCell": rnn_jax.lstm(HIDDEN, forget_bias=0.0),
            "GRUCell": rnn_jax.gru(HIDDEN), "SimpleCell": rnn_jax.simple_rnn(HIDDEN),
            "SimpleCell-relu": rnn_jax.simple_rnn(HIDDEN, "relu")}


def _randomized(tree, seed):
  """Every leaf redrawn from N(0, 0.5^2), so that Flax's zero biases are tested too."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: jnp.asarray(0.5 * rng.standard_normal(leaf.shape),
                                               leaf.dtype), tree)


def _step_inputs(layer, seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((BATCH, INPUT)), jnp.float32)
  carry = _randomized(layer.initial_carry((BATCH,)), seed + 1)
  return carry, x


def _assert_close(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(got_leaf, want_leaf, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(LINEN))
def test_linen_cells_step_like_rnn_jax_both_ways(name):
  cell = LINEN[name]()
  carry0 = cell.initialize_carry(jax.random.key(0), (BATCH, INPUT))
  flax_params = _randomized(cell.init(jax.random.key(0), carry0, jnp.ones((BATCH, INPUT))),
                            seed=1)["params"]
  layer, params = flax_convert.from_flax(cell, flax_params)
  assert layer == EXPECTED[name]
  assert jax.tree.structure(params) == jax.tree.structure(layer.init(jax.random.key(0), INPUT))
  carry, x = _step_inputs(layer, seed=2)
  want_carry, want_y = cell.apply({"params": flax_params}, flax_convert.to_flax_carry(layer, carry),
                                  x)
  got_carry, got_y = layer.step(params, carry, x)
  np.testing.assert_allclose(got_y, want_y, atol=1e-6, rtol=0)
  _assert_close(flax_convert.to_flax_carry(layer, got_carry), want_carry)
  _assert_close(flax_convert.from_flax_carry(layer, want_carry), got_carry)
  # And back: the same parameters in Flax's layout, and the whole sequence under flax.linen.RNN.
  _assert_close(flax_convert.to_flax(layer, params, cell), flax_params)
  xs = jnp.asarray(np.random.default_rng(3).standard_normal((BATCH, 5, INPUT)), jnp.float32)
  flax_outputs = nn.RNN(cell).apply({"params": {"cell": flax_params}}, xs)
  np.testing.assert_allclose(rnn_jax.rnn(layer, params, xs)[0], flax_outputs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(NNX))
def test_nnx_cells_step_like_rnn_jax_both_ways(name):
  cell = NNX[name]()
  state = nnx.state(cell, nnx.Param)
  nnx.replace_by_pure_dict(state, _randomized(nnx.to_pure_dict(state), seed=4))
  nnx.update(cell, state)
  layer, params = flax_convert.from_flax(cell)
  assert layer == EXPECTED[name]
  carry, x = _step_inputs(layer, seed=5)
  want_carry, want_y = cell(flax_convert.to_flax_carry(layer, carry), x)
  got_carry, got_y = layer.step(params, carry, x)
  np.testing.assert_allclose(got_y, want_y, atol=1e-6, rtol=0)
  _assert_close(flax_convert.to_flax_carry(layer, got_carry), want_carry)
  # Back into a fresh cell of the same kind: it computes what the first one did.
  if name == "GRUCell":
    params = dict(params, b_hh=params["b_hh"].at[:2 * HIDDEN].set(0.7))  # folded into dense_i
  fresh = flax_convert.to_flax(layer, params, NNX[name]())
  _, want_y = layer.step(params, carry, x)
  np.testing.assert_allclose(fresh(flax_convert.to_flax_carry(layer, carry), x)[1], want_y,
                             atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", ["linen", "nnx"])
def test_forget_bias_and_gru_biases_go_into_flax(layout):
  """An rnn_jax LSTM with forget_bias=1 and a GRU with every bias set, written into Flax cells."""
  rng_seed = 6
  for layer, linen_cell, nnx_cell in [
      (rnn_jax.lstm(HIDDEN), nn.LSTMCell(HIDDEN), lambda: nnx.LSTMCell(INPUT, HIDDEN,
                                                                        rngs=nnx.Rngs(0))),
      (rnn_jax.gru(HIDDEN), nn.GRUCell(HIDDEN), None)]:
    params = _randomized(layer.init(jax.random.key(0), INPUT), rng_seed)
    carry, x = _step_inputs(layer, rng_seed)
    _, want_y = layer.step(params, carry, x)
    if layout == "linen":
      flax_params = flax_convert.to_flax(layer, params, linen_cell)
      got_y = linen_cell.apply({"params": flax_params}, flax_convert.to_flax_carry(layer, carry),
                               x)[1]
    elif nnx_cell is not None:
      got_y = flax_convert.to_flax(layer, params, nnx_cell())(
          flax_convert.to_flax_carry(layer, carry), x)[1]
    else:   # flax.nnx.GRUCell has no b_hn
      with pytest.raises(ValueError, match="no bias inside the reset product"):
        flax_convert.to_flax(layer, params, nnx.GRUCell(INPUT, HIDDEN, rngs=nnx.Rngs(0)))
      continue
    np.testing.assert_allclose(got_y, want_y, atol=1e-6, rtol=0)


def test_refusals_name_the_argument():
  for variant in (rnn_jax.lstm(HIDDEN, proj_size=2), rnn_jax.lstm(HIDDEN, layer_norm=True)):
    with pytest.raises(ValueError, match="does not compute a Flax LSTMCell"):
      flax_convert.to_flax(variant, variant.init(jax.random.key(0), INPUT), nn.LSTMCell(HIDDEN))
  with pytest.raises(TypeError, match="cell: expected a flax.linen or flax.nnx LSTMCell"):
    flax_convert.from_flax(nn.MGUCell(HIDDEN), {})
  with pytest.raises(ValueError, match="activation_fn .* no rnn_jax counterpart"):
    flax_convert.from_flax(nn.LSTMCell(HIDDEN, activation_fn=jax.nn.relu), {})
  with pytest.raises(ValueError, match="residual=True"):
    flax_convert.from_flax(nn.SimpleCell(HIDDEN, residual=True), {})
  with pytest.raises(ValueError, match="params: a flax.linen cell holds no parameters"):
    flax_convert.from_flax(nn.GRUCell(HIDDEN))
  gru_reset_before = rnn_jax.gru(HIDDEN, reset_after=False)
  with pytest.raises(ValueError, match=r"to_flax: gru\(4, reset_after=False\) does not compute"):
    flax_convert.to_flax(gru_reset_before, gru_reset_before.init(jax.random.key(0), INPUT),
                         nn.GRUCell(HIDDEN))
  with pytest.raises(ValueError, match="hidden size 4, the cell 5"):
    flax_convert.to_flax(rnn_jax.gru(HIDDEN), rnn_jax.gru(HIDDEN).init(jax.random.key(0), INPUT),
                         nn.GRUCell(HIDDEN + 1))
  with pytest.raises(ValueError, match=r"to_flax_carry: mingru\(4\) is not an lstm"):
    flax_convert.to_flax_carry(rnn_jax.mingru(HIDDEN), jnp.zeros((HIDDEN,)))
