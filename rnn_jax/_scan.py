"""The scan over time, written once: step indices, length masks, resets, valid-prefix reversal.

Every recurrence in the package runs through these few functions: the cells'
``jax.lax.scan`` (:func:`scan_steps`, or :func:`scan_chunked` when the backward
pass keeps the carry only every few steps), the fused backward's forward and
reverse scans (:mod:`rnn_jax.fused`), and the linear recurrences' parallel
mode (:mod:`rnn_jax.linear_rnn`), which needs the mask without a scan.

Variable lengths follow ``tf.nn.dynamic_rnn``: past a sequence's length the
carry is held (:func:`hold`) and outputs are zero (:func:`zero_invalid`); with
``reverse=True`` only each valid prefix is reversed (:func:`reverse_padded`,
``tf.reverse_sequence``), so a backward pass starts at the true last step.
All arrays are time-major, ``[T, ..., F]``; ``lengths`` is ``[...]`` int32,
already clipped to ``[0, T]`` by :func:`rnn_jax.rnn`.

Resets (``resets [T, ...]`` bool, in input time order: ``resets[t]`` starts a
new segment at step ``t``) become, once, in :func:`reset_flags`, the flags
"zero the carry before this step, in reading order" that every scan body
receives next to its validity mask (``reset_t [..., 1]``, or ``None``), and
that the linear recurrences' parallel mode turns into ``a_t = 0``. Every
layer's initial carry is zeros, so zeroing the carry is starting over.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def reverse_padded(xs: jax.Array, lengths: jax.Array) -> jax.Array:
  """Reverses the first ``lengths[b]`` steps of each sequence, leaving padding in place.

  Args:
    xs: ``[T, ..., F]``, time-major.
    lengths: ``[...]`` integers, clipped to ``[0, T]`` (as in :func:`rnn_jax.rnn`).

  Returns:
    ``[T, ..., F]`` with ``out[t, b] = xs[lengths[b] - 1 - t, b]`` for ``t < lengths[b]``.
  """
  lengths = jnp.clip(jnp.asarray(lengths), 0, xs.shape[0])
  steps = step_indices(xs.shape[0], lengths.ndim)
  index = jnp.where(steps < lengths, lengths - 1 - steps, steps)
  return jnp.take_along_axis(xs, index[..., None], axis=0)


def step_indices(num_steps: int, batch_ndim: int = 0) -> jax.Array:
  """``arange(T)`` as int32, shaped ``[T, 1, ...]`` to broadcast against ``batch_ndim`` axes."""
  return jnp.arange(num_steps, dtype=jnp.int32).reshape((-1,) + (1,) * batch_ndim)


def valid_mask(num_steps: int, lengths: jax.Array) -> jax.Array:
  """``[T, ..., 1]`` bool, true where step ``t`` is inside its sequence (``t < lengths``)."""
  return (step_indices(num_steps, lengths.ndim) < lengths)[..., None]


def reset_flags(resets: jax.Array | None, lengths: jax.Array | None,
                reverse: bool) -> jax.Array | None:
  """Where the carry is zeroed before a step, from ``resets`` in input time order.

  A segment starts at each flagged step (and at step 0) and ends before the
  next flagged step (or at the sequence's last valid step). Reading forwards,
  the carry entering step ``t`` is zeroed where ``resets[t]``. Reading
  backwards (``reverse=True``, a bidirectional layer's backward half) each
  segment is read from its last step to its first, so the carry entering step
  ``t`` is zeroed where step ``t`` ends a segment that is not the last one,
  i.e. where ``resets[t + 1]`` and ``t + 1 < lengths``: the first step read
  (the last valid one) keeps the initial carry, which thus enters the last
  segment, and ``resets[0]`` changes nothing. Flags at or past a sequence's
  length change nothing (the result is false there, as the carry is held).

  Args:
    resets: ``None`` or ``[T, ...]`` bool, time-major.
    lengths: ``None`` or ``[...]`` int32 in ``[0, T]``.
    reverse: whether the sequence is read from its last valid step to its first.

  Returns:
    ``None`` (no resets) or ``[T, ..., 1]`` bool indexed by input step: pass it
    through :func:`run_in_valid_order` with the inputs (it reverses each valid
    prefix when it reverses the inputs) and then to :func:`scan_steps`.
  """
  if resets is None:
    return None
  if reverse:
    resets = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])])
  if lengths is not None:
    last_flagged = step_indices(resets.shape[0], lengths.ndim) + int(reverse)
    resets = resets & (last_flagged < lengths)
  return resets[..., None]


def check_resets(resets, expected_shape: tuple, layout: str, name: str = "resets") -> jax.Array:
  """``resets`` as a bool array of ``expected_shape``; ``ValueError`` naming ``name`` otherwise."""
  resets = jnp.asarray(resets)
  if resets.dtype != jnp.bool_ or resets.shape != tuple(expected_shape):
    raise ValueError(f"{name}: expected a bool array of shape {tuple(expected_shape)} ({layout}), "
                     f"got {resets.dtype} of shape {resets.shape}")
  return resets


def zero_where(reset: jax.Array | None, carry: Any) -> Any:
  """The pytree ``carry`` with zeros where ``reset`` (``[..., 1]`` bool), i.e. the initial
  carry of every layer; unchanged (the same values, bitwise) where not, or for ``None``."""
  if reset is None:
    return carry
  return jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), carry)


def hold(valid: jax.Array | None, new: Any, old: Any) -> Any:
  """The pytree ``new`` where ``valid``, else ``old``: a carry held past the length."""
  if valid is None:
    return new
  return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, old)


def zero_invalid(valid: jax.Array | None, values: Any) -> Any:
  """The pytree ``values`` where ``valid``, else zeros (``None`` leaves stay ``None``)."""
  if valid is None:
    return values
  return jax.tree.map(lambda v: jnp.where(valid, v, jnp.zeros_like(v)), values)


def scan_steps(body: Callable, carry: Any, inputs: Any, lengths: jax.Array | None = None, *,
               resets: jax.Array | None = None, reverse: bool = False,
               unroll: int = 1) -> tuple[Any, Any]:
  """``jax.lax.scan`` over time that hands each step its validity mask and reset flag.

  Args:
    body: ``(carry, input_t, valid_t, reset_t) -> (carry, output_t)``;
      ``valid_t`` is ``[..., 1]`` bool (``t < lengths``), or ``None`` when
      ``lengths`` is; ``reset_t`` is ``[..., 1]`` bool (zero the carry
      before this step; only ever true where ``valid_t``), or ``None``.
    carry: the initial carry.
    inputs: a pytree of ``[T, ...]`` arrays.
    lengths: ``None`` or ``[...]`` int32 in ``[0, T]``.
    resets: ``None`` or :func:`reset_flags`' ``[T, ..., 1]``, indexed like ``inputs``.
    reverse: scan from the last step to the first (``jax.lax.scan``'s; this
      does not reverse valid prefixes, see :func:`run_in_valid_order`).
    unroll: ``jax.lax.scan``'s unroll.

  Returns:
    ``(final carry, outputs stacked over time)``.
  """
  num_steps = jax.tree.leaves(inputs)[0].shape[0]
  return jax.lax.scan(_with_masks(body, lengths), carry,
                      (step_indices(num_steps), inputs, resets), reverse=reverse, unroll=unroll)


def _with_masks(body: Callable, lengths: jax.Array | None) -> Callable:
  """The ``jax.lax.scan`` step ``(carry, (t, input_t, reset_t))`` calling ``body`` with masks."""

  def step(carry, indexed):
    t, input_t, reset_t = indexed
    valid = None if lengths is None else (t < lengths)[..., None]
    return body(carry, input_t, valid, reset_t)

  return step


def scan_chunked(body: Callable, carry: Any, inputs: Any, lengths: jax.Array | None = None, *,
                 chunk: int, resets: jax.Array | None = None, reverse: bool = False,
                 unroll: int = 1) -> tuple[Any, Any]:
  """:func:`scan_steps` whose backward pass keeps the carry only every ``chunk`` steps.

  An outer ``jax.lax.scan`` over chunks of ``chunk`` steps runs an inner
  scan over the steps of each chunk under ``jax.checkpoint``: differentiating
  it saves the carry entering each chunk (``ceil(T / chunk)`` carries) and,
  while the backward pass is inside one chunk, recomputes that chunk's steps
  and keeps their residuals (``chunk`` steps' worth). With ``chunk`` near
  ``sqrt(T)`` memory grows as ``sqrt(T)``; the price is one more forward pass.

  ``T`` need not be a multiple of ``chunk``: the inputs are padded at the end
  with steps marked invalid (``body`` holds the carry there, as past a
  length; no reset flags there) and the padding's outputs are dropped.
  Arguments and result as :func:`scan_steps`, plus ``chunk``, a positive int.
  """
  num_steps = jax.tree.leaves(inputs)[0].shape[0]
  num_chunks = -(-num_steps // chunk)
  padding = num_chunks * chunk - num_steps
  if padding and lengths is None:
    lengths = jnp.int32(num_steps)  # Marks the padded steps invalid, whatever the batch shape.
  pad = lambda x: jnp.concatenate([x, jnp.zeros((padding, *x.shape[1:]), x.dtype)])
  as_chunks = lambda x: (pad(x) if padding else x).reshape((num_chunks, chunk, *x.shape[1:]))
  steps = step_indices(num_chunks * chunk).reshape((num_chunks, chunk))  # Padding: t >= T.
  chunked_inputs, chunked_resets = jax.tree.map(as_chunks, (inputs, resets))

  @jax.checkpoint
  def run_chunk(carry, chunk_inputs):
    return jax.lax.scan(_with_masks(body, lengths), carry, chunk_inputs, reverse=reverse,
                        unroll=unroll)

  final, outputs = jax.lax.scan(run_chunk, carry, (steps, chunked_inputs, chunked_resets),
                                reverse=reverse)
  outputs = jax.tree.map(lambda y: y.reshape((num_chunks * chunk, *y.shape[2:]))[:num_steps],
                         outputs)
  return final, outputs


def masked(step: Callable) -> Callable:
  """Turns ``step(carry, x_t) -> (carry, y_t)`` into a :func:`scan_steps` body that zeroes
  the carry where a segment starts, holds it and zeroes ``y_t`` past each sequence's length."""

  def body(carry, x, valid, reset=None):
    carry = zero_where(reset, carry)
    new_carry, y = step(carry, x)
    return hold(valid, new_carry, carry), zero_invalid(valid, y)

  return body


def run_in_valid_order(run: Callable, xs: Any, lengths: jax.Array | None,
                       reverse: bool) -> tuple[jax.Array, Any]:
  """Runs ``run(xs, reverse) -> (outputs, carry)`` so that ``reverse`` means valid prefixes.

  ``xs`` is a ``[T, ...]`` array or a pytree of them (all reversed alike).

  With ``lengths`` and ``reverse``, each sequence's valid prefix is reversed
  before ``run`` (which then reads forwards) and the outputs are put back in
  input time order; otherwise ``run`` handles ``reverse`` itself (for a whole
  sequence, reading backwards is the same thing).
  """
  if reverse and lengths is not None:
    outputs, carry = run(jax.tree.map(lambda x: reverse_padded(x, lengths), xs), False)
    return reverse_padded(outputs, lengths), carry
  return run(xs, reverse)


def scan_layer(layer: Any, params: Any, xs: jax.Array, carry: Any,
               lengths: jax.Array | None = None, *, resets: jax.Array | None = None,
               reverse: bool = False, unroll: int = 1, hoist: bool = False,
               checkpoint_every: int | None = None,
               checkpoint_steps: bool = False) -> tuple[jax.Array, Any]:
  """Runs a steppable layer (``project``/``recur``) over ``xs [T, ..., I]`` with one scan.

  Args:
    layer: anything with ``project(params, x)`` and ``recur(params, carry, px)``.
    params: its parameters.
    xs: ``[T, ..., I]``.
    carry: the initial carry.
    lengths: ``None`` or ``[...]`` int32 in ``[0, T]``.
    resets: ``None`` or ``[T, ...]`` bool in input time order: the carry
      starts over (zeros) at each flagged step (:func:`reset_flags`).
    reverse: read each valid prefix from its last step to its first.
    unroll: ``jax.lax.scan``'s unroll.
    hoist: compute ``project`` for all steps as one matmul before the scan.
    checkpoint_every: if given, keep the carry only every this many steps for
      the backward pass and recompute each chunk (:func:`scan_chunked`).
    checkpoint_steps: put each step (``recur``, and ``project`` unless
      hoisted) under ``jax.checkpoint``: the backward pass keeps only each
      step's carry and input and recomputes the rest (``vjp="remat"``).

  Returns:
    ``(outputs [T, ..., O], final carry)``, outputs in input time order.
  """

  def run(inputs, reverse):
    xs, flags = inputs
    return scan_in_reading_order(layer, params, xs, carry, lengths, flags, reverse=reverse,
                                 unroll=unroll, hoist=hoist, checkpoint_every=checkpoint_every,
                                 checkpoint_steps=checkpoint_steps)

  return run_in_valid_order(run, (xs, reset_flags(resets, lengths, reverse)), lengths, reverse)


def scan_in_reading_order(layer: Any, params: Any, xs: jax.Array, carry: Any,
                          lengths: jax.Array | None, flags: jax.Array | None, *, reverse: bool,
                          unroll: int = 1, hoist: bool = False,
                          checkpoint_every: int | None = None,
                          checkpoint_steps: bool = False) -> tuple[jax.Array, Any]:
  """:func:`scan_layer` once valid prefixes are in reading order (:func:`run_in_valid_order`):
  ``reverse`` is ``jax.lax.scan``'s and ``flags`` are :func:`reset_flags`' placed like ``xs``.
  Returns ``(outputs, final carry)``."""
  inputs = layer.project(params, xs) if hoist else xs
  advance = layer.recur if hoist else (lambda p, c, x: layer.recur(p, c, layer.project(p, x)))
  step = lambda c, x: advance(params, c, x)
  if checkpoint_steps:
    step = jax.checkpoint(step)
  if checkpoint_every is None:
    final, outputs = scan_steps(masked(step), carry, inputs, lengths, resets=flags,
                                reverse=reverse, unroll=unroll)
  else:
    final, outputs = scan_chunked(masked(step), carry, inputs, lengths, chunk=checkpoint_every,
                                  resets=flags, reverse=reverse, unroll=unroll)
  return outputs, final
