"""Tests of rnn_jax.cells: one step of every cell against tests/reference.py, initialisers."""

import math

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import cells, checks
import reference

CELLS = reference.example_cells()  # Every registered cell (tests/reference.py).


def test_textbook_example():
  """State size 2, input size 1; states (0.537, 0.462), (0.860, 0.884); outputs 1.56, 2.73."""
  cell = rnn_jax.simple_rnn(2, "tanh")
  w_rnn = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], np.float32)
  params = {"w_ih": jnp.asarray(w_rnn[2:]), "w_hh": jnp.asarray(w_rnn[:2]),
            "b": jnp.array([0.1, -0.1])}
  w_out, b_out = np.array([[1.0], [2.0]]), 0.1

  states, _ = rnn_jax.rnn(cell, params, jnp.array([[1.0], [2.0]]))
  states = np.asarray(states)
  outputs = states @ w_out + b_out
  np.testing.assert_allclose(np.round(states, 3), [[0.537, 0.462], [0.860, 0.884]], atol=1e-7)
  np.testing.assert_allclose(np.round(outputs[:, 0], 2), [1.56, 2.73], atol=1e-7)

  # The same arithmetic written out with math.tanh.
  h1 = [math.tanh(1 * 0.5 + 0.1), math.tanh(1 * 0.6 - 0.1)]
  h2 = [math.tanh(2 * 0.5 + h1[0] * 0.1 + h1[1] * 0.3 + 0.1),
        math.tanh(2 * 0.6 + h1[0] * 0.2 + h1[1] * 0.4 - 0.1)]
  np.testing.assert_allclose(states, [h1, h2], rtol=1e-6)
  np.testing.assert_allclose(outputs[:, 0], [h1[0] + 2 * h1[1] + 0.1, h2[0] + 2 * h2[1] + 0.1],
                             rtol=1e-6)

  # One step by hand through the cell's own step function agrees.
  h, y = cell.step(params, cell.initial_carry(), jnp.array([1.0]))
  np.testing.assert_allclose(h, h1, rtol=1e-6)
  np.testing.assert_array_equal(h, y)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_step_matches_reference(name, random_params):
  cell = CELLS[name](4)
  params = random_params(cell, 3, seed=1)
  if cell.recurrent_init == "identity":  # keep the identity recurrent matrix
    params["w_hh"] = cell.init(jax.random.key(0), 3)["w_hh"]
  rng = np.random.default_rng(2)
  x = rng.standard_normal((3, 3)).astype(np.float32)
  carry = jax.tree.map(lambda z: jnp.asarray(rng.standard_normal(z.shape), jnp.float32),
                       cell.initial_carry((3,)))

  new_carry, y = jax.jit(cell.step)(params, carry, x)
  ref_step = reference.step_function(cell, params)
  for b in range(3):
    ref_carry, ref_y = ref_step(jax.tree.map(lambda leaf: np.asarray(leaf[b], np.float64), carry),
                                x[b].astype(np.float64))
    np.testing.assert_allclose(y[b], ref_y, atol=1e-5)
    got = jax.tree.leaves(jax.tree.map(lambda leaf: leaf[b], new_carry))
    want = reference.leaves(ref_carry)
    assert len(got) == len(want)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-5)

  # The hoisting split: project is affine and time-independent, recur finishes the step.
  split_carry, split_y = cell.recur(params, carry, cell.project(params, x))
  np.testing.assert_allclose(split_y, y, atol=1e-6)
  xs = rng.standard_normal((5, 3, 3)).astype(np.float32)
  np.testing.assert_allclose(cell.project(params, xs)[2], cell.project(params, xs[2]), atol=1e-6)


