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


def random_params(layer, input_size, seed):
  """Parameters of ``layer`` for ``input_size`` features, every leaf seeded N(0, 0.25)."""
  shapes = jax.eval_shape(lambda key: layer.init(key, input_size), jax.random.key(0))
  leaves, treedef = jax.tree.flatten(shapes)
  return jax.tree.unflatten(treedef, [0.5 * normal(seed + k, leaf.shape)
                                      for k, leaf in enumerate(leaves)])


def loss_terms(outputs, final):
  """A loss whose cotangents differ per element, for outputs and every final carry leaf."""
  return jnp.sum(jnp.sin(outputs)) + sum(jnp.sum(jnp.cos(3.0 * leaf)) for leaf in
                                         jax.tree.leaves(final))


def assert_trees_close(got, want, **tol):
  """Two pytrees of the same structure, leaf by leaf (shape, dtype, values to ``tol``)."""
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(want)[0]]
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for path, g, w in zip(paths, jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.shape == w.shape and g.dtype == w.dtype, path
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), err_msg=path, **tol)
