"""oneDNN kernels for LSTM and GRU on CPU, from the optional ``rnn_jax_onednn`` extension.

On CPU, XLA runs the small per-step matmul inside ``jax.lax.scan`` slowly;
oneDNN's RNN primitives take the whole sequence at once (as PyTorch's CPU
``nn.LSTM`` does). ``pip install ./rnn_jax_onednn`` (from the repository root)
builds the extension, which registers XLA FFI targets for oneDNN's
``vanilla_lstm`` (:func:`rnn_jax.lstm`), ``lbr_gru``
(``rnn_jax.gru(reset_after=True)``) and ``vanilla_gru``
(``reset_after=False``), forward and backward, float32.

This module registers two kernels in :mod:`rnn_jax.kernels`:

* :data:`ONEDNN` (``"onednn"``): oneDNN forward and backward (below);
* :data:`ONEDNN_INFERENCE` (``"onednn_inference"``): oneDNN's
  forward-inference primitive where the call is not differentiated, the
  layer's own scan where it is (a ``jax.custom_jvp`` whose rule is the
  scan's ``jvp``: ``grad``, ``vjp`` and ``jvp`` run exactly the ``"scan"``
  kernel's program, with its ``unroll``, ``hoist`` and ``vjp``).

Which kernel runs is :class:`rnn_jax.RunOptions`' ``kernel``
(``rnn(..., kernel=...)``), decided per leaf layer by
:meth:`rnn_jax.RunOptions.resolve`: a named oneDNN kernel runs or raises
``ValueError`` saying why it cannot (:func:`unsupported_reason`, resets, or
the extension missing); ``None`` (the default) runs one only where the
layer's tables name it for the backend and the input shape, and it can run.
The LSTM's and GRU's default on CPU is the extension's C++ loop
(:mod:`rnn_jax.cpu_loop`), whose own forward also measured faster than oneDNN's
inference primitive, so ``"onednn"`` and ``"onednn_inference"`` are opt-in (the
Performance guide has the figures). With oneDNN the ``unroll``, ``hoist`` and
``vjp`` options have no effect on the oneDNN calls.

:func:`run` converts the parameters to oneDNN's gate order and layout inside
the traced function (so gradients flow back through the conversion) and
calls the FFI targets inside a ``jax.custom_vjp``: the primal uses oneDNN's
forward-inference primitive, the forward of a gradient its forward-training
one, which writes a workspace that the backward reads. It works under
``jax.jit``, ``jax.grad`` and ``jax.vmap`` (vmap loops over the mapped axis).

Threads: oneDNN runs OpenMP threads inside each call;
``RNN_JAX_ONEDNN_THREADS`` (read when the extension is imported) or
:func:`set_num_threads` chooses how many; by default all cores, measured
fastest for forward+backward on 2 cores (``rnn_jax_onednn``'s docstring has
the figures).

This module imports ``rnn_jax_onednn`` only inside functions: ``import
rnn_jax`` needs jax and numpy only.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax.kernels as kernels
from rnn_jax.cells import GRU, LSTM

__all__ = ["ONEDNN", "ONEDNN_INFERENCE", "available",
           "run", "set_num_threads", "unsupported_reason"]

INSTALL_HINT = "rnn_jax_onednn is not installed: pip install ./rnn_jax_onednn"


def _extension():
  import rnn_jax_onednn  # pylint: disable=import-outside-toplevel
  if getattr(rnn_jax_onednn, "__file__", None) is None:
    # The source folder ./rnn_jax_onednn seen as a namespace package from the repository
    # root, not the installed extension.
    raise ImportError("rnn_jax_onednn: the source folder, not the installed extension")
  return rnn_jax_onednn


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether the ``rnn_jax_onednn`` extension imports (and so registered its FFI targets)."""
  try:
    _extension()
  except (ImportError, OSError):
    return False
  return True


def set_num_threads(num_threads: int) -> None:
  """OpenMP threads oneDNN uses inside each call; 0: OpenMP's default (all cores)."""
  if not available():
    raise ValueError(INSTALL_HINT)
  _extension().set_num_threads(num_threads)


def _kind(cell) -> int | None:
  """The extension's ``kind`` for ``cell`` (0 LSTM, 1 lbr GRU, 2 vanilla GRU), or None:
  the cells oneDNN implements, by class."""
  if type(cell) is LSTM:  # pylint: disable=unidiomatic-typecheck  # Not subclasses.
    return None if cell.proj_size or cell.layer_norm else 0
  if type(cell) is GRU:  # pylint: disable=unidiomatic-typecheck
    return 1 if cell.reset_after else 2
  return None