def test_lstm_forget_bias_is_added_to_forget_gate_only(random_params):
  """forget_bias=1 equals forget_bias=0 with 1 added to the forget-gate block of the bias."""
  params = random_params(rnn_jax.lstm(3), 2, seed=3)
  shifted = dict(params, b=params["b"].at[3:6].add(1.0))
  rng = np.random.default_rng(0)
  carry = rnn_jax.LSTMState(*(jnp.asarray(rng.standard_normal((2, 3)), jnp.float32)
                              for _ in range(2)))
  x = jnp.asarray(rng.standard_normal((2, 2)), jnp.float32)
  with_bias = rnn_jax.lstm(3, forget_bias=1.0).step(params, carry, x)
  without = rnn_jax.lstm(3, forget_bias=0.0).step(shifted, carry, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), with_bias, without)
  assert not np.allclose(with_bias[1], rnn_jax.lstm(3, forget_bias=0.0).step(params, carry, x)[1])


def test_gru_update_convention():
  """z -> 1 keeps the old state, z -> 0 takes the candidate n (h' = (1 - z) n + z h)."""
  cell = rnn_jax.gru(2)
  params = jax.tree.map(jnp.zeros_like, cell.init(jax.random.key(0), 1))
  h = jnp.array([0.3, -0.7])
  keep = dict(params, b_ih=params["b_ih"].at[2:4].set(50.0))   # z block -> sigmoid(50) = 1
  np.testing.assert_allclose(cell.step(keep, h, jnp.array([1.0]))[0], h, atol=1e-6)
  take = dict(params, b_ih=params["b_ih"].at[2:4].set(-50.0).at[4:6].set([0.2, -0.4]))
  np.testing.assert_allclose(cell.step(take, h, jnp.array([1.0]))[0], np.tanh([0.2, -0.4]),
                             atol=1e-6)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_init_shapes_dtypes_and_orthogonal_blocks(name):
  hidden, inputs = 5, 3
  cell = CELLS[name](hidden)
  params = cell.init(jax.random.key(4), inputs)
  gates = reference.REFERENCES[type(cell)].gates
  expected = {"w_ih": (inputs, gates * hidden), "w_hh": (hidden, gates * hidden)}
  if getattr(cell, "reset_after", False):
    expected.update(b_ih=(gates * hidden,), b_hh=(gates * hidden,))
  else:
    expected.update(b=(gates * hidden,))
  assert {k: v.shape for k, v in params.items()} == expected
  assert all(v.dtype == jnp.float32 for v in params.values())
  assert cell.input_size(params) == inputs
  assert cell.hidden_size == cell.output_size == hidden

  for k in range(gates):
    block = np.asarray(params["w_hh"][:, k * hidden:(k + 1) * hidden], np.float64)
    if cell.recurrent_init == "identity":
      np.testing.assert_array_equal(block, np.eye(hidden))
    else:
      np.testing.assert_allclose(block.T @ block, np.eye(hidden), atol=1e-5)
    # Glorot uniform per gate block: |w| <= sqrt(6 / (fan_in + fan_out)), not all tiny.
    w_block = np.abs(params["w_ih"][:, k * hidden:(k + 1) * hidden])
    limit = math.sqrt(6.0 / (inputs + hidden))
    assert w_block.max() <= limit and w_block.max() > 0.3 * limit
  if gates > 1:  # blocks drawn independently, not one matrix repeated
    assert not np.allclose(params["w_hh"][:, :hidden], params["w_hh"][:, hidden:2 * hidden])
  for bias in set(params) - {"w_ih", "w_hh"}:
    np.testing.assert_array_equal(params[bias], 0.0)


@pytest.mark.parametrize("factory", [rnn_jax.simple_rnn, rnn_jax.lstm, rnn_jax.gru])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_init_param_dtype(factory, dtype):
  cell = factory(4, param_dtype=dtype)
  params = cell.init(jax.random.key(0), 2)
  assert all(v.dtype == dtype for v in params.values())
  w_hh = np.asarray(params["w_hh"][:, :4], np.float32)
  np.testing.assert_allclose(w_hh.T @ w_hh, np.eye(4), atol=0.05)


def test_init_float64(x64):
  params = rnn_jax.lstm(3, param_dtype=jnp.float64).init(jax.random.key(0), 2)
  assert all(v.dtype == jnp.float64 for v in params.values())
  np.testing.assert_allclose(params["w_hh"][:, :3].T @ params["w_hh"][:, :3], np.eye(3),
                             atol=1e-12)


