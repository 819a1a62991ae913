"""Tests of resets inside sequences (``rnn(..., resets=...)``, ``reset_carry``), issue 19.

The reference is independent of the scan's reset flags: each segment of each
sequence is run on its own by ``rnn`` without resets (the initial carry
entering the segment read first, zeros every other segment), and the
pieces are put back together. Every layer kind must equal it in outputs,
final carries and gradients (params, inputs, initial carry), with and
without lengths, forwards and in reverse, under ``jit`` and ``vmap``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import checks, kernels

STEPS, INPUTS = 7, 3
# Row 0: segments [0, 3), [3, 5), [5, 7). Row 1: step 0 flagged (the initial carry is
# dropped forwards), segments [0, 4), [4, 7); with LENGTHS its flag at step 6 is padding.
RESETS = np.array([[False, False, False, True, False, True, False],
                   [True, False, False, False, True, False, True]])
LENGTHS = np.array([7, 6])

LAYERS = {
    "lstm_autodiff": (lambda: rnn_jax.lstm(4), rnn_jax.RunOptions(vjp="autodiff")),
    "lstm_fused": (lambda: rnn_jax.lstm(4), rnn_jax.RunOptions(vjp="fused")),
    "gru_autodiff": (lambda: rnn_jax.gru(4), rnn_jax.RunOptions(vjp="autodiff")),
    "gru_fused": (lambda: rnn_jax.gru(4), rnn_jax.RunOptions(vjp="fused")),
    "simple_rnn_fused": (lambda: rnn_jax.simple_rnn(4), rnn_jax.RunOptions(vjp="fused")),
    "mingru_sequential": (lambda: rnn_jax.mingru(4, parallel=False), None),
    "mingru_parallel": (lambda: rnn_jax.mingru(4, parallel=True), None),
    "minlstm_parallel": (lambda: rnn_jax.minlstm(4, parallel=True), None),
    "lru_sequential": (lambda: rnn_jax.lru(4, 3, parallel=False), None),
    "lru_parallel": (lambda: rnn_jax.lru(4, 3, parallel=True), None),
    "stack": (lambda: rnn_jax.stack([rnn_jax.lstm(4), rnn_jax.mingru(3, parallel=True)]),
              rnn_jax.RunOptions(vjp="fused")),
    "remat": (lambda: rnn_jax.remat(rnn_jax.gru(4)), None),
    "remat_every": (lambda: rnn_jax.remat(rnn_jax.lstm(4), every=3), None),
    "remat_parallel": (lambda: rnn_jax.remat(rnn_jax.lru(4, 3, parallel=True)), None),
}
CONFIGS = {"whole": (False, False), "reverse": (False, True), "lengths": (True, False),
           "lengths_reverse": (True, True)}


def _problem(layer, seed=0):
  """Params, inputs ``[2, T, I]`` and a non-zero initial carry (so its gradient matters)."""
  keys = jax.random.split(jax.random.key(seed), 4)
  params = layer.init(keys[0], INPUTS)
  params = jax.tree.map(lambda a, k: a + 0.2 * jax.random.normal(k, a.shape, a.dtype), params,
                        _keys_like(keys[1], params))
  xs = jax.random.normal(keys[2], (2, STEPS, INPUTS))
  carry = jax.tree.map(lambda a, k: (0.5 * jax.random.normal(k, a.shape)).astype(a.dtype),
                       layer.initial_carry(2), _keys_like(keys[3], layer.initial_carry(2)))
  return params, xs, carry


def _keys_like(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def _segments_reference(layer, params, xs, carry, lengths, reverse, options):
  """``rnn`` with ``RESETS``, computed one segment at a time without resets: ``(outputs, final)``.

  ``layer`` is steppable-shaped (its carry enters the segment read first); a
  bidirectional layer is referenced half by half (:func:`_bidirectional_reference`).
  """
  lengths = np.full(2, STEPS) if lengths is None else lengths
  rows, finals = [], []
  for b in range(2):
    length = int(lengths[b])
    starts = [0] + [t for t in range(1, length) if RESETS[b, t]]
    segments = list(zip(starts, starts[1:] + [length]))
    row_carry = jax.tree.map(lambda a: a[b:b + 1], carry)
    if RESETS[b, 0] and not reverse:
      row_carry = jax.tree.map(jnp.zeros_like, row_carry)
    pieces = {}
    for index, (start, end) in enumerate(reversed(segments) if reverse else segments):
      if index > 0:
        row_carry = jax.tree.map(jnp.zeros_like, row_carry)
      pieces[start], row_carry = rnn_jax.rnn(layer, params, xs[b:b + 1, start:end],
                                             initial_carry=row_carry, reverse=reverse,
                                             options=options)
    padding = jnp.zeros((1, STEPS - length, layer.output_size))
    rows.append(jnp.concatenate([pieces[start] for start in sorted(pieces)] + [padding], 1))
    finals.append(row_carry)
  return jnp.concatenate(rows), jax.tree.map(lambda *a: jnp.concatenate(a), *finals)


def _loss(outputs, final):
  """A scalar that weighs every output and carry entry differently."""
  weights = jnp.cos(jnp.arange(outputs.size, dtype=jnp.float32)).reshape(outputs.shape)
  return (jnp.sum(outputs * weights)
          + sum(jnp.sum(jnp.real(leaf) * 0.7 + jnp.imag(leaf) * 0.3)
                for leaf in jax.tree.leaves(final)))


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _run_and_grads(layer, params, xs, carry, with_lengths, reverse, options, use_reference):
  """Outputs, final carry and the gradients of :func:`_loss` w.r.t. params, xs, carry, with
  ``RESETS`` (and ``LENGTHS`` if ``with_lengths``): the run, or the segments' reference."""
  lengths = LENGTHS if with_lengths else None

  def run(params, xs, carry):
    if use_reference:
      return _segments_reference(layer, params, xs, carry, lengths, reverse, options)
    return rnn_jax.rnn(layer, params, xs, initial_carry=carry, lengths=lengths,
                       resets=jnp.asarray(RESETS), reverse=reverse, options=options)

  (outputs, final) = run(params, xs, carry)
  grads = jax.grad(lambda *a: _loss(*run(*a)), argnums=(0, 1, 2))(params, xs, carry)
  return outputs, final, grads


