"""Tests of rnn_jax.unroll: rnn() against tests/reference.py, options, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import reverse_padded
import reference
from testing import assert_close, normal, random_carry

T, I, H = 5, 3, 4
# Batch shape (2, 3): a zero length, a full one, one above T, a negative one, two partial.
LENGTHS = np.array([[0, T, T + 4], [-2, 2, 4]], np.int32)

CELLS = {
    "tanh": rnn_jax.simple_rnn(H, "tanh"),
    "relu": rnn_jax.simple_rnn(H, "relu"),
    "irnn": rnn_jax.simple_rnn(H, "relu", recurrent_init="identity"),
    "lstm_fb0": rnn_jax.lstm(H, forget_bias=0.0),
    "lstm_fb1": rnn_jax.lstm(H, forget_bias=1.0),
    "gru_after": rnn_jax.gru(H, reset_after=True),
    "gru_before": rnn_jax.gru(H, reset_after=False),
}


def cell_params(name, random_params, seed):
  """Random parameters; the IRNN keeps its identity recurrent matrix."""
  params = random_params(CELLS[name], I, seed)
  if name == "irnn":
    params["w_hh"] = CELLS[name].init(jax.random.key(seed), I)["w_hh"]
  return params


# Every cell plain and with lengths + reverse (the options are cell-independent
# code, so the other two combinations run for one LSTM and one GRU).
REFERENCE_CASES = [(name, False, False) for name in sorted(CELLS)] + [
    (name, True, True) for name in sorted(CELLS)] + [
    (name, lengths, not lengths) for name in ("lstm_fb1", "gru_before") for lengths in (0, 1)]


@pytest.mark.parametrize("name, with_lengths, reverse", REFERENCE_CASES)
def test_matches_reference(name, with_lengths, reverse, rnn_jit, random_params):
  """Each cell against the NumPy loop; batch shape (2, 3); a random initial carry."""
  cell = CELLS[name]
  params = cell_params(name, random_params, seed=1)
  xs = normal(2, (2, 3, T, I))
  carry = random_carry(cell, (2, 3), seed=3)
  lengths = LENGTHS if with_lengths else None
  outputs, final = rnn_jit(cell, params, xs, initial_carry=carry, lengths=lengths,
                           reverse=reverse)
  ref_outputs, ref_final = reference.run_model(cell, params, xs, carry, lengths, reverse)
  assert outputs.dtype == jnp.float32 and outputs.shape == (2, 3, T, H)
  assert_close(outputs, ref_outputs, atol=2e-5)
  assert_close(final, ref_final, atol=2e-5)


def test_default_carry_is_zeros(rnn_jit, random_params):
  cell = CELLS["lstm_fb1"]
  params = random_params(cell, I, seed=4)
  xs = normal(5, (3, T, I))
  outputs, final = rnn_jit(cell, params, xs)
  ref_outputs, ref_final = reference.run_model(cell, params, xs)
  assert_close(outputs, ref_outputs, atol=2e-5)
  assert_close(final, ref_final, atol=2e-5)
  assert isinstance(final, rnn_jax.LSTMState)


def test_length_semantics(rnn_jit, random_params):
  """Zero outputs past the length, carry held; 0 returns the initial carry; clipping."""
  cell = CELLS["gru_after"]
  params = random_params(cell, I, seed=6)
  xs = normal(7, (2, 3, T, I))
  carry = random_carry(cell, (2, 3), seed=8)
  outputs, final = rnn_jit(cell, params, xs, initial_carry=carry, lengths=LENGTHS)
  clipped = np.clip(LENGTHS, 0, T)
  for index in np.ndindex(2, 3):
    length = clipped[index]
    np.testing.assert_array_equal(outputs[index][length:], 0.0)
    assert np.all(np.abs(outputs[index][:length]) > 0)
    if length == 0:
      np.testing.assert_array_equal(final[index], carry[index])
    else:  # the final carry is the output at the last valid step
      np.testing.assert_array_equal(final[index], outputs[index][length - 1])
  same = rnn_jit(cell, params, xs, initial_carry=carry, lengths=jnp.asarray(clipped))
  jax.tree.map(np.testing.assert_array_equal, (outputs, final), same)
  full = rnn_jit(cell, params, xs, initial_carry=carry, lengths=np.full((2, 3), T))
  unmasked = rnn_jit(cell, params, xs, initial_carry=carry)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), full, unmasked)


def test_reverse(rnn_jit, random_params):
  """Reverse runs the valid prefix backwards: without lengths it is a flip."""
  cell = CELLS["lstm_fb1"]
  params = random_params(cell, I, seed=9)
  xs = normal(10, (3, T, I))
  backward, final = rnn_jit(cell, params, xs, reverse=True)
  forward_on_flipped, final_flipped = rnn_jit(cell, params, xs[:, ::-1])
  np.testing.assert_allclose(backward, forward_on_flipped[:, ::-1], atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), final, final_flipped)

  lengths = np.array([2, T, 0], np.int32)
  out, _ = rnn_jit(cell, params, xs, lengths=lengths, reverse=True)
  # The first step processed is the true last one, from the zero carry.
  _, first = cell.step(params, cell.initial_carry((3,)), xs[np.arange(3), np.maximum(lengths - 1, 0)])
  np.testing.assert_allclose(out[0, 1], first[0], atol=1e-6)
  np.testing.assert_allclose(out[1, T - 1], first[1], atol=1e-6)
  # Reversing the valid prefix by hand and running forward gives the same, flipped back.
  prefix = np.asarray(xs[0, :2][::-1])
  by_hand, _ = rnn_jit(cell, params, prefix[None])
  np.testing.assert_allclose(out[0, :2], by_hand[0, ::-1], atol=1e-6)
  np.testing.assert_array_equal(out[0, 2:], 0.0)
  np.testing.assert_array_equal(out[2], 0.0)
  with_full = rnn_jit(cell, params, xs, lengths=np.full(3, T, np.int32), reverse=True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), with_full,
               (backward, final))


@pytest.mark.parametrize("reverse", [False, True])
def test_time_major(reverse, rnn_jit, random_params):
  cell = CELLS["gru_before"]
  params = random_params(cell, I, seed=11)
  xs = normal(12, (2, 3, T, I))
  batch_major = rnn_jit(cell, params, xs, lengths=LENGTHS, reverse=reverse)
  time_major = rnn_jit(cell, params, np.moveaxis(xs, 2, 0), lengths=LENGTHS, reverse=reverse,
                       time_major=True)
  assert time_major[0].shape == (T, 2, 3, H)
  np.testing.assert_allclose(np.moveaxis(time_major[0], 0, 2), batch_major[0], atol=1e-6)
  np.testing.assert_allclose(time_major[1], batch_major[1], atol=1e-6)


def test_batch_shapes(rnn_jit, random_params):
  """No batch axis, one, and two give the same numbers per sequence."""
  cell = CELLS["lstm_fb0"]
  params = random_params(cell, I, seed=13)
  xs = normal(14, (2, 3, T, I))
  two = rnn_jit(cell, params, xs, lengths=LENGTHS)
  one = rnn_jit(cell, params, xs.reshape(6, T, I), lengths=LENGTHS.reshape(6))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a.reshape(b.shape), b, atol=1e-6), two,
               one)
  none = rnn_jit(cell, params, xs[1, 2], lengths=LENGTHS[1, 2])
  assert none[0].shape == (T, H) and none[1].h.shape == (H,)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[1, 2], atol=1e-6), none, two)


@pytest.mark.parametrize("name", ["lstm_fb1", "gru_before"])
def test_unroll_and_hoist_change_nothing(name, rnn_jit, random_params):
  cell = CELLS[name]
  params = random_params(cell, I, seed=15)
  xs = normal(16, (2, 3, T, I))
  base = rnn_jit(cell, params, xs, lengths=LENGTHS, reverse=True)
  for options in ({"unroll": 3}, {"hoist": True, "unroll": T + 1}):
    other = rnn_jit(cell, params, xs, lengths=LENGTHS, reverse=True, **options)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), other, base)


@pytest.mark.parametrize("hoist", [False, True])
@pytest.mark.parametrize("name", ["relu", "lstm_fb1", "gru_after"])
def test_bfloat16_inputs(name, hoist, rnn_jit, random_params):
  """bfloat16 inputs give float32 outputs and carry, the float32 run of the rounded inputs."""
  cell = CELLS[name]
  params = random_params(cell, I, seed=17)
  xs = normal(18, (3, T, I))
  outputs, final = rnn_jit(cell, params, xs.astype(jnp.bfloat16), hoist=hoist)
  assert outputs.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(final))
  rounded = rnn_jit(cell, params, xs.astype(jnp.bfloat16).astype(jnp.float32), hoist=hoist)
  np.testing.assert_allclose(outputs, rounded[0], atol=1e-6)
  full = rnn_jit(cell, params, xs, hoist=hoist)
  np.testing.assert_allclose(outputs, full[0], atol=3e-2)
  assert not np.array_equal(outputs, full[0])


def test_jit_and_vmap_match_plain_call(rnn_jit, random_params):
  cell = CELLS["gru_after"]
  params = random_params(cell, I, seed=19)
  xs = normal(20, (6, T, I))
  lengths = LENGTHS.reshape(6)
  plain = rnn_jax.rnn(cell, params, xs, lengths=lengths, reverse=True)
  jitted = rnn_jit(cell, params, xs, lengths=lengths, reverse=True)
  mapped = jax.vmap(lambda x, n: rnn_jax.rnn(cell, params, x, lengths=n, reverse=True))(
      xs, lengths)
  ref = reference.run_model(cell, params, xs, lengths=lengths, reverse=True)
  for result in (plain, jitted, mapped):
    assert_close(result[0], ref[0], atol=2e-5)
    assert_close(result[1], ref[1], atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), mapped, plain)


def to_float64(tree):
  return jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64), tree)


@pytest.mark.parametrize("name, backward", [
    ("tanh", "fused"), ("lstm_fb1", "fused"), ("gru_after", "fused"), ("gru_before", "fused"),
    ("lstm_fb1", "autodiff")])
def test_gradients_match_finite_differences(name, backward, x64, random_params, check_gradients):
  """Lengths 3, 0 and T (masking, a held carry, a full sequence) with reverse, in float64.

  Both backward passes of ``rnn`` (its custom VJP and JAX's autodiff of the scan).
  """
  cell = {"tanh": rnn_jax.simple_rnn(3), "lstm_fb1": rnn_jax.lstm(3),
          "gru_after": rnn_jax.gru(3), "gru_before": rnn_jax.gru(3, reset_after=False)}[name]
  params = to_float64(random_params(cell, 2, seed=21))
  xs = to_float64(normal(22, (3, 4, 2)))
  carry = to_float64(random_carry(cell, (3,), seed=23))
  check_gradients(cell, params, xs, carry, np.array([3, 0, 4], np.int32), reverse=True,
                  vjp=backward)


@pytest.mark.parametrize("backward", ["fused", "autodiff"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_elman_grad_matches_hand_written_bptt(activation, backward, x64, random_params):
  cell = rnn_jax.simple_rnn(H, activation)
  params = to_float64(random_params(cell, I, seed=24))
  xs = to_float64(normal(25, (3, T, I)))
  h0 = to_float64(normal(26, (3, H)))
  lengths = np.array([T, 2, 0], np.int32)
  out_grad, final_grad = normal(27, (3, T, H), jnp.float64), normal(28, (3, H), jnp.float64)

  def loss(p, x, h):
    outputs, final = rnn_jax.rnn(cell, p, x, initial_carry=h, lengths=lengths, vjp=backward)
    return jnp.sum(outputs * out_grad) + jnp.sum(final * final_grad)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, xs, h0)
  ref_params, ref_xs, ref_h0 = reference.elman_bptt(params, np.asarray(xs), np.asarray(h0),
                                                    np.asarray(out_grad), np.asarray(final_grad),
                                                    activation, lengths)
  for key in ("w_ih", "w_hh", "b"):
    np.testing.assert_allclose(grads[0][key], ref_params[key], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(grads[1], ref_xs, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(grads[2], ref_h0, rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(grads[2][2], final_grad[2])  # length 0: carry passes through
  np.testing.assert_array_equal(grads[1][1, 2:], 0.0)


def test_float64_runs_in_float64(x64, random_params):
  cell = rnn_jax.lstm(3)
  params = to_float64(random_params(cell, 2, seed=28))
  xs = to_float64(normal(29, (2, 4, 2)))
  outputs, final = rnn_jax.rnn(cell, params, xs, lengths=np.array([4, 1]))
  assert outputs.dtype == final.c.dtype == jnp.float64
  ref_outputs, ref_final = reference.run_model(cell, params, xs, lengths=[4, 1])
  assert_close(outputs, ref_outputs, atol=1e-12)
  assert_close(final, ref_final, atol=1e-12)
  # A float32 initial carry is widened rather than breaking the scan's carry type.
  carry32 = jax.tree.map(lambda z: z.astype(jnp.float32), cell.initial_carry((2,)))
  again, _ = rnn_jax.rnn(cell, params, xs, initial_carry=carry32, lengths=np.array([4, 1]))
  np.testing.assert_array_equal(again, outputs)


def test_reverse_padded_and_last_output():
  xs = np.arange(2 * 4 * 1, dtype=np.float32).reshape(4, 2, 1)  # [T, B, F]
  out = reverse_padded(jnp.asarray(xs), jnp.array([3, 0]))
  np.testing.assert_array_equal(out[:, 0, 0], [xs[2, 0, 0], xs[1, 0, 0], xs[0, 0, 0], xs[3, 0, 0]])
  np.testing.assert_array_equal(out[:, 1], xs[:, 1])
  # Lengths outside [0, T] are clipped, as in rnn(): no out-of-range gather (NaN).
  clipped = reverse_padded(jnp.asarray(xs), jnp.array([7, -1]))
  np.testing.assert_array_equal(clipped[:, 0], xs[::-1, 0])
  np.testing.assert_array_equal(clipped[:, 1], xs[:, 1])

  outputs = jnp.asarray(np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2) + 1)
  np.testing.assert_array_equal(rnn_jax.last_output(outputs), outputs[:, -1])
  picked = rnn_jax.last_output(outputs, jnp.array([2, 0, 9]))
  np.testing.assert_array_equal(picked, [outputs[0, 1], [0, 0], outputs[2, 3]])
  np.testing.assert_array_equal(
      rnn_jax.last_output(jnp.moveaxis(outputs, 1, 0), jnp.array([2, 0, 9]), time_major=True),
      picked)


@pytest.mark.parametrize("kwargs, match", [
    ({"xs": np.ones(3)}, r"xs: expected shape \[\.\.\., T, I\] \(rank >= 2\), got shape \(3,\)"),
    ({"xs": np.ones((2, T, 4))},
     r"xs: expected input size 3 in the last axis \(from params\), got shape \(2, 5, 4\)"),
    ({"xs": np.ones((2, T, I), np.int32)}, r"xs: expected a floating dtype .* got int32"),
    ({"lengths": np.array([1, 2, 3])},
     r"lengths: expected shape \(2,\) \(the batch shape of xs\), got \(3,\)"),
    ({"lengths": np.array(2)}, r"lengths: expected shape \(2,\) .* got \(\)"),
    ({"lengths": np.array([1.0, 2.0])}, r"lengths: expected an integer dtype, got float"),
    ({"initial_carry": rnn_jax.LSTMState(np.zeros((2, 3)), np.zeros((2, 3)))},
     r"initial_carry: expected leaves of shape \(2, 4\) \(batch shape \(2,\) \+ hidden\), "
     r"got \(2, 3\)"),
    ({"initial_carry": np.zeros((2, 4))}, r"initial_carry: expected a pytree like"),
    ({"initial_carry": (np.zeros((2, 4)), np.zeros((2, 4)))},
     r"initial_carry: expected a pytree like"),
])
def test_errors(kwargs, match):
  """Each mistake is a ValueError at trace time naming the argument."""
  cell = CELLS["lstm_fb1"]
  params = cell.init(jax.random.key(0), I)
  arguments = {"xs": np.ones((2, T, I), np.float32), **kwargs}
  xs = arguments.pop("xs")
  with pytest.raises(ValueError, match=match):
    rnn_jax.rnn(cell, params, xs, **arguments)
  with pytest.raises(ValueError, match=match):  # at trace time, from traced arguments too
    jax.jit(lambda p, x, kw: rnn_jax.rnn(cell, p, x, **kw))(params, xs, arguments)


@pytest.mark.parametrize("make_params, match", [
    (lambda: rnn_jax.gru(4).init(jax.random.key(0), I),
     r"params: not the pytree LSTM.init returns .* missing params\['b'\]; unexpected "
     r"params\['b_hh'\], params\['b_ih'\];"),
    (lambda: rnn_jax.lstm(3).init(jax.random.key(0), I),
     r"params\['b'\]: expected shape \(16,\) for lstm\(4\), got \(12,\)"),
    (lambda: (rnn_jax.lstm(4).init(jax.random.key(0), I),), r"params: not the pytree"),
])
def test_params_of_another_layer(make_params, match):
  cell = CELLS["lstm_fb1"]
  with pytest.raises(ValueError, match=match):
    rnn_jax.rnn(cell, make_params(), np.ones((2, T, I), np.float32))
  stacked = rnn_jax.stack([cell, cell])
  with pytest.raises(ValueError, match=r"params: not the pytree Stack.init returns"):
    rnn_jax.rnn(stacked, cell.init(jax.random.key(0), I), np.ones((2, T, I), np.float32))


@pytest.mark.parametrize("lengths, match", [
    (np.array([1.0, 2.0]), r"lengths: expected an integer dtype, got float"),
    (np.array([1, 2, 3]), r"lengths: expected shape \(2,\) \(the batch shape of outputs\), "
                          r"got \(3,\)"),
])
def test_last_output_errors(lengths, match):
  with pytest.raises(ValueError, match=match):
    rnn_jax.last_output(np.ones((2, T, 3), np.float32), lengths)
