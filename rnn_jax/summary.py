"""Reading a run's outputs: the last valid step, and a layer's summary of the whole sequence.

A forward recurrence has read the whole sequence at its last valid step; one
that reads backwards (``reverse=True``, or the second half of a
``bidirectional`` layer) has read it at step 0. :func:`last_output` picks the
former; :func:`summary` asks the layer, so a bidirectional layer (at any depth
of a stack) gets its forward half's last valid output and its backward half's
first output. ``last_output`` on a bidirectional layer's outputs is a common
mistake: its backward half would have read only the last valid step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def last_output(outputs: jax.Array, lengths=None, time_major: bool = False) -> jax.Array:
  """The output at each sequence's last valid step: ``[..., T, O] -> [..., O]``.

  Without ``lengths`` this is ``outputs[..., -1, :]``. With ``lengths`` a
  sequence of length 0 gives zeros. For a layer that reads backwards (or a
  bidirectional one) use :func:`summary`.
  """
  outputs = jnp.asarray(outputs)
  if outputs.ndim < 2:
    raise ValueError(f"outputs: expected shape [..., T, O] (rank >= 2), got {outputs.shape}")
  if time_major:
    outputs = jnp.moveaxis(outputs, 0, -2)
  if lengths is None:
    return outputs[..., -1, :]
  lengths = jnp.asarray(lengths)
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(f"lengths: expected an integer dtype, got {lengths.dtype}")
  if lengths.shape != outputs.shape[:-2]:
    raise ValueError(f"lengths: expected shape {outputs.shape[:-2]} (the batch shape of "
                     f"outputs), got {lengths.shape}")
  num_steps = outputs.shape[-2]
  index = jnp.clip(lengths - 1, 0, num_steps - 1)
  picked = jnp.take_along_axis(outputs, index[..., None, None], axis=-2)[..., 0, :]
  return jnp.where((lengths > 0)[..., None], picked, 0.0)


def summary(layer, outputs: jax.Array, lengths=None, *, time_major: bool = False,
            reverse: bool = False) -> jax.Array:
  """Each sequence's summary by ``layer``: the output after it has read the whole sequence.

  ``[..., T, O] -> [..., O]``: the last valid output of a forward layer, the
  first output of one run with ``reverse=True``; a stack's last layer decides;
  a ``bidirectional`` layer (``merge="concat"``) concatenates its forward
  half's last valid output and its backward half's first output.

  Args:
    layer: the layer that produced ``outputs``.
    outputs: ``rnn(layer, ...)``'s outputs, ``[..., T, O]`` (``[T, ..., O]``
      with ``time_major``).
    lengths: the ``lengths`` given to ``rnn``, or ``None``.
    time_major: whether time is the leading axis of ``outputs``.
    reverse: the ``reverse`` given to ``rnn``.

  Raises:
    ValueError: for a bidirectional layer whose merge (``"sum"``, ``"mean"``)
      mixed the two halves, or the errors of :func:`last_output`.
  """
  if time_major:
    outputs = jnp.moveaxis(jnp.asarray(outputs), 0, -2)
  return layer.summarize(outputs, lengths, reverse)


def first_or_last(outputs: jax.Array, lengths, reverse: bool) -> jax.Array:
  """A single recurrence's summary: its first output if it read backwards, else its last valid."""
  if reverse:  # Outputs past a length are zero, so a length of 0 gives zeros here too.
    return jnp.asarray(outputs)[..., 0, :]
  return last_output(outputs, lengths)