def unsupported_reason(cell, xs, lengths, params=None, carry=None,
                       backend: str | None = None) -> str | None:
  """Why oneDNN cannot run ``cell`` over ``xs [T, ..., I]``, or ``None`` when it can.

  oneDNN runs LSTM and GRU cells (both GRU variants) over whole, non-empty
  float32 sequences on CPU: no ``lengths``, float32 inputs, parameters and
  carry, and float32 matmuls (a cell with a ``compute_dtype`` other than
  float32 runs the scan). ``backend`` defaults to JAX's. Does not check
  whether the extension is installed (:func:`available`).
  """
  if _kind(cell) is None:
    return (f"oneDNN kernels run LSTM and GRU cells only (an LSTM without proj_size or "
            f"layer_norm), not {type(cell).__name__} ({cell!r})")
  if lengths is not None:
    return "oneDNN's RNN primitives have no variable lengths (lengths=...); use kernel='scan'"
  return float32_cpu_reason("oneDNN kernels", cell, xs, params, carry, backend)


def float32_cpu_reason(kernels_name: str, cell, xs, params=None, carry=None,
                       backend: str | None = None) -> str | None:
  """Why the extension's kernels (``kernels_name`` in the message) cannot run ``cell`` over
  ``xs [T, ..., I]`` as float32 on CPU, or ``None``: they compute in float32 (no other
  ``compute_dtype``), need float32 inputs, parameters and carry and non-empty inputs, and run
  on CPU (``backend`` defaults to JAX's)."""
  if cell.compute_dtype not in (None, jnp.float32):
    return (f"{kernels_name} compute in float32, not compute_dtype={cell.compute_dtype}; "
            "use kernel='scan' (or compute_dtype=None)")
  if jnp.dtype(xs.dtype) != jnp.float32:
    return f"{kernels_name} need float32 inputs, got xs of dtype {xs.dtype}"
  for name, tree in (("params", params), ("initial carry", carry)):
    dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(tree)} - {"float32"}
    if dtypes:
      return f"{kernels_name} need float32 {name}, got {', '.join(sorted(dtypes))}"
  if math.prod(xs.shape) == 0:
    return f"{kernels_name} need non-empty inputs, got xs of shape {xs.shape}"
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return f"{kernels_name} run on CPU only (the backend is {backend})"
  return None


def _unsupported(layer, params, xs, carry, lengths, backend, resets=None) -> str | None:
  if resets is not None:
    return ("resets: oneDNN's RNN primitives cannot start the carry over inside a sequence "
            "(rnn(..., resets=...)); use kernel='scan'")
  reason = unsupported_reason(layer, xs, lengths, params, carry, backend)
  if reason is None and not available():
    reason = INSTALL_HINT
  return reason


# ---------------------------------------------------------------------------
# rnn_jax's parameters -> oneDNN's (see the layouts at the top of
# rnn_jax_onednn/src/rnn_jax_onednn.cc). Plain jnp, so gradients flow back.


def _gates(w, gates: int, hidden: int, order) -> jax.Array:
  """``[rows, gates*H] -> [rows, gates, H]`` (oneDNN's ldigo), gate blocks in ``order``."""
  w = w.reshape(w.shape[0], gates, hidden)
  return w if order is None else jnp.stack([w[:, k] for k in order], axis=1)


def onednn_params(cell, params) -> tuple[int, jax.Array, jax.Array, jax.Array]:
  """``(kind, weights_layer [I, G, H], weights_iter [H, G, H], bias [Gb, H])`` for oneDNN.

  LSTM: gates (i, f, g, o) as ours; ``forget_bias`` is folded into the f bias.
  GRU: oneDNN's gates are (u, r, o) = our (z, r, n); lbr_gru's bias is
  ``(b_z, b_r, b_in, b_hn)`` with ``b_z = b_iz + b_hz`` and ``b_r = b_ir + b_hr``.
  """
  kind, hidden = _kind(cell), cell.hidden_size
  params = jax.tree.map(jnp.asarray, params)
  if kind == 0:
    bias = cell.folded_bias(params).reshape(4, hidden)
    return (kind, _gates(params["w_ih"], 4, hidden, None), _gates(params["w_hh"], 4, hidden, None),
            bias)
  order = (1, 0, 2)  # (r, z, n) -> (z, r, n)
  if kind == 1:
    b_ih, b_hh = params["b_ih"].reshape(3, hidden), params["b_hh"].reshape(3, hidden)
    bias = jnp.stack([b_ih[1] + b_hh[1], b_ih[0] + b_hh[0], b_ih[2], b_hh[2]])
  else:
    bias = params["b"].reshape(3, hidden)[np.array(order)]
  return (kind, _gates(params["w_ih"], 3, hidden, order), _gates(params["w_hh"], 3, hidden, order),
          bias)


# ---------------------------------------------------------------------------
# The FFI calls, in oneDNN's layouts: x [T, N, I], h0/c0 [N, H] (c0 [0] for a GRU).


def _forward_call(kind, reverse, training, x, h0, c0, wl, wi, bias):
  ext = _extension()
  steps, batch, inputs = x.shape
  hidden = h0.shape[-1]
  workspace = (ext.workspace_size(kind, reverse, steps, batch, inputs, hidden) if training
               else 0)
  f32 = jnp.float32
  result_types = (jax.ShapeDtypeStruct((steps, batch, hidden), f32),
                  jax.ShapeDtypeStruct(h0.shape, f32), jax.ShapeDtypeStruct(c0.shape, f32),
                  jax.ShapeDtypeStruct((workspace,), jnp.uint8))
  call = jax.ffi.ffi_call(ext.FORWARD_TARGET, result_types, vmap_method="sequential")
  return call(x, h0, c0, wl, wi, bias, kind=np.int32(kind), reverse=np.int32(reverse),
              training=np.int32(training))


