"""Shared pytest fixtures. float64 is enabled only inside the ``x64`` fixture."""

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import rnn_jax
import reference


@pytest.fixture
def x64():
  """Enables float64 for one test only (``jax.enable_x64`` is a scoped context manager)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="session")
def rnn_jit():
  """``rnn_jax.rnn`` under ``jax.jit`` (cell and flags static), returning NumPy arrays.

  Shared by all tests so equal calls compile once; NumPy results keep the
  tests' indexing from compiling little XLA programs of its own.
  """
  jitted = jax.jit(rnn_jax.rnn, static_argnums=0,
                   static_argnames=("reverse", "time_major", "unroll", "hoist"))
  return lambda *args, **kwargs: jax.tree.map(np.asarray, jitted(*args, **kwargs))


@pytest.fixture(scope="session")
def random_params():
  """``(model, input_size, seed, scale=0.5) -> params`` with every leaf drawn from N(0, scale^2).

  ``model.init`` gives the structure; random leaves (biases included) make the
  comparisons with the references sensitive to every parameter.
  """

  def make(model, input_size, seed, scale=0.5):
    params = jax.eval_shape(lambda key: model.init(key, input_size), jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: jax.numpy.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype),
        params)

  return make


@pytest.fixture(scope="session")
def check_gradients():
  """``(model, params, xs, carry, lengths, reverse, **rnn_kwargs)``: ``jax.grad`` == central differences.

  The loss is ``<G, outputs> + <G', final carry>`` with fixed random
  cotangents, differentiated with respect to the parameters, the inputs and
  the initial carry together. Use inside the ``x64`` fixture with float64
  arguments.
  """

  def check(model, params, xs, carry, lengths=None, reverse=False, **rnn_kwargs):
    theta, unravel = ravel_pytree((params, xs, carry))
    assert theta.dtype == jax.numpy.float64
    outputs, final = rnn_jax.rnn(model, params, xs, initial_carry=carry, lengths=lengths,
                                 reverse=reverse, **rnn_kwargs)
    rng = np.random.default_rng(0)
    out_grad = rng.standard_normal(outputs.shape)
    carry_grads = [rng.standard_normal(leaf.shape) for leaf in jax.tree.leaves(final)]

    def loss(vector):
      p, x, c = unravel(vector)
      outputs, final = rnn_jax.rnn(model, p, x, initial_carry=c, lengths=lengths, reverse=reverse,
                                   **rnn_kwargs)
      return jax.numpy.sum(outputs * out_grad) + sum(
          jax.numpy.sum(leaf * g) for leaf, g in zip(jax.tree.leaves(final), carry_grads))

    grad = jax.jit(jax.grad(loss))(theta)
    numeric = reference.central_differences(jax.jit(jax.vmap(loss)), theta)
    assert np.abs(numeric).max() > 1e-2
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)

  return check