def _assert_trees_close(got, want, what):
  for index, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-4,
                               err_msg=f"{what}, leaf {index}")
  assert jax.tree.structure(got) == jax.tree.structure(want), what


# Forwards with lengths is the simplest path (length masks and forward flags, each also met by
# "whole" and "lengths_reverse"): run for the kinds with step code of their own, not for the
# wrappers and composites around them. Nor do those run "reverse" without lengths: they pass
# `reverse` to the layers inside, which "lengths_reverse" checks, and `lengths=None` is "whole"'s.
LENGTHS_FORWARD_KINDS = ("lstm_fused", "gru_autodiff", "mingru_parallel", "lru_sequential")
WRAPPER_KINDS = ("stack", "remat", "remat_every", "remat_parallel")


def _cases():
  """Every layer kind with lengths and reverse (the hardest) in the fast suite, and without
  lengths forwards (and backwards, but for the wrappers; each case compiles two gradient
  programs: 5-30 s on a loaded 2-core machine, so those are marked slow); forwards with lengths
  for the kinds above."""
  for kind in LAYERS:
    for config in CONFIGS:
      if config == "lengths" and kind not in LENGTHS_FORWARD_KINDS:
        continue
      if config == "reverse" and kind in WRAPPER_KINDS:
        continue
      yield pytest.param(kind, config, id=f"{kind}-{config}",
                         marks=() if config == "lengths_reverse" else pytest.mark.slow)


@pytest.mark.parametrize("kind,config", list(_cases()))
def test_run_with_resets_equals_segments_run_apart(kind, config):
  make, options = LAYERS[kind]
  layer = make()
  with_lengths, reverse = CONFIGS[config]
  params, xs, carry = _problem(layer)
  got = _run_and_grads(layer, params, xs, carry, with_lengths, reverse, options, False)
  want = _run_and_grads(layer, params, xs, carry, with_lengths, reverse, options, True)
  _assert_trees_close(got[0], want[0], f"{kind} outputs")
  _assert_trees_close(got[1], want[1], f"{kind} final carry")
  for name, g, w in zip(("params", "xs", "initial carry"), got[2], want[2]):
    _assert_trees_close(g, w, f"{kind} gradient w.r.t. {name}")


@pytest.mark.parametrize("with_lengths", [False, True])
def test_bidirectional_resets_read_each_segment_both_ways(with_lengths):
  forward, backward = rnn_jax.gru(4), rnn_jax.lstm(3)
  layer = rnn_jax.bidirectional(forward, backward)
  params, xs, carry = _problem(layer)
  options = rnn_jax.RunOptions(vjp="fused")
  got = _run_and_grads(layer, params, xs, carry, with_lengths, False, options, False)
  out_f, final_f, _ = _run_and_grads(forward, params["forward"], xs, carry[0], with_lengths,
                                     False, options, True)
  out_b, final_b, _ = _run_and_grads(backward, params["backward"], xs, carry[1], with_lengths,
                                     True, options, True)
  _assert_trees_close(got[0], jnp.concatenate([out_f, out_b], -1), "outputs")
  _assert_trees_close(got[1], (final_f, final_b), "final carry")


