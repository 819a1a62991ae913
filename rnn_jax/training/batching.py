"""Seeded batch orders: which examples each training step reads, as a function of the step.

A run's data order depends only on ``(seed, epoch)``: :func:`epoch_permutation`
shuffles the examples once per epoch, :func:`batch_indices` cuts the shuffled
order into full batches, and :class:`BatchOrder` gives the batch of any global
step (what :func:`rnn_jax.training.loop.fit`'s ``batch_for_step`` needs), so a
run resumed from a checkpoint's step reads exactly the batches an
uninterrupted run would have read. Everything here is NumPy on the host: the
orders are indices, and a task decides where the rows they select live.
"""

from __future__ import annotations

import numpy as np


def _seed_words(key_or_seed) -> list[int]:
  """Non-negative integers seeding NumPy's generator, from an int seed or a JAX key."""
  if isinstance(key_or_seed, (int, np.integer)):
    words = [int(key_or_seed)]
  else:
    import jax  # pylint: disable=import-outside-toplevel
    key = key_or_seed
    if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
      key = jax.random.key_data(key)
    words = [int(word) for word in np.asarray(key).ravel()]
  if any(word < 0 for word in words):
    raise ValueError(f"seed must be non-negative; got {key_or_seed!r}")
  return words


def epoch_permutation(key_or_seed, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the examples in one epoch: a permutation of ``range(num_examples)``.

  Deterministic per ``(seed, epoch)`` on every machine and backend (NumPy's
  PCG64 seeded with ``[*seed, epoch]``), and different for different epochs.

  Args:
    key_or_seed: a non-negative int, or a JAX PRNG key (typed or raw uint32).
    epoch: the epoch number, from 0.
    num_examples: ``N``.

  Returns:
    int64 ``[N]``.
  """
  if epoch < 0:
    raise ValueError(f"epoch must be non-negative; got {epoch}")
  return np.random.default_rng(_seed_words(key_or_seed) + [int(epoch)]).permutation(num_examples)


def _check_batch_size(num_examples: int, batch_size: int) -> None:
  if not 1 <= batch_size <= num_examples:
    raise ValueError(f"batch_size must be in 1..num_examples ({num_examples}); got {batch_size}")


def batch_indices(seed, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The training batches of one epoch: rows of :func:`epoch_permutation`.

  The last ``num_examples % batch_size`` examples of the shuffled order are
  dropped (a different few each epoch), so every step has a full batch and one
  compiled train step. A run resumed at ``(epoch, step)`` uses
  ``batch_indices(seed, epoch, ...)[step]``, exactly what the uninterrupted
  run used.

  Args:
    seed: as ``key_or_seed`` of :func:`epoch_permutation`.
    epoch: the epoch number, from 0.
    num_examples: ``N``.
    batch_size: ``B``, in ``1..N``.

  Returns:
    int64 ``[N // B, B]`` indices into the split.
  """
  _check_batch_size(num_examples, batch_size)
  num_batches = num_examples // batch_size
  order = epoch_permutation(seed, epoch, num_examples)
  return order[:num_batches * batch_size].reshape(num_batches, batch_size)



class BatchOrder:
  """The batch indices of every global step of a seeded run.

  Step ``s`` reads batch ``s % (N // B)`` of epoch ``s // (N // B)`` of
  :func:`batch_indices`. The current epoch's batches are cached, so calling it
  step after step costs one shuffle per epoch.

  Args:
    seed: as ``key_or_seed`` of :func:`epoch_permutation`.
    num_examples: ``N``.
    batch_size: ``B``, in ``1..N``.
  """

  def __init__(self, seed, num_examples: int, batch_size: int):
    _check_batch_size(num_examples, batch_size)
    self.seed, self.num_examples, self.batch_size = seed, num_examples, batch_size
    self.steps_per_epoch = num_examples // batch_size
    self._epoch, self._batches = None, None

  def __call__(self, step: int) -> np.ndarray:
    """int64 ``[B]``: the indices of step ``step``'s examples."""
    epoch, row = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._batches = batch_indices(self.seed, epoch, self.num_examples, self.batch_size)
      self._epoch = epoch
    return self._batches[row]
