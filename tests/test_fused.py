"""Tests of rnn_jax.fused: the fused custom VJP against autodiff and finite differences."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import _scan, fused
from rnn_jax.cells import Cell

from testing import assert_trees_close


def scan_cell(cell, params, xs, carry, lengths, reverse, unroll):
  """The plain scan, differentiated by autodiff."""
  return _scan.scan_layer(cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll)


def fused_scan(cell, params, xs, carry, lengths, reverse, unroll):
  """The same scan with the hand-written backward pass."""
  return fused.fused_scan(cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll)


def remat_scan(cell, params, xs, carry, lengths, reverse, unroll):
  """The same scan with each step under ``jax.checkpoint`` (``vjp="remat"``)."""
  return _scan.scan_layer(cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll,
                          checkpoint_steps=True)

CELLS = {
    "simple_tanh": lambda: rnn_jax.simple_rnn(5),
    "simple_relu": lambda: rnn_jax.simple_rnn(5, "relu"),
    "lstm": lambda: rnn_jax.lstm(5),
    "gru": lambda: rnn_jax.gru(5),
    "gru_reset_before": lambda: rnn_jax.gru(5, reset_after=False),
}
STEPS, BATCH, INPUTS = 6, (2, 3), 4
LENGTHS = np.array([[0, 3, 6], [5, 9, 1]])  # 0 and over-long on purpose (clipped to [0, T]).


def _problem(cell, dtype, seed=0):
  """Random params, inputs ``[T, 2, 3, I]`` and initial carry (non-zero, so its gradient matters)."""
  keys = jax.random.split(jax.random.key(seed), 4)
  params = jax.tree.map(lambda a: a.astype(dtype), cell.init(keys[0], INPUTS))
  params = jax.tree.map(lambda a, k: (a + 0.3 * jax.random.normal(k, a.shape)).astype(dtype),
                        params, dict(zip(params, jax.random.split(keys[1], len(params)))))
  xs = jax.random.normal(keys[2], (STEPS, *BATCH, INPUTS), dtype)
  carry = jax.tree.map(lambda a: jax.random.normal(keys[3], a.shape, dtype),
                       cell.initial_carry(BATCH))
  return params, xs, carry


# (masked, reverse): masking in the native forward scan (its full-length rows are the
# unmasked case) and the native reverse scan. Reversal of each valid prefix
# (masked and reverse) is the vmap test's case.
ALL_COMBINATIONS = ((True, False), (False, True))


def _loss(scan, cell, params, xs, carry, combinations=ALL_COMBINATIONS, unroll=1):
  """Sums ``(masked, reverse)`` runs with fixed weights on outputs and final carries."""
  lengths = jnp.clip(jnp.asarray(LENGTHS), 0, STEPS).astype(jnp.int32)
  total = 0.0
  for masked, reverse in combinations:
    outputs, final = scan(cell, params, xs, carry, lengths if masked else None, reverse, unroll)
    weights = jnp.sin(jnp.arange(outputs.size, dtype=outputs.dtype).reshape(outputs.shape))
    total += jnp.sum(outputs * weights)
    total += sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(final))
  return total


@functools.lru_cache(maxsize=None)
def _grad_fn(scan, cell):
  return jax.jit(jax.value_and_grad(functools.partial(_loss, scan, cell), argnums=(0, 1, 2)))


@pytest.mark.parametrize("name", sorted(CELLS))
def test_fused_matches_autodiff_float32(name):
  cell = CELLS[name]()
  args = _problem(cell, jnp.float32)
  value_auto, grads_auto = _grad_fn(scan_cell, cell)(*args)
  value_fused, grads_fused = _grad_fn(fused_scan, cell)(*args)
  np.testing.assert_allclose(value_fused, value_auto, rtol=1e-6)
  assert_trees_close(grads_fused, grads_auto, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["simple_tanh", "lstm", "gru_reset_before"])
def test_remat_matches_autodiff_float32(name):
  """vjp="remat" recomputes each step in the backward pass: autodiff's numbers."""
  cell = CELLS[name]()
  args = _problem(cell, jnp.float32)
  value_auto, grads_auto = _grad_fn(scan_cell, cell)(*args)
  value_remat, grads_remat = _grad_fn(remat_scan, cell)(*args)
  np.testing.assert_allclose(value_remat, value_auto, rtol=1e-6)
  assert_trees_close(grads_remat, grads_auto, atol=1e-6, rtol=1e-6)


def test_rnn_vjp_remat_with_resets_and_hoist_and_its_memory():
  cell = rnn_jax.gru(8)
  params = cell.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (4, 200, 3))
  resets = jax.random.bernoulli(jax.random.key(2), 0.05, (4, 200))
  lengths = jnp.array([200, 150, 7, 0])

  def grad_fn(**options):
    loss = lambda p, x: jnp.sum(jnp.sin(rnn_jax.rnn(cell, p, x, lengths=lengths, resets=resets,
                                                    reverse=True, **options)[0]))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))

  auto = grad_fn(vjp="autodiff", kernel="scan")
  for options in ({}, {"hoist": True, "unroll": 2}):
    remat = grad_fn(vjp="remat", kernel="scan", **options)
    for a, r in zip(jax.tree.leaves(auto(params, xs)), jax.tree.leaves(remat(params, xs))):
      np.testing.assert_allclose(r, a, atol=1e-5, rtol=1e-5)  # Sums over 200 steps.
  # The point of it: the backward pass keeps the carries and inputs, not every gate.
  temp = lambda fn: fn.lower(params, xs).compile().memory_analysis().temp_size_in_bytes
  assert temp(grad_fn(vjp="remat", kernel="scan")) < 0.5 * temp(auto)


