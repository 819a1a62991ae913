"""Flax Linen modules around rnn_jax layers: ``RNN`` for sequences, ``Cell`` for one step.

::

    import flax.linen as nn, rnn_jax
    from rnn_jax import linen as rnn_linen

    class Classifier(nn.Module):
      @nn.compact
      def __call__(self, xs, lengths, train=False):
        outputs = rnn_linen.RNN(rnn_jax.lstm(64))(xs, lengths=lengths, deterministic=not train)
        return nn.Dense(10)(rnn_jax.last_output(outputs, lengths))

Each module holds a single parameter named ``"layer"`` whose value is exactly
the pytree ``layer.init(key, input_size)`` returns (``input_size`` is read off
the inputs at ``init``), with ``key`` the PRNG key Flax hands to that
parameter's initialiser. So ``variables["params"] == {"layer": <layer.init
pytree>}`` for a top-level module, and params built elsewhere, e.g. by
``rnn_jax.interop.from_torch``, are used as ``{"params": {"layer": params}}``.
(Before the attribute ``cell`` became ``layer``, the parameter was named
``"cell"``: ``{"layer": variables["params"].pop("cell")}`` renames old ones.)

Stepping with ``RNN``: its :meth:`RNN.initial_carry` and :meth:`RNN.step`
take no parameters of their own; call them through ``apply`` with the
variables of an initialised ``RNN``, e.g.
``model.apply(variables, carry, x_t, method="step")``.
"""

from __future__ import annotations

import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_jax.layer import Layer, RunOptions, check_layer, uses_dropout, with_compute_dtype
from rnn_jax.unroll import reset_carry, rnn

PARAM = "layer"
"""The name of the one parameter of :class:`RNN` and :class:`Cell`."""


class RNN(nn.Module):
  """Runs ``layer`` over a sequence with :func:`rnn_jax.rnn`.

  Attributes:
    layer: a cell (``rnn_jax.lstm(64)``...) or composite (``rnn_jax.stack``,
      ``rnn_jax.bidirectional``, ``rnn_jax.remat``).
    options: how to run it (:class:`rnn_jax.RunOptions`, as :func:`rnn_jax.rnn`
      takes it); ``None``: the defaults.
    return_carry: also return the final carry, as ``(outputs, final_carry)``
      (the order of ``rnn_jax.rnn``; ``flax.linen.RNN`` puts the carry
      first). Default: outputs only, as ``flax.linen.RNN``.
    time_major: whether ``xs`` is ``[T, ..., I]`` rather than ``[..., T, I]``.
    reverse, unroll, vjp, hoist: sugar for the fields of ``options`` of the
      same names: each one given (not ``None``) replaces that field
      (:meth:`rnn_jax.RunOptions.of`).
    rng_collection: the Flax RNG stream for dropout.
    cell: the old name of ``layer``; deprecated.
    compute_dtype: ``None`` or a dtype (``jnp.bfloat16``): every matrix product of
      ``layer`` reads operands in it, accumulated in float32, and the outputs are in it
      (:func:`rnn_jax.rnn`'s ``compute_dtype``); the module's ``layer`` becomes
      ``rnn_jax.with_compute_dtype(layer, compute_dtype)``, so :meth:`step` computes alike.
      Parameters stay in their dtype (float32).

  Params: ``{"layer": layer.init(key, I)}``, see the module docstring.
  """

  layer: Layer | None = None
  options: RunOptions | None = None
  return_carry: bool = False
  time_major: bool = False
  reverse: bool | None = None
  unroll: int | None = None
  vjp: str | None = None
  hoist: bool | None = None
  rng_collection: str = "dropout"
  cell: Layer | None = None
  compute_dtype: Any = None

  def __post_init__(self):
    if self.cell is not None:
      warnings.warn("rnn_jax.linen.RNN(cell=...) is deprecated; use layer=... (the name "
                    "rnn_jax.nnx.RNN uses)", DeprecationWarning, stacklevel=4)
      if self.layer is not None:
        raise ValueError("RNN: pass the layer once, as layer=... (cell is its deprecated name)")
      object.__setattr__(self, "layer", self.cell)
      object.__setattr__(self, "cell", None)
    check_layer("RNN.layer (for a flax.linen cell use flax.linen.RNN)", self.layer)
    if self.compute_dtype is not None:
      object.__setattr__(self, "layer", with_compute_dtype(self.layer, self.compute_dtype))
    super().__post_init__()

  @property
  def run_options(self) -> RunOptions:
    """``options`` with the sugar fields merged in: what each call passes to ``rnn``."""
    return RunOptions.of(self.options, reverse=self.reverse, unroll=self.unroll, vjp=self.vjp,
                         hoist=self.hoist)

  @nn.compact
  def __call__(self, xs: jax.Array, *, lengths: jax.Array | None = None,
               initial_carry: Any = None, deterministic: bool = True,
               resets: jax.Array | None = None):
    """Runs the layer.

    Args:
      xs: ``[..., T, I]`` (``[T, ..., I]`` if ``time_major``).
      lengths: optional ``[...]`` integer valid lengths.
      initial_carry: defaults to zeros.
      deterministic: if False and the layer has dropout (a ``stack`` with
        ``dropout > 0``), draw a key with ``make_rng(rng_collection)`` and
        apply it; pass ``rngs={"dropout": key}`` to ``apply`` then.
      resets: optional bool ``[..., T]`` (``[T, ...]`` if ``time_major``): the
        carry starts over (zeros) at each flagged step, as :func:`rnn_jax.rnn`'s.

    Returns:
      ``outputs [..., T, O]``, or ``(outputs, final_carry)`` if ``return_carry``.
    """
    params = self.param(PARAM, self.layer.init, jnp.shape(xs)[-1])
    dropout_rng = None
    if not deterministic and uses_dropout(self.layer):
      dropout_rng = self.make_rng(self.rng_collection)
    outputs, carry = rnn(self.layer, params, xs, initial_carry=initial_carry, lengths=lengths,
                         options=self.run_options, time_major=self.time_major,
                         dropout_rng=dropout_rng, resets=resets)
    return (outputs, carry) if self.return_carry else outputs

  @nn.nowrap
  def initial_carry(self, batch_shape=()) -> Any:
    """Zeros: the carry before the first step, leaves ``[*batch_shape, ...]`` (float32).

    Needs no variables: ``model.initial_carry((B,))`` works on an unbound module.
    """
    return self.layer.initial_carry(batch_shape)

  def step(self, carry: Any, x: jax.Array, *,
           resets: jax.Array | None = None) -> tuple[Any, jax.Array]:
    """One time step without dropout, ``(carry, x_t [..., I]) -> (carry, y_t [..., O])``:
    what the run computes at each step; with ``resets`` (bool ``[...]``, the
    carry's batch shape) the flagged entries start from the initial carry
    (:func:`rnn_jax.reset_carry`), as a run's ``resets[..., t]`` does.

    Reads the parameter of an initialised ``RNN``:
    ``model.apply(variables, carry, x_t, method="step")`` (or ``model.step`` inside
    a parent module's method, after the ``RNN`` was called once).

    Raises:
      TypeError: for a layer that cannot be stepped (a bidirectional one).
    """
    if not self.has_variable("params", PARAM):
      raise ValueError("RNN.step: no parameters yet; initialise with model.init(key, xs) "
                       "(the whole sequence) and call model.apply(variables, carry, x_t, "
                       "method='step')")
    if resets is not None:
      carry = reset_carry(self.layer, carry, resets)
    return self.layer.step(self.get_variable("params", PARAM), carry, x)


