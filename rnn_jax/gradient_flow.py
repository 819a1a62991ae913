"""How far gradients travel back in time: the loss's gradient norm at every step's carry.

The classic account of why plain RNNs forget is that ``dL/dh_t`` shrinks (or
grows) geometrically with the distance between ``t`` and the loss.
:func:`carry_gradient_norms` measures it for any layer of the library with
one ``jax.grad``: a zero offset is added to the carry entering every step,
``carry_t <- carry_t + offset_t``, and the gradient of the loss with respect to
the offsets is the gradient with respect to those carries.

Step ``t``'s entry is the gradient with respect to the carry that step ``t``
reads (``h_{t-1}``; step 0's is the initial carry), so for a loss on the last
output of a sequence of length ``T`` it sits ``T - 1 - t`` steps before the
loss's step. Gated cells at initialisation can shrink the gradient below
float32's range within a few hundred steps (it is then exactly 0): measure long
sequences in float64 (``jax.enable_x64`` and float64 params and inputs).
Composite layers: a stack's entry gathers the carries of all its
layers; a bidirectional layer's gathers both halves at the same input position
(the backward half reads that position from the other end). With ``resets``
the carry a flagged step reads is the initial carry (plus its offset), so no
gradient crosses a segment boundary: the norms before it come from the
losses of their own segment only.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

import rnn_jax._scan as _scan
from rnn_jax.compose import MERGES, Bidirectional, Remat, Stack
from rnn_jax.layer import Layer, check_layer


def _run_with_offsets(layer: Layer, params, xs, offsets, carry, lengths, resets,
                      reverse: bool):
  """``layer``'s run over ``xs [T, ..., I]`` with ``offsets`` (carry-shaped, ``[T, ...]``
  leaves) added to the carry entering each step (after a reset's zeroing) and ``resets``
  (``None`` or ``[T, ...]`` bool, input time order). Returns ``(outputs, final carry)``."""
  if isinstance(layer, Remat):
    return _run_with_offsets(layer.layer, params, xs, offsets, carry, lengths, resets, reverse)
  if isinstance(layer, Bidirectional):
    out_forward, carry_forward = _run_with_offsets(layer.forward, params["forward"], xs,
                                                   offsets[0], carry[0], lengths, resets,
                                                   reverse)
    out_backward, carry_backward = _run_with_offsets(layer.backward, params["backward"], xs,
                                                     offsets[1], carry[1], lengths, resets,
                                                     not reverse)
    return MERGES[layer.merge](out_forward, out_backward), (carry_forward, carry_backward)
  if isinstance(layer, Stack):
    finals = []
    for index, sublayer in enumerate(layer.layers):
      xs, final = _run_with_offsets(sublayer, params[index], xs, offsets[index], carry[index],
                                    lengths, resets, reverse)
      finals.append(final)
    return xs, tuple(finals)

  def run(inputs, reverse):
    xs, offsets, flags = inputs

    def step(carry, inputs_t):
      x_t, offset_t = inputs_t
      return layer.step(params, jax.tree.map(jnp.add, carry, offset_t), x_t)

    final, outputs = _scan.scan_steps(_scan.masked(step), carry, (xs, offsets), lengths,
                                      resets=flags, reverse=reverse)
    return outputs, final

  flags = _scan.reset_flags(resets, lengths, reverse)
  return _scan.run_in_valid_order(run, (xs, offsets, flags), lengths, reverse)


def carry_gradient_norms(layer: Layer, params: Any, xs: jax.Array,
                         loss_fn: Callable[[jax.Array], jax.Array], *, lengths=None,
                         resets=None, initial_carry: Any = None, reverse: bool = False,
                         per_sequence: bool = False) -> jax.Array:
  """``||dL / dcarry_t||`` for every step ``t``, from one ``jax.grad``.

  Args:
    layer: any layer of the library (run step by step; dropout is off).
    params: its parameters.
    xs: ``[..., T, I]`` inputs (batch-major, as :func:`rnn_jax.rnn` takes them).
    loss_fn: ``outputs [..., T, O] -> scalar``, e.g. a loss on
      ``rnn_jax.summary(layer, outputs, lengths)``.
    lengths: optional ``[...]`` valid lengths (steps past a length hold the
      carry and get zero gradient).
    resets: optional bool ``[..., T]``: where a new segment starts, as in
      :func:`rnn_jax.rnn` (the carry read there is the initial carry).
    initial_carry: defaults to zeros.
    reverse: run the layer reading each sequence backwards.
    per_sequence: return one norm per sequence and step instead of one per step.

  Returns:
    ``[T]`` (the norm over the batch and all carry units) or, with
    ``per_sequence``, ``[T, ...]``: entry ``t`` is the norm of the gradient with
    respect to the carry that step ``t`` reads (see the module doc), the
    complex carries of an LRU included (by modulus).
  """
  check_layer("layer", layer)
  xs = jnp.asarray(xs)
  batch_shape = xs.shape[:-2]
  time_major = jnp.moveaxis(xs, -2, 0)
  num_steps = time_major.shape[0]
  if initial_carry is None:
    initial_carry = layer.initial_carry(batch_shape, jnp.result_type(jnp.float32, xs.dtype))
  if lengths is not None:
    lengths = jnp.clip(jnp.asarray(lengths), 0, num_steps).astype(jnp.int32)
  if resets is not None:
    resets = _scan.check_resets(resets, xs.shape[:-1], "[..., T], xs without its feature axis")
    resets = jnp.moveaxis(resets, -1, 0)
  offsets = jax.tree.map(lambda leaf: jnp.zeros((num_steps, *leaf.shape), leaf.dtype),
                         initial_carry)

  def loss_of_offsets(offsets):
    outputs, _ = _run_with_offsets(layer, params, time_major, offsets, initial_carry, lengths,
                                   resets, reverse)
    return loss_fn(jnp.moveaxis(outputs, 0, -2))

  grads = jax.grad(loss_of_offsets)(offsets)
  reduce_axes = -1 if per_sequence else tuple(range(1, 2 + len(batch_shape)))
  squares = sum(jnp.sum(jnp.abs(g) ** 2, axis=reduce_axes) for g in jax.tree.leaves(grads))
  return jnp.sqrt(squares)
