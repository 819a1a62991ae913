"""The layer protocol: what :func:`rnn_jax.rnn` accepts, and the options every run takes.

Everything that can be unrolled over time (cells, linear recurrences,
``stack``, ``bidirectional``, ``remat``) is a frozen dataclass deriving from
:class:`Layer`, so equal hyperparameters give equal, hashable values (usable
as static arguments of ``jax.jit``), and offers:

* ``init(key, input_size) -> params``: a plain pytree of arrays;
* ``initial_carry(batch_shape=(), dtype=float32) -> carry`` of zeros;
* ``input_size(params) -> I`` and the attribute ``output_size``;
* ``run(params, xs [T, ..., I], carry, lengths, options, rng, resets=None)
  -> (outputs [T, ..., O], carry)``: the whole sequence, time-major, no
  argument checks (:func:`rnn_jax.rnn` checks and then calls it). A leaf
  layer does not write ``run``: it writes ``scan(params, xs, carry, lengths,
  options, resets=None)``, its own pure-JAX way through a sequence, and the
  inherited ``run`` resolves the options and hands the sequence to the
  kernel they name (:mod:`rnn_jax.kernels`; the scan kernel calls ``scan``).
  Composites (``stack``, ``bidirectional``) write ``run`` and pass the
  options and resets on. ``resets`` is ``None`` or ``[T, ...]`` bool in input
  time order (the carry starts over from zeros at each flagged step; see
  ``rnn_jax._scan.reset_flags``); it is passed as a keyword and only when
  given (:func:`with_resets`), so layers and kernels written without it keep
  working for runs without resets;
* ``step(params, carry, x_t) -> (carry, y_t)`` wherever stepping means
  something (everything but a bidirectional layer), for generation;
* ``sublayers`` and ``dropout``, from which :func:`uses_dropout` answers at
  any depth whether a dropout key changes anything.

A concrete subclass that lacks one of these is refused when the class is
created, with a ``TypeError`` naming the method; intermediate bases say
``class MyBase(Layer, abstract=True)``.

How a run is done is one static record, :class:`RunOptions`, passed down
unchanged through composites. Its ``None`` fields become values in one
place, :meth:`RunOptions.resolve`, from what each layer class records as
measured fastest per backend (``TUNED_UNROLL``, ``TUNED_VJP``,
``TUNED_HOIST``, ``TUNED_PARALLEL``, ``TUNED_KERNEL``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, ClassVar, Mapping

import jax

import rnn_jax.kernels as kernels
from rnn_jax.fused import FusedVJP
from rnn_jax.precision import check_compute_dtype, matmul
from rnn_jax.summary import first_or_last

VJPS = ("autodiff", "fused", "remat")


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How to run a layer over a sequence; static (hashable), shared by every sublayer.

  :func:`rnn_jax.rnn` takes one (``options=``), as do the Flax layers and the
  training toolkit; ``rnn``'s keyword arguments of the same names are sugar
  for its fields (:meth:`of`). ``None`` means "what was measured fastest for
  this layer on this backend", decided by :meth:`resolve`.

  Attributes:
    reverse: read each sequence from its last valid step to its first;
      outputs stay in input time order.
    unroll: time steps per ``jax.lax.scan`` iteration; ``None``: the layer's
      tuned value for the backend.
    vjp: how a scan's gradient is computed: ``"autodiff"`` (JAX
      differentiates the scan), ``"fused"`` (the hand-written reverse scan of
      :mod:`rnn_jax.fused`, for cells that have one), ``"remat"`` (autodiff
      of the scan with each time step under ``jax.checkpoint``: the backward
      pass keeps only each step's carry and input and recomputes the step, as
      :func:`rnn_jax.remat` does; the same gradients, a fraction of the
      memory) or ``None``: the layer's tuned choice for the backend.
    hoist: compute the input projection of all steps as one matmul before
      the scan; ``None``: the layer's tuned choice for the backend (and input
      size: see ``HOIST_MIN_INPUT_SIZE``).
    kernel: what runs each leaf layer, a name registered in
      :mod:`rnn_jax.kernels`: ``"scan"`` (the layer's own ``jax.lax.scan``),
      ``"onednn"`` (oneDNN's RNN primitives for LSTM and GRU cells, from the
      optional ``rnn_jax_onednn`` extension; ``ValueError`` when it cannot
      run a layer, e.g. with lengths) or ``None``: the kernel the layer's
      ``TUNED_KERNEL`` names for the backend where it can run, else the scan.
    parallel: for linear recurrences (minGRU, minLSTM, LRU) whose own
      ``parallel`` is ``None``: one associative scan over time (``True``) or
      a sequential scan (``False``); ``None``: ``TUNED_PARALLEL`` for the
      backend. A layer's own ``parallel=True/False`` wins. Other layers
      ignore it.
    compute_dtype: the dtype of the operands of every matrix product, e.g.
      ``jnp.bfloat16`` (accumulated in float32; :mod:`rnn_jax.precision`):
      :func:`rnn_jax.rnn` gives it to every leaf layer
      (:func:`with_compute_dtype`) and returns the outputs in it; carries,
      gate nonlinearities, parameters and their gradients stay float32.
      ``None``: each layer's own ``compute_dtype`` (by default ``None``, the
      parameters' dtype: the computation before this option, bitwise).
  """

  reverse: bool = False
  unroll: int | None = None
  vjp: str | None = None
  hoist: bool | None = None
  kernel: str | None = None
  parallel: bool | None = None
  compute_dtype: Any = None

  def __post_init__(self):
    if self.vjp not in VJPS + (None,):
      raise ValueError(f"vjp (the gradient mode; rnn's backward= before) must be one of "
                       f"{VJPS} or None, got {self.vjp!r}")
    if self.unroll is not None and (not isinstance(self.unroll, int) or self.unroll < 1):
      raise ValueError(f"unroll must be a positive int or None, got {self.unroll!r}")
    if self.hoist not in (True, False, None):
      raise ValueError(f"hoist must be True, False or None, got {self.hoist!r}")
    if self.kernel is not None:
      kernels.get(self.kernel)  # ValueError naming the registered kernels.
    if self.parallel is not None and not isinstance(self.parallel, bool):
      raise ValueError(f"parallel must be True, False or None, got {self.parallel!r}")
    object.__setattr__(self, "compute_dtype",
                       check_compute_dtype("compute_dtype", self.compute_dtype))

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

  def resolve(self, layer: Layer, backend: str | None = None, *, xs: Any = None,
              lengths: Any = None, params: Any = None, carry: Any = None,
              resets: Any = None) -> RunOptions:
    """These options with every ``None`` field decided for ``layer``: the one place that does.

    ``unroll``, ``vjp``, ``hoist`` and ``parallel`` come from the tables of
    ``layer.tuned_like()`` (the layer itself; a ``remat`` answers for the
    layer it wraps): for inputs of a shape class listed in ``TUNED_BY_SHAPE``
    (given ``xs``), the options measured for that class; otherwise
    ``TUNED_UNROLL``, ``TUNED_VJP``, ``TUNED_HOIST`` (only for inputs of at
    least ``HOIST_MIN_INPUT_SIZE`` features) and ``TUNED_PARALLEL``, per
    backend, or 1, ``"autodiff"``, ``False`` and ``False`` where a table has
    no entry; a layer's own ``parallel``
    hyperparameter, when set, wins over these options. The kernel is the one
    ``TUNED_BY_SHAPE`` names for the inputs' shape class, else the one
    ``TUNED_KERNEL`` names, where that kernel can run these inputs (and, for a
    kernel with its own backward, ``Kernel.owns_backward``, where ``vjp`` was
    not named), else ``"scan"``; an explicitly named kernel that cannot run
    them is an error.

    Args:
      layer: the leaf layer about to run.
      backend: ``"cpu"``, ``"gpu"``, ...; defaults to ``jax.default_backend()``.
      xs: the time-major inputs ``[T, ..., I]`` (arrays or shape structs),
        when known: the input size and the kernels' checks need them.
        Without them a tuned kernel other than the scan is not chosen.
      lengths, params, carry: the rest of the run's inputs, for the kernels'
        checks.

    Raises:
      ValueError: ``kernel`` names a kernel that cannot run ``layer`` on
        ``xs`` (the message says why).
    """
    backend = backend or jax.default_backend()
    tuned = layer.tuned_like()
    by_shape = {} if xs is None else tuned.tuned_for_shape(backend, xs)
    unroll = self.unroll if self.unroll is not None else by_shape.get(
        "unroll", tuned.TUNED_UNROLL.get(backend, 1))
    vjp = self.vjp if self.vjp is not None else by_shape.get(
        "vjp", tuned.TUNED_VJP.get(backend, "autodiff"))
    hoist = self.hoist
    if hoist is None and "hoist" in by_shape:
      hoist = bool(by_shape["hoist"])
    elif hoist is None:
      wide_enough = xs is None or xs.shape[-1] >= tuned.HOIST_MIN_INPUT_SIZE
      hoist = bool(tuned.TUNED_HOIST.get(backend, False)) and wide_enough
    parallel = getattr(tuned, "parallel", None)
    if parallel is None:
      parallel = (self.parallel if self.parallel is not None
                  else bool(tuned.TUNED_PARALLEL.get(backend, False)))
    kernel = self.kernel
    if kernel is None:
      kernel = by_shape.get("kernel", tuned.TUNED_KERNEL.get(backend, kernels.SCAN.name))
      if kernel != kernels.SCAN.name and (
          xs is None or kernel not in kernels.names()
          or (self.vjp is not None and kernels.get(kernel).owns_backward)
          or kernels.why_unsupported(kernels.get(kernel), layer, params, xs, carry, lengths,
                                     backend, resets)):
        kernel = kernels.SCAN.name
    elif xs is not None:
      reason = kernels.why_unsupported(kernels.get(kernel), layer, params, xs, carry, lengths,
                                       backend, resets)
      if reason is not None:
        raise ValueError(f"kernel={kernel!r}: {reason}")
    return dataclasses.replace(self, unroll=unroll, vjp=vjp, hoist=hoist, kernel=kernel,
                               parallel=parallel)


