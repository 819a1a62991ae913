"""A Flax NNX layer around any rnn_jax layer, so it can sit in an NNX model.

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
        outputs, _ = self.rnn(xs, lengths=lengths)
        return self.head(rnn_jax.last_output(outputs, lengths))

    model = Classifier(rngs=nnx.Rngs(params=0, dropout=1))
    model.eval()   # no dropout; model.train() turns it back on

The layer's parameters are one :class:`flax.nnx.Param`, ``params``, whose
value is exactly the pytree ``layer.init(rngs.params(), input_size)`` returns:
``rnn.params.get_value()`` gives it back, and ``rnn.params.set_value(params)``
puts in params built elsewhere (e.g. by ``rnn_jax.interop.from_torch``).
Dropout (a ``stack`` with ``dropout > 0``, at any depth) draws its key from
the ``"dropout"`` stream of :class:`flax.nnx.Rngs`, as ``nnx.Dropout`` does.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax

from rnn_jax.layer import Layer, check_layer, uses_dropout
from rnn_jax.unroll import rnn


class RNN(nnx.Module):
  """Runs an rnn_jax layer over a sequence with :func:`rnn_jax.rnn`.

  Attributes:
    layer: the rnn_jax layer (static).
    params: an :class:`flax.nnx.Param` holding ``layer.init``'s pytree.
    dropout_rngs: the ``"dropout"`` :class:`flax.nnx.RngStream` forked from
      the constructor's ``rngs``; ``None`` when ``layer`` has no dropout.
    deterministic: whether dropout is off; set by ``model.eval()`` /
      ``model.train()`` and ``nnx.view(model, deterministic=...)``.
    return_carry, time_major, reverse, unroll, vjp, hoist: see ``__init__``.
  """

  def __init__(self, layer: Layer, input_size: int, *, rngs: nnx.Rngs,
               return_carry: bool = True, time_major: bool = False, reverse: bool = False,
               unroll: int | None = None, vjp: str | None = None,
               hoist: bool | None = None, deterministic: bool = False):
    """Initialises the parameters with ``layer.init(rngs.params(), input_size)``.

    Args:
      layer: a cell (``rnn_jax.lstm(64)``...) or composite (``rnn_jax.stack``,
        ``rnn_jax.bidirectional``, ``rnn_jax.remat``).
      input_size: ``I``, the size of the last axis of the inputs.
      rngs: the ``"params"`` stream initialises the parameters; the
        ``"dropout"`` stream (each falls back to ``"default"``) is forked for
        dropout if ``layer`` has any.
      return_carry: return ``(outputs, final_carry)``, in the order of
        ``rnn_jax.rnn``; if False, only the outputs.
      time_major: whether inputs are ``[T, ..., I]`` rather than ``[..., T, I]``.
      reverse: process each sequence from its last valid step (outputs keep
        input time order).
      unroll: time steps per scan iteration; ``None``: the layer's tuned value
        for the backend.
      vjp: how the scan's gradient is computed (``"autodiff"``, ``"fused"``,
        or ``None``: the layer's tuned choice for the backend).
      hoist: compute the input projection for all steps before the scan
        (``None``: the layer's tuned choice, as in :func:`rnn_jax.rnn`).
      deterministic: start with dropout off (as after ``model.eval()``).

    Raises:
      TypeError: if ``layer`` is not an rnn_jax layer.
    """
    check_layer("layer (for a flax.nnx cell use flax.nnx.RNN)", layer)
    self.layer = layer
    self.params = nnx.Param(layer.init(rngs.params(), input_size))
    self.dropout_rngs = rngs["dropout"].fork() if uses_dropout(layer) else None
    self.deterministic = deterministic
    self.return_carry = return_carry
    self.time_major = time_major
    self.reverse = reverse
    self.unroll = unroll
    self.vjp = vjp
    self.hoist = hoist

  def __call__(self, xs: jax.Array, *, lengths: jax.Array | None = None,
               initial_carry: Any = None, deterministic: bool | None = None,
               rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None):
    """Runs the layer.

    Args:
      xs: ``[..., T, I]`` (``[T, ..., I]`` if ``time_major``).
      lengths: optional ``[...]`` integer valid lengths.
      initial_carry: defaults to zeros.
      deterministic: overrides the ``deterministic`` attribute for this call.
      rngs: where this call's dropout key comes from instead of the layer's
        own stream: an ``nnx.Rngs`` (its ``"dropout"`` stream), an
        ``nnx.RngStream`` or a key.

    Returns:
      ``(outputs [..., T, O], final_carry)``, or only ``outputs`` if not
      ``return_carry``.
    """
    if deterministic is None:
      deterministic = self.deterministic
    dropout_rng = None
    if not deterministic and uses_dropout(self.layer):
      dropout_rng = self._dropout_key(rngs)
    outputs, carry = rnn(self.layer, self.params.get_value(), xs, initial_carry=initial_carry,
                         lengths=lengths, reverse=self.reverse, time_major=self.time_major,
                         unroll=self.unroll, dropout_rng=dropout_rng, hoist=self.hoist,
                         vjp=self.vjp)
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
