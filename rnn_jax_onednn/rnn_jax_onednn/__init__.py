"""oneDNN's RNN primitives (LSTM, GRU) as XLA FFI targets, for ``rnn_jax`` on CPU.

Importing this package loads ``_rnn_jax_onednn.so`` (built from
``src/rnn_jax_onednn.cc``) and registers two FFI targets on the CPU platform:

* ``FORWARD_TARGET``: a whole sequence forward; with ``training=1`` it also
  writes oneDNN's workspace (``workspace_size`` bytes, uint8) for the backward;
* ``BACKWARD_TARGET``: the gradients with respect to the inputs, the initial
  states, the weights and the bias, from that workspace;
* ``LSTM_LOOP_FORWARD_TARGET`` and ``LSTM_LOOP_BACKWARD_TARGET``: an LSTM's
  training forward and backward as our own C++ loop over time around oneDNN's
  GEMM (``src/lstm_loop.cc``), for ``rnn_jax.rnn(..., kernel="cpu_loop")``;
  ``GRU_LOOP_FORWARD_TARGET`` and ``GRU_LOOP_BACKWARD_TARGET``: the same for a
  GRU with ``reset_after=True`` (``src/gru_loop.cc``).

The operand layouts are documented at the top of the C++ source; rnn_jax's
adapter (``rnn_jax/onednn.py``) converts its parameters to them inside the
traced function. This package has no Python API beyond the ctypes helpers
below; use it through ``rnn_jax.rnn(..., kernel="onednn")``,
``kernel="onednn_inference"`` (the inference forward only, the scan when
differentiated) or ``kernel="cpu_loop"`` (the C++ loop when differentiated,
the fastest forward when not), which the default, ``kernel=None``, picks for
an LSTM on CPU: see ``rnn_jax.onednn`` and ``rnn_jax.cpu_loop``.

Threads: oneDNN (and the C++ loop, which splits the batch between them) runs its own OpenMP
threads inside each call (beside XLA's
thread pool; the count is set per calling thread, so nothing else's OpenMP
changes). ``RNN_JAX_ONEDNN_THREADS`` (read at import) or
:func:`set_num_threads` sets how many; the default, ``DEFAULT_THREADS = 0``,
is OpenMP's own (``OMP_NUM_THREADS``, else all cores); the Performance
guide has the measurements behind it (inference-only programs may prefer
``RNN_JAX_ONEDNN_THREADS=1``).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys

import jax

__all__ = ["BACKWARD_TARGET", "DEFAULT_THREADS", "FORWARD_TARGET", "GRU_LOOP_BACKWARD_TARGET",
           "GRU_LOOP_FORWARD_TARGET", "KINDS", "LSTM_LOOP_BACKWARD_TARGET", "LSTM_LOOP_FORWARD_TARGET", "get_num_threads",
           "set_num_threads", "workspace_size"]

FORWARD_TARGET = "rnn_jax_onednn_forward"
BACKWARD_TARGET = "rnn_jax_onednn_backward"
LSTM_LOOP_FORWARD_TARGET = "rnn_jax_lstm_loop_forward"
LSTM_LOOP_BACKWARD_TARGET = "rnn_jax_lstm_loop_backward"
GRU_LOOP_FORWARD_TARGET = "rnn_jax_gru_loop_forward"
GRU_LOOP_BACKWARD_TARGET = "rnn_jax_gru_loop_backward"
KINDS = {"vanilla_lstm": 0, "lbr_gru": 1, "vanilla_gru": 2}
"""oneDNN algorithm -> the ``kind`` attribute of the FFI targets."""
DEFAULT_THREADS = 0
"""OpenMP threads when ``RNN_JAX_ONEDNN_THREADS`` is unset; 0: OpenMP's default (all cores)."""


def _dnnl_path() -> str:
  """``libdnnl.so.3`` of the onednn-cpu-gomp wheel (in ``<prefix>/lib``)."""
  try:
    for file in importlib.metadata.files("onednn-cpu-gomp") or ():
      if str(file).endswith("libdnnl.so.3"):
        return str(file.locate())
  except importlib.metadata.PackageNotFoundError:
    pass
  return os.path.join(sys.prefix, "lib", "libdnnl.so.3")


def _load() -> ctypes.CDLL:
  dnnl = _dnnl_path()
  if os.path.exists(dnnl):  # Otherwise the RPATH or LD_LIBRARY_PATH has to find it.
    ctypes.CDLL(dnnl, mode=ctypes.RTLD_GLOBAL)
  lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_rnn_jax_onednn.so"))
  lib.rnn_jax_onednn_workspace_size.restype = ctypes.c_int64
  lib.rnn_jax_onednn_workspace_size.argtypes = [ctypes.c_int32] * 2 + [ctypes.c_int64] * 4
  lib.rnn_jax_onednn_last_error.restype = ctypes.c_char_p
  lib.rnn_jax_onednn_last_error.argtypes = []
  lib.rnn_jax_onednn_set_num_threads.argtypes = [ctypes.c_int]
  lib.rnn_jax_onednn_get_num_threads.restype = ctypes.c_int
  return lib


_lib = _load()
jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(_lib.RnnJaxOnednnForward),
                            platform="cpu")
jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(_lib.RnnJaxOnednnBackward),
                            platform="cpu")
jax.ffi.register_ffi_target(LSTM_LOOP_FORWARD_TARGET,
                            jax.ffi.pycapsule(_lib.RnnJaxLstmLoopForward), platform="cpu")
jax.ffi.register_ffi_target(LSTM_LOOP_BACKWARD_TARGET,
                            jax.ffi.pycapsule(_lib.RnnJaxLstmLoopBackward), platform="cpu")
jax.ffi.register_ffi_target(GRU_LOOP_FORWARD_TARGET,
                            jax.ffi.pycapsule(_lib.RnnJaxGruLoopForward), platform="cpu")
jax.ffi.register_ffi_target(GRU_LOOP_BACKWARD_TARGET,
                            jax.ffi.pycapsule(_lib.RnnJaxGruLoopBackward), platform="cpu")


def workspace_size(kind: int, reverse: bool, steps: int, batch: int, inputs: int,
                   hidden: int) -> int:
  """Bytes of the workspace that the forward-training call writes for this shape.

  Builds (and caches) the primitives for the shape; raises ``RuntimeError`` if
  oneDNN rejects it.
  """
  size = _lib.rnn_jax_onednn_workspace_size(kind, int(bool(reverse)), steps, batch, inputs,
                                            hidden)
  if size < 0:
    raise RuntimeError(f"oneDNN: {_lib.rnn_jax_onednn_last_error().decode()}")
  return size


def set_num_threads(num_threads: int) -> None:
  """OpenMP threads oneDNN uses inside each call (applied per calling thread at the
  next call); ``0`` restores OpenMP's default (``OMP_NUM_THREADS`` or all cores)."""
  _lib.rnn_jax_onednn_set_num_threads(int(num_threads))


def get_num_threads() -> int:
  """The OpenMP threads oneDNN will use inside each call."""
  return _lib.rnn_jax_onednn_get_num_threads()


def _initial_threads() -> int:
  value = os.environ.get("RNN_JAX_ONEDNN_THREADS", "").strip()
  if value:
    try:
      return max(0, int(value))
    except ValueError:
      raise ValueError(f"RNN_JAX_ONEDNN_THREADS must be an int, got {value!r}") from None
  return DEFAULT_THREADS


set_num_threads(_initial_threads())
