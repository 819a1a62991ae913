"""Tests of rnn_jax.summary: a layer's summary of the whole sequence, bidirectional layers included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax

LENGTHS = np.array([5, 3, 0])


def _run(layer, reverse=False):
  params = layer.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (3, 5, 2))
  outputs, final = rnn_jax.rnn(layer, params, xs, lengths=LENGTHS, reverse=reverse)
  return np.asarray(outputs), final


def _numpy_last(outputs, lengths):
  return np.stack([outputs[b, l - 1] if l > 0 else np.zeros(outputs.shape[-1])
                   for b, l in enumerate(lengths)])


def test_forward_and_reversed_layers():
  layer = rnn_jax.lstm(4)
  outputs, final = _run(layer)
  summary = rnn_jax.summary(layer, outputs, LENGTHS)
  np.testing.assert_array_equal(summary, _numpy_last(outputs, LENGTHS))
  np.testing.assert_allclose(summary, final.h, atol=1e-7)
  np.testing.assert_array_equal(summary, rnn_jax.last_output(outputs, LENGTHS))
  outputs, final = _run(layer, reverse=True)
  summary = rnn_jax.summary(layer, outputs, LENGTHS, reverse=True)
  np.testing.assert_array_equal(summary, outputs[:, 0])
  np.testing.assert_allclose(summary, final.h, atol=1e-7)  # Read the whole valid prefix.
  time_major = rnn_jax.summary(layer, np.moveaxis(outputs, 1, 0), LENGTHS, time_major=True,
                               reverse=True)
  np.testing.assert_array_equal(time_major, summary)


def test_bidirectional_summary_reads_the_backward_half_at_step_zero():
  layer = rnn_jax.stack([rnn_jax.gru(3), rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(4))])
  outputs, (_, (forward_h, backward_h)) = _run(layer)
  summary = rnn_jax.summary(layer, outputs, LENGTHS)
  want = np.concatenate([_numpy_last(outputs[..., :2], LENGTHS), outputs[:, 0, 2:]], axis=-1)
  np.testing.assert_array_equal(summary, want)
  # The final carries of a GRU are its summaries: the two paths agree.
  np.testing.assert_allclose(summary, np.concatenate([forward_h, backward_h], -1), atol=1e-6)
  # last_output's backward half has read only the last valid step: it differs.
  assert not np.allclose(rnn_jax.last_output(outputs, LENGTHS)[:2, 2:], summary[:2, 2:])


def test_nested_bidirectional_of_stacks_run_in_reverse():
  inner = rnn_jax.stack([rnn_jax.gru(2), rnn_jax.gru(3)])
  layer = rnn_jax.remat(rnn_jax.bidirectional(inner, rnn_jax.stack([rnn_jax.gru(2)])))
  outputs, (forward_carry, backward_carry) = _run(layer, reverse=True)
  summary = rnn_jax.summary(layer, outputs, LENGTHS, reverse=True)
  # reverse=True: the "forward" half read backwards (step 0), the other half forwards.
  want = np.concatenate([outputs[:, 0, :3], _numpy_last(outputs[..., 3:], LENGTHS)], axis=-1)
  np.testing.assert_array_equal(summary, want)
  np.testing.assert_allclose(summary, np.concatenate([forward_carry[-1], backward_carry[-1]], -1),
                             atol=1e-6)


def test_merged_halves_have_no_summary():
  layer = rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(2), "sum")
  with pytest.raises(ValueError, match=r"merge='sum'.* use merge='concat'"):
    rnn_jax.summary(layer, jnp.zeros((3, 5, 2)), LENGTHS)
