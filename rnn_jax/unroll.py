"""Unrolling a cell over time: ``rnn`` and the single scan every cell shares.

``rnn(cell, params, xs, ...)`` checks its arguments, moves time to the front
and hands over to one of two runners:

* :func:`scan_cell`, the ``jax.lax.scan`` over time of any :class:`~rnn_jax.cells.Cell`
  (used by every built-in cell, masked for variable lengths);
* ``cell.run`` for composite layers (``stack``, ``bidirectional``), which call
  :func:`scan_cell` layer by layer.

Variable lengths follow ``tf.nn.dynamic_rnn``: past a sequence's length its
carry is held and its outputs are zero; with ``reverse=True`` only each valid
prefix is reversed (``tf.reverse_sequence``), so a backward pass starts at the
true last step. Lengths outside ``[0, T]`` are clipped to it: a length of 0
gives zero outputs and returns the initial carry; a length above ``T`` acts as
``T``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax.cells import Cell


def reverse_padded(xs: jax.Array, lengths: jax.Array) -> jax.Array:
  """Reverses the first ``lengths[b]`` steps of each sequence, leaving padding in place.

  Args:
    xs: ``[T, ..., F]``, time-major.
    lengths: ``[...]`` integers, clipped to ``[0, T]`` (as in :func:`rnn`).

  Returns:
    ``[T, ..., F]`` with ``out[t, b] = xs[lengths[b] - 1 - t, b]`` for ``t < lengths[b]``.
  """
  lengths = jnp.clip(jnp.asarray(lengths), 0, xs.shape[0])
  steps = jnp.arange(xs.shape[0]).reshape((-1,) + (1,) * lengths.ndim)
  index = jnp.where(steps < lengths, lengths - 1 - steps, steps)
  return jnp.take_along_axis(xs, index[..., None], axis=0)


# Defaults of ``rnn`` per JAX backend and cell name, chosen with
# experiments/bench_rnn.py (tables in experiments/results/): the scan's
# ``unroll`` when ``unroll=None`` and how its gradient is computed when
# ``backward=None``. Cells or backends not listed get 1 and "autodiff".
AUTO_UNROLL = {
    "cpu": {"simple_rnn": 1, "lstm": 1, "gru": 2},
    "gpu": {"simple_rnn": 8, "lstm": 8, "gru": 8},
}
AUTO_BACKWARD = {
    "cpu": {"simple_rnn": "fused", "lstm": "fused", "gru": "autodiff"},
    "gpu": {"simple_rnn": "fused", "lstm": "fused", "gru": "fused"},
}


def resolve_unroll(cell, unroll: int | None) -> int:
  """``unroll``, or for ``None`` the measured best of :data:`AUTO_UNROLL` on the default backend."""
  if unroll is not None:
    return unroll
  return AUTO_UNROLL.get(jax.default_backend(), {}).get(getattr(cell, "name", None), 1)


def resolve_backward(cell, backward: str | None) -> str:
  """``backward``, or for ``None`` the measured best of :data:`AUTO_BACKWARD`."""
  if backward is not None:
    return backward
  return AUTO_BACKWARD.get(jax.default_backend(), {}).get(getattr(cell, "name", None),
                                                          "autodiff")


def scan_cell(cell: Cell, params, xs: jax.Array, carry, lengths=None, reverse=False,
              unroll: int | None = 1, hoist: bool = False):
  """Runs ``cell`` over time-major inputs with one ``jax.lax.scan``; no argument checks.

  Args:
    cell: a :class:`Cell`.
    params: ``cell.init(...)``'s pytree.
    xs: ``[T, ..., I]``.
    carry: the initial carry, leaves ``[..., H]``.
    lengths: ``None`` or ``[...]`` int32 already clipped to ``[0, T]``.
    reverse: run from the last (valid) step to the first.
    unroll: passed to ``jax.lax.scan``; ``None`` picks :func:`resolve_unroll`'s.
    hoist: compute ``cell.project`` for all steps as one matmul before the scan.

  Returns:
    ``(outputs [T, ..., O], final_carry)``, outputs in the original time order.
  """
  if reverse and lengths is not None:
    outputs, carry = scan_cell(cell, params, reverse_padded(xs, lengths), carry, lengths,
                               False, unroll, hoist)
    return reverse_padded(outputs, lengths), carry

  unroll = resolve_unroll(cell, unroll)
  inputs = cell.project(params, xs) if hoist else xs
  advance = cell.recur if hoist else cell.step

  def body(carry, step_input):
    t, x = step_input
    new_carry, y = advance(params, carry, x)
    if lengths is not None:
      valid = (t < lengths)[..., None]
      new_carry = jax.tree.map(lambda new, old: jnp.where(valid, new, old), new_carry, carry)
      y = jnp.where(valid, y, jnp.zeros_like(y))
    return new_carry, y

  steps = jnp.arange(xs.shape[0], dtype=jnp.int32)
  carry, outputs = jax.lax.scan(body, carry, (steps, inputs), reverse=reverse, unroll=unroll)
  return outputs, carry


BACKWARDS = ("autodiff", "fused", None)


def run_time_major(cell, params, xs, carry, lengths=None, reverse=False, unroll=None,
                   dropout_rng=None, hoist=False, backward=None):
  """Runs a cell or a composite over time-major ``xs [T, ..., I]``; no argument checks.

  The one dispatch point between plain cells (one scan, differentiated by
  autodiff or by :func:`rnn_jax.backward.fused_scan`) and composites
  (``cell.run``, which calls back here for each part with the same options).
  """
  if isinstance(cell, Cell):
    if resolve_backward(cell, backward) == "fused":
      from rnn_jax.backward import fused_scan  # pylint: disable=import-outside-toplevel
      return fused_scan(cell, params, xs, carry, lengths, reverse, resolve_unroll(cell, unroll),
                        hoist)
    return scan_cell(cell, params, xs, carry, lengths, reverse, unroll, hoist)
  return cell.run(params, xs, carry, lengths, reverse, unroll, dropout_rng, hoist, backward)


def _check_carry(cell, carry, batch_shape):
  expected = jax.eval_shape(lambda: cell.initial_carry(batch_shape))
  if jax.tree.structure(carry) != jax.tree.structure(expected):
    raise ValueError(f"initial_carry: expected a pytree like {jax.tree.structure(expected)}, "
                     f"got {jax.tree.structure(carry)}")
  for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(expected)):
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f"initial_carry: expected leaves of shape {tuple(want.shape)} "
                       f"(batch shape {tuple(batch_shape)} + hidden), got {tuple(got.shape)}")


def rnn(cell, params, xs: jax.Array, *, initial_carry: Any = None, lengths=None,
        reverse: bool = False, time_major: bool = False, unroll: int | None = None,
        dropout_rng: jax.Array | None = None, hoist: bool = False,
        backward: str | None = None):
  """Runs a cell (or a ``stack``/``bidirectional`` of cells) over a sequence.

  Works under ``jax.jit``, ``jax.grad`` and ``jax.vmap``; every check below
  happens at trace time, on shapes.

  Args:
    cell: a :class:`~rnn_jax.cells.Cell` or a composite from :mod:`rnn_jax.compose`.
    params: the pytree returned by ``cell.init(key, input_size)``.
    xs: ``[..., T, I]`` (or ``[T, ..., I]`` with ``time_major=True``), float32
      or bfloat16; ``...`` is any batch shape, possibly empty.
    initial_carry: defaults to ``cell.initial_carry(batch_shape)`` (zeros).
    lengths: optional ``[...]`` integer valid lengths per sequence (see module doc).
    reverse: process each sequence from its last valid step to its first;
      outputs stay in the input's time order.
    time_major: whether time is the leading axis of ``xs`` and of the outputs.
    unroll: steps per scan iteration (``jax.lax.scan(unroll=...)``); ``None``
      (the default) uses the value measured fastest for the cell on the
      current backend (:data:`AUTO_UNROLL`).
    dropout_rng: a PRNG key enabling the dropout of composites; ``None`` (the
      default, for evaluation) disables dropout.
    hoist: compute the input projection of all time steps as one matmul
      before the scan instead of once per step inside it.
    backward: how gradients of a cell's scan are computed: ``"autodiff"``
      (JAX differentiates the scan) or ``"fused"`` (:mod:`rnn_jax.backward`'s
      custom VJP: one reverse scan, weight gradients batched over time);
      ``None`` (the default) uses the one measured fastest for the cell on
      the current backend (:data:`AUTO_BACKWARD`). Composites pass it to
      every layer.

  Returns:
    ``(outputs, final_carry)``: outputs ``[..., T, O]`` (``[T, ..., O]`` if
    ``time_major``), float32 for float32 parameters; the final carry is the
    carry after each sequence's last valid step.

  Raises:
    ValueError: on a wrong rank, an input size that does not match ``params``,
      ``lengths`` of the wrong shape or dtype, or a mismatched ``initial_carry``.
  """
  xs = jnp.asarray(xs)
  if xs.ndim < 2:
    raise ValueError(f"xs: expected shape [..., T, I] (rank >= 2), got shape {xs.shape}")
  if not jnp.issubdtype(xs.dtype, jnp.floating):
    raise ValueError(f"xs: expected a floating dtype (float32 or bfloat16), got {xs.dtype}")
  input_size = cell.input_size(params)
  if xs.shape[-1] != input_size:
    raise ValueError(f"xs: expected input size {input_size} in the last axis (from params), "
                     f"got shape {xs.shape}")
  if not time_major:
    xs = jnp.moveaxis(xs, -2, 0)
  num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]

  if lengths is not None:
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
      raise ValueError(f"lengths: expected an integer dtype, got {lengths.dtype}")
    if lengths.shape != batch_shape:
      raise ValueError(f"lengths: expected shape {batch_shape} (the batch shape of xs), "
                       f"got {lengths.shape}")
    lengths = jnp.clip(lengths, 0, num_steps).astype(jnp.int32)

  # The carry is float32, or wider if the inputs or parameters are (float64
  # under x64), so that it keeps one dtype through the scan.
  carry_dtype = jnp.result_type(jnp.float32, xs.dtype, *(
      leaf.dtype for leaf in jax.tree.leaves(params) if jnp.issubdtype(leaf.dtype, jnp.floating)))
  if initial_carry is None:
    initial_carry = cell.initial_carry(batch_shape, carry_dtype)
  else:
    _check_carry(cell, initial_carry, batch_shape)
    initial_carry = jax.tree.map(
        lambda leaf: jnp.asarray(leaf).astype(jnp.promote_types(leaf.dtype, carry_dtype)),
        initial_carry)

  if backward not in BACKWARDS:
    raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
  outputs, carry = run_time_major(cell, params, xs, initial_carry, lengths, reverse, unroll,
                                  dropout_rng, hoist, backward)
  if not time_major:
    outputs = jnp.moveaxis(outputs, 0, -2)
  return outputs, carry


def last_output(outputs: jax.Array, lengths=None, time_major: bool = False) -> jax.Array:
  """The output at each sequence's last valid step: ``[..., T, O] -> [..., O]``.

  Without ``lengths`` this is ``outputs[..., -1, :]``. With ``lengths`` a
  sequence of length 0 gives zeros.
  """
  if time_major:
    outputs = jnp.moveaxis(outputs, 0, -2)
  if lengths is None:
    return outputs[..., -1, :]
  num_steps = outputs.shape[-2]
  index = jnp.clip(jnp.asarray(lengths) - 1, 0, num_steps - 1)
  picked = jnp.take_along_axis(outputs, index[..., None, None], axis=-2)[..., 0, :]
  return jnp.where((jnp.asarray(lengths) > 0)[..., None], picked, 0.0)