def test_initial_carry():
  assert rnn_jax.simple_rnn(3).initial_carry().shape == (3,)
  carry = rnn_jax.lstm(3).initial_carry((2, 4))
  assert isinstance(carry, rnn_jax.LSTMState)
  assert carry.h.shape == carry.c.shape == (2, 4, 3) and carry.c.dtype == jnp.float32
  np.testing.assert_array_equal(carry.c, 0.0)
  assert rnn_jax.gru(3).initial_carry((2,), jnp.bfloat16).dtype == jnp.bfloat16


def test_cells_are_values_hashable_and_jit_static():
  assert rnn_jax.lstm(8) == rnn_jax.lstm(8) == rnn_jax.lstm(8, 1.0) == rnn_jax.lstm(hidden_size=8)
  assert rnn_jax.gru(8, reset_after=False) == rnn_jax.gru(8, reset_after=False)
  assert rnn_jax.simple_rnn(8, "relu") == rnn_jax.simple_rnn(8, "relu")
  assert rnn_jax.lstm(8) != rnn_jax.lstm(8, forget_bias=0.0)
  assert rnn_jax.gru(8) != rnn_jax.gru(8, reset_after=False)
  assert rnn_jax.gru(8) != rnn_jax.simple_rnn(8)  # Same fields, different cells.
  assert hash(rnn_jax.lstm(8)) == hash(rnn_jax.lstm(8))
  assert rnn_jax.lstm(8, forget_bias=0.5).forget_bias == 0.5
  assert rnn_jax.simple_rnn(8, "relu").activation == "relu"
  with pytest.raises(dataclasses.FrozenInstanceError):
    rnn_jax.lstm(8).hidden_size = 4

  traces = []

  def step(cell, params, carry, x):
    traces.append(cell.name)
    return cell.step(params, carry, x)

  step_jit = jax.jit(step, static_argnums=0)
  cell = rnn_jax.lstm(2)
  params = cell.init(jax.random.key(0), 1)
  first = step_jit(rnn_jax.lstm(2), params, cell.initial_carry(), jnp.ones(1))
  second = step_jit(rnn_jax.lstm(2), params, cell.initial_carry(), jnp.ones(1))
  assert traces == ["lstm"]  # the second, equal cell hit the cache
  jax.tree.map(np.testing.assert_array_equal, first, second)


@pytest.mark.parametrize("make, match", [
    (lambda: rnn_jax.simple_rnn(3, "sigmoid"), r"activation must be one of \['relu', 'tanh'\], "
                                               r"got 'sigmoid'"),
    (lambda: rnn_jax.simple_rnn(3, "relu", recurrent_init="eye"),
     r"recurrent_init must be an initialiser or 'identity', got 'eye'"),
    (lambda: rnn_jax.lstm(0), r"hidden_size must be a positive int, got 0"),
    (lambda: rnn_jax.lstm(16.0), r"hidden_size must be a positive int, got 16.0"),
    (lambda: rnn_jax.gru(True), r"hidden_size must be a positive int, got True"),
    (lambda: rnn_jax.gru(4, reset_after="yes"), r"reset_after must be a bool"),
    (lambda: rnn_jax.lstm(4, forget_bias="1"), r"forget_bias must be a number"),
])
def test_bad_arguments(make, match):
  """Hyperparameters are checked when the cell is built."""
  with pytest.raises(ValueError, match=match):
    make()


