"""The ``"cpu_loop"`` kernel: an LSTM's or GRU's training forward and backward as one C++ loop.

On CPU the scan's compiled backward runs far below GEMM speed (the Performance
guide, "Where the backward pass's time goes"). The optional ``rnn_jax_onednn``
extension carries the LSTM and the GRU (``reset_after=True``, PyTorch's)
written as our own loop over time around oneDNN's GEMM
(``rnn_jax_onednn/src/lstm_loop.cc``, ``gru_loop.cc``): the forward is one GEMM
for the input products of all steps, then per step one recurrent GEMM and the
gate arithmetic; the backward is per step the gate derivatives and one GEMM for
the carry's gradient, then ``w_ih``'s, ``w_hh``'s and the inputs' gradients as
one GEMM each over all steps. The batch is split between the extension's
threads (its rows never interact). It takes rnn_jax's own parameters, gate
order and layout, so nothing is reordered.

:func:`run` runs it where a call is differentiated (a ``jax.custom_vjp``; the
forward saves the gate activations the backward reads) and the same forward
without those residuals where it is not (:func:`forward_only_run`). It runs
:func:`rnn_jax.lstm` cells (no ``proj_size`` or ``layer_norm``) and
:func:`rnn_jax.gru` cells with ``reset_after=True``, in float32 (no
``compute_dtype``) on CPU, with everything the scan supports: ``lengths``,
``reverse``, ``resets``, any leading batch axes and ``vmap``. With ``lengths``
the loop runs every step and drops the padded ones (each sequence's final carry
is its last valid step's; padded outputs are zero and get no gradient), so
padding costs compute but no correctness; ``reverse`` with ``lengths`` reverses
each valid prefix first, as the scan does. The calls take and return
batch-major sequences (``rnn``'s default layout, so the transposes around them
cancel). Forward-mode differentiation (``jax.jvp``) is not defined for it: use
``kernel="scan"``.

It registers the kernel :data:`CPU_LOOP` (``rnn(..., kernel="cpu_loop")``),
the LSTM's and GRU's ``TUNED_KERNEL`` on CPU (the Performance guide has the
measurements). ``unroll``, ``hoist`` and ``vjp`` do not apply to it; a run that
names a ``vjp`` keeps the scan by default (``Kernel.owns_backward``). This module imports ``rnn_jax_onednn`` only inside functions.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax.kernels as kernels
from rnn_jax import _scan
from rnn_jax.cells import GRU, LSTM
from rnn_jax import onednn

__all__ = ["CPU_LOOP", "forward_only_run", "loop_run", "run", "unsupported_reason"]


def unsupported_reason(cell, xs, params=None, carry=None,
                       backend: str | None = None) -> str | None:
  """Why the C++ loop cannot run ``cell`` over ``xs [T, ..., I]``, or ``None`` when it can
  (whether the extension is installed is checked apart: :func:`rnn_jax.onednn.available`)."""
  if type(cell) not in (LSTM, GRU):  # pylint: disable=unidiomatic-typecheck  # Not subclasses.
    return (f"the cpu_loop kernel runs LSTM and GRU cells only, not {type(cell).__name__} "
            f"({cell!r})")
  if type(cell) is LSTM and (cell.proj_size or cell.layer_norm):  # pylint: disable=unidiomatic-typecheck
    return "the cpu_loop kernel runs the plain LSTM (no proj_size or layer_norm)"
  if type(cell) is GRU and not cell.reset_after:  # pylint: disable=unidiomatic-typecheck
    return "the cpu_loop kernel runs the GRU with reset_after=True (PyTorch's), not False"
  return onednn.float32_cpu_reason("the C++ loops (kernel='cpu_loop')", cell, xs, params, carry,
                                   backend)


def _unsupported(layer, params, xs, carry, lengths, backend, resets=None) -> str | None:
  del lengths, resets  # Both supported.
  reason = unsupported_reason(layer, xs, params, carry, backend)
  if reason is None and not onednn.available():  # Looked up per call (tests patch it).
    reason = onednn.INSTALL_HINT
  return reason


# ---------------------------------------------------------------------------
# The FFI calls, one pair per cell (see the tops of rnn_jax_onednn/src/lstm_loop.cc and
# gru_loop.cc). Inputs: x [N, T, I] (batch-major), the initial carry's leaves [N, H] (LSTM:
# h0, c0; GRU: h0), w_ih [I, G*H], w_hh [H, G*H], the biases (LSTM: b [4H] with the forget
# bias folded in; GRU: b_ih, b_hh [3H]), resets [T, N] int8 or [0], lengths [N] int32 or [0].
# The forward returns the outputs y [N, T, H] (zero past each length), the final carry's
# leaves [N, H], and what the backward reads: the LSTM's cell states [N, T, H] and the gate
# activations [N, T, 4H]
# (both cells; [0] for a forward nobody differentiates). The backward takes the inputs, y,
# those residuals and the cotangents of y and of the final carry.

_TARGETS = {"lstm": ("LSTM_LOOP_FORWARD_TARGET", "LSTM_LOOP_BACKWARD_TARGET", 2),
            "gru": ("GRU_LOOP_FORWARD_TARGET", "GRU_LOOP_BACKWARD_TARGET", 1)}
"""Cell name -> (forward target, backward target, carry leaves): attributes of the extension.
An LSTM's forward also returns its cell states (a residual): one per carry leaf after y."""


