"""rnn_jax.precision and compute_dtype: bfloat16 matmuls with float32 accumulation, for every
layer kind through rnn(compute_dtype=...), and the default (None) unchanged."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
import rnn_jax
from rnn_jax.precision import check_compute_dtype, matmul
from testing import normal

BF16 = jnp.bfloat16

# bfloat16 keeps 8 significant bits (relative rounding 2^-9): over these short sequences
# (T = 6, H = 8) outputs in [-1, 1] stay within OUTPUT_ATOL of float32, and each gradient
# leaf within GRADIENT_RTOL of its largest float32 entry.
OUTPUT_ATOL = 0.03
GRADIENT_RTOL = 0.05


def as_bf16_in_float64(a):
  """``a`` rounded to bfloat16, as float64 (what a bf16 operand holds)."""
  return np.asarray(jnp.asarray(a).astype(BF16).astype(jnp.float32), np.float64)


def dot_operand_types(lowered_text: str) -> list[tuple[str, str, str]]:
  """``(lhs, rhs, result)`` element types of every ``stablehlo.dot_general`` in the text."""
  pattern = (r"stablehlo\.dot_general .*: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\) -> "
             r"tensor<[^>]*x(\w+)>")
  return re.findall(pattern, lowered_text)


# ------------------------------------------------------------------------------ the matmul

def test_matmul_without_compute_dtype_is_the_plain_product():
  x, w = jnp.asarray(normal(0, (3, 4, 5))), jnp.asarray(normal(1, (5, 6)))
  np.testing.assert_array_equal(matmul(x, w), x @ w)
  assert "bf16" not in jax.jit(lambda x, w: matmul(x, w, None)).lower(x, w).as_text()


def test_bf16_matmul_rounds_the_operands_and_accumulates_in_float32():
  x, w, g = normal(0, (3, 4, 5)), normal(1, (5, 6)), normal(2, (3, 4, 6))
  out, pullback = jax.vjp(lambda x, w: matmul(x, w, BF16), x, w)
  d_x, d_w = pullback(jnp.asarray(g))
  assert out.dtype == d_x.dtype == d_w.dtype == jnp.float32
  x16, w16, g16 = as_bf16_in_float64(x), as_bf16_in_float64(w), as_bf16_in_float64(g)
  # Products of bf16 values are exact in float32; only the float32 sums round.
  np.testing.assert_allclose(out, x16 @ w16, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_x, g16 @ w16.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_w, x16.reshape(-1, 5).T @ g16.reshape(-1, 6), rtol=1e-5,
                             atol=1e-5)
  assert np.abs(np.asarray(out) - np.asarray(x, np.float64) @ w).max() > 1e-4  # Not float32.


def test_bf16_matmul_forward_and_backward_dots_read_bf16():
  x, w = normal(0, (4, 5)), normal(1, (5, 6))
  text = jax.jit(jax.grad(lambda x, w: jnp.tanh(matmul(x, w, BF16)).sum(), (0, 1))).lower(
      x, w).as_text()
  assert dot_operand_types(text) == [("bf16", "bf16", "f32")] * 3


@pytest.mark.parametrize("spelling", [BF16, "bfloat16", jnp.dtype("bfloat16")])
def test_compute_dtype_spellings_give_equal_layers_and_options(spelling):
  assert rnn_jax.lstm(8, compute_dtype=spelling) == rnn_jax.lstm(8, compute_dtype=BF16)
  assert hash(rnn_jax.gru(8, compute_dtype=spelling)) == hash(rnn_jax.gru(8, compute_dtype=BF16))
  assert rnn_jax.RunOptions(compute_dtype=spelling) == rnn_jax.RunOptions(compute_dtype=BF16)
  assert check_compute_dtype("compute_dtype", spelling) == jnp.dtype(BF16)


@pytest.mark.parametrize("bad", [jnp.int32, "int8", "not a dtype", 3])
def test_a_compute_dtype_that_is_not_floating_is_refused_by_name(bad):
  for build in (lambda: rnn_jax.lstm(8, compute_dtype=bad),
                lambda: rnn_jax.RunOptions(compute_dtype=bad),
                lambda: rnn_jax.with_compute_dtype(rnn_jax.gru(4), bad)):
    with pytest.raises(ValueError, match="compute_dtype must be None or a floating dtype"):
      build()


def test_repr_rebuilds_a_layer_with_a_compute_dtype():
  layer = rnn_jax.stack([rnn_jax.lstm(8, compute_dtype=BF16), rnn_jax.mingru(4)])
  assert repr(layer) == "stack([lstm(8, compute_dtype=jnp.bfloat16), mingru(4)])"
  assert eval(repr(layer), {"jnp": jnp, **vars(rnn_jax)}) == layer  # pylint: disable=eval-used


def test_with_compute_dtype_maps_every_leaf_and_keeps_the_structure():
  layer = rnn_jax.bidirectional(
      rnn_jax.stack([rnn_jax.weight_drop(rnn_jax.zoneout(rnn_jax.remat(rnn_jax.lstm(4)), 0.1),
                                         0.2), rnn_jax.lru(4, 4)], dropout=0.1),
      rnn_jax.remat(rnn_jax.gru(4), every=3), merge="sum")
  expected = rnn_jax.bidirectional(
      rnn_jax.stack([rnn_jax.weight_drop(rnn_jax.zoneout(rnn_jax.remat(
          rnn_jax.lstm(4, compute_dtype=BF16)), 0.1), 0.2),
                     rnn_jax.lru(4, 4, compute_dtype=BF16)], dropout=0.1),
      rnn_jax.remat(rnn_jax.gru(4, compute_dtype=BF16), every=3), merge="sum")
  assert rnn_jax.with_compute_dtype(layer, BF16) == expected
  assert rnn_jax.with_compute_dtype(expected, None) == layer
  assert expected.backward.compute_dtype == jnp.dtype(BF16)  # A wrapper answers for its layer.


# ------------------------------------------------------------------ every layer kind in bf16

def _kinds() -> dict:
  kinds = {name: make(8) for name, make in reference.example_cells().items()}
  kinds.update({
      "lstm_proj_layer_norm": rnn_jax.lstm(8, proj_size=4, layer_norm=True),
      "mingru_parallel": rnn_jax.mingru(8, parallel=True),
      "mingru_sequential": rnn_jax.mingru(8, parallel=False),
      "minlstm": rnn_jax.minlstm(8),
      "lru_parallel": rnn_jax.lru(8, 5, parallel=True, skip="dense"),
      "lru_sequential": rnn_jax.lru(8, 5, parallel=False),
      "stack": rnn_jax.stack([rnn_jax.gru(8), rnn_jax.lstm(6)]),
      "bidirectional": rnn_jax.bidirectional(rnn_jax.lstm(4), rnn_jax.gru(4)),
      "remat": rnn_jax.remat(rnn_jax.lstm(8)),
      "remat_every": rnn_jax.remat(rnn_jax.gru(8), every=4),
  })
  return kinds


KINDS = _kinds()
FUSED = ("tanh", "lstm_fb1", "gru_after", "gru_before")  # Cells with a fused backward.
XS = normal(3, (2, 6, 5))
LENGTHS = np.array([6, 4])


@functools.partial(jax.jit, static_argnames=("layer", "vjp", "compute_dtype"))
def loss_and_grads(layer, params, vjp, compute_dtype):
  """Outputs, final carry and the gradient of a loss on both, with lengths."""

  def loss(params):
    outputs, carry = rnn_jax.rnn(layer, params, XS, lengths=LENGTHS, vjp=vjp,
                                 compute_dtype=compute_dtype)
    carry_sum = sum(jnp.real(leaf).sum() for leaf in jax.tree.leaves(carry))
    return jnp.sum(jnp.sin(outputs.astype(jnp.float32))) + carry_sum, (outputs, carry)

  return jax.grad(loss, has_aux=True)(params)


FAST = {("lstm_fb1", "autodiff"), ("gru_after", "fused"), ("mingru_parallel", "autodiff"),
        ("lru_sequential", "autodiff")}  # The rest (compilation-bound, ~5 s each) are slow.
CASES = [pytest.param(name, vjp, marks=() if (name, vjp) in FAST else pytest.mark.slow)
         for name, vjp in [(name, "autodiff") for name in KINDS] + [(name, "fused")
                                                                    for name in FUSED]]


@pytest.mark.parametrize("name,vjp", CASES)
def test_bf16_is_within_tolerance_of_float32_with_float32_carry_and_gradients(name, vjp):
  layer = KINDS[name]
  params = layer.init(jax.random.key(0), XS.shape[-1])
  grads32, (outputs32, carry32) = loss_and_grads(layer, params, vjp, None)
  grads16, (outputs16, carry16) = loss_and_grads(layer, params, vjp, BF16)
  assert outputs16.dtype == BF16 and outputs32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(outputs16, np.float32), outputs32, atol=OUTPUT_ATOL)
  assert not np.array_equal(np.asarray(outputs16, np.float32), outputs32)
  assert [leaf.dtype for leaf in jax.tree.leaves(carry16)] == [
      leaf.dtype for leaf in jax.tree.leaves(carry32)]  # float32 (complex64 for the LRU).
  for got, want in zip(jax.tree.leaves(carry16), jax.tree.leaves(carry32)):
    np.testing.assert_allclose(got, want, atol=OUTPUT_ATOL)
  assert jax.tree.structure(grads16) == jax.tree.structure(grads32)
  for got, want in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
    assert got.dtype == want.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=GRADIENT_RTOL * float(np.abs(want).max()))


@pytest.mark.parametrize("vjp", ["autodiff", "fused"])
@pytest.mark.parametrize("name", ["lstm_fb1", "gru_before", "mingru_sequential", "lru_parallel"])
def test_every_dot_of_a_bf16_gradient_reads_bf16_operands(name, vjp):
  layer = KINDS[name]
  params = layer.init(jax.random.key(0), XS.shape[-1])
  text = loss_and_grads.lower(layer, params, vjp, BF16).as_text()
  dots = dot_operand_types(text)
  assert dots and all(lhs == rhs == "bf16" for lhs, rhs, _ in dots), dots


@pytest.mark.parametrize("name", ["lstm_fb1", "stack"])
def test_default_compute_dtype_is_the_computation_without_it(name):
  """``None`` (the default) takes the plain float32 products, forwards and backwards: no bf16
  anywhere in the lowered program, and the numbers of a call that does not name the option."""
  layer = KINDS[name]
  params = layer.init(jax.random.key(0), XS.shape[-1])
  text = loss_and_grads.lower(layer, params, "autodiff", None).as_text()
  assert "bf16" not in text
  assert dot_operand_types(text) and all(
      types == ("f32", "f32", "f32") for types in dot_operand_types(text))
  unnamed = jax.jit(lambda p: rnn_jax.rnn(layer, p, XS))(params)
  spelt = jax.jit(lambda p: rnn_jax.rnn(rnn_jax.with_compute_dtype(layer, None), p, XS,
                                        options=rnn_jax.RunOptions(compute_dtype=None)))(params)
  for got, want in zip(jax.tree.leaves(spelt), jax.tree.leaves(unnamed)):
    np.testing.assert_array_equal(got, want)


def test_a_leaf_layer_without_a_compute_dtype_field_is_refused_by_name():
  @dataclasses.dataclass(frozen=True)
  class Doubling(rnn_jax.Layer):
    """``y_t = 2 x_t``: a layer of one's own with no ``compute_dtype`` field."""
    output_size: int = 3

    def init(self, key, input_size):
      return {}

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
      return jnp.zeros((*np.atleast_1d(batch_shape), 1), dtype)

    def input_size(self, params):
      return self.output_size

    def scan(self, params, xs, carry, lengths, options, resets=None):
      return 2 * xs, carry

  with pytest.raises(ValueError, match="compute_dtype: Doubling has no compute_dtype field"):
    rnn_jax.with_compute_dtype(rnn_jax.stack([rnn_jax.gru(3), Doubling()]), BF16)
