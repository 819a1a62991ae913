"""Regularisers of recurrent layers as layers: ``zoneout`` and ``weight_drop``.

Each wraps a layer and is itself a layer (:mod:`rnn_jax.layer`): hashable,
``repr`` rebuilds it, and it nests in ``stack`` and ``bidirectional`` like
any other. Both act only when :func:`rnn_jax.rnn` is given a
``dropout_rng``; :func:`rnn_jax.uses_dropout` sees them (their ``dropout``
is their largest rate), and at rate 0 they run the wrapped layer itself, so
the numbers are bitwise the plain layer's.

* :func:`zoneout` (Krueger et al. 2017, "Zoneout: Regularizing RNNs by
  Randomly Preserving Hidden Activations"): at every step each unit of the
  carry keeps its previous value with probability ``rate``.
* :func:`weight_drop` (DropConnect on the recurrent matrix, Wan et al. 2013,
  as AWD-LSTM uses it, Merity et al. 2018): one mask on ``w_hh`` per call.

Variational (locked) dropout between layers is ``stack(dropout=...,
variational=True)``; on a model's inputs and outputs it is
:func:`rnn_jax.compose.dropout_outputs` with ``variational=True`` (the
character LM's ``--variational_dropout``).

Rematerialisation goes innermost: ``zoneout(remat(lstm(H)), 0.1)`` checkpoints
each step and zones its carry, and :func:`rnn_jax.remat` of a regulariser puts
itself there (``remat(zoneout(lstm(H), 0.1)) == zoneout(remat(lstm(H)), 0.1)``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import rnn_jax._scan as _scan
from rnn_jax.cells import Cell, LSTMState
from rnn_jax.fused import FusedVJP
from rnn_jax.layer import Layer, RunOptions, Wrapper, check_layer, in_compute_dtype, with_resets


def _check_rate(name: str, rate: Any, allow_one: bool) -> float:
  """``rate`` as a float, or ``ValueError`` naming ``name`` unless it is in ``[0, 1]``
  (``[0, 1)`` unless ``allow_one``)."""
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
      0.0 <= rate <= 1.0 if allow_one else 0.0 <= rate < 1.0):
    bounds = "[0, 1]" if allow_one else "[0, 1)"
    raise ValueError(f"{name} must be a number in {bounds}, got {rate!r}")
  return float(rate)


@dataclasses.dataclass(frozen=True, repr=False)
class Zoneout(Wrapper):
  """A steppable layer whose carry units keep their previous values at random; built by
  :func:`zoneout`.

  With a dropout key, at step ``t`` each carry unit draws ``keep ~ Bernoulli(rate)``
  afresh: ``carry_t = where(keep, carry_{t-1}, new_t)``, ``new_t`` the wrapped
  layer's update. Without one (evaluation, ``step``), the expectation:
  ``carry_t = rate * carry_{t-1} + (1 - rate) * new_t``. An ``LSTMState`` carry
  takes ``rate`` on ``h`` and ``cell_rate`` on ``c``; any other carry ``rate``
  on every leaf. For the cells whose output is their hidden state
  (``simple_rnn``, ``lstm``, ``gru``) the output is the zoned hidden state, as
  in Krueger et al.; other layers output what their own step outputs.

  Attributes:
    layer: the wrapped steppable layer (anything with ``step``).
    rate: the probability that a unit keeps its value (``h`` for an LSTM).
    cell_rate: the same for an LSTM's ``c``; ``None``: ``rate``.
  """

  FACTORY: ClassVar[str] = "zoneout"
  NAME_PREFIX: ClassVar[str] = "zoneout"
  REPR_POSITIONAL: ClassVar[int] = 2

  layer: Layer
  rate: float
  cell_rate: float | None = None

  def __post_init__(self):
    check_layer("layer", self.layer)
    _check_rate("rate", self.rate, allow_one=True)
    if self.cell_rate is not None:
      _check_rate("cell_rate", self.cell_rate, allow_one=True)

  @property
  def rates(self) -> tuple[float, float]:
    """``(rate, cell_rate)`` with ``cell_rate`` filled in."""
    return self.rate, self.rate if self.cell_rate is None else self.cell_rate

  @property
  def dropout(self) -> float:
    """The largest rate: positive when a dropout key changes the run."""
    return max(self.rates)

  def runs_fused_vjp(self) -> bool:
    """False: the zoned steps are differentiated by autodiff (unless the rates are 0)."""
    return self.layer.runs_fused_vjp() if self.dropout == 0.0 else False

  def _leaf_rates(self, carry) -> Any:
    """The rate of each leaf of ``carry``, a pytree of its structure."""
    rate, cell_rate = self.rates
    if isinstance(carry, LSTMState):
      return LSTMState(rate, cell_rate)
    return jax.tree.map(lambda _: rate, carry)

  def _advance(self, params, carry, x):
    """The wrapped layer's step; through ``project``/``recur`` when it has them (so a
    ``remat``'s checkpointed ``recur`` is used)."""
    if hasattr(self.layer, "recur") and hasattr(self.layer, "project"):
      return self.layer.recur(params, carry, self.layer.project(params, x))
    return self.layer.step(params, carry, x)

  def _output(self, carry, y):
    """The zoned hidden state for the cells whose output is it, else the layer's ``y``."""
    inner = self.layer.tuned_like()
    if isinstance(inner, Cell) and isinstance(inner, FusedVJP):
      return inner.hidden(carry)
    return y

  def _zoned_step(self, params, carry, x, keep=None):
    """One step; ``keep`` (a pytree of bool masks like the carry) or ``None`` (expectation)."""
    new, y = self._advance(params, carry, x)
    if keep is None:
      new = jax.tree.map(lambda rate, old, n: rate * old + (1.0 - rate) * n,
                         self._leaf_rates(carry), carry, new)
    else:
      new = jax.tree.map(jnp.where, keep, carry, new)
    return new, self._output(new, y)

  def step(self, params, carry, x):
    """One step without a key: the expected carry ``rate * old + (1 - rate) * new``."""
    if self.dropout == 0.0:
      return self.layer.step(params, carry, x)
    return self._zoned_step(params, carry, x)

  def run(self, params, xs, carry, lengths, options: RunOptions, rng=None, resets=None):
    """``xs [T, ..., I]``: one scan of the zoned steps; masks ``[T, ...]`` drawn from ``rng``
    per step and unit (``None``: the expectation). ``resets``: the carry starts over
    where a segment starts (:func:`rnn_jax._scan.reset_flags`), before the zoned step."""
    if self.dropout == 0.0:
      return self.layer.run(params, xs, carry, lengths, options, rng, **with_resets(resets))
    inner = self.layer.tuned_like()
    unroll = (options.unroll if options.unroll is not None
              else inner.TUNED_UNROLL.get(jax.default_backend(), 1))
    num_steps = xs.shape[0]
    masks = None
    if rng is not None:
      rates = self._leaf_rates(carry)
      leaves, treedef = jax.tree.flatten(carry)
      keys = jax.random.split(rng, len(leaves))
      masks = jax.tree.unflatten(treedef, [
          jax.random.bernoulli(key, rate, (num_steps, *leaf.shape))
          for key, rate, leaf in zip(keys, jax.tree.leaves(rates), leaves)])

    def body(c, inputs, valid, reset=None):
      c = _scan.zero_where(reset, c)
      x_t, keep_t = inputs
      new, y = self._zoned_step(params, c, x_t, keep_t)
      return _scan.hold(valid, new, c), _scan.zero_invalid(valid, y)

    def run(inputs, reverse):
      steps, flags = inputs
      final, outputs = _scan.scan_steps(body, carry, steps, lengths, resets=flags,
                                        reverse=reverse, unroll=unroll)
      return outputs, final

    flags = _scan.reset_flags(resets, lengths, options.reverse)
    with jax.named_scope(self.name):
      outputs, final = _scan.run_in_valid_order(run, ((xs, masks), flags), lengths,
                                                options.reverse)
    return in_compute_dtype(self, outputs), final


