"""Tests of rnn_jax.hopfield: learning rules, energy, recall dynamics and modern retrieval.

The references are NumPy loops written from the published formulas, float64,
one weight, one state and one single-unit update at a time: the Hebbian sum
over patterns, Storkey's (1997) rule with its local fields ``h_ij`` summed
term by term, the projection rule ``P^T (P P^T)^-1 P``, and the binary
dynamics with the unit orders that :func:`hopfield.unit_orders` says recall
uses. The modern update is checked against a NumPy softmax and its gradient
against central differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import hopfield
import reference


def random_patterns(seed: int, count: int, size: int) -> np.ndarray:
  """``[count, size]`` float32 of ±1, each entry +1 with probability 1/2."""
  rng = np.random.default_rng(seed)
  return np.where(rng.random((count, size)) < 0.5, -1.0, 1.0).astype(np.float32)


def flip_bits(seed: int, states: np.ndarray, count: int) -> np.ndarray:
  """``states`` with exactly ``count`` distinct random units of each state flipped."""
  rng = np.random.default_rng(seed)
  flipped = np.array(states, copy=True)
  for row in flipped.reshape(-1, states.shape[-1]):
    row[rng.choice(states.shape[-1], count, replace=False)] *= -1
  return flipped


def random_symmetric_weights(seed: int, size: int) -> np.ndarray:
  """A symmetric Gaussian ``[size, size]`` float32 with a zero diagonal: no ties, no structure."""
  weights = np.random.default_rng(seed).standard_normal((size, size))
  weights = (weights + weights.T) / 2
  np.fill_diagonal(weights, 0.0)
  return weights.astype(np.float32)


# ----------------------------------------------------------------------------- NumPy references


def hebbian_reference(patterns):
  count, size = patterns.shape
  weights = np.zeros((size, size))
  for i in range(size):
    for j in range(size):
      if i != j:
        weights[i, j] = sum(patterns[mu, i] * patterns[mu, j] for mu in range(count)) / size
  return weights


def storkey_reference(patterns):
  """Storkey 1997: w_ij += (xi_i xi_j - xi_i h_ji - h_ij xi_j) / n.

  ``h_ij = sum_{k != i, j} w_ik xi_k`` with the weights before the pattern.
  """
  size = patterns.shape[1]
  weights = np.zeros((size, size))
  for xi in np.asarray(patterns, np.float64):
    local = np.zeros((size, size))
    for i in range(size):
      for j in range(size):
        local[i, j] = sum(weights[i, k] * xi[k] for k in range(size) if k not in (i, j))
    new = weights.copy()
    for i in range(size):
      for j in range(size):
        if i != j:
          new[i, j] += (xi[i] * xi[j] - xi[i] * local[j, i] - local[i, j] * xi[j]) / size
    weights = new
  return weights


def pseudoinverse_reference(patterns):
  patterns = np.asarray(patterns, np.float64)
  weights = patterns.T @ np.linalg.inv(patterns @ patterns.T) @ patterns
  np.fill_diagonal(weights, 0.0)
  return weights


def threshold(field, current):
  return 1.0 if field > 0 else -1.0 if field < 0 else current


def recall_reference(weights, states, mode, max_sweeps, key=None):
  """The binary dynamics one state, one sweep and (async) one unit at a time, float64."""
  weights = np.asarray(weights, np.float64)
  flat = np.asarray(states, np.float64).reshape(-1, weights.shape[0])
  orders = [np.asarray(hopfield.unit_orders(key, sweep, (len(flat),), weights.shape[0]))
            for sweep in range(max_sweeps if mode == "async" else 0)]
  finals, counts = [], []
  for index, state in enumerate(flat):
    sweeps = 0
    for sweep in range(max_sweeps):
      if mode == "sync":
        new = np.array([threshold(weights[i] @ state, state[i]) for i in range(len(state))])
      else:
        new = state.copy()
        for unit in orders[sweep][index]:
          new[unit] = threshold(weights[unit] @ new, new[unit])
      if np.array_equal(new, state):
        break
      state, sweeps = new, sweeps + 1
    finals.append(state)
    counts.append(sweeps)
  return (np.reshape(finals, np.shape(states)), np.reshape(counts, np.shape(states)[:-1]))


def retrieve_reference(memories, queries, beta, steps):
  memories = np.asarray(memories, np.float64)
  state = np.asarray(queries, np.float64)
  for _ in range(steps):
    scores = beta * state @ memories.T
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    state = (weights / weights.sum(axis=-1, keepdims=True)) @ memories
  return state


# ----------------------------------------------------------------------------- learning rules


def test_hebbian_matches_the_sum_over_patterns():
  patterns = random_patterns(0, 4, 9)
  weights = np.asarray(hopfield.hebbian(patterns))
  np.testing.assert_allclose(weights, hebbian_reference(patterns), atol=1e-7)
  assert np.abs(weights).max() > 0.3


def test_storkey_matches_the_published_rule_term_by_term():
  patterns = random_patterns(1, 5, 10)
  weights = np.asarray(hopfield.storkey(patterns))
  want = storkey_reference(patterns)
  np.testing.assert_allclose(weights, want, atol=1e-6)
  np.testing.assert_array_equal(weights, weights.T)
  # Not the Hebbian rule: the crosstalk terms matter.
  assert np.abs(want - hebbian_reference(patterns)).max() > 0.1


def test_pseudoinverse_is_the_projection_onto_the_patterns():
  patterns = random_patterns(2, 6, 12)
  weights = np.asarray(hopfield.pseudoinverse(patterns), np.float64)
  np.testing.assert_allclose(weights, pseudoinverse_reference(patterns), atol=1e-5)
  # With the projection's diagonal P_ii restored it maps every stored pattern onto itself, so
  # without it a stored pattern's input is xi_i (1 - P_ii): the same sign, as 0 <= P_ii < 1.
  as64 = patterns.astype(np.float64)
  diagonal = np.diag(as64.T @ np.linalg.inv(as64 @ as64.T) @ as64)
  assert 0 < diagonal.min() and diagonal.max() < 1
  np.testing.assert_allclose((weights + np.diag(diagonal)) @ as64.T, as64.T, atol=1e-5)


@pytest.mark.parametrize("rule", [hopfield.hebbian, hopfield.storkey, hopfield.pseudoinverse])
def test_rows_of_zeros_are_padding(rule):
  patterns = random_patterns(3, 5, 16)
  padded = np.concatenate([patterns, np.zeros((3, 16), np.float32)])
  np.testing.assert_allclose(rule(padded), rule(patterns), atol=1e-5)


def test_energy_matches_numpy():
  weights = random_symmetric_weights(4, 10)
  states = random_patterns(5, 6, 10).reshape(2, 3, 10)
  want = [[-0.5 * s @ weights.astype(np.float64) @ s for s in row] for row in states]
  np.testing.assert_allclose(hopfield.energy(weights, states), want, rtol=1e-6)


# ----------------------------------------------------------------------------- recall dynamics


@pytest.mark.parametrize("rule, count", [(hopfield.hebbian, 4), (hopfield.storkey, 10),
                                         (hopfield.pseudoinverse, 50)])
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_stored_patterns_are_fixed_points_below_capacity(rule, count, mode):
  # N = 100: 0.138 N = 14, N / (2 ln N) = 11 (Hebbian), N / sqrt(2 ln N) = 33 (Storkey).
  patterns = random_patterns(6, count, 100)
  queried = patterns[np.arange(10) * count // 10]  # 10 of them (one compiled shape for all)
  states, sweeps = hopfield.recall(rule(patterns), queried, mode=mode, key=jax.random.key(0))
  np.testing.assert_array_equal(states, queried)
  np.testing.assert_array_equal(sweeps, np.zeros(10))


def test_async_energy_never_increases_at_any_single_unit_update():
  size, key = 24, jax.random.key(7)
  weights = random_symmetric_weights(8, size)
  start = random_patterns(9, 6, size)
  states, flips, sweep = start, 0, 0
  while True:
    order = hopfield.unit_orders(key, sweep, (6,), size)
    assert sorted(np.asarray(order)[3]) == list(range(size))
    trajectory = np.asarray(hopfield.sweep_trajectory(weights, states, order), np.float64)
    path = np.concatenate([np.asarray(states, np.float64)[None], trajectory])
    energies = np.einsum("tbi,ij,tbj->tb", path, weights.astype(np.float64), path) * -0.5
    steps = np.diff(energies, axis=0)
    assert steps.max() <= 1e-9
    # Every flip of unit i lowers the energy by exactly 2 |h_i|; no other change happens.
    changed = np.abs(np.diff(path, axis=0)).sum(axis=-1)
    assert set(np.unique(changed)) <= {0.0, 2.0}
    np.testing.assert_allclose(steps[changed == 0], 0.0, atol=1e-9)
    units = np.asarray(order).T
    fields = np.einsum("tbj,tbj->tb", weights.astype(np.float64)[units], path[:-1])
    np.testing.assert_allclose(steps[changed > 0], -2 * np.abs(fields[changed > 0]), atol=1e-6)
    flips += int((changed > 0).sum())
    if np.array_equal(trajectory[-1], states):
      break
    states, sweep = trajectory[-1].astype(np.float32), sweep + 1
  assert flips > 10 and sweep >= 2
  # recall runs exactly these sweeps; the NumPy loop agrees.
  final, sweeps = hopfield.recall(weights, start, key=key)
  np.testing.assert_array_equal(final, states)
  assert sweeps.max() == sweep
  want_final, want_sweeps = recall_reference(weights, start, "async", 100, key)
  np.testing.assert_array_equal(final, want_final)
  np.testing.assert_array_equal(sweeps, want_sweeps)


@pytest.mark.parametrize("mode, key", [("sync", None), ("async", None),
                                       ("async", jax.random.key(3))])
def test_recall_matches_the_numpy_dynamics(mode, key):
  weights = random_symmetric_weights(10, 24)
  start = random_patterns(11, 6, 24).reshape(2, 3, 24)
  states, sweeps = hopfield.recall(weights, start, mode=mode, key=key, max_sweeps=9)
  want_states, want_sweeps = recall_reference(weights, start, mode, 9, key)
  np.testing.assert_array_equal(states, want_states)
  np.testing.assert_array_equal(sweeps, want_sweeps)
  assert sweeps.shape == (2, 3) and sweeps.dtype == jnp.int32 and sweeps.max() >= 1


def test_hebbian_recall_succeeds_below_capacity_and_fails_well_above():
  # N = 200, 10 of 200 units (5%) flipped. K = 10 (K/N = 0.05) vs K = 80 (K/N = 0.4 >> 0.138).
  size = 200
  for count, (low, high) in ((10, (1.0, 1.0)), (80, (0.0, 0.1))):
    patterns = random_patterns(12, count, size)
    targets = patterns[np.arange(20) % count]
    states, _ = hopfield.recall(hopfield.hebbian(patterns), flip_bits(13, targets, 10),
                                key=jax.random.key(1))
    recalled = np.mean(np.all(np.asarray(states) == targets, axis=-1))
    assert low <= recalled <= high, (count, recalled)


def test_pseudoinverse_stores_correlated_patterns_that_hebbian_cannot():
  # 10 variations of one prototype, each with 15 of 100 units flipped: pairwise overlap ~0.5.
  prototype = random_patterns(14, 1, 100)
  patterns = flip_bits(15, np.repeat(prototype, 10, axis=0), 15)
  hebbian_states, hebbian_sweeps = hopfield.recall(hopfield.hebbian(patterns), patterns,
                                                   key=jax.random.key(2))
  # No stored pattern is a fixed point; each falls towards the prototype and is lost.
  assert np.all(hebbian_sweeps > 0)
  own_overlap = np.mean(np.asarray(hebbian_states) * patterns, axis=-1)
  prototype_overlap = np.mean(np.asarray(hebbian_states) * prototype, axis=-1)
  assert np.all(prototype_overlap > 0.9) and np.all(prototype_overlap > own_overlap)
  weights = hopfield.pseudoinverse(patterns)
  states, sweeps = hopfield.recall(weights, patterns, key=jax.random.key(2))
  np.testing.assert_array_equal(states, patterns)
  np.testing.assert_array_equal(sweeps, 0)
  states, _ = hopfield.recall(weights, flip_bits(16, patterns, 2), key=jax.random.key(2))
  np.testing.assert_array_equal(states, patterns)


def test_sync_two_cycle_is_reported_and_async_settles():
  weights = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)  # E = -s0 s1: minima (1, 1), (-1, -1)
  start = np.array([[1.0, -1.0], [1.0, 1.0]], np.float32)   # an oscillating state, a fixed point
  states, sweeps = hopfield.recall(weights, start, mode="sync", max_sweeps=7)
  np.testing.assert_array_equal(sweeps, [7, 0])
  np.testing.assert_array_equal(states, [[-1.0, 1.0], [1.0, 1.0]])  # 7 (odd) swaps of (1, -1)
  states, sweeps = hopfield.recall(weights, start, mode="sync", max_sweeps=8)
  np.testing.assert_array_equal(states, start)
  np.testing.assert_array_equal(sweeps, [8, 0])
  states, sweeps = hopfield.recall(weights, start, mode="async", max_sweeps=7)  # order 0, 1
  np.testing.assert_array_equal(states, [[-1.0, -1.0], [1.0, 1.0]])
  np.testing.assert_array_equal(sweeps, [1, 0])


def test_a_unit_with_zero_input_keeps_its_value():
  weights = np.zeros((3, 3), np.float32)
  weights[0, 1] = weights[1, 0] = 1.0  # unit 2 is disconnected: its input is always exactly 0
  start = np.array([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]], np.float32)
  for mode in ("sync", "async"):
    states, _ = hopfield.recall(weights, start, mode=mode, max_sweeps=8)
    np.testing.assert_array_equal(np.asarray(states)[:, 2], start[:, 2])
    assert set(np.unique(states)) <= {-1.0, 1.0}


def test_batch_shapes_and_jit():
  weights = hopfield.hebbian(random_patterns(17, 3, 24))
  start = random_patterns(18, 6, 24)
  key = jax.random.key(4)
  flat_states, flat_sweeps = hopfield.recall(weights, start, key=key)
  states, sweeps = hopfield.recall(weights, start.reshape(2, 3, 24), key=key)
  assert states.shape == (2, 3, 24) and sweeps.shape == (2, 3)
  np.testing.assert_array_equal(states.reshape(6, 24), flat_states)
  np.testing.assert_array_equal(sweeps.reshape(6), flat_sweeps)
  jitted = jax.jit(hopfield.recall, static_argnames="mode")
  jit_states, jit_sweeps = jitted(weights, start, key=key, max_sweeps=jnp.int32(100))
  np.testing.assert_array_equal(jit_states, flat_states)
  np.testing.assert_array_equal(jit_sweeps, flat_sweeps)
  one_state, one_sweeps = hopfield.recall(weights, start[0], key=key)  # no batch axes
  assert one_state.shape == (24,) and one_sweeps.shape == ()
  np.testing.assert_array_equal(one_state, flat_states[0])
  np.testing.assert_array_equal(hopfield.energy(weights, start.reshape(2, 3, 24)).shape, (2, 3))


# ----------------------------------------------------------------------------- modern Hopfield


def test_retrieve_large_beta_returns_the_nearest_memory_even_for_more_memories_than_units():
  memories = random_patterns(19, 100, 32)  # M = 100 > D = 32
  queries = flip_bits(20, memories[:10], 3)
  nearest = memories[np.argmax(queries @ memories.T, axis=-1)]
  scores = np.sort(queries @ memories.T, axis=-1)
  assert np.all(scores[:, -1] - scores[:, -2] >= 2)  # a unique nearest memory per query
  np.testing.assert_allclose(hopfield.retrieve(memories, queries, beta=20.0), nearest, atol=1e-5)


def test_retrieve_small_beta_returns_the_mean_of_the_memories():
  memories = np.random.default_rng(21).standard_normal((7, 5)).astype(np.float32)
  queries = np.random.default_rng(22).standard_normal((3, 5)).astype(np.float32)
  np.testing.assert_allclose(hopfield.retrieve(memories, queries, beta=0.0),
                             np.broadcast_to(memories.mean(0), (3, 5)), atol=1e-6)
  np.testing.assert_allclose(hopfield.retrieve(memories, queries, beta=1e-4),
                             np.broadcast_to(memories.mean(0), (3, 5)), atol=1e-3)


def test_retrieve_matches_numpy_for_any_batch_shape_and_steps():
  memories = np.random.default_rng(23).standard_normal((9, 6)).astype(np.float32)
  queries = np.random.default_rng(24).standard_normal((2, 3, 6)).astype(np.float32)
  for steps in (0, 1, 3):
    got = jax.jit(hopfield.retrieve, static_argnames="steps")(memories, queries, beta=0.7,
                                                               steps=steps)
    assert got.shape == (2, 3, 6)
    np.testing.assert_allclose(got, retrieve_reference(memories, queries, 0.7, steps), atol=1e-5)


def test_retrieve_gradients_match_central_differences(x64):
  del x64
  rng = np.random.default_rng(25)
  memories, queries = rng.standard_normal((5, 4)), rng.standard_normal((2, 4))
  cotangent = rng.standard_normal((2, 4))
  sizes = np.cumsum([memories.size, queries.size])

  def loss(theta):
    x, q, beta = jnp.split(theta, sizes)
    out = hopfield.retrieve(x.reshape(5, 4), q.reshape(2, 4), beta=beta[0], steps=2)
    return jnp.sum(out * cotangent)

  theta = np.concatenate([memories.ravel(), queries.ravel(), [0.8]])
  grad = jax.grad(loss)(theta)
  numeric = reference.central_differences(jax.vmap(loss), theta)
  assert np.abs(numeric).max() > 1e-2
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("call, message", [
    (lambda: hopfield.hebbian(np.ones(4)), "patterns: expected a non-empty [K, N]"),
    (lambda: hopfield.storkey(np.full((2, 3), 0.5)), "patterns: expected rows of +1 and -1"),
    (lambda: hopfield.energy(np.ones((3, 4)), np.ones(3)), "W: expected a square"),
    (lambda: hopfield.energy(np.ones((3, 3)), np.ones(4)), "states: expected shape [..., 3]"),
    (lambda: hopfield.recall(np.ones((3, 3)), np.array([1.0, 0.0, -1.0])),
     "states: expected entries +1 or -1"),
    (lambda: hopfield.recall(np.ones((3, 3)), np.ones(3), mode="parallel"), "mode: must be one"),
    (lambda: hopfield.recall(np.ones((3, 3)), np.ones(3), max_sweeps=0), "max_sweeps: must be"),
    (lambda: hopfield.sweep_trajectory(np.ones((3, 3)), np.ones(3), np.zeros(2, int)),
     "order: expected integers"),
    (lambda: hopfield.retrieve(np.ones(3), np.ones(3)), "memories: expected a non-empty [M, D]"),
    (lambda: hopfield.retrieve(np.ones((2, 3)), np.ones(4)), "queries: expected shape [..., 3]"),
    (lambda: hopfield.retrieve(np.ones((2, 3)), np.ones(3), steps=-1), "steps: must be"),
])
def test_bad_arguments_raise_one_line_errors_naming_them(call, message):
  with pytest.raises(ValueError) as error:
    call()
  assert message in str(error.value) and "\n" not in str(error.value)
