"""Layers made of layers: ``stack``, ``bidirectional`` and ``remat``.

Each is itself a layer (:mod:`rnn_jax.layer`), so ``rnn_jax.rnn`` accepts it
anywhere a cell goes and they nest (a stack of bidirectional layers, a
bidirectional pair of stacks, a remat of either). Each layer of a stack runs
as one scan over the whole sequence, not as a per-step stack, so every
layer's input projection is a large matmul and inter-layer dropout is a
single op; ``Stack.step`` steps layer by layer for generation.

Parameters and carries nest as tuples and dicts:

* ``stack``: params ``(layer_0, layer_1, ...)``, carry ``(carry_0, carry_1, ...)``.
* ``bidirectional``: params ``{"forward": ..., "backward": ...}``, carry
  ``(forward_carry, backward_carry)``.
* ``remat``: the wrapped layer's params and carry.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp

import rnn_jax._scan as _scan
from rnn_jax.layer import Layer, RunOptions, Wrapper, check_layer, with_resets


def split_key(key, num: int) -> list:
  """``num`` keys from ``key``, or ``num`` ``None``\\ s when ``key`` is ``None`` (no dropout)."""
  return [None] * num if key is None else list(jax.random.split(key, num))


def dropout_outputs(key, outputs: jax.Array, rate: float, variational: bool) -> jax.Array:
  """Inverted dropout of time-major ``outputs [T, ..., F]`` (kept units scaled by 1/keep).

  ``variational=True`` draws one mask per sequence, shared by all time steps
  (Gal & Ghahramani 2016); otherwise every step draws its own.
  """
  keep = 1.0 - rate
  mask_shape = (1,) + outputs.shape[1:] if variational else outputs.shape
  mask = jax.random.bernoulli(key, keep, mask_shape)
  return jnp.where(mask, outputs / keep, jnp.zeros_like(outputs))


@dataclasses.dataclass(frozen=True, repr=False)
class Stack(Layer):
  """Layers run one after another (TF's MultiRNNCell); built by :func:`stack`.

  Attributes:
    layers: the layers, first first.
    dropout: drop rate on each layer's outputs except the last one's, when
      run with a dropout key.
    variational: reuse one dropout mask over all time steps.
  """

  FACTORY: ClassVar[str] = "stack"

  layers: tuple
  dropout: float = 0.0
  variational: bool = False

  def __post_init__(self):
    if not self.layers:
      raise ValueError("stack needs at least one cell or layer")
    for index, layer in enumerate(self.layers):
      check_layer(f"stack layer {index}", layer)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

  @property
  def sublayers(self) -> tuple:
    return self.layers

  @property
  def output_size(self) -> int:
    return self.layers[-1].output_size

  def init(self, key, input_size: int) -> tuple:
    params = []
    for layer, layer_key in zip(self.layers, jax.random.split(key, len(self.layers))):
      params.append(layer.init(layer_key, input_size))
      input_size = layer.output_size
    return tuple(params)

  def initial_carry(self, batch_shape=(), dtype=jnp.float32) -> tuple:
    return tuple(layer.initial_carry(batch_shape, dtype) for layer in self.layers)

  def input_size(self, params) -> int:
    return self.layers[0].input_size(params[0])

  def run(self, params, xs, carry, lengths, options: RunOptions, rng=None, resets=None):
    """Each layer over the whole sequence in turn; every layer resets at the same steps."""
    keys = split_key(rng, 2 * len(self.layers))
    final_carries = []
    for index, layer in enumerate(self.layers):
      xs, layer_carry = layer.run(params[index], xs, carry[index], lengths, options,
                                  keys[2 * index], **with_resets(resets))
      final_carries.append(layer_carry)
      if rng is not None and self.dropout > 0.0 and index < len(self.layers) - 1:
        xs = dropout_outputs(keys[2 * index + 1], xs, self.dropout, self.variational)
    return xs, tuple(final_carries)

  def summarize(self, outputs, lengths, reverse):
    return self.layers[-1].summarize(outputs, lengths, reverse)

  def step(self, params, carry, x):
    """One time step through every layer (no dropout): ``(carry tuple, y_t [..., O])``."""
    new_carry = []
    for layer, layer_params, layer_carry in zip(self.layers, params, carry):
      layer_carry, x = layer.step(layer_params, layer_carry, x)
      new_carry.append(layer_carry)
    return tuple(new_carry), x


def stack(layers: Sequence[Layer], dropout: float = 0.0, variational: bool = False) -> Stack:
  """Layers, the output sequence of each the input of the next (TF's MultiRNNCell).

  Args:
    layers: cells or composites, first layer first.
    dropout: drop rate applied to each layer's outputs except the last one's,
      only when ``rnn`` is given a ``dropout_rng`` (keep = 1 - dropout, as
      ``DropoutWrapper(output_keep_prob=keep)``).
    variational: reuse one dropout mask over all time steps.

  Params: a tuple of per-layer params. Carry: a tuple of per-layer carries.
  """
  return Stack(tuple(layers), float(dropout), bool(variational))


MERGES = {
    "concat": lambda f, b: jnp.concatenate([f, b], axis=-1),
    "sum": jnp.add,
    "mean": lambda f, b: (f + b) / 2,
}
"""The named merges of :func:`bidirectional`; any function ``(forward, backward) -> outputs``
works too."""


@dataclasses.dataclass(frozen=True, repr=False)
class Bidirectional(Layer):
  """A forward and a backward layer over the same inputs; built by :func:`bidirectional`.

  Attributes:
    forward: the layer reading each sequence first step first.
    backward: the layer reading it last valid step first.
    merge: ``"concat"``, ``"sum"``, ``"mean"`` or a function ``(forward_outputs,
      backward_outputs) -> outputs`` (compared and hashed by identity, so
      the layer stays hashable; ``repr`` shows its name).
  """

  FACTORY: ClassVar[str] = "bidirectional"
  REPR_POSITIONAL: ClassVar[int] = 2

  forward: Layer
  backward: Layer
  merge: str | Callable[[jax.Array, jax.Array], jax.Array] = "concat"

  def __post_init__(self):
    check_layer("forward", self.forward)
    check_layer("backward", self.backward)
    if callable(self.merge):
      self.output_size  # pylint: disable=pointless-statement  # Fails now if merge cannot run.
      return
    if self.merge not in MERGES:
      raise ValueError(f"merge must be one of {sorted(MERGES)} or a function (forward_outputs, "
                       f"backward_outputs) -> outputs, got {self.merge!r}")
    if self.merge != "concat" and self.forward.output_size != self.backward.output_size:
      raise ValueError(f"merge={self.merge!r} needs equal output sizes, got "
                       f"{self.forward.output_size} and {self.backward.output_size}")

  def __repr__(self) -> str:
    """``bidirectional(lstm(4), gru(4), merge='sum')``; a merge function shows by name."""
    merge = "" if self.merge == "concat" else f", merge={_name(self.merge)}"
    return f"{self.FACTORY}({self.forward!r}, {self.backward!r}{merge})"

  @property
  def merge_fn(self) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The function merging the two halves' outputs ``[..., O_f]``, ``[..., O_b]``."""
    return self.merge if callable(self.merge) else MERGES[self.merge]

  @property
  def sublayers(self) -> tuple:
    return (self.forward, self.backward)

  @property
  def output_size(self) -> int:
    """``O_f + O_b`` for ``"concat"``, ``O_f`` for ``"sum"``/``"mean"``; for a function, the
    last axis of its output on ``[O_f]`` and ``[O_b]`` (``jax.eval_shape``, nothing runs)."""
    if callable(self.merge):
      shape = lambda size: jax.ShapeDtypeStruct((size,), jnp.float32)
      try:
        merged = jax.eval_shape(self.merge, shape(self.forward.output_size),
                                shape(self.backward.output_size))
      except Exception as error:  # pylint: disable=broad-except
        raise ValueError(f"merge={_name(self.merge)}: cannot merge outputs of sizes "
                         f"{self.forward.output_size} and {self.backward.output_size}: "
                         f"{error}") from error
      if not isinstance(merged, jax.ShapeDtypeStruct) or merged.ndim != 1:
        raise ValueError(f"merge={_name(self.merge)}: expected one array [..., O] from the "
                         f"forward and backward outputs, got {merged}")
      return merged.shape[-1]
    if self.merge == "concat":
      return self.forward.output_size + self.backward.output_size
    return self.forward.output_size

  def init(self, key, input_size: int) -> dict:
    key_forward, key_backward = jax.random.split(key)
    return {"forward": self.forward.init(key_forward, input_size),
            "backward": self.backward.init(key_backward, input_size)}

  def initial_carry(self, batch_shape=(), dtype=jnp.float32) -> tuple:
    return (self.forward.initial_carry(batch_shape, dtype),
            self.backward.initial_carry(batch_shape, dtype))

  def input_size(self, params) -> int:
    return self.forward.input_size(params["forward"])

  def run(self, params, xs, carry, lengths, options: RunOptions, rng=None, resets=None):
    """Both halves over the same inputs and ``resets`` (segments in input time order, so
    the backward half reads each segment from its last step and no output mixes two)."""
    key_forward, key_backward = split_key(rng, 2)
    out_forward, carry_forward = self.forward.run(params["forward"], xs, carry[0], lengths,
                                                  options, key_forward, **with_resets(resets))
    out_backward, carry_backward = self.backward.run(params["backward"], xs, carry[1], lengths,
                                                     options.flipped(), key_backward,
                                                     **with_resets(resets))
    return self.merge_fn(out_forward, out_backward), (carry_forward, carry_backward)

  def summarize(self, outputs, lengths, reverse):
    if self.merge != "concat":
      raise ValueError(f"summary: bidirectional(merge={_name(self.merge)}) mixed the two halves' "
                       "outputs, so no summary can be read off them; use merge='concat'")
    forward_outputs, backward_outputs = jnp.split(outputs, [self.forward.output_size], axis=-1)
    return jnp.concatenate([self.forward.summarize(forward_outputs, lengths, reverse),
                            self.backward.summarize(backward_outputs, lengths, not reverse)],
                           axis=-1)


def _name(merge) -> str:
  """How a merge shows in ``repr`` and messages: ``'sum'``, or a function's ``__name__``."""
  return repr(merge) if isinstance(merge, str) else getattr(merge, "__name__", repr(merge))


def bidirectional(forward: Layer, backward: Layer,
                  merge: str | Callable[[jax.Array, jax.Array], jax.Array] = "concat"
                  ) -> Bidirectional:
  """Runs ``forward`` over the sequence and ``backward`` over it reversed, then merges.

  With ``lengths`` the backward layer starts at each sequence's last valid
  step (only the valid prefix is reversed), and its outputs are put back in
  input time order before merging. A bidirectional layer has no ``step``:
  its backward half needs the whole sequence.

  Args:
    forward: cell or composite reading the sequence first step first.
    backward: cell or composite reading it last step first.
    merge: ``"concat"`` (output size ``O_f + O_b``), ``"sum"`` or ``"mean"``
      (both need ``O_f == O_b``), or any function ``(forward_outputs [..., O_f],
      backward_outputs [..., O_b]) -> outputs [..., O]`` (Flax's ``merge_fn``,
      e.g. ``jnp.maximum``); ``O`` is found with ``jax.eval_shape``. Pass the same
      function object to get equal layers (a new ``lambda`` is a new layer).

  Raises:
    ValueError: for an unknown merge name, unequal sizes with ``"sum"``/``"mean"``,
      or a function that cannot merge the two halves' outputs.

  Params: ``{"forward": ..., "backward": ...}``. Carry:
  ``(forward_carry, backward_carry)``.
  """
  return Bidirectional(forward, backward, merge)


@dataclasses.dataclass(frozen=True, repr=False)
class Remat(Wrapper):
  """A leaf layer whose backward pass recomputes instead of storing; built by :func:`remat`.

  A steppable layer run by a sequential scan (cells, linear recurrences with
  ``parallel=False``) gets its whole time step under ``jax.checkpoint``: the
  backward pass keeps only each step's carry and input and recomputes the
  step's gate activations from them, at the price of running each step's
  forward once more. A parallel linear recurrence is checkpointed as a whole:
  only its inputs are kept between the forward and the backward pass. Outputs
  and gradients are those of the wrapped layer; its tuned ``unroll`` is kept;
  the gradient is always autodiff (of the checkpointed step).

  With ``every=k`` the backward pass keeps the carry only every ``k`` steps
  and recomputes each chunk of ``k`` steps from it (an outer scan over
  chunks, each an inner scan under ``jax.checkpoint``): about ``T / k`` carries plus one
  chunk's residuals, so ``k`` near ``sqrt(T)`` makes memory grow as
  ``sqrt(T)``. It applies to the sequential mode (a parallel linear
  recurrence is already checkpointed whole).

  Attributes:
    layer: the leaf layer wrapped.
    every: ``None`` (per-step checkpoints) or the chunk length ``k``, a
      positive int (it need not divide ``T``).
  """

  FACTORY: ClassVar[str] = "remat"
  NAME_PREFIX: ClassVar[str] = "remat"

  layer: Layer
  every: int | None = None

  def __post_init__(self):
    check_layer("layer", self.layer)
    if self.every is not None and (isinstance(self.every, bool)
                                   or not isinstance(self.every, int) or self.every < 1):
      raise ValueError(f"every must be a positive int (steps per recomputed chunk) or None, "
                       f"got {self.every!r}")

  def runs_fused_vjp(self) -> bool:
    """False: the gradient is autodiff of the checkpointed step."""
    return False

  def project(self, params, x):
    """The identity: the input half is recomputed inside :meth:`recur`."""
    del params
    return x

  def recur(self, params, carry, x):
    """The wrapped layer's whole ``step`` under ``jax.checkpoint``."""
    return jax.checkpoint(self.layer.step)(params, carry, x)

  def scan(self, params, xs, carry, lengths, options: RunOptions, resets=None):
    """The ``"scan"`` kernel (:mod:`rnn_jax.kernels`): the wrapped layer's steps, each under
    ``jax.checkpoint``; a linear recurrence in its parallel mode, checkpointed whole."""
    if options.parallel:
      run = lambda p, x, c: self.layer.scan(p, x, c, lengths, options, **with_resets(resets))
      return jax.checkpoint(run)(params, xs, carry)
    if self.every is not None:  # The wrapped layer's own steps, checkpointed by chunk.
      return _scan.scan_layer(self.layer, params, xs, carry, lengths, resets=resets,
                              reverse=options.reverse, unroll=options.unroll,
                              checkpoint_every=self.every)
    return _scan.scan_layer(self, params, xs, carry, lengths, resets=resets,
                            reverse=options.reverse, unroll=options.unroll)


def remat(layer: Layer, every: int | None = None) -> Layer:
  """``layer`` with its backward pass rematerialised (:class:`Remat`), at any nesting depth.

  A ``stack`` or ``bidirectional`` keeps its structure (and dropout) with
  each leaf layer wrapped; wrapping a ``remat`` again sets its ``every``. A
  wrapper of one layer (a dataclass with a ``layer`` field: ``zoneout``,
  ``weight_drop``) stays outside, the ``remat`` goes inside it, so that its
  dropout still acts. Params and carries are those of ``layer``.

  Args:
    layer: any layer.
    every: ``None`` (default): checkpoint every time step, keeping each
      step's carry and input. ``k``: keep the carry only every ``k`` steps
      and recompute each chunk of ``k`` steps in the backward pass; ``k``
      near ``sqrt(T)`` gives memory that grows as ``sqrt(T)`` (the
      Performance guide measures it).
  """
  check_layer("layer", layer)
  if isinstance(layer, Remat):
    return layer if layer.every == every else Remat(layer.layer, every)
  if isinstance(layer, Stack):
    return dataclasses.replace(layer, layers=tuple(remat(sub, every) for sub in layer.layers))
  if isinstance(layer, Bidirectional):
    return dataclasses.replace(layer, forward=remat(layer.forward, every),
                               backward=remat(layer.backward, every))
  if dataclasses.is_dataclass(layer) and "layer" in {f.name for f in dataclasses.fields(layer)}:
    return dataclasses.replace(layer, layer=remat(layer.layer, every))
  return Remat(layer, every)
