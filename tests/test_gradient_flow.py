"""Tests of rnn_jax.gradient_flow: carry gradient norms against a hand computation and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax.gradient_flow import carry_gradient_norms

T = 6


def test_linear_recurrence_gives_powers_of_the_recurrent_weight():
  """A relu RNN on positive values is linear: dL/dh_{t-1} = w^(T-t) for L = y_{T-1}."""
  cell = rnn_jax.simple_rnn(1, "relu")
  weight = 0.5
  params = {"w_ih": jnp.ones((1, 1)), "w_hh": jnp.full((1, 1), weight), "b": jnp.zeros(1)}
  xs = jnp.ones((T, 1))
  norms = carry_gradient_norms(cell, params, xs, lambda outputs: outputs[-1, 0])
  np.testing.assert_allclose(norms, weight ** np.arange(T, 0, -1), rtol=1e-6)
  # Length 4: the loss on the last valid output (step 3) sees only the carries of steps <= 3.
  lengths = jnp.array([4])
  held = carry_gradient_norms(cell, params, xs[None],
                              lambda outputs: rnn_jax.last_output(outputs, lengths)[0, 0],
                              lengths=lengths)
  np.testing.assert_allclose(held, list(weight ** np.arange(4, 0, -1)) + [0, 0], rtol=1e-6)


LAYERS = {
    "lstm": rnn_jax.lstm(3),
    "lru": rnn_jax.lru(3, 2, skip="dense"),
    "bi_stack": rnn_jax.stack([rnn_jax.gru(2), rnn_jax.bidirectional(rnn_jax.mingru(2),
                                                                     rnn_jax.simple_rnn(3))]),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_matches_finite_differences(name, x64):
  """Each entry is the norm of the directional derivatives of the loss at that step's carry."""
  layer = LAYERS[name]
  params = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.isrealobj(a) else a,
                        layer.init(jax.random.key(0), 2))
  xs = jax.random.normal(jax.random.key(1), (2, T, 2), jnp.float64)
  lengths = jnp.array([T, 4])
  loss = lambda outputs: jnp.sum(jnp.sin(rnn_jax.summary(layer, outputs, lengths)))
  norms = carry_gradient_norms(layer, params, xs, loss, lengths=lengths, per_sequence=True)
  assert norms.shape == (T, 2)

  # Reference: the carry entering step t, perturbed one unit at a time, by central differences.
  from rnn_jax.gradient_flow import _run_with_offsets  # pylint: disable=import-outside-toplevel
  carry = layer.initial_carry((2,), jnp.float64)
  time_major = jnp.moveaxis(xs, 1, 0)

  def loss_at(offsets):
    outputs, _ = _run_with_offsets(layer, params, time_major, offsets, carry,
                                   lengths.astype(jnp.int32), None, False)
    return loss(jnp.moveaxis(outputs, 0, 1))

  zeros = jax.tree.map(lambda leaf: jnp.zeros((T, *leaf.shape), leaf.dtype), carry)
  flat, unravel = jax.flatten_util.ravel_pytree(zeros)
  eps = 1e-6
  basis = jnp.eye(flat.size, dtype=flat.dtype)
  numeric = jax.vmap(lambda e: (loss_at(unravel(eps * e)) - loss_at(unravel(-eps * e))) / (2 * eps)
                     )(basis)
  if jnp.iscomplexobj(flat):  # The imaginary directions of the LRU's complex carry.
    numeric_imag = jax.vmap(lambda e: (loss_at(unravel(1j * eps * e))
                                       - loss_at(unravel(-1j * eps * e))) / (2 * eps))(basis)
    numeric = numeric + 1j * numeric_imag
  per_leaf = unravel(numeric)
  squares = sum(jnp.sum(jnp.abs(leaf) ** 2, axis=-1) for leaf in jax.tree.leaves(per_leaf))
  assert float(jnp.max(squares)) > 1e-4
  np.testing.assert_allclose(norms, jnp.sqrt(squares), rtol=1e-6, atol=1e-9)
  # Sequence 1 has length 4: carries entering steps past it do not matter.
  np.testing.assert_allclose(norms[4:, 1], 0.0, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "bi_stack"])
def test_resets_cut_the_flow_at_segment_boundaries(name):
  """With a reset at step 3 and a loss summed over steps, each segment's norms are those of the
  segment run on its own; a run whose flags are all off equals a run without resets."""
  layer = LAYERS[name]
  params = layer.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (1, T, 2))
  loss = lambda outputs: jnp.sum(jnp.sin(outputs.real))
  resets = jnp.zeros((1, T), bool).at[0, 3].set(True)
  norms = carry_gradient_norms(layer, params, xs, loss, resets=resets)
  np.testing.assert_allclose(norms[:3], carry_gradient_norms(layer, params, xs[:, :3], loss),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(norms[3:], carry_gradient_norms(layer, params, xs[:, 3:], loss),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(
      carry_gradient_norms(layer, params, xs, loss, resets=jnp.zeros((1, T), bool)),
      carry_gradient_norms(layer, params, xs, loss))
  with pytest.raises(ValueError, match=r"resets: expected a bool array of shape \(1, 6\)"):
    carry_gradient_norms(layer, params, xs, loss, resets=jnp.zeros((1, T)))