def _backward_call(kind, reverse, x, h0, c0, wl, wi, bias, y, h_t, c_t, workspace, dy, dh_t,
                   dc_t):
  ext = _extension()
  result_types = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32)
                       for a in (x, h0, c0, wl, wi, bias))
  call = jax.ffi.ffi_call(ext.BACKWARD_TARGET, result_types, vmap_method="sequential")
  return call(x, h0, c0, wl, wi, bias, y, h_t, c_t, workspace, dy, dh_t, dc_t,
              kind=np.int32(kind), reverse=np.int32(reverse))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sequence(kind, reverse, x, h0, c0, wl, wi, bias):
  """``(y [T, N, H], h_T [N, H], c_T)``: oneDNN's forward-inference primitive."""
  return tuple(_forward_call(kind, reverse, False, x, h0, c0, wl, wi, bias)[:3])


def _sequence_fwd(kind, reverse, x, h0, c0, wl, wi, bias):
  y, h_t, c_t, workspace = _forward_call(kind, reverse, True, x, h0, c0, wl, wi, bias)
  return (y, h_t, c_t), (x, h0, c0, wl, wi, bias, y, h_t, c_t, workspace)


def _sequence_bwd(kind, reverse, residuals, cotangents):
  return tuple(_backward_call(kind, reverse, *residuals, *cotangents))


_sequence.defvjp(_sequence_fwd, _sequence_bwd)


def run(cell, params, xs, carry, reverse: bool = False):
  """Runs an LSTM or GRU ``cell`` over ``xs [T, ..., I]`` with oneDNN.

  Same contract as ``cell.run`` without lengths: returns ``(outputs [T, ..., H],
  final carry)``, outputs in input time order; ``reverse`` reads from the last
  step to the first (oneDNN's right2left direction). Leading batch axes are
  flattened into oneDNN's one batch axis and restored. Callers check
  :func:`unsupported_reason` first (the kernel's resolution does).
  """
  kind, wl, wi, bias = onednn_params(cell, params)
  steps, batch_shape, hidden = xs.shape[0], xs.shape[1:-1], cell.hidden_size
  batch = math.prod(batch_shape)
  x = xs.reshape(steps, batch, xs.shape[-1])
  if kind == 0:
    h0, c0 = (state.reshape(batch, hidden) for state in carry)
  else:
    h0, c0 = carry.reshape(batch, hidden), jnp.zeros((0,), jnp.float32)
  y, h_t, c_t = _sequence(kind, bool(reverse), x, h0, c0, wl, wi, bias)
  outputs = y.reshape(steps, *batch_shape, hidden)
  h_t = h_t.reshape(*batch_shape, hidden)
  if kind == 0:
    return outputs, type(carry)(h_t, c_t.reshape(*batch_shape, hidden))
  return outputs, h_t


def _kernel_run(layer, params, xs, carry, lengths, options, resets=None):
  del lengths, resets  # None: _unsupported refuses lengths and resets.
  with jax.named_scope("onednn"):
    return run(layer, params, xs, carry, options.reverse)


ONEDNN = kernels.register(kernels.Kernel("onednn", _unsupported, _kernel_run,
                                           owns_backward=True))
"""oneDNN's RNN primitives as the kernel ``"onednn"`` (:mod:`rnn_jax.kernels`)."""


# ---------------------------------------------------------------------------
# oneDNN's inference forward where nothing differentiates the call, the scan where
# something does.


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _inference_or_scan(layer, options, params, xs, carry):
  """``layer``'s run over ``xs [T, ..., I]`` by oneDNN's forward-inference primitive;
  differentiated (``jvp``, and so ``grad``, ``vjp``, ``jacfwd``) as the scan is."""
  return run(layer, params, xs, carry, options.reverse)


@_inference_or_scan.defjvp
def _inference_or_scan_jvp(layer, options, primals, tangents):
  # Outputs and tangents both from the scan: a differentiated call runs exactly the scan
  # kernel's program (the same options: unroll, hoist, vjp), bit for bit.
  scan = lambda params, xs, carry: layer.scan(params, xs, carry, None, options)
  return jax.jvp(scan, primals, tangents)


def _inference_run(layer, params, xs, carry, lengths, options, resets=None):
  del lengths, resets  # None: _unsupported refuses lengths and resets.
  with jax.named_scope("onednn_inference"):
    return _inference_or_scan(layer, options, params, xs, carry)


ONEDNN_INFERENCE = kernels.register(
    kernels.Kernel("onednn_inference", _unsupported, _inference_run))
"""The kernel ``"onednn_inference"``: oneDNN's forward-inference primitive when the call is
not differentiated (evaluation, generation over a prompt), the layer's own scan when it is
(``jax.custom_jvp``: forward and reverse mode differentiate the scan exactly as the
``"scan"`` kernel does, so training is unchanged). Same limits as :data:`ONEDNN`."""