# One per cell kind (relu has kinks; GRU reset_before shares the GRU's code paths).
@pytest.mark.parametrize("name", ["simple_tanh", "lstm", "gru"])
def test_fused_matches_finite_differences_float64(name):
  cell = CELLS[name]()
  loss = functools.partial(_loss, fused_scan, cell)
  eps = 1e-6

  @jax.jit
  def analytic_and_numeric(args, direction):
    grads = jax.grad(lambda a: loss(*a))(args)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                    jax.tree.leaves(direction)))
    # Both shifted points in one vmapped evaluation (one compiled copy of the loss).
    shifted = jax.tree.map(lambda a, d: jnp.stack([a + eps * d, a - eps * d]), args, direction)
    plus, minus = jax.vmap(lambda a: loss(*a))(shifted)
    return analytic, (plus - minus) / (2 * eps)

  with jax.enable_x64(True):
    args = _problem(cell, jnp.float64)
    rng = np.random.default_rng(1)
    direction = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), args)
    analytic, numeric = analytic_and_numeric(args, direction)
    assert float(jnp.abs(numeric)) > 1e-2  # The check is not vacuous.
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-7)


def test_fused_under_vmap_matches_autodiff():
  cell = rnn_jax.lstm(5)
  params, xs, carry = _problem(cell, jnp.float32)
  xs_batch = jnp.stack([xs, 2.0 * xs, -xs])  # vmap over a leading axis of three problems.

  def per_example(scan):
    loss = lambda p, x: _loss(scan, cell, p, x, carry, ((True, True),), unroll=2)
    return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0)))

  auto = per_example(scan_cell)(params, xs_batch)
  fused = per_example(fused_scan)(params, xs_batch)
  for a, f in zip(jax.tree.leaves(auto), jax.tree.leaves(fused)):
    assert a.shape[0] == 3
    np.testing.assert_allclose(f, a, atol=1e-5, rtol=1e-5)


def test_rnn_vjp_argument():
  cell = rnn_jax.simple_rnn(4)
  params = cell.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (2, 5, 3))

  @functools.partial(jax.jit, static_argnums=0)
  def grads(backward, params, xs):
    # Batched with lengths, and with no batch axes at all (flattened to a batch of one).
    batched = lambda p, x: jnp.sum(rnn_jax.rnn(cell, p, x, lengths=jnp.array([5, 2]),
                                               vjp=backward)[0] ** 2)
    single = lambda x: jnp.sum(rnn_jax.rnn(cell, params, x, vjp=backward)[0] ** 2)
    return jax.grad(batched, argnums=(0, 1))(params, xs), jax.grad(single)(xs[0])

  auto, fused = grads("autodiff", params, xs), grads("fused", params, xs)
  for a, f in zip(jax.tree.leaves(auto), jax.tree.leaves(fused)):
    np.testing.assert_allclose(f, a, atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="backward"):
    with pytest.warns(DeprecationWarning):
      rnn_jax.rnn(cell, params, xs, backward="manual")
  with pytest.raises(ValueError, match="vjp"):
    rnn_jax.rnn(cell, params, xs, vjp="manual")


@dataclasses.dataclass(frozen=True)
class _PlainTanh(Cell):
  """A user-defined cell with no hand-written derivative (the Elman RNN's equations)."""

  name = "plain_tanh"
  hidden_size: int

  def init(self, key, input_size):
    return rnn_jax.simple_rnn(self.hidden_size).init(key, input_size)

  def project(self, params, x):
    return x @ params["w_ih"] + params["b"]

  def recur(self, params, h, px):
    h = jnp.tanh(px + h @ params["w_hh"])
    return h, h


def test_cell_without_fused_vjp_falls_back_to_autodiff():
  cell = _PlainTanh(3)
  assert isinstance(cell, Cell) and not isinstance(cell, fused.FusedVJP)
  params = cell.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (4, 2))
  loss = lambda vjp, p: jnp.sum(rnn_jax.rnn(cell, p, xs, vjp=vjp)[0])
  assert "custom_vjp_call" not in str(jax.make_jaxpr(jax.grad(lambda p: loss("fused", p)))(params))
  builtin = lambda p: jnp.sum(rnn_jax.rnn(rnn_jax.simple_rnn(3), p, xs, vjp="fused")[0])
  for a, f in zip(jax.tree.leaves(jax.grad(functools.partial(loss, "autodiff"))(params)),
                  jax.tree.leaves(jax.grad(functools.partial(loss, "fused"))(params))):
    np.testing.assert_allclose(f, a, rtol=1e-6)
  for a, f in zip(jax.tree.leaves(jax.grad(builtin)(params)),
                  jax.tree.leaves(jax.grad(functools.partial(loss, "fused"))(params))):
    np.testing.assert_allclose(f, a, rtol=1e-5, atol=1e-6)


def test_backward_keyword_is_deprecated_but_works():
  cell = rnn_jax.simple_rnn(3)
  params = cell.init(jax.random.key(0), 2)
  xs = jnp.ones((4, 2))
  with pytest.warns(DeprecationWarning, match="use vjp"):
    old = rnn_jax.rnn(cell, params, xs, backward="fused")[0]
  np.testing.assert_array_equal(old, rnn_jax.rnn(cell, params, xs, vjp="fused")[0])
  with pytest.raises(ValueError, match="disagree"), pytest.warns(DeprecationWarning):
    rnn_jax.rnn(cell, params, xs, backward="fused", vjp="autodiff")