def zoneout(layer: Layer, rate: float, cell_rate: float | None = None) -> Layer:
  """``layer`` whose carry units keep their previous values at random (Krueger et al. 2017).

  In training (``rnn(..., dropout_rng=key)``) each unit of the carry keeps
  its previous value with probability ``rate`` at every step, a fresh mask
  per step and unit; without a key the carry is ``rate * old + (1 - rate) *
  new`` (also in ``step``, for generation). ``rate=0`` (and ``cell_rate`` 0 or
  ``None``) runs ``layer`` itself, bitwise.

  Args:
    layer: any steppable layer (a cell, a linear recurrence, a stack, a
      ``remat``); wrap each layer of a stack to zone each.
    rate: in ``[0, 1]``; for an LSTM the rate of ``h``. At 1 the carry never
      leaves its initial value.
    cell_rate: for an LSTM, the rate of the cell state ``c`` (Krueger et al.
      use 0.5 for ``c`` and 0.05 for ``h``); ``None``: ``rate``.

  Raises:
    TypeError: ``layer`` is not an rnn_jax layer.
    ValueError: a rate outside ``[0, 1]``.

  Params and carry: ``layer``'s.
  """
  return Zoneout(layer, _check_rate("rate", rate, allow_one=True),
                 None if cell_rate is None else _check_rate("cell_rate", cell_rate,
                                                            allow_one=True))