def test_bidirectional_gradients_match_the_two_halves():
  forward, backward = rnn_jax.mingru(4, parallel=True), rnn_jax.lstm(3)
  layer = rnn_jax.bidirectional(forward, backward)
  params, xs, carry = _problem(layer)
  resets = jnp.asarray(RESETS)

  def loss(run):
    return lambda p, x, c: jnp.sum(jnp.sin(run(p, x, c)))

  whole = lambda p, x, c: rnn_jax.rnn(layer, p, x, initial_carry=c, resets=resets,
                                      lengths=LENGTHS)[0]
  halves = lambda p, x, c: jnp.concatenate([
      _segments_reference(forward, p["forward"], x, c[0], LENGTHS, False, None)[0],
      _segments_reference(backward, p["backward"], x, c[1], LENGTHS, True, None)[0]], -1)
  got = jax.jit(jax.grad(loss(whole), argnums=(0, 1, 2)))(params, xs, carry)
  want = jax.jit(jax.grad(loss(halves), argnums=(0, 1, 2)))(params, xs, carry)
  _assert_trees_close(got, want, "bidirectional gradients")


def test_checks_reference_agrees_with_the_segment_reference():
  layer = rnn_jax.lstm(4)
  params, xs, carry = _problem(layer)
  for reverse in (False, True):
    checks.assert_run_matches_steps(layer, params, xs, lengths=LENGTHS, reverse=reverse,
                                    resets=RESETS)
    want = _segments_reference(layer, params, xs, layer.initial_carry(2), LENGTHS, reverse, None)
    got = checks.run_by_steps(layer, params, xs, lengths=LENGTHS, reverse=reverse, resets=RESETS)
    _assert_trees_close(got, want, f"run_by_steps reverse={reverse}")


@pytest.mark.parametrize("kind", ["lstm_fused", "mingru_parallel", "lru_parallel", "stack",
                                  "remat_every"])
