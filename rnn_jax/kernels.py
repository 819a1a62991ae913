"""Kernels: what runs a leaf layer over a whole sequence, and the registry that names them.

A leaf layer (a cell, a linear recurrence, a ``remat``) says *what* it
computes; a kernel says *how* a whole sequence of it is computed. A kernel is
a :class:`Kernel`, a named pair of pure functions (the shape of an Optax
transformation)::

    unsupported(layer, params, xs, carry, lengths, backend) -> str | None
    run(layer, params, xs, carry, lengths, options) -> (outputs, final carry)

``unsupported`` says why the kernel cannot run ``layer`` on these inputs
(``None``: it can); ``run`` has the contract of ``Layer.run`` with the options
already resolved (:meth:`rnn_jax.RunOptions.resolve`). Arrays are time-major:
``xs [T, ..., I]``, ``lengths [...]`` int32 or ``None``; ``backend`` is a JAX
backend name (``"cpu"``, ``"gpu"``, ...).

Two kernels are registered with the package:

* ``"scan"`` (:data:`SCAN`): the layer's own pure-JAX path, ``layer.scan``
  (``jax.lax.scan`` of its step, the fused backward, or a linear recurrence's
  associative scan); it runs every leaf layer and is the fallback;
* ``"onednn"``: oneDNN's RNN primitives for LSTM and GRU cells on CPU
  (:mod:`rnn_jax.onednn`, from the optional ``rnn_jax_onednn`` extension).

Which one runs is ``RunOptions.kernel``: a registered name, or ``None`` for
the one the layer class records as measured fastest on the backend
(``TUNED_KERNEL``) where it can run, else the scan. Adding a kernel (a Pallas
GPU LSTM, a C++ training kernel) is one module that builds a :class:`Kernel`
and calls :func:`register`; cells and the scan are untouched. The
"Extending rnn_jax" guide has a worked example.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

__all__ = ["Kernel", "SCAN", "get", "names", "register", "unregister"]


class Kernel(NamedTuple):
  """A way to run a leaf layer over a whole sequence; see the module doc.

  Attributes:
    name: what ``RunOptions.kernel`` and ``rnn(..., kernel=...)`` call it.
    unsupported: ``(layer, params, xs, carry, lengths, backend) -> str | None``:
      why this kernel cannot run ``layer`` on these inputs, or ``None``.
      Called at trace time, on shapes and dtypes.
    run: ``(layer, params, xs [T, ..., I], carry, lengths, options) ->
      (outputs [T, ..., O], final carry)``, outputs in input time order.
  """

  name: str
  unsupported: Callable[..., str | None]
  run: Callable[..., tuple[Any, Any]]


def _scan_unsupported(layer, params, xs, carry, lengths, backend) -> str | None:
  del params, xs, carry, lengths, backend
  if not callable(getattr(layer, "scan", None)):
    return f"{type(layer).__name__} has no scan(params, xs, carry, lengths, options) of its own"
  return None


def _scan_run(layer, params, xs, carry, lengths, options):
  return layer.scan(params, xs, carry, lengths, options)


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
