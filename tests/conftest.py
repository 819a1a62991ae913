"""Shared pytest fixtures. float64 is enabled only inside the ``x64`` fixture."""

import jax
import numpy as np
import pytest

import rnn_jax


@pytest.fixture
def x64():
  """Enables float64 for one test only (``jax.enable_x64`` is a scoped context manager)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="session")
def rnn_jit():
  """``rnn_jax.rnn`` under ``jax.jit``, the cell and flags static; shared by all tests."""
  return jax.jit(rnn_jax.rnn, static_argnums=0,
                 static_argnames=("reverse", "time_major", "unroll", "hoist"))


@pytest.fixture(scope="session")
def random_params():
  """``(model, input_size, seed, scale=0.5) -> params`` with every leaf drawn from N(0, scale^2).

  ``model.init`` gives the structure; random leaves (biases included) make the
  comparisons with the references sensitive to every parameter.
  """

  def make(model, input_size, seed, scale=0.5):
    params = model.init(jax.random.key(seed), input_size)
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: jax.numpy.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype),
        params)

  return make
