"""Checks for people who write their own layers or kernels: a run must equal its steps.

Whatever runs a layer over a sequence (its ``scan``, the fused backward, an
associative scan, oneDNN, a kernel of your own), the result must be what
stepping the layer one input at a time gives. :func:`assert_run_matches_steps`
checks exactly that, with the library's length and reversal semantics
written out as a plain Python loop (past a sequence's length the carry is
held and the output is zero; ``reverse`` reads each valid prefix from its
last step; ``resets`` split each sequence into segments that start from
the initial carry), so a new cell or kernel is tested against an independent
reference in one line::

    from rnn_jax.checks import assert_run_matches_steps
    assert_run_matches_steps(my_cell, params, xs, lengths=lengths, reverse=True)

For gradients, ``jax.test_util.check_grads`` compares ``jax.grad`` of a
function of the run with finite differences.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.layer import Layer, RunOptions
from rnn_jax.unroll import rnn

__all__ = ["assert_run_matches_steps", "run_by_steps"]


def run_by_steps(layer: Layer, params: Any, xs, *, lengths=None, reverse: bool = False,
                 initial_carry: Any = None, resets=None) -> tuple[np.ndarray, Any]:
  """``layer`` over ``xs [B, T, I]`` one step at a time in Python: the reference of a run.

  Args:
    layer: any steppable layer (everything but a bidirectional one).
    params: its parameters.
    xs: ``[B, T, I]``, one batch axis.
    lengths: optional ``[B]`` valid lengths (clipped to ``[0, T]``).
    reverse: read each valid prefix from its last step to its first.
    initial_carry: defaults to ``layer.initial_carry(B)``.
    resets: optional ``[B, T]`` bool; ``resets[b, t]`` starts a new segment at
      step ``t`` (only steps before the length count). Segments are in input
      time order and each is read on its own, forwards or, with ``reverse``,
      from its last step to its first; the initial carry enters the segment
      read first (the first one, or the last one with ``reverse``), every
      other segment starts from ``layer.initial_carry`` (zeros).

  Returns:
    The outputs ``[B, T, O]`` (zero past each length) and the final carry
    (after each sequence's last valid step), as NumPy arrays.
  """
  xs = np.asarray(xs)
  batch, num_steps = xs.shape[:2]
  lengths = np.full(batch, num_steps) if lengths is None else np.clip(lengths, 0, num_steps)
  carry = layer.initial_carry(batch) if initial_carry is None else initial_carry
  outputs, finals = np.zeros((batch, num_steps, layer.output_size), np.float64), []
  resets = np.zeros((batch, num_steps), bool) if resets is None else np.asarray(resets, bool)
  for b in range(batch):
    carry_b = jax.tree.map(lambda leaf: leaf[b:b + 1], carry)
    starts = [0] + [t for t in range(1, int(lengths[b])) if resets[b, t]]
    segments = [range(start, end) for start, end in zip(starts, starts[1:] + [int(lengths[b])])]
    for index, steps in enumerate(reversed(segments) if reverse else segments):
      if index > 0 or (steps and resets[b, 0] and not reverse):  # A flagged step 0 as well.
        carry_b = layer.initial_carry(1, jax.tree.leaves(carry_b)[0].dtype)
      for t in (reversed(steps) if reverse else steps):
        carry_b, y = layer.step(params, carry_b, jnp.asarray(xs[b:b + 1, t]))
        outputs[b, t] = np.asarray(y[0], np.float64)
    finals.append(carry_b)
  final = jax.tree.map(lambda *leaves: np.concatenate(leaves), *finals)
  return outputs, final


def assert_run_matches_steps(layer: Layer, params: Any, xs, *, lengths=None,
                             reverse: bool = False, options: RunOptions | None = None,
                             atol: float = 1e-5, resets=None) -> None:
  """Raises ``AssertionError`` unless ``rnn(layer, ...)`` equals :func:`run_by_steps`.

  Args:
    layer, params, xs, lengths, reverse, resets: as :func:`run_by_steps`.
    options: how ``rnn`` runs it (a kernel, ``vjp``, ``parallel``, ...).
    atol: absolute tolerance on every output and carry leaf.
  """
  got_outputs, got_final = jax.jit(
      lambda p, x, n, r: rnn(layer, p, x, lengths=n, reverse=reverse, options=options,
                             resets=r))(
          params, jnp.asarray(xs), None if lengths is None else jnp.asarray(lengths),
          None if resets is None else jnp.asarray(resets))
  want_outputs, want_final = run_by_steps(layer, params, xs, lengths=lengths, reverse=reverse,
                                          resets=resets)
  np.testing.assert_allclose(np.asarray(got_outputs, np.float64), want_outputs, atol=atol,
                             rtol=0, err_msg=f"outputs of {layer!r}")
  got_leaves, want_leaves = jax.tree.leaves(got_final), jax.tree.leaves(want_final)
  if jax.tree.structure(got_final) != jax.tree.structure(want_final):
    raise AssertionError(f"final carry of {layer!r}: structure {jax.tree.structure(got_final)}, "
                         f"stepping gives {jax.tree.structure(want_final)}")
  for index, (got, want) in enumerate(zip(got_leaves, want_leaves)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=atol, rtol=0,
                               err_msg=f"final carry leaf {index} of {layer!r}")