@dataclasses.dataclass(frozen=True)
class ShapeClass:
  """A class of input shapes that a layer's ``TUNED_BY_SHAPE`` tunes for: ``T`` steps, ``N``
  sequences (all batch axes together), output size ``H``.

  Attributes:
    min_steps: the fewest steps ``T`` in the class.
    max_batch_width: the largest ``N * H`` in the class (``None``: any).
    min_batch: the fewest sequences ``N`` in the class.
  """

  min_steps: int = 1
  max_batch_width: int | None = None
  min_batch: int = 1

  def contains(self, steps: int, batch: int, width: int) -> bool:
    """Whether ``T = steps``, ``N = batch`` and ``H = width`` fall in this class."""
    return (steps >= self.min_steps and batch >= self.min_batch
            and (self.max_batch_width is None or batch * width <= self.max_batch_width))


def required_method(method: Callable) -> Callable:
  """Marks a base-class method that every concrete layer class must define itself."""
  method.required_by_layer_protocol = True
  return method


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
  HOIST_MIN_INPUT_SIZE: ClassVar[int] = 1
  """The fewest input features for which ``TUNED_HOIST`` applies (below: no hoist)."""
  TUNED_PARALLEL: ClassVar[Mapping[str, bool]] = {}
  """Backend -> whether the parallel (associative-scan) mode was measured faster."""
  TUNED_KERNEL: ClassVar[Mapping[str, str]] = {}
  """Backend -> the kernel (:mod:`rnn_jax.kernels`) ``kernel=None`` runs where it can."""
  TUNED_BY_SHAPE: ClassVar[Mapping[str, tuple[tuple[ShapeClass, Mapping[str, Any]], ...]]] = {}
  """Backend -> ``(shape class, options)`` pairs: the ``unroll``, ``vjp``, ``hoist`` or
  ``kernel`` measured fastest for inputs of that class, in place of the per-backend tables
  above (every class that matches contributes; for an option two of them set, the first
  listed wins; :meth:`tuned_for_shape`)."""
  sublayers: ClassVar[tuple] = ()
  dropout: ClassVar[float] = 0.0
  compute_dtype: ClassVar[Any] = None
  """The dtype of the operands of this layer's matrix products (``None``: the
  parameters'); a field of the leaf layers that have one (:mod:`rnn_jax.precision`)."""

  output_size: int

  def __init_subclass__(cls, abstract: bool = False, **kwargs):
    """Refuses a concrete layer class that lacks a method of the protocol, naming it."""
    super().__init_subclass__(**kwargs)
    if abstract:
      return
    missing = [name for name in dir(cls)
               if getattr(getattr(cls, name, None), "required_by_layer_protocol", False)]
    if cls.run is Layer.run and getattr(cls.scan, "required_by_layer_protocol", False):
      missing.append("scan (or run)")
    missing = [name for name in missing if name != "scan"]
    if not any("output_size" in vars(klass) or "output_size" in vars(klass).get(
        "__annotations__", {}) for klass in cls.__mro__ if klass is not Layer):
      missing.append("output_size (a field or property)")
    if missing:
      raise TypeError(f"{cls.__qualname__} does not define {', '.join(sorted(missing))}, "
                      "which every rnn_jax layer needs (see rnn_jax.layer); a base class "
                      "meant to be derived from says `abstract=True`")

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

  @required_method
  def init(self, key: jax.Array, input_size: int) -> Any:
    """Fresh parameters for inputs of size ``input_size``: a plain pytree of arrays."""
    raise NotImplementedError(f"{type(self).__name__}.init")

  @required_method
  def initial_carry(self, batch_shape=(), dtype=None) -> Any:
    """The carry before the first step: zeros with leaves ``[*batch_shape, ...]``
    (an int ``batch_shape`` is one batch axis)."""
    raise NotImplementedError(f"{type(self).__name__}.initial_carry")

  @required_method
  def input_size(self, params: Any) -> int:
    """``I``, the input size ``params`` were built for."""
    raise NotImplementedError(f"{type(self).__name__}.input_size")

  def tuned_like(self) -> Layer:
    """The layer whose measured tables (``TUNED_*``) apply to this one: itself, except
    for wrappers such as ``remat`` that run another layer's computation."""
    return self

  def tuned_for_shape(self, backend: str, xs: Any) -> Mapping[str, Any]:
    """The options ``TUNED_BY_SHAPE`` gives for time-major inputs ``xs [T, ..., I]`` (arrays
    or shape structs) on ``backend``: those of every shape class they fall in (the first
    listed wins an option two of them set), else none (``{}``)."""
    steps, batch = xs.shape[0], math.prod(xs.shape[1:-1])
    chosen: dict[str, Any] = {}
    for shape_class, options in self.TUNED_BY_SHAPE.get(backend, ()):
      if shape_class.contains(steps, batch, self.output_size):
        chosen = {**options, **chosen}
    return chosen

  def runs_fused_vjp(self) -> bool:
    """Whether ``vjp="fused"`` changes how any part of this layer is differentiated
    (a cell with a hand-written backward, at any depth)."""
    return isinstance(self, FusedVJP) or any(sub.runs_fused_vjp() for sub in self.sublayers)

  def run(self, params: Any, xs: jax.Array, carry: Any, lengths: jax.Array | None,
          options: RunOptions, rng: jax.Array | None = None,
          resets: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """The whole sequence, time-major: ``xs [T, ..., I]`` from ``carry`` ->
    ``(outputs [T, ..., O], final carry)``.

    No argument checks (:func:`rnn_jax.rnn` checks, then calls this);
    ``lengths`` is ``[...]`` or ``None``, ``rng`` the dropout key or ``None``,
    ``resets`` ``[T, ...]`` bool (the carry starts over at each flagged step) or ``None``.
    For a leaf layer: resolves ``options`` for it and these inputs
    (:meth:`RunOptions.resolve`) and runs the kernel they name
    (:mod:`rnn_jax.kernels`), by default its own ``scan``; the outputs are
    in the layer's ``compute_dtype`` when it has one. Composites write their
    own ``run`` and pass the options on.
    """
    del rng  # A leaf layer has no dropout of its own.
    options = options.resolve(self, xs=xs, lengths=lengths, params=params, carry=carry,
                              resets=resets)
    with jax.named_scope(getattr(self, "name", type(self).__name__.lower())):
      outputs, carry = kernels.get(options.kernel).run(self, params, xs, carry, lengths, options,
                                                       **with_resets(resets))
    return in_compute_dtype(self, outputs), carry

  @required_method
  def scan(self, params: Any, xs: jax.Array, carry: Any, lengths: jax.Array | None,
           options: RunOptions, resets: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """A leaf layer's own pure-JAX run over ``xs [T, ..., I]``, with ``options`` resolved:
    the ``"scan"`` kernel. ``(outputs [T, ..., O], final carry)``, outputs in input order.
    ``resets`` (``[T, ...]`` bool or ``None``; a layer that cannot start over may leave
    the keyword out, and runs with resets then refuse it) is where the carry starts over."""
    raise NotImplementedError(f"{type(self).__name__}.scan")

  def step(self, params: Any, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
    """One time step, for generation: ``(params, carry, x_t [..., I]) -> (carry, y_t [..., O])``.

    Raises ``TypeError`` for a layer that cannot be stepped (a bidirectional one).
    """
    raise TypeError(f"{type(self).__name__} cannot be stepped one time step at a time")

  def _check_compute_dtype(self) -> None:
    """For a leaf layer's ``__post_init__``: normalises its ``compute_dtype`` field
    (:func:`rnn_jax.precision.check_compute_dtype`; ``ValueError`` for a bad one)."""
    object.__setattr__(self, "compute_dtype",
                       check_compute_dtype("compute_dtype", self.compute_dtype))

  def _matmul(self, x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` in this layer's ``compute_dtype`` (:func:`rnn_jax.precision.matmul`)."""
    return matmul(x, w, self.compute_dtype)

  def summarize(self, outputs: jax.Array, lengths: jax.Array | None, reverse: bool) -> jax.Array:
    """``[..., T, O] -> [..., O]``, the output after reading the whole sequence
    (:func:`rnn_jax.summary`): the last valid one, or the first when ``reverse``."""
    return first_or_last(outputs, lengths, reverse)


class Wrapper(Layer, abstract=True):
  """Base of a layer that wraps one other (``remat``, ``zoneout``, ``weight_drop``).

  It has the wrapped layer's parameters, carry, sizes, summary, step and
  measured tables (``tuned_like``); a subclass (a frozen dataclass with a
  field ``layer``) changes how it runs, and sets ``NAME_PREFIX``: its named
  scope is ``<NAME_PREFIX>_<the wrapped layer's name>``.
  """

  NAME_PREFIX: ClassVar[str] = ""
  layer: Layer

  @property
  def name(self) -> str:
    """``<NAME_PREFIX>_<the wrapped layer's name>``, the named scope of its run."""
    return f"{self.NAME_PREFIX}_{getattr(self.layer, 'name', type(self.layer).__name__.lower())}"

  @property
  def sublayers(self) -> tuple:
    return (self.layer,)

  @property
  def output_size(self) -> int:
    return self.layer.output_size

  @property
  def compute_dtype(self) -> Any:
    """The wrapped layer's."""
    return self.layer.compute_dtype

  def tuned_like(self) -> Layer:
    """The wrapped layer's measurements apply (its tuned ``unroll`` and mode are kept)."""
    return self.layer.tuned_like()

  def init(self, key: jax.Array, input_size: int) -> Any:
    return self.layer.init(key, input_size)

  def initial_carry(self, batch_shape=(), dtype=jax.numpy.float32) -> Any:
    return self.layer.initial_carry(batch_shape, dtype)

  def input_size(self, params: Any) -> int:
    return self.layer.input_size(params)

  def summarize(self, outputs: jax.Array, lengths: jax.Array | None, reverse: bool) -> jax.Array:
    return self.layer.summarize(outputs, lengths, reverse)

  def step(self, params: Any, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
    """The wrapped layer's step."""
    return self.layer.step(params, carry, x)


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


def with_resets(resets: jax.Array | None) -> dict:
  """``{}`` without resets, else ``{"resets": resets}``: the keyword arguments with which a
  run passes resets on, so that layers and kernels written before resets existed keep
  working in runs without them."""
  return {} if resets is None else {"resets": resets}


def in_compute_dtype(layer: Layer, outputs: jax.Array) -> jax.Array:
  """``outputs`` cast to ``layer.compute_dtype``, or unchanged when it is ``None``."""
  return outputs if layer.compute_dtype is None else outputs.astype(layer.compute_dtype)


def with_compute_dtype(layer: Layer, compute_dtype: Any) -> Layer:
  """``layer`` with every leaf layer's ``compute_dtype`` set, at any nesting depth.

  Composites and wrappers (``stack``, ``bidirectional``, ``remat``, ``zoneout``,
  ``weight_drop``, ...) keep their structure: each field holding a layer, or
  a tuple of layers, is mapped; a layer with a ``compute_dtype`` field gets
  ``compute_dtype``. :func:`rnn_jax.rnn` calls this for
  ``RunOptions.compute_dtype``; the result is equal (and hashes equally) to
  the layer built with that ``compute_dtype`` to begin with.

  Args:
    layer: any layer (a frozen dataclass).
    compute_dtype: ``None`` or a floating dtype (:mod:`rnn_jax.precision`).

  Raises:
    ValueError: a leaf layer has no ``compute_dtype`` field (a layer of your
      own: add ``compute_dtype: Any = None`` and take its products with
      ``self._matmul``), or ``compute_dtype`` is not a floating dtype.
  """
  compute_dtype = check_compute_dtype("compute_dtype", compute_dtype)
  changes, has_sublayer = {}, False
  for field in dataclasses.fields(layer):
    value = getattr(layer, field.name)
    if field.name == "compute_dtype":
      changes[field.name] = compute_dtype
    elif isinstance(value, Layer):
      has_sublayer = True
      changes[field.name] = with_compute_dtype(value, compute_dtype)
    elif isinstance(value, tuple) and value and all(isinstance(v, Layer) for v in value):
      has_sublayer = True
      changes[field.name] = tuple(with_compute_dtype(v, compute_dtype) for v in value)
  if not changes and not has_sublayer:
    raise ValueError(f"compute_dtype: {type(layer).__name__} has no compute_dtype field, so its "
                     "matmuls cannot change dtype; give it `compute_dtype: Any = None` and take "
                     "its products with self._matmul (rnn_jax.precision.matmul), or pass "
                     "compute_dtype=None")
  return dataclasses.replace(layer, **changes)


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
