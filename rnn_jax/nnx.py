"""Flax NNX modules around rnn_jax layers: ``RNN`` for sequences, ``Cell`` for one step.

::

    from flax import nnx
    import rnn_jax
    from rnn_jax import nnx as rnn_nnx

    class Classifier(nnx.Module):
      def __init__(self, *, rngs: nnx.Rngs):
        layer = rnn_jax.stack([rnn_jax.lstm(64), rnn_jax.lstm(64)], dropout=0.2)
        self.rnn = rnn_nnx.RNN(layer, 28, rngs=rngs)
        self.head = nnx.Linear(64, 10, rngs=rngs)

      def __call__(self, xs, lengths):
        outputs = self.rnn(xs, lengths=lengths)
        return self.head(rnn_jax.last_output(outputs, lengths))

    model = Classifier(rngs=nnx.Rngs(params=0, dropout=1))
    model.eval()   # no dropout; model.train() turns it back on

Each module's parameters are one :class:`flax.nnx.Param`, ``params``, holding
the pytree ``layer.init(rngs.params(), input_size)`` returns, except that
every tuple in it (a ``stack``'s per-layer params) is stored as a dict keyed
``0, 1, ...``: ``nnx.Optimizer`` rebuilds its state from plain pytrees, where
a tuple inside a ``Param`` comes back as a dict, and its second update would
then fail on the mismatch. :meth:`RNN.layer_params` gives the pytree of
``layer.init`` back and :meth:`RNN.set_layer_params` puts in params built
elsewhere (e.g. by ``rnn_jax.interop.from_torch``); :func:`to_param_value`
and :func:`from_param_value` are the two conversions. Dropout (a ``stack``
with ``dropout > 0``, at any depth) draws its key from the ``"dropout"``
stream of :class:`flax.nnx.Rngs`, as ``nnx.Dropout`` does.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax

from rnn_jax.layer import Layer, RunOptions, check_layer, uses_dropout, with_compute_dtype
from rnn_jax.unroll import reset_carry, rnn


def to_param_value(params: Any) -> Any:
  """``layer.init``'s pytree as an NNX ``Param`` holds it: each tuple a dict keyed ``0, 1, ...``.

  Dicts keep their keys and array leaves stay as they are, so the leaves keep
  their order and key paths print alike (``[0]['w_ih']``).
  """
  if isinstance(params, (tuple, list)):
    return {index: to_param_value(value) for index, value in enumerate(params)}
  if isinstance(params, dict):
    return {key: to_param_value(value) for key, value in params.items()}
  return params


def from_param_value(layer: Layer, value: Any, input_size: int) -> Any:
  """The inverse of :func:`to_param_value`: the pytree ``layer.init(key, input_size)`` returns.

  Raises:
    ValueError: when ``value`` does not have the leaves of ``layer``'s params.
  """
  structure = jax.tree.structure(
      jax.eval_shape(lambda key: layer.init(key, input_size), jax.random.key(0)))
  leaves = jax.tree.leaves(value)
  if len(leaves) != structure.num_leaves:
    raise ValueError(f"params: expected the {structure.num_leaves} arrays of {layer!r}.init, "
                     f"got {len(leaves)}; build them with layer.init(key, input_size)")
  return jax.tree.unflatten(structure, leaves)


class _LayerParams(nnx.Module):
  """What ``RNN`` and ``Cell`` share: the layer, its ``Param`` and the dropout stream."""

  def _init_params(self, layer: Layer, input_size: int, rngs: nnx.Rngs, argument: str):
    check_layer(argument, layer)
    self.layer = layer
    self.input_size = int(input_size)
    self.params = nnx.Param(to_param_value(layer.init(rngs.params(), input_size)))

  def layer_params(self) -> Any:
    """The parameters as ``layer.init`` returns them (tuples for a ``stack``), for
    :func:`rnn_jax.rnn`, ``layer.step`` or ``rnn_jax.interop.to_torch``."""
    return from_param_value(self.layer, self.params.get_value(), self.input_size)

  def set_layer_params(self, params: Any) -> None:
    """Replaces the parameters by ``params``, a pytree like ``layer.init(key, input_size)``'s.

    Raises:
      ValueError: when ``params`` is not such a pytree (as :func:`rnn_jax.rnn` checks it).
    """
    expected = jax.eval_shape(lambda key: self.layer.init(key, self.input_size),
                              jax.random.key(0))
    if jax.tree.structure(params) != jax.tree.structure(expected) or any(
        tuple(jax.numpy.shape(got)) != want.shape
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected))):
      raise ValueError(f"params: expected a pytree like {self.layer!r}.init(key, "
                       f"{self.input_size}) returns, with the same shapes")
    self.params.set_value(to_param_value(params))

  def initial_carry(self, batch_shape=()) -> Any:
    """Zeros: the carry before the first step, leaves ``[*batch_shape, ...]`` (float32)."""
    return self.layer.initial_carry(batch_shape)

  def step(self, carry: Any, x: jax.Array, *,
           resets: jax.Array | None = None) -> tuple[Any, jax.Array]:
    """One time step without dropout, ``(carry, x_t [..., I]) -> (carry, y_t [..., O])``:
    what :func:`rnn_jax.rnn` computes at each step; with ``resets`` (bool ``[...]``,
    the carry's batch shape) the flagged entries start from the initial carry
    (:func:`rnn_jax.reset_carry`), as a run's ``resets[..., t]`` does.

    Raises:
      TypeError: for a layer that cannot be stepped (a bidirectional one).
    """
    if resets is not None:
      carry = reset_carry(self.layer, carry, resets)
    return self.layer.step(self.layer_params(), carry, x)


class RNN(_LayerParams):
  """Runs an rnn_jax layer over a sequence with :func:`rnn_jax.rnn`.

  Attributes:
    layer: the rnn_jax layer (static).
    input_size: ``I``, the input size the parameters were built for.
    params: an :class:`flax.nnx.Param` holding ``layer.init``'s pytree in
      :func:`to_param_value`'s layout (see the module doc).
    options: the :class:`rnn_jax.RunOptions` every call runs with.
    dropout_rngs: the ``"dropout"`` :class:`flax.nnx.RngStream` forked from
      the constructor's ``rngs``; ``None`` when ``layer`` has no dropout.
    deterministic: whether dropout is off; set by ``model.eval()`` /
      ``model.train()`` and ``nnx.view(model, deterministic=...)``.
    return_carry, time_major: see ``__init__``.
  """

  def __init__(self, layer: Layer, input_size: int, *, rngs: nnx.Rngs,
               options: RunOptions | None = None, return_carry: bool = False,
               time_major: bool = False, reverse: bool | None = None, unroll: int | None = None,
               vjp: str | None = None, hoist: bool | None = None, deterministic: bool = False,
               compute_dtype: Any = None):
    """Initialises the parameters with ``layer.init(rngs.params(), input_size)``.

    Args:
      layer: a cell (``rnn_jax.lstm(64)``...) or composite (``rnn_jax.stack``,
        ``rnn_jax.bidirectional``, ``rnn_jax.remat``).
      input_size: ``I``, the size of the last axis of the inputs.
      rngs: the ``"params"`` stream initialises the parameters; the
        ``"dropout"`` stream (each falls back to ``"default"``) is forked for
        dropout if ``layer`` has any.
      options: how to run the layer (:class:`rnn_jax.RunOptions`, as
        :func:`rnn_jax.rnn` takes it); ``None``: the defaults.
      return_carry: return ``(outputs, final_carry)``, in the order of
        ``rnn_jax.rnn``; by default (as ``flax.nnx.RNN``) only the outputs.
      time_major: whether inputs are ``[T, ..., I]`` rather than ``[..., T, I]``.
      reverse, unroll, vjp, hoist: sugar for the fields of ``options`` of
        the same names: each one given (not ``None``) replaces that field
        (:meth:`rnn_jax.RunOptions.of`).
      deterministic: start with dropout off (as after ``model.eval()``).
      compute_dtype: ``None`` or a dtype (``jnp.bfloat16``): every matrix product of
        ``layer`` reads operands in it, accumulated in float32, and the outputs are in
        it (:func:`rnn_jax.rnn`'s ``compute_dtype``); the ``layer`` attribute becomes
        ``rnn_jax.with_compute_dtype(layer, compute_dtype)``, so ``step`` computes alike.
        Parameters stay in their dtype (float32).

    Raises:
      TypeError: if ``layer`` is not an rnn_jax layer or ``options`` not a ``RunOptions``.
      ValueError: for a bad option value (an unknown ``vjp``, a ``compute_dtype`` that is
        not a floating dtype...).
    """
    if compute_dtype is not None:
      check_layer("layer (for a flax.nnx cell use flax.nnx.RNN)", layer)
      layer = with_compute_dtype(layer, compute_dtype)
    self._init_params(layer, input_size, rngs, "layer (for a flax.nnx cell use flax.nnx.RNN)")
    self.options = RunOptions.of(options, reverse=reverse, unroll=unroll, vjp=vjp, hoist=hoist)
    self.dropout_rngs = rngs["dropout"].fork() if uses_dropout(layer) else None
    self.deterministic = deterministic
    self.return_carry = return_carry
    self.time_major = time_major

  def __call__(self, xs: jax.Array, *, lengths: jax.Array | None = None,
               initial_carry: Any = None, deterministic: bool | None = None,
               rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
               resets: jax.Array | None = None):
    """Runs the layer.

    Args:
      xs: ``[..., T, I]`` (``[T, ..., I]`` if ``time_major``).
      lengths: optional ``[...]`` integer valid lengths.
      initial_carry: defaults to zeros.
      deterministic: overrides the ``deterministic`` attribute for this call.
      rngs: where this call's dropout key comes from instead of the layer's
        own stream: an ``nnx.Rngs`` (its ``"dropout"`` stream), an
        ``nnx.RngStream`` or a key.
      resets: optional bool ``[..., T]`` (``[T, ...]`` if ``time_major``): the
        carry starts over (zeros) at each flagged step, as :func:`rnn_jax.rnn`'s.

    Returns:
      ``outputs [..., T, O]``, or ``(outputs, final_carry)`` if ``return_carry``.
    """
    if deterministic is None:
      deterministic = self.deterministic
    dropout_rng = None
    if not deterministic and uses_dropout(self.layer):
      dropout_rng = self._dropout_key(rngs)
    outputs, carry = rnn(self.layer, self.layer_params(), xs, initial_carry=initial_carry,
                         lengths=lengths, options=self.options, time_major=self.time_major,
                         dropout_rng=dropout_rng, resets=resets)
    return (outputs, carry) if self.return_carry else outputs

  def _dropout_key(self, rngs: nnx.Rngs | nnx.RngStream | jax.Array | None) -> jax.Array:
    """The next dropout key: from ``rngs`` if given, else from the layer's own stream."""
    if rngs is None:
      return self.dropout_rngs()
    if isinstance(rngs, nnx.Rngs):
      return rngs["dropout"]()
    if isinstance(rngs, nnx.RngStream):
      return rngs()
    if isinstance(rngs, jax.Array):
      return rngs
    raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or a key, got {type(rngs)}")

  def set_view(self, deterministic: bool | None = None):
    """Used by ``nnx.view(model, deterministic=...)``.

    Args:
      deterministic: if True, dropout is off.
    """
    if deterministic is not None:
      self.deterministic = deterministic


class Cell(_LayerParams, nnx.RNNCellBase):
  """One time step of an rnn_jax cell (or stack) as a Flax NNX cell.

  Follows NNX's cell protocol (:class:`flax.nnx.RNNCellBase`):
  ``cell(carry, x_t) -> (carry, y_t)``, ``cell.initialize_carry(input_shape)``
  and ``num_feature_axes``, so it goes into ``flax.nnx.RNN`` or a
  hand-written decoder loop; the numbers are those of :func:`rnn_jax.rnn`
  with the same parameters. No dropout (as ``layer.step``).

  Attributes:
    layer: the rnn_jax layer (static).
    input_size: ``I``.
    params: an :class:`flax.nnx.Param`, as :class:`RNN`'s.
  """

  def __init__(self, layer: Layer, input_size: int, *, rngs: nnx.Rngs):
    """Initialises the parameters with ``layer.init(rngs.params(), input_size)``.

    Args:
      layer: a steppable rnn_jax layer (a cell, linear recurrence, stack or remat).
      input_size: ``I``, the size of the last axis of the inputs.
      rngs: its ``"params"`` stream initialises the parameters.

    Raises:
      TypeError: if ``layer`` is not an rnn_jax layer or is a bidirectional one.
    """
    self._init_params(layer, input_size, rngs, "layer (for a flax.nnx cell use it directly)")
    _check_steppable(layer, self.layer_params())

  def __call__(self, carry: Any, x: jax.Array, *,
               resets: jax.Array | None = None) -> tuple[Any, jax.Array]:
    """One step: ``(carry, x_t [..., I]) -> (carry, y_t [..., O])``, as :meth:`step`."""
    return self.step(carry, x, resets=resets)

  def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None,
                       carry_init: Any = None) -> Any:
    """Zeros for inputs of shape ``input_shape`` (``[..., I]``, one step; the batch is ``...``).

    Args:
      input_shape: the shape of one step's input.
      rngs: unused (the carry starts at zeros); there for NNX's protocol.
      carry_init: must be ``None``: rnn_jax carries start at zeros.

    Raises:
      ValueError: if ``carry_init`` is given.
    """
    del rngs
    if carry_init is not None:
      raise ValueError("carry_init: rnn_jax cells start from zeros; pass an initial carry to "
                       "the call instead")
    return self.initial_carry(tuple(input_shape[:-1]))

  @property
  def num_feature_axes(self) -> int:
    """1: inputs are ``[..., I]``."""
    return 1


def _check_steppable(layer: Layer, params: Any) -> None:
  """Raises ``TypeError`` now, not at the first call, when ``layer`` cannot be stepped
  (a bidirectional layer, at any depth); traces one step on shapes only."""
  x = jax.ShapeDtypeStruct((layer.input_size(params),), jax.numpy.float32)
  jax.eval_shape(lambda params, x: layer.step(params, layer.initial_carry(()), x), params, x)
