"""Small helpers shared by the core's tests: seeded inputs and pytree comparisons."""

import jax
import jax.numpy as jnp
import numpy as np

import reference


def normal(seed, shape, dtype=np.float32):
  """A seeded standard-normal NumPy array."""
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def random_carry(model, batch_shape, seed, dtype=jnp.float32):
  """A random carry of ``model`` (cell or composite) for ``batch_shape``, without tracing init."""
  leaves, treedef = jax.tree.flatten(jax.eval_shape(lambda: model.initial_carry(batch_shape)))
  return jax.tree.unflatten(treedef, [normal(seed + k, leaf.shape, dtype)
                                      for k, leaf in enumerate(leaves)])


def assert_close(got, want, atol=2e-5):
  """Outputs, or carries (any pytrees) leaf by leaf, against the reference's nested tuples."""
  got, want = jax.tree.leaves(got), reference.leaves(want)
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.shape == w.shape
    np.testing.assert_allclose(np.asarray(g, np.float64), w, atol=atol, rtol=0)
