"""Kernels: what runs a leaf layer over a whole sequence, and the registry that names them.

A leaf layer (a cell, a linear recurrence, a ``remat``) says *what* it
computes; a kernel says *how* a whole sequence of it is computed. A kernel is
a :class:`Kernel`, a named pair of pure functions (the shape of an Optax
transformation)::

    unsupported(layer, params, xs, carry, lengths, backend, resets=None) -> str | None
    run(layer, params, xs, carry, lengths, options, resets=None) -> (outputs, final carry)

``unsupported`` says why the kernel cannot run ``layer`` on these inputs
(``None``: it can); ``run`` has the contract of ``Layer.run`` with the options
already resolved (:meth:`rnn_jax.RunOptions.resolve`). Arrays are time-major:
``xs [T, ..., I]``, ``lengths [...]`` int32 or ``None``, ``resets [T, ...]``
bool or ``None`` (where the carry starts over from zeros, in input time order:
``rnn(..., resets=...)``); ``backend`` is a JAX backend name (``"cpu"``,
``"gpu"``, ...). ``resets`` is passed as a keyword and only when a run has
them, so a kernel written without the parameter keeps working without resets
and is refused, with a reason naming ``resets``, in runs with them
(:func:`why_unsupported`).

Four kernels are registered with the package:

* ``"scan"`` (:data:`SCAN`): the layer's own pure-JAX path, ``layer.scan``
  (``jax.lax.scan`` of its step, the fused backward, or a linear recurrence's
  associative scan); it runs every leaf layer and is the fallback;
* ``"onednn"``: oneDNN's RNN primitives for LSTM and GRU cells on CPU
  (:mod:`rnn_jax.onednn`, from the optional ``rnn_jax_onednn`` extension);
* ``"onednn_inference"``: oneDNN's inference primitive where a call is not
  differentiated, the scan where it is (also :mod:`rnn_jax.onednn`);
* ``"cpu_loop"``: an LSTM's forward and backward as one C++ loop over oneDNN's
  GEMM where a call is differentiated, the fastest forward where it is not
  (:mod:`rnn_jax.cpu_loop`, from the same extension).

Which one runs is ``RunOptions.kernel``: a registered name, or ``None`` for
the one the layer class records as measured fastest on the backend
(``TUNED_KERNEL``, or for a class of input shapes ``TUNED_BY_SHAPE``'s
``"kernel"``) where it can run, else the scan. Adding a kernel (a Pallas
GPU LSTM, a C++ training kernel) is one module that builds a :class:`Kernel`
and calls :func:`register`; cells and the scan are untouched. The
"Extending rnn_jax" guide has a worked example.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

__all__ = ["Kernel", "SCAN", "get", "names", "register", "unregister",
           "why_unsupported"]


class Kernel(NamedTuple):
  """A way to run a leaf layer over a whole sequence; see the module doc.

  Attributes:
    name: what ``RunOptions.kernel`` and ``rnn(..., kernel=...)`` call it.
    unsupported: ``(layer, params, xs, carry, lengths, backend, resets=None) ->
      str | None``: why this kernel cannot run ``layer`` on these inputs, or
      ``None``. Called at trace time, on shapes and dtypes.
    run: ``(layer, params, xs [T, ..., I], carry, lengths, options, resets=None)
      -> (outputs [T, ..., O], final carry)``, outputs in input time order.
    owns_backward: whether the kernel computes gradients its own way (a
      ``jax.custom_vjp``), so that ``vjp`` does not apply to it: a run that
      names a ``vjp`` explicitly and leaves the kernel to the tables keeps the
      scan, whose backward that choice is about.
  """

  name: str
  unsupported: Callable[..., str | None]
  run: Callable[..., tuple[Any, Any]]
  owns_backward: bool = False


def takes_resets(function: Callable) -> bool:
  """Whether ``function`` (a kernel's or a layer's) accepts a ``resets`` keyword."""
  try:
    parameters = inspect.signature(function).parameters
  except (TypeError, ValueError):
    return False
  return "resets" in parameters or any(
      parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())


def why_unsupported(kernel: Kernel, layer, params, xs, carry, lengths, backend,
                    resets=None) -> str | None:
  """``kernel.unsupported(...)``, passing ``resets`` only when given; a kernel whose
  ``unsupported`` or ``run`` has no ``resets`` parameter cannot run a sequence with resets."""
  if resets is None:
    return kernel.unsupported(layer, params, xs, carry, lengths, backend)
  if not (takes_resets(kernel.unsupported) and takes_resets(kernel.run)):
    return (f"resets: the {kernel.name!r} kernel takes no resets (its unsupported/run have no "
            "resets parameter); use kernel='scan'")
  return kernel.unsupported(layer, params, xs, carry, lengths, backend, resets=resets)


def _scan_unsupported(layer, params, xs, carry, lengths, backend, resets=None) -> str | None:
  del params, xs, carry, lengths, backend
  if not callable(getattr(layer, "scan", None)):
    return f"{type(layer).__name__} has no scan(params, xs, carry, lengths, options) of its own"
  if resets is not None and not takes_resets(layer.scan):
    return (f"resets: {type(layer).__name__}.scan has no resets parameter, so it cannot start "
            "the carry over inside a sequence")
  return None


def _scan_run(layer, params, xs, carry, lengths, options, resets=None):
  if resets is None:
    return layer.scan(params, xs, carry, lengths, options)
  return layer.scan(params, xs, carry, lengths, options, resets=resets)


SCAN = Kernel("scan", _scan_unsupported, _scan_run)
"""The layer's own pure-JAX path (``layer.scan``): every leaf layer has one."""

_REGISTRY: dict[str, Kernel] = {SCAN.name: SCAN}


def register(kernel: Kernel) -> Kernel:
  """Makes ``kernel`` selectable as ``RunOptions(kernel=kernel.name)``; returns it.

  Registering a kernel under a name already taken replaces the old one
  (re-importing a module that registers is harmless); ``"scan"`` cannot be
  replaced.

  Raises:
    TypeError: when ``kernel`` is not a :class:`Kernel`.
    ValueError: for the name ``"scan"`` or an empty name.
  """
  if not isinstance(kernel, Kernel):
    raise TypeError(f"register: expected an rnn_jax.kernels.Kernel, got {type(kernel).__name__}")
  if not kernel.name or kernel.name == SCAN.name:
    raise ValueError(f"register: a kernel needs a name other than {SCAN.name!r}, "
                     f"got {kernel.name!r}")
  _REGISTRY[kernel.name] = kernel
  return kernel


def unregister(name: str) -> None:
  """Removes the kernel called ``name`` (not ``"scan"``); unknown names are ignored."""
  if name != SCAN.name:
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  """The registered kernels' names, ``"scan"`` first."""
  return tuple(_REGISTRY)


def get(name: str) -> Kernel:
  """The kernel registered as ``name``; ``ValueError`` listing the registered names otherwise."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"kernel must be one of {names()} or None, got {name!r}") from None