def test_no_flag_set_is_bitwise_no_resets(kind):
  make, options = LAYERS[kind]
  layer = make()
  params, xs, carry = _problem(layer)

  @jax.jit
  def both(params, xs, carry):
    def run(resets):
      return lambda p, x, c: rnn_jax.rnn(layer, p, x, initial_carry=c, lengths=LENGTHS,
                                         resets=resets, options=options)
    results = []
    for resets in (None, jnp.zeros((2, STEPS), bool)):
      results.append((run(resets)(params, xs, carry),
                      jax.grad(lambda *a: _loss(*run(resets)(*a)), argnums=(0, 1, 2))(
                          params, xs, carry)))
    return results

  without, with_none_set = both(params, xs, carry)
  for got, want in zip(jax.tree.leaves(with_none_set), jax.tree.leaves(without)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("kind", ["lstm_autodiff", "mingru_parallel", "lru_sequential", "stack",
                                  "remat"])
def test_stepping_with_reset_carry_equals_the_run(kind):
  make, options = LAYERS[kind]
  layer = make()
  params, xs, carry = _problem(layer)
  resets = jnp.asarray(RESETS)

  @jax.jit
  def stepped(params, xs, carry):
    def step(carry, inputs):
      x_t, reset_t = inputs
      return layer.step(params, rnn_jax.reset_carry(layer, carry, reset_t), x_t)
    final, ys = jax.lax.scan(step, carry, (jnp.moveaxis(xs, 1, 0), resets.T))
    return jnp.moveaxis(ys, 0, 1), final

  got = stepped(params, xs, carry)
  want = jax.jit(lambda p, x, c: rnn_jax.rnn(layer, p, x, initial_carry=c, resets=resets,
                                             options=options))(params, xs, carry)
  _assert_trees_close(got, want, f"{kind} stepped with reset_carry")


def test_vmap_and_time_major_match_the_batched_run():
  layer = rnn_jax.gru(4)
  params, xs, carry = _problem(layer)
  resets = jnp.asarray(RESETS)
  run = lambda x, r, n: rnn_jax.rnn(layer, params, x, resets=r, lengths=n, reverse=True)
  batched = jax.jit(run)(xs, resets, LENGTHS)
  mapped = jax.jit(jax.vmap(run))(xs, resets, LENGTHS)
  _assert_trees_close(mapped, batched, "vmap over the batch")
  time_major = rnn_jax.rnn(layer, params, jnp.moveaxis(xs, 1, 0), resets=resets.T,
                           lengths=LENGTHS, reverse=True, time_major=True)
  _assert_trees_close((jnp.moveaxis(time_major[0], 0, 1), time_major[1]), batched, "time_major")


def test_reset_carry_replaces_flagged_entries_of_a_composite_carry():
  layer = rnn_jax.stack([rnn_jax.lstm(2), rnn_jax.lru(3, 2)])
  carry = jax.tree.map(lambda a: a + 1, layer.initial_carry((2, 3)))
  reset = np.array([[True, False, False], [False, False, True]])
  got = rnn_jax.reset_carry(layer, carry, reset)
  for got_leaf, leaf in zip(jax.tree.leaves(got), jax.tree.leaves(carry)):
    assert got_leaf.dtype == leaf.dtype
    np.testing.assert_array_equal(np.asarray(got_leaf),
                                  np.where(reset[..., None], 0, np.asarray(leaf)))


def test_bad_resets_are_one_clear_value_error():
  layer = rnn_jax.lstm(4)
  params, xs, _ = _problem(layer)
  with pytest.raises(ValueError, match=r"resets: expected a bool array of shape \(2, 7\)"):
    rnn_jax.rnn(layer, params, xs, resets=RESETS[:, :5])
  with pytest.raises(ValueError, match=r"resets: expected a bool array .* got int"):
    rnn_jax.rnn(layer, params, xs, resets=RESETS.astype(np.int32))
  with pytest.raises(ValueError, match=r"resets: expected a bool array of shape \(7, 2\)"):
    rnn_jax.rnn(layer, params, jnp.moveaxis(xs, 1, 0), resets=RESETS, time_major=True)
  with pytest.raises(ValueError, match=r"reset: expected a bool array of shape \(2,\)"):
    rnn_jax.reset_carry(layer, layer.initial_carry(2), np.array([True]))


def test_onednn_kernel_refuses_resets_naming_them():
  layer = rnn_jax.lstm(4)
  params, xs, _ = _problem(layer)
  with pytest.raises(ValueError, match="kernel='onednn': resets: oneDNN"):
    rnn_jax.rnn(layer, params, xs, resets=jnp.asarray(RESETS), kernel="onednn")


def test_kernel_and_layer_without_resets_parameter_keep_working_and_refuse_resets():
  layer = rnn_jax.lstm(4)
  params, xs, _ = _problem(layer)
  old = kernels.Kernel("old_style", lambda layer, params, xs, carry, lengths, backend: None,
                       lambda layer, params, xs, carry, lengths, options:
                       layer.scan(params, xs, carry, lengths, options))
  kernels.register(old)
  try:
    outputs, _ = rnn_jax.rnn(layer, params, xs, kernel="old_style")
    np.testing.assert_array_equal(outputs, rnn_jax.rnn(layer, params, xs, kernel="scan")[0])
    with pytest.raises(ValueError, match="resets: the 'old_style' kernel takes no resets"):
      rnn_jax.rnn(layer, params, xs, kernel="old_style", resets=jnp.asarray(RESETS))
  finally:
    kernels.unregister("old_style")


class _OldScanGRU(rnn_jax.GRU):
  """A layer written before resets existed: its ``scan`` has no ``resets`` parameter."""

  def scan(self, params, xs, carry, lengths, options):
    return super().scan(params, xs, carry, lengths, options)


def test_layer_whose_scan_has_no_resets_runs_without_and_refuses_resets():
  layer = _OldScanGRU(4)
  params, xs, _ = _problem(layer)
  np.testing.assert_array_equal(rnn_jax.rnn(layer, params, xs, kernel="scan")[0],
                                rnn_jax.rnn(rnn_jax.gru(4), params, xs, kernel="scan")[0])
  # The default kernel may be the C++ loop (rnn_jax_onednn installed): its sums run in
  # another order, so the default call agrees to float32 rounding, not bit for bit.
  np.testing.assert_allclose(rnn_jax.rnn(layer, params, xs)[0],
                             rnn_jax.rnn(rnn_jax.gru(4), params, xs, kernel="scan")[0],
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="resets: _OldScanGRU.scan has no resets parameter"):
    rnn_jax.rnn(layer, params, xs, resets=jnp.asarray(RESETS), kernel="scan")