class Cell(nn.RNNCellBase):
  """One time step of an rnn_jax cell (or stack) as a Flax Linen cell.

  Follows Flax's cell protocol: ``cell(carry, x_t) -> (carry, y_t)``,
  ``cell.initialize_carry(rng, input_shape)`` and ``num_feature_axes``, so it
  goes into ``flax.linen.RNN``, ``nn.scan`` or a hand-written decoder loop
  (sample, feed back, teacher forcing); the numbers are those of
  :func:`rnn_jax.rnn` with the same parameters. No dropout (as ``layer.step``).

  Attributes:
    layer: a steppable rnn_jax layer (a cell, linear recurrence, stack or remat;
      not a bidirectional one).

  Params: ``{"layer": layer.init(key, I)}``, as :class:`RNN`'s.
  """

  layer: Layer

  def __post_init__(self):
    check_layer("Cell.layer (a flax.linen cell is already a cell)", self.layer)
    super().__post_init__()

  @nn.compact
  def __call__(self, carry: Any, x: jax.Array, *,
               resets: jax.Array | None = None) -> tuple[Any, jax.Array]:
    """One step: ``(carry, x_t [..., I]) -> (carry, y_t [..., O])``; ``resets`` (bool
    ``[...]``) starts the flagged entries from the initial carry (:func:`rnn_jax.reset_carry`)."""
    params = self.param(PARAM, self.layer.init, jnp.shape(x)[-1])
    if resets is not None:
      carry = reset_carry(self.layer, carry, resets)
    return self.layer.step(params, carry, x)

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array | None, input_shape: tuple[int, ...]) -> Any:
    """Zeros for inputs of shape ``input_shape`` (``[..., I]``, one step; the batch is ``...``).

    Args:
      rng: unused (the carry starts at zeros); there for Flax's protocol.
      input_shape: the shape of one step's input.
    """
    del rng
    return self.layer.initial_carry(tuple(input_shape[:-1]))

  @property
  def num_feature_axes(self) -> int:
    """1: inputs are ``[..., I]``."""
    return 1

