"""The layer protocol: what :func:`rnn_jax.rnn` accepts, and the options every run takes.

Everything that can be unrolled over time (cells, linear recurrences,
``stack``, ``bidirectional``, ``remat``) is a frozen dataclass deriving from
:class:`Layer`, so equal hyperparameters give equal, hashable values (usable
as static arguments of ``jax.jit``), and offers:

* ``init(key, input_size) -> params``: a plain pytree of arrays;
* ``initial_carry(batch_shape=(), dtype=float32) -> carry`` of zeros;
* ``input_size(params) -> I`` and the attribute ``output_size``;
* ``run(params, xs [T, ..., I], carry, lengths, options, rng) -> (outputs
  [T, ..., O], carry)``: the whole sequence, time-major, no argument checks
  (:func:`rnn_jax.rnn` checks and then calls it);
* ``step(params, carry, x_t) -> (carry, y_t)`` wherever stepping means
  something (everything but a bidirectional layer), for generation;
* ``sublayers`` and ``dropout``, from which :func:`uses_dropout` answers at
  any depth whether a dropout key changes anything.

How a run is done is one static record, :class:`RunOptions`, passed down
unchanged through composites. Its ``None`` fields are resolved per layer in
one place, :meth:`RunOptions.resolve`, from the values each layer class
records as measured fastest per backend (``TUNED_UNROLL``, ``TUNED_VJP``,
``TUNED_HOIST``).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Callable, ClassVar, Mapping

import jax

from rnn_jax.summary import first_or_last

VJPS = ("autodiff", "fused")
KERNELS = ("scan", "onednn")


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How to run a layer over a sequence; static (hashable), shared by every sublayer.

  Attributes:
    reverse: read each sequence from its last valid step to its first;
      outputs stay in input time order.
    unroll: time steps per ``jax.lax.scan`` iteration; ``None``: the layer's
      tuned value for the backend.
    vjp: how a scan's gradient is computed: ``"autodiff"`` (JAX
      differentiates the scan), ``"fused"`` (the hand-written reverse scan of
      :mod:`rnn_jax.fused`, for cells that have one) or ``None``: the layer's
      tuned choice for the backend.
    hoist: compute the input projection of all steps as one matmul before
      the scan; ``None``: the layer's tuned choice for the backend.
    kernel: what runs an LSTM or GRU cell: ``"scan"`` (``jax.lax.scan`` of
      its step), ``"onednn"`` (oneDNN's RNN primitives through the optional
      ``rnn_jax_onednn`` extension; ``ValueError`` when it cannot, e.g. with
      lengths) or ``None``: the scan, or oneDNN where the cell's
      ``TUNED_KERNEL`` names it for the backend and it can run. Decided at run time by
      :func:`rnn_jax.onednn.use_onednn` (it needs the inputs), so
      :meth:`resolve` leaves it as is. Other layers always scan.
  """

  reverse: bool = False
  unroll: int | None = None
  vjp: str | None = None
  hoist: bool | None = None
  kernel: str | None = None

  def __post_init__(self):
    if self.vjp not in VJPS + (None,):
      raise ValueError(f"vjp (the gradient mode; rnn's backward= before) must be one of "
                       f"{VJPS} or None, got {self.vjp!r}")
    if self.unroll is not None and (not isinstance(self.unroll, int) or self.unroll < 1):
      raise ValueError(f"unroll must be a positive int or None, got {self.unroll!r}")
    if self.hoist not in (True, False, None):
      raise ValueError(f"hoist must be True, False or None, got {self.hoist!r}")
    if self.kernel not in KERNELS + (None,):
      raise ValueError(f"kernel must be one of {KERNELS} or None, got {self.kernel!r}")

  @classmethod
  def of(cls, options: RunOptions | None = None, **fields) -> RunOptions:
    """``options`` (default: ``RunOptions()``) with each field given as a keyword and not
    ``None`` replaced: how ``rnn`` and the Flax layers combine ``options=`` with keywords.

    Raises ``TypeError`` when ``options`` is not a ``RunOptions`` and
    ``ValueError`` for a field's bad value (as the constructor does).
    """
    if options is None:
      options = cls()
    elif not isinstance(options, cls):
      raise TypeError(f"options: expected an rnn_jax.RunOptions, got {type(options).__name__}")
    given = {name: value for name, value in fields.items() if value is not None}
    if "reverse" in given:
      given["reverse"] = bool(given["reverse"])
    if "hoist" in given:
      given["hoist"] = bool(given["hoist"])
    return dataclasses.replace(options, **given) if given else options

  def flipped(self) -> RunOptions:
    """The same options reading the other way (the backward half of a bidirectional layer)."""
    return dataclasses.replace(self, reverse=not self.reverse)

  def resolve(self, layer: Layer, backend: str | None = None) -> RunOptions:
    """These options with ``unroll``, ``vjp`` and ``hoist`` filled in from ``layer``'s tuned values.

    The one place where ``None`` becomes a value: ``layer.TUNED_UNROLL``,
    ``layer.TUNED_VJP`` and ``layer.TUNED_HOIST`` (per JAX backend), or 1,
    ``"autodiff"`` and ``False`` for a backend a layer has no entry for.

    Args:
      layer: the layer about to run.
      backend: ``"cpu"``, ``"gpu"``, ...; defaults to ``jax.default_backend()``.
    """
    backend = backend or jax.default_backend()
    unroll = self.unroll if self.unroll is not None else layer.TUNED_UNROLL.get(backend, 1)
    vjp = self.vjp if self.vjp is not None else layer.TUNED_VJP.get(backend, "autodiff")
    hoist = self.hoist if self.hoist is not None else layer.TUNED_HOIST.get(backend, False)
    return dataclasses.replace(self, unroll=unroll, vjp=vjp, hoist=hoist)