def test_input_projection_of_a_single_feature_is_taken_per_gate_block_with_the_same_numbers():
  """I = 1: the blocks' products are concatenated (faster in a scan step), bitwise as one product."""
  rng = np.random.default_rng(3)
  params = {"w_ih": jnp.asarray(rng.standard_normal((1, 12)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(12), jnp.float32)}
  x = jnp.asarray(rng.standard_normal((5, 1)), jnp.float32)
  one_product = jax.jit(lambda p, x: x @ p["w_ih"] + p["b"])(params, x)
  per_block = jax.jit(lambda p, x: cells.affine_input(p, x, "b", blocks=3))(params, x)
  np.testing.assert_array_equal(per_block, one_product)
  text = jax.jit(lambda p, x: cells.affine_input(p, x, "b", blocks=3)).lower(params, x).as_text()
  assert text.count("dot_general") == 3 and "concatenate" in text
  wider = jnp.ones((5, 2))  # Two features: one product.
  text = jax.jit(lambda p, x: cells.affine_input(p, x, "b", blocks=3)).lower(
      {"w_ih": jnp.ones((2, 12)), "b": params["b"]}, wider).as_text()
  assert text.count("dot_general") == 1


LSTM_VARIANTS = {
    "proj": lambda: rnn_jax.lstm(5, forget_bias=0.5, proj_size=3),
    "layer_norm": lambda: rnn_jax.lstm(5, forget_bias=0.5, layer_norm=True),
    "layer_norm_proj": lambda: rnn_jax.lstm(5, forget_bias=0.5, layer_norm=True, proj_size=3),
}


@pytest.mark.parametrize("name", sorted(LSTM_VARIANTS))
def test_projected_and_layer_normalised_lstm_match_their_numpy_equations(name, random_params):
  """Whole sequences (lengths, both directions) against tests/reference.py's equations,
  layer-norm gains and biases random so that every one of them counts."""
  cell = LSTM_VARIANTS[name]()
  params = random_params(cell, 3, seed=3)
  rng = np.random.default_rng(4)
  xs = rng.standard_normal((3, 6, 3)).astype(np.float32)
  lengths = np.array([6, 2, 4], np.int32)
  ref = reference.cell_layer(cell, params)
  zero = reference.zero_carry(cell)
  for reverse in (False, True):
    outputs, final = rnn_jax.rnn(cell, params, xs, lengths=lengths, reverse=reverse)
    want_outputs, want_finals = reference.run_batch(ref, xs, lengths=lengths, reverse=reverse,
                                                    zero=zero)
    np.testing.assert_allclose(outputs, want_outputs, atol=2e-5)
    for b, want in enumerate(want_finals):
      np.testing.assert_allclose(final.h[b], want[0], atol=2e-5)
      np.testing.assert_allclose(final.c[b], want[1], atol=2e-5)
  assert outputs.shape[-1] == cell.output_size == (cell.proj_size or cell.hidden_size)


def test_projected_and_layer_normalised_lstm_params_and_carry():
  cell = rnn_jax.lstm(5, proj_size=3, layer_norm=True)
  params = cell.init(jax.random.key(0), 2)
  assert {name: value.shape for name, value in params.items()} == {
      "w_ih": (2, 20), "w_hh": (3, 20), "b": (20,), "w_hr": (5, 3), "ln_ih_gain": (20,),
      "ln_hh_gain": (20,), "ln_c_gain": (5,), "ln_c_bias": (5,)}
  np.testing.assert_array_equal(params["ln_c_gain"], 1.0)
  np.testing.assert_array_equal(params["ln_c_bias"], 0.0)
  carry = cell.initial_carry((4,))
  assert carry.h.shape == (4, 3) and carry.c.shape == (4, 5)
  assert repr(cell) == "lstm(5, proj_size=3, layer_norm=True)"
  assert cell == eval(f"rnn_jax.{cell!r}") and hash(cell) == hash(rnn_jax.lstm(5, proj_size=3,
                                                                              layer_norm=True))
  assert not cell.runs_fused_vjp() and rnn_jax.lstm(5).runs_fused_vjp()
  checks.assert_run_matches_steps(cell, params, jnp.ones((4, 3, 2)),
                                  lengths=jnp.array([3, 1, 0, 2]))
  with pytest.raises(ValueError, match="proj_size"):
    rnn_jax.lstm(5, proj_size=-1)
  with pytest.raises(ValueError, match="layer_norm must be a bool"):
    rnn_jax.lstm(5, layer_norm=1)