def _call(target: str, result_types, *operands, reverse: bool):
  call = jax.ffi.ffi_call(getattr(onednn._extension(), target), result_types,  # pylint: disable=protected-access
                          vmap_method="sequential")
  return call(*operands, reverse=np.int32(reverse))


def _forward_call(name, reverse, inputs, save: bool = True):
  """``(y, final carry leaves, residuals)`` of the C++ forward; with ``save=False`` (a forward
  nobody differentiates) the gate activations stay in the extension's scratch."""
  forward, _, leaves = _TARGETS[name]
  x, h0 = inputs[:2]
  batch, steps, hidden = x.shape[0], x.shape[1], h0.shape[-1]
  states = jax.ShapeDtypeStruct((batch, steps, hidden), jnp.float32)
  final = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
  acts = jax.ShapeDtypeStruct((batch, steps, 4 * hidden) if save else (0,), jnp.float32)
  y, *rest = _call(forward, (states,) + (final,) * leaves + (states,) * (leaves - 1) + (acts,),
                   *inputs, reverse=reverse)
  return y, tuple(rest[:leaves]), tuple(rest[leaves:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sequence(name, reverse, inputs):
  """``(y [N, T, H], final carry leaves [N, H])`` by the C++ loop of cell ``name``."""
  return _forward_call(name, reverse, inputs)[:2]


def _sequence_fwd(name, reverse, inputs):
  y, final, residuals = _forward_call(name, reverse, inputs)
  return (y, final), (inputs, y, residuals)


def _sequence_bwd(name, reverse, saved, cotangents):
  inputs, y, residuals = saved
  dy, dfinal = cotangents
  *differentiable, resets, lengths = inputs
  result_types = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in differentiable)
  grads = _call(_TARGETS[name][1], result_types, *inputs, y, *residuals, dy, *dfinal,
                reverse=reverse)
  # resets and lengths are integers: their cotangents are float0.
  integer_zero = lambda a: np.zeros(a.shape, jax.dtypes.float0)
  return ((*grads, integer_zero(resets), integer_zero(lengths)),)


_sequence.defvjp(_sequence_fwd, _sequence_bwd)


def loop_run(cell, params, xs, carry, lengths=None, reverse: bool = False, resets=None,
             differentiable: bool = True):
  """Runs an LSTM or GRU ``cell`` over ``xs [T, ..., I]`` with the C++ loop, forward and
  backward.

  Same contract as the ``"scan"`` kernel: returns ``(outputs [T, ..., H], final
  carry)``, outputs in input time order and zero past each sequence's length;
  ``lengths [...]`` int32 or ``None``; ``resets [T, ...]`` bool or ``None``
  (:func:`rnn_jax.rnn`'s). ``differentiable=False`` runs the C++ forward without
  saving the backward's residuals (not differentiable). Callers check
  :func:`unsupported_reason` first (the kernel's resolution does).
  """
  steps, batch_shape, hidden = xs.shape[0], xs.shape[1:-1], cell.hidden_size
  batch = math.prod(batch_shape)
  flags = _scan.reset_flags(resets, lengths, reverse)
  initial = tuple(leaf.reshape(batch, hidden) for leaf in jax.tree.leaves(carry))
  biases = ((params["b_ih"], params["b_hh"]) if type(cell) is GRU  # pylint: disable=unidiomatic-typecheck
            else (cell.folded_bias(params),))

  def loop(inputs, read_backwards):
    x, reset = inputs
    reset = (jnp.zeros((0,), jnp.int8) if reset is None
             else reset.reshape(steps, batch).astype(jnp.int8))
    valid = (jnp.zeros((0,), jnp.int32) if lengths is None
             else lengths.reshape(batch).astype(jnp.int32))
    # Batch-major in the calls: rnn_jax.rnn's default layout, so these transposes and
    # rnn's own cancel out (time-major callers pay them instead).
    x = jnp.swapaxes(x.reshape(steps, batch, x.shape[-1]), 0, 1)
    operands = (x, *initial, params["w_ih"], params["w_hh"], *biases, reset, valid)
    if differentiable:
      y, final = _sequence(cell.name, bool(read_backwards), operands)
    else:
      y, final, _ = _forward_call(cell.name, bool(read_backwards), operands, save=False)
    return jnp.swapaxes(y, 0, 1).reshape(steps, *batch_shape, hidden), final

  outputs, final = _scan.run_in_valid_order(loop, (xs, flags), lengths, reverse)
  final = [state.reshape(*batch_shape, hidden) for state in final]
  return outputs, jax.tree.unflatten(jax.tree.structure(carry), final)


def forward_only_run(cell, params, xs, carry, lengths, options, resets=None):
  """A call nobody differentiates: the C++ loop's forward without the backward's residuals
  (1.3-2.1x the scan's forward at the three benchmark shapes, and faster than oneDNN's
  inference primitive; the Performance guide)."""
  return loop_run(cell, params, xs, carry, lengths, options.reverse, resets,
                  differentiable=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def run(cell, options, params, xs, carry, lengths=None, resets=None):
  """The kernel's run: :func:`forward_only_run` where nothing differentiates the call,
  :func:`loop_run`'s C++ forward and backward where something does (``grad``, ``vjp``;
  forward mode, ``jvp``, is not defined, as for any ``jax.custom_vjp``)."""
  return forward_only_run(cell, params, xs, carry, lengths, options, resets)


def _run_fwd(cell, options, params, xs, carry, lengths, resets):
  loop = lambda params, xs, carry: loop_run(cell, params, xs, carry, lengths, options.reverse,
                                            resets)
  values, pullback = jax.vjp(loop, params, xs, carry)
  return values, (pullback, lengths, resets)


def _run_bwd(cell, options, residuals, cotangents):
  del cell, options
  pullback, lengths, resets = residuals
  zero = lambda a: None if a is None else np.zeros(a.shape, jax.dtypes.float0)
  return (*pullback(cotangents), zero(lengths), zero(resets))


run.defvjp(_run_fwd, _run_bwd)


def _kernel_run(layer, params, xs, carry, lengths, options, resets=None):
  with jax.named_scope("cpu_loop"):
    return run(layer, options, params, xs, carry, lengths, resets)


CPU_LOOP = kernels.register(kernels.Kernel("cpu_loop", _unsupported, _kernel_run,
                                             owns_backward=True))
"""The kernel ``"cpu_loop"``: an LSTM's or GRU's forward and backward as one C++ loop over
oneDNN's GEMM (:mod:`rnn_jax.cpu_loop`)."""