class Layer:
  """Base of every layer; see the module doc for the protocol.

  Subclasses are frozen dataclasses. The class attributes record per-layer
  knowledge that other parts of the library read off the layer instead of
  looking it up by name.
  """

  FACTORY: ClassVar[str] = ""
  """The function that builds the layer; ``repr`` shows the call that rebuilds it."""
  REPR_POSITIONAL: ClassVar[int] = 1
  """How many leading fields ``repr`` shows positionally."""
  TUNED_UNROLL: ClassVar[Mapping[str, int]] = {}
  """Backend -> the ``unroll`` measured fastest (``experiments/bench_rnn.py``)."""
  TUNED_VJP: ClassVar[Mapping[str, str]] = {}
  """Backend -> the gradient mode measured fastest."""
  TUNED_HOIST: ClassVar[Mapping[str, bool]] = {}
  """Backend -> whether hoisting the input projection out of the scan was measured faster."""
  sublayers: ClassVar[tuple] = ()
  dropout: ClassVar[float] = 0.0

  output_size: int

  def __repr__(self) -> str:
    """The factory call that builds an equal layer, e.g. ``stack([lstm(16), gru(8)], dropout=0.2)``."""
    parts = []
    for index, field in enumerate(dataclasses.fields(self)):
      value = getattr(self, field.name)
      if index < self.REPR_POSITIONAL:
        parts.append(_show(value))
      elif field.default is dataclasses.MISSING or value is not field.default and not (
          _is_plain(value) and value == field.default):
        parts.append(f"{field.name}={_show(value)}")
    return f"{self.FACTORY or type(self).__name__}({', '.join(parts)})"

  def init(self, key: jax.Array, input_size: int) -> Any:
    """Fresh parameters for inputs of size ``input_size``: a plain pytree of arrays."""
    raise NotImplementedError

  def initial_carry(self, batch_shape=(), dtype=None) -> Any:
    """The carry before the first step: zeros with leaves ``[*batch_shape, ...]``
    (an int ``batch_shape`` is one batch axis)."""
    raise NotImplementedError

  def input_size(self, params: Any) -> int:
    """``I``, the input size ``params`` were built for."""
    raise NotImplementedError

  def run(self, params: Any, xs: jax.Array, carry: Any, lengths: jax.Array | None,
          options: RunOptions, rng: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """The whole sequence, time-major: ``xs [T, ..., I]`` from ``carry`` ->
    ``(outputs [T, ..., O], final carry)``.

    No argument checks (:func:`rnn_jax.rnn` checks, then calls this);
    ``lengths`` is ``[...]`` or ``None``, ``rng`` the dropout key or ``None``.
    """
    raise NotImplementedError

  def step(self, params: Any, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
    """One time step, for generation: ``(params, carry, x_t [..., I]) -> (carry, y_t [..., O])``.

    Raises ``TypeError`` for a layer that cannot be stepped (a bidirectional one).
    """
    raise TypeError(f"{type(self).__name__} cannot be stepped one time step at a time")

  def summarize(self, outputs: jax.Array, lengths: jax.Array | None, reverse: bool) -> jax.Array:
    """``[..., T, O] -> [..., O]``, the output after reading the whole sequence
    (:func:`rnn_jax.summary`): the last valid one, or the first when ``reverse``."""
    return first_or_last(outputs, lengths, reverse)


def _is_plain(value: Any) -> bool:
  return isinstance(value, (bool, int, float, str, type(None)))


def _show(value: Any) -> str:
  """``repr`` of a field value: layers as factory calls, initialisers and dtypes by name."""
  if isinstance(value, tuple):
    return "[" + ", ".join(_show(item) for item in value) + "]"
  if isinstance(value, Layer) or _is_plain(value):
    return repr(value)
  try:
    return "jnp." + jax.numpy.dtype(value).name
  except TypeError:
    return getattr(value, "__qualname__", repr(value)).replace(".<locals>", "")


def compiled_init(init: Callable) -> Callable:
  """Decorates a layer's ``init``: one compiled function per (layer, input size).

  Run op by op, a first ``lstm(128).init`` compiles every primitive of its
  initialisers (the orthogonal one's QR among them) separately: seconds, and
  again for every new shape. Compiled whole, parameter creation is one XLA
  program per (layer, input size), cached by ``jax.jit`` since layers are
  hashable. The values are bitwise those of the op-by-op run (tested under
  ``jax.disable_jit``), except the LRU's normal draws times a scale, within
  one float32 ulp (XLA folds the scale into the draw's constant). Inside a
  user's ``jax.jit`` it inlines as usual.
  ``python -m experiments.bench_rnn --init`` measures first calls.
  """
  compiled = jax.jit(init, static_argnums=(0, 2))

  @functools.wraps(init)
  def init_compiled_once(self, key, input_size):
    if (isinstance(input_size, bool) or not isinstance(input_size, numbers.Integral)
        or input_size < 1):
      raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    return compiled(self, key, int(input_size))

  return init_compiled_once


def check_layer(argument: str, value: Any) -> None:
  """Raises ``TypeError`` naming ``argument`` unless ``value`` is an rnn_jax layer."""
  if not isinstance(value, Layer):
    kind = type(value)
    raise TypeError(f"{argument}: expected an rnn_jax layer (rnn_jax.lstm(...), "
                    f"rnn_jax.stack(...), ...), got {kind.__module__}.{kind.__qualname__}")


def check_step_input(layer: Layer, params: Any, carry: Any, x: jax.Array) -> None:
  """Raises ``ValueError`` unless ``x`` is one time step ``[..., I]`` matching ``carry``'s batch."""
  input_size = layer.input_size(params)
  batch_shape = jax.tree.leaves(carry)[0].shape[:-1]
  if x.shape[-1:] != (input_size,) or (batch_shape and x.shape[:-1] != batch_shape):
    raise ValueError(f"x: expected one time step of shape {(*batch_shape, input_size)} (the "
                     f"carry's batch shape + input size), got {x.shape}; to run a whole "
                     "sequence [..., T, I] use rnn_jax.rnn")


def uses_dropout(layer: Layer) -> bool:
  """Whether running ``layer`` with a dropout key can drop anything, at any nesting depth.

  True when the layer or any of its sublayers (a ``stack`` inside a
  ``bidirectional``, a ``remat`` of a stack, ...) has ``dropout > 0``.
  """
  return layer.dropout > 0.0 or any(uses_dropout(sub) for sub in layer.sublayers)
