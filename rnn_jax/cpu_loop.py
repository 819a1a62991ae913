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
forward saves the gate activations the backward reads) and the fastest forward
where it is not (:func:`forward_only_run`). It runs :func:`rnn_jax.lstm` cells
(no ``proj_size`` or ``layer_norm``) and :func:`rnn_jax.gru` cells with
``reset_after=True``, in float32 (no ``compute_dtype``) on CPU, with
everything the scan supports: ``lengths``, ``reverse``, ``resets``, any
leading batch axes and ``vmap``. With ``lengths`` the loop runs every step and
the padded ones are dropped after it (each sequence's final carry is its last
valid step's; padded outputs are zero), so padding costs compute but no
correctness; ``reverse`` with ``lengths`` reverses each valid prefix first, as
the scan does. Forward-mode differentiation (``jax.jvp``) is not defined for
it: use ``kernel="scan"``.

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
# gru_loop.cc). Inputs: x [T, N, I], the initial carry's leaves [N, H] (LSTM: h0, c0; GRU: h0),
# w_ih [I, G*H], w_hh [H, G*H], the biases (LSTM: b [4H] with the forget bias folded in; GRU:
# b_ih, b_hh [3H]), resets [T, N] int8 or [0]. The forward returns every step's states
# [T, N, H], one per carry leaf, and the gate activations [T, N, 4H] (both cells) that the
# backward reads with the inputs, states and the states' cotangents.

_TARGETS = {"lstm": ("LSTM_LOOP_FORWARD_TARGET", "LSTM_LOOP_BACKWARD_TARGET", 2),
            "gru": ("GRU_LOOP_FORWARD_TARGET", "GRU_LOOP_BACKWARD_TARGET", 1)}
"""Cell name -> (forward target, backward target, carry leaves): attributes of the extension."""


def _call(target: str, result_types, *operands, reverse: bool):
  call = jax.ffi.ffi_call(getattr(onednn._extension(), target), result_types,  # pylint: disable=protected-access
                          vmap_method="sequential")
  return call(*operands, reverse=np.int32(reverse))


def _forward_call(name, reverse, inputs):
  forward, _, leaves = _TARGETS[name]
  x, h0 = inputs[:2]
  steps, batch, hidden = x.shape[0], x.shape[1], h0.shape[-1]
  state = jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32)
  acts = jax.ShapeDtypeStruct((steps, batch, 4 * hidden), jnp.float32)
  return _call(forward, (state,) * leaves + (acts,), *inputs, reverse=reverse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sequence(name, reverse, inputs):
  """Every step's states ``[T, N, H]``, one per carry leaf, by the C++ loop of cell ``name``."""
  return tuple(_forward_call(name, reverse, inputs)[:-1])


def _sequence_fwd(name, reverse, inputs):
  *states, acts = _forward_call(name, reverse, inputs)
  return tuple(states), (inputs, tuple(states), acts)


def _sequence_bwd(name, reverse, residuals, cotangents):
  inputs, states, acts = residuals
  *differentiable, resets = inputs
  result_types = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in differentiable)
  grads = _call(_TARGETS[name][1], result_types, *inputs, *states, acts, *cotangents,
                reverse=reverse)
  # resets are integers: their cotangent is float0.
  return ((*grads, np.zeros(resets.shape, jax.dtypes.float0)),)


_sequence.defvjp(_sequence_fwd, _sequence_bwd)


def _states(cell, params, x, carry, reset, reverse):
  """Every step's states ``[T, N, H]`` by the C++ loop, one per carry leaf (LSTM: h and c;
  GRU: h), and the initial carry's leaves ``[N, H]``; ``x [T, N, I]``."""
  batch, hidden = x.shape[1], cell.hidden_size
  initial = tuple(leaf.reshape(batch, hidden) for leaf in jax.tree.leaves(carry))
  biases = ((params["b_ih"], params["b_hh"]) if type(cell) is GRU  # pylint: disable=unidiomatic-typecheck
            else (cell.folded_bias(params),))
  inputs = (x, *initial, params["w_ih"], params["w_hh"], *biases, reset)
  return _sequence(cell.name, reverse, inputs), initial


def _final(states, lengths, reverse: bool, initial):
  """The carry after the last step read: ``states [T, N, H]`` at index T-1 (0 when reading
  backwards over whole sequences); with ``lengths`` (read forwards), row n's state at
  ``lengths[n] - 1``, or ``initial`` where a length is 0."""
  if lengths is None:
    return states[0] if reverse else states[-1]
  last = jnp.clip(lengths - 1, 0, states.shape[0] - 1)
  picked = jnp.take_along_axis(states, last[None, :, None], axis=0)[0]
  return jnp.where((lengths > 0)[:, None], picked, initial)


def loop_run(cell, params, xs, carry, lengths=None, reverse: bool = False, resets=None):
  """Runs an LSTM or GRU ``cell`` over ``xs [T, ..., I]`` with the C++ loop, forward and
  backward.

  Same contract as the ``"scan"`` kernel: returns ``(outputs [T, ..., H], final
  carry)``, outputs in input time order and zero past each sequence's length;
  ``lengths [...]`` int32 or ``None``; ``resets [T, ...]`` bool or ``None``
  (:func:`rnn_jax.rnn`'s). Callers check :func:`unsupported_reason` first (the
  kernel's resolution does).
  """
  steps, batch_shape, hidden = xs.shape[0], xs.shape[1:-1], cell.hidden_size
  batch = math.prod(batch_shape)
  flat_lengths = None if lengths is None else lengths.reshape(batch)
  flags = _scan.reset_flags(resets, lengths, reverse)

  def loop(inputs, read_backwards):
    x, reset = inputs
    x = x.reshape(steps, batch, x.shape[-1])
    reset = (jnp.zeros((0,), jnp.int8) if reset is None
             else reset.reshape(steps, batch).astype(jnp.int8))
    states, initial = _states(cell, params, x, carry, reset, bool(read_backwards))
    final = tuple(_final(s, flat_lengths, read_backwards, s0) for s, s0 in zip(states, initial))
    y = states[0]
    if flat_lengths is not None:
      valid = _scan.step_indices(steps, 1) < flat_lengths
      y = jnp.where(valid[..., None], y, 0.0)
    return y.reshape(steps, *batch_shape, hidden), final

  outputs, final = _scan.run_in_valid_order(loop, (xs, flags), lengths, reverse)
  final = [state.reshape(*batch_shape, hidden) for state in final]
  return outputs, jax.tree.unflatten(jax.tree.structure(carry), final)


def forward_only_run(cell, params, xs, carry, lengths, options, resets=None):
  """A call nobody differentiates: the fastest forward measured, not the C++ loop's (which
  writes the backward's residuals): for an LSTM, oneDNN's inference primitive for batches of
  :data:`rnn_jax.onednn.INFERENCE_MIN_BATCH` or more whole sequences; else the scan."""
  batch = math.prod(xs.shape[1:-1])
  if (type(cell) is LSTM and lengths is None and resets is None  # pylint: disable=unidiomatic-typecheck
      and batch >= onednn.INFERENCE_MIN_BATCH):
    return onednn._inference_or_scan(cell, options, params, xs, carry)  # pylint: disable=protected-access
  return kernels.SCAN.run(cell, params, xs, carry, lengths, options,
                          **({} if resets is None else {"resets": resets}))


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
