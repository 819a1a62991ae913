"""Composing cells: multi-layer ``stack`` and ``bidirectional`` layers.

Both return small NamedTuples with the same functions as a cell (``init``,
``initial_carry``, ``input_size``, ``output_size``) plus ``run(params, xs
[T, ..., I], carry, lengths, reverse, unroll, dropout_rng, hoist, backward_mode)
-> (outputs [T, ..., O], carry)``, the protocol of
:func:`rnn_jax.unroll.run_time_major`, so ``rnn_jax.rnn`` accepts them anywhere a cell goes and they nest (a stack of
bidirectional layers, a bidirectional pair of stacks). Each layer runs as one
scan over the whole sequence, not as a per-step stack, so every layer's input
projection is a large matmul and inter-layer dropout is a single op.

Parameters and carries nest as tuples and dicts:

* ``stack``: params ``(layer_0, layer_1, ...)``, carry ``(carry_0, carry_1, ...)``.
* ``bidirectional``: params ``{"forward": ..., "backward": ...}``, carry
  ``(forward_carry, backward_carry)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from rnn_jax.cells import memoized_factory
from rnn_jax.unroll import run_time_major


class Stack(NamedTuple):
  """Layers run one after another; see :func:`stack`."""

  cells: tuple
  dropout: float
  variational: bool
  output_size: int
  init: Callable
  initial_carry: Callable
  input_size: Callable
  run: Callable


class Bidirectional(NamedTuple):
  """A forward and a backward layer over the same inputs; see :func:`bidirectional`."""

  forward: Any
  backward: Any
  merge: str
  output_size: int
  init: Callable
  initial_carry: Callable
  input_size: Callable
  run: Callable


def _split_key(key, num):
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


def stack(cells: Sequence, dropout: float = 0.0, variational: bool = False) -> Stack:
  """Layers of cells, the output sequence of each the input of the next (TF's MultiRNNCell).

  Args:
    cells: cells or composites, first layer first.
    dropout: drop rate applied to each layer's outputs except the last one's,
      only when ``rnn`` is given a ``dropout_rng`` (keep = 1 - dropout, as
      ``DropoutWrapper(output_keep_prob=keep)``).
    variational: reuse one dropout mask over all time steps.

  Params: a tuple of per-layer params. Carry: a tuple of per-layer carries.
  """
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must be in [0, 1), got {dropout}")
  if not cells:
    raise ValueError("stack needs at least one cell")
  return _stack(tuple(cells), float(dropout), bool(variational))


@functools.lru_cache(maxsize=None)
def _stack(cells: tuple, dropout: float, variational: bool) -> Stack:

  def init(key, input_size):
    params = []
    for cell, layer_key in zip(cells, jax.random.split(key, len(cells))):
      params.append(cell.init(layer_key, input_size))
      input_size = cell.output_size
    return tuple(params)

  def initial_carry(batch_shape=(), dtype=jnp.float32):
    return tuple(cell.initial_carry(batch_shape, dtype) for cell in cells)

  def input_size(params):
    return cells[0].input_size(params[0])

  def run(params, xs, carry, lengths, reverse, unroll, dropout_rng, hoist, backward_mode):
    keys = _split_key(dropout_rng, 2 * len(cells))
    final_carries = []
    for index, cell in enumerate(cells):
      xs, layer_carry = run_time_major(cell, params[index], xs, carry[index], lengths, reverse,
                                       unroll, keys[2 * index], hoist, backward_mode)
      final_carries.append(layer_carry)
      if dropout_rng is not None and dropout > 0.0 and index < len(cells) - 1:
        xs = dropout_outputs(keys[2 * index + 1], xs, dropout, variational)
    return xs, tuple(final_carries)

  return Stack(cells, dropout, variational, cells[-1].output_size, init, initial_carry,
               input_size, run)


_MERGES = {
    "concat": lambda f, b: jnp.concatenate([f, b], axis=-1),
    "sum": jnp.add,
    "mean": lambda f, b: (f + b) / 2,
}


@memoized_factory
def bidirectional(forward, backward, merge: str = "concat") -> Bidirectional:
  """Runs ``forward`` over the sequence and ``backward`` over it reversed, then merges.

  With ``lengths`` the backward layer starts at each sequence's last valid
  step (only the valid prefix is reversed), and its outputs are put back in
  input time order before merging.

  Args:
    forward: cell or composite reading the sequence first step first.
    backward: cell or composite reading it last step first.
    merge: ``"concat"`` (output size ``O_f + O_b``), ``"sum"`` or ``"mean"``
      (both need ``O_f == O_b``).

  Params: ``{"forward": ..., "backward": ...}``. Carry:
  ``(forward_carry, backward_carry)``.
  """
  if merge not in _MERGES:
    raise ValueError(f"merge must be one of {sorted(_MERGES)}, got {merge!r}")
  if merge != "concat" and forward.output_size != backward.output_size:
    raise ValueError(f"merge={merge!r} needs equal output sizes, got "
                     f"{forward.output_size} and {backward.output_size}")
  output_size = (forward.output_size + backward.output_size if merge == "concat"
                 else forward.output_size)

  def init(key, input_size):
    key_forward, key_backward = jax.random.split(key)
    return {"forward": forward.init(key_forward, input_size),
            "backward": backward.init(key_backward, input_size)}

  def initial_carry(batch_shape=(), dtype=jnp.float32):
    return (forward.initial_carry(batch_shape, dtype), backward.initial_carry(batch_shape, dtype))

  def input_size(params):
    return forward.input_size(params["forward"])

  def run(params, xs, carry, lengths, reverse, unroll, dropout_rng, hoist, backward_mode):
    key_forward, key_backward = _split_key(dropout_rng, 2)
    out_forward, carry_forward = run_time_major(forward, params["forward"], xs, carry[0],
                                                lengths, reverse, unroll, key_forward, hoist,
                                                backward_mode)
    out_backward, carry_backward = run_time_major(backward, params["backward"], xs, carry[1],
                                                  lengths, not reverse, unroll, key_backward,
                                                  hoist, backward_mode)
    return _MERGES[merge](out_forward, out_backward), (carry_forward, carry_backward)

  return Bidirectional(forward, backward, merge, output_size, init, initial_carry, input_size,
                       run)
