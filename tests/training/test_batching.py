"""Tests of rnn_jax.training.batching: seeded epoch orders, full batches, the batch of any step."""

import jax
import numpy as np
import pytest

from rnn_jax.training import batching


# ----------------------------------------------------------------------------- batching


def test_epoch_permutation():
  first = batching.epoch_permutation(3, 0, 1000)
  np.testing.assert_array_equal(np.sort(first), np.arange(1000))
  np.testing.assert_array_equal(batching.epoch_permutation(3, 0, 1000), first)
  assert not np.array_equal(batching.epoch_permutation(3, 1, 1000), first)
  assert not np.array_equal(batching.epoch_permutation(4, 0, 1000), first)
  # Pinned: changing the scheme would change every run's data order (and break resumes).
  np.testing.assert_array_equal(batching.epoch_permutation(0, 0, 10), [4, 6, 2, 7, 3, 5, 9, 0, 8, 1])


def test_epoch_permutation_from_jax_keys():
  typed, raw = jax.random.key(5), jax.random.PRNGKey(5)
  np.testing.assert_array_equal(batching.epoch_permutation(typed, 2, 50),
                                batching.epoch_permutation(raw, 2, 50))
  np.testing.assert_array_equal(batching.epoch_permutation(typed, 2, 50),
                                batching.epoch_permutation(jax.random.key(5), 2, 50))
  assert not np.array_equal(batching.epoch_permutation(typed, 2, 50),
                            batching.epoch_permutation(jax.random.key(6), 2, 50))
  with pytest.raises(ValueError, match="seed must be non-negative"):
    batching.epoch_permutation(-1, 0, 5)


def test_batch_indices_cover_each_epoch_once():
  batches = batching.batch_indices(1, 0, 103, 10)
  assert batches.shape == (10, 10)
  assert len(np.unique(batches)) == 100  # 3 dropped, no repeats.
  np.testing.assert_array_equal(batches.ravel(), batching.epoch_permutation(1, 0, 103)[:100])
  np.testing.assert_array_equal(batching.batch_indices(1, 0, 103, 10), batches)
  assert not np.array_equal(batching.batch_indices(1, 1, 103, 10), batches)
  assert batching.batch_indices(1, 0, 10, 10).shape == (1, 10)
  for bad in (0, 11):
    with pytest.raises(ValueError, match="batch_size must be in 1..num_examples"):
      batching.batch_indices(1, 0, 10, bad)


def test_batch_order_resumed_equals_uninterrupted():
  steps_per_epoch = 23 // 5
  order = batching.BatchOrder(9, 23, 5)
  uninterrupted = [order(step) for step in range(11)]
  for step, indices in enumerate(uninterrupted):
    np.testing.assert_array_equal(
        indices, batching.batch_indices(9, step // steps_per_epoch, 23, 5)[step % steps_per_epoch])
  resumed = batching.BatchOrder(9, 23, 5)  # A new process, starting at step 6.
  for step in range(6, 11):
    np.testing.assert_array_equal(resumed(step), uninterrupted[step])


def test_batch_order_gives_the_batch_of_any_step_in_any_order():
  order = batching.BatchOrder(9, 23, 5)
  assert order.steps_per_epoch == 4
  for step in (13, 0, 5, 4, 13, 3):  # Across epochs, backwards, repeated.
    np.testing.assert_array_equal(order(step),
                                  batching.batch_indices(9, step // 4, 23, 5)[step % 4])
  with pytest.raises(ValueError, match="batch_size must be in 1..num_examples"):
    batching.BatchOrder(9, 4, 5)