@dataclasses.dataclass(frozen=True, repr=False)
class WeightDrop(Wrapper):
  """A cell whose recurrent matrix ``w_hh`` is dropped (DropConnect); built by
  :func:`weight_drop`.

  With a dropout key, one mask ``keep ~ Bernoulli(1 - rate)`` of ``w_hh``'s shape
  per call (the same at every step and for every sequence of the batch):
  ``w_hh * keep / (1 - rate)``; at ``rate = 1``, ``w_hh = 0``. Without a key,
  the wrapped layer itself.

  Attributes:
    layer: a layer whose params hold ``w_hh``: a cell, or a ``remat`` or
      ``zoneout`` of one.
    rate: the probability of dropping each recurrent weight, in ``[0, 1]``.
  """

  FACTORY: ClassVar[str] = "weight_drop"
  NAME_PREFIX: ClassVar[str] = "weight_drop"
  REPR_POSITIONAL: ClassVar[int] = 2

  layer: Layer
  rate: float

  def __post_init__(self):
    check_layer("layer", self.layer)
    _check_rate("rate", self.rate, allow_one=True)
    if not isinstance(self.layer.tuned_like(), Cell):
      raise ValueError(f"weight_drop: layer must be a cell with a recurrent matrix w_hh "
                       f"(lstm, gru, simple_rnn, or a remat/zoneout of one), got {self.layer!r}; "
                       "wrap each layer of a stack")

  @property
  def dropout(self) -> float:
    """The drop rate, and the wrapped layer's when larger."""
    return max(self.rate, self.layer.dropout)

  def dropped(self, params, key) -> dict:
    """``params`` with ``w_hh`` masked by one draw from ``key``, scaled by ``1 / (1 - rate)``
    (``w_hh = 0`` at ``rate = 1``)."""
    w_hh = params["w_hh"]
    if self.rate == 1.0:
      return {**params, "w_hh": jnp.zeros_like(w_hh)}
    keep = jax.random.bernoulli(key, 1.0 - self.rate, w_hh.shape)
    return {**params, "w_hh": jnp.where(keep, w_hh / (1.0 - self.rate), jnp.zeros_like(w_hh))}

  def run(self, params, xs, carry, lengths, options: RunOptions, rng=None, resets=None):
    """The wrapped layer's run, with ``w_hh`` dropped once for the call when ``rng`` is given."""
    if rng is None or self.rate == 0.0:
      return self.layer.run(params, xs, carry, lengths, options, rng, **with_resets(resets))
    mask_key, inner_key = jax.random.split(rng)
    return self.layer.run(self.dropped(params, mask_key), xs, carry, lengths, options, inner_key,
                          **with_resets(resets))


def weight_drop(layer: Layer, rate: float) -> Layer:
  """``layer`` with DropConnect on its recurrent matrix ``w_hh`` (AWD-LSTM's weight drop).

  In training (``rnn(..., dropout_rng=key)``) one mask per call drops each
  weight of ``w_hh`` with probability ``rate`` and scales the kept ones by
  ``1 / (1 - rate)``: the same mask at every step and for every sequence of
  the batch (a new key, a new mask). ``rate=1`` drops all (``w_hh = 0``, as
  torch's dropout at p = 1). Without a key, and at ``rate=0``, it is ``layer``
  itself, bitwise.

  Args:
    layer: a cell with ``w_hh`` (``lstm``, ``gru``, ``simple_rnn``), or a
      ``remat``/``zoneout`` of one; put ``weight_drop`` outside ``zoneout``.
    rate: in ``[0, 1]``.

  Raises:
    TypeError: ``layer`` is not an rnn_jax layer.
    ValueError: a rate outside ``[0, 1]``, or a layer that is not a cell.

  Params and carry: ``layer``'s.
  """
  return WeightDrop(layer, _check_rate("rate", rate, allow_one=True))
