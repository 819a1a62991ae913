"""A Flax Linen layer around any rnn_jax cell or composite, so it can sit in a Flax model.

::

    import flax.linen as nn, rnn_jax
    from rnn_jax import linen as rnn_linen

    class Classifier(nn.Module):
      @nn.compact
      def __call__(self, xs, lengths, train=False):
        outputs = rnn_linen.RNN(rnn_jax.lstm(64))(xs, lengths=lengths, deterministic=not train)
        return nn.Dense(10)(rnn_jax.last_output(outputs, lengths))

The layer holds a single parameter named ``"cell"`` whose value is exactly the
pytree ``cell.init(key, input_size)`` returns (``input_size`` is read off
``xs`` at ``init``), with ``key`` the PRNG key Flax hands to that parameter's
initialiser. So ``variables["params"] == {"cell": <cell.init pytree>}`` for a
top-level layer, and params built elsewhere, e.g. by
``rnn_jax.interop.from_torch``, are used as ``{"params": {"cell": params}}``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_jax.layer import check_layer, uses_dropout
from rnn_jax.unroll import rnn


class RNN(nn.Module):
  """Runs ``cell`` over a sequence with :func:`rnn_jax.rnn`.

  Attributes:
    cell: a cell (``rnn_jax.lstm(64)``...) or composite (``rnn_jax.stack``,
      ``rnn_jax.bidirectional``).
    return_carry: also return the final carry, as ``(outputs, final_carry)``
      (the order of ``rnn_jax.rnn``; ``flax.linen.RNN`` puts the carry first).
    time_major: whether ``xs`` is ``[T, ..., I]`` rather than ``[..., T, I]``.
    reverse: process each sequence from its last valid step (outputs keep
      input time order).
    unroll: steps per scan iteration; ``None``: the tuned value per cell and backend.
    vjp: how the scan's gradient is computed (``"autodiff"``, ``"fused"``, or
      ``None``: the layer's tuned choice for the backend), as in
      :func:`rnn_jax.rnn`.
    hoist: compute the input projection for all steps before the scan
      (``None``: the layer's tuned choice, as in :func:`rnn_jax.rnn`).
    rng_collection: the Flax RNG stream for dropout.

  Params: ``{"cell": cell.init(key, I)}``, see the module docstring.
  """

  cell: Any
  return_carry: bool = False
  time_major: bool = False
  reverse: bool = False
  unroll: int | None = None
  vjp: str | None = None
  hoist: bool | None = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, xs: jax.Array, *, lengths: jax.Array | None = None,
               initial_carry: Any = None, deterministic: bool = True):
    """Runs the cell.

    Args:
      xs: ``[..., T, I]`` (``[T, ..., I]`` if ``time_major``).
      lengths: optional ``[...]`` integer valid lengths.
      initial_carry: defaults to zeros.
      deterministic: if False and the cell has dropout (a ``stack`` with
        ``dropout > 0``), draw a key with ``make_rng(rng_collection)`` and
        apply it; pass ``rngs={"dropout": key}`` to ``apply`` then.

    Returns:
      ``outputs [..., T, O]``, or ``(outputs, final_carry)`` if ``return_carry``.
    """
    check_layer("RNN.cell (for a flax.linen cell use flax.linen.RNN)", self.cell)
    params = self.param("cell", self.cell.init, jnp.shape(xs)[-1])
    dropout_rng = None
    if not deterministic and uses_dropout(self.cell):
      dropout_rng = self.make_rng(self.rng_collection)
    outputs, carry = rnn(self.cell, params, xs, initial_carry=initial_carry, lengths=lengths,
                         reverse=self.reverse, time_major=self.time_major, unroll=self.unroll,
                         dropout_rng=dropout_rng, hoist=self.hoist, vjp=self.vjp)
    return (outputs, carry) if self.return_carry else outputs
