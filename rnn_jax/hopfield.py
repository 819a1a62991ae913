"""Hopfield networks: classical binary associative memory and the modern continuous update.

A Hopfield network is a recurrence run to a fixed point rather than over an
input sequence, so it has its own small functional API instead of the cell
protocol of :mod:`rnn_jax.cells`:

* learning rules turn stored patterns ``[K, N]`` into a symmetric weight
  matrix ``W [N, N]`` with a zero diagonal: :func:`hebbian`, :func:`storkey`
  and :func:`pseudoinverse`;
* :func:`energy` is ``E(s) = -1/2 s^T W s``;
* :func:`recall` runs the binary dynamics ``s_i <- sign(sum_j W_ij s_j)`` to a
  fixed point, one unit at a time (``mode="async"``, the classical dynamics
  whose energy never increases) or all units at once (``mode="sync"``);
  :func:`unit_orders` and :func:`sweep_trajectory` expose the asynchronous
  dynamics one single-unit update at a time;
* :func:`retrieve` is the modern continuous Hopfield update of Ramsauer et al.
  (2020), ``xi <- X^T softmax(beta X xi)``: one step is attention with the
  memories as keys and values; it is differentiable and usable as a layer.

States are ``±1`` float arrays ``[..., N]`` with any batch shape ``...``;
patterns are ``[K, N]`` of ``±1``. A row of zeros in ``patterns`` is padding
that every rule ignores, so a fixed-size array can hold a varying number of
patterns without recompiling. A unit whose input is exactly 0 keeps its value,
so states stay ``±1``.

Capacities (``N`` units, random unbiased patterns):

* Hebbian: about ``0.138 N`` patterns have a retrieval state near them (with
  about 1.6% of the bits wrong; Amit, Gutfreund & Sompolinsky 1985); a given
  pattern is an exact fixed point with high probability up to about
  ``N / (2 ln N)`` (McEliece et al. 1987). Correlated patterns do much worse.
* Storkey (1997): about ``N / sqrt(2 ln N)``.
* Pseudo-inverse (projection) rule (Personnaz, Guyon & Dreyfus 1985; Kanter &
  Sompolinsky 1987): any ``K <= N`` linearly independent patterns, correlated
  ones included, are fixed points; the basins of attraction shrink as ``K``
  approaches ``N``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MODES = ("async", "sync")


# ----------------------------------------------------------------------------- validation


def _is_concrete(value) -> bool:
  """Whether ``value`` holds numbers (not a tracer inside ``jit``, ``vmap`` or ``grad``)."""
  return not isinstance(value, jax.core.Tracer)


def _check_plus_minus_one(name: str, values: jax.Array) -> None:
  """Raises ValueError unless every entry of ``values`` is +1 or -1 (skipped for tracers)."""
  if _is_concrete(values) and values.size and not bool(np.all(np.abs(np.asarray(values)) == 1)):
    raise ValueError(f"{name}: expected entries +1 or -1 only")


def _check_patterns(patterns) -> jax.Array:
  """``patterns`` as a float array ``[K, N]`` whose rows are all ±1 or all 0 (padding)."""
  patterns = jnp.asarray(patterns)
  if patterns.ndim != 2 or patterns.shape[0] < 1 or patterns.shape[1] < 1:
    raise ValueError(f"patterns: expected a non-empty [K, N] array, got shape {patterns.shape}")
  if not jnp.issubdtype(patterns.dtype, jnp.floating):
    patterns = patterns.astype(jnp.float32)
  if _is_concrete(patterns):
    magnitudes = np.abs(np.asarray(patterns))
    if not np.all((magnitudes == 1) | np.all(magnitudes == 0, axis=1, keepdims=True)):
      raise ValueError("patterns: expected rows of +1 and -1 only (or rows of zeros as padding)")
  return patterns


def _check_weights(W) -> jax.Array:  # pylint: disable=invalid-name
  """``W`` as a float array ``[N, N]``."""
  W = jnp.asarray(W)  # pylint: disable=invalid-name
  if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] < 1:
    raise ValueError(f"W: expected a square [N, N] matrix, got shape {W.shape}")
  if not jnp.issubdtype(W.dtype, jnp.floating):
    W = W.astype(jnp.float32)  # pylint: disable=invalid-name
  return W


def _check_states(states, num_units: int, dtype) -> jax.Array:
  """``states`` as a float array ``[..., N]`` of ±1 (ints are cast to ``dtype``)."""
  states = jnp.asarray(states)
  if states.ndim < 1 or states.shape[-1] != num_units:
    raise ValueError(f"states: expected shape [..., {num_units}] (N from W), got {states.shape}")
  if not jnp.issubdtype(states.dtype, jnp.floating):
    states = states.astype(dtype)
  _check_plus_minus_one("states", states)
  return states


# ----------------------------------------------------------------------------- learning rules


def _zero_diagonal(W: jax.Array) -> jax.Array:  # pylint: disable=invalid-name
  return W * (1 - jnp.eye(W.shape[0], dtype=W.dtype))


@jax.jit
def _hebbian(patterns: jax.Array) -> jax.Array:
  products = jnp.matmul(patterns.T, patterns, precision=lax.Precision.HIGHEST)
  return _zero_diagonal(products / patterns.shape[1])


def hebbian(patterns) -> jax.Array:
  """The Hebbian (outer-product) rule: ``W = patterns^T patterns / N`` with a zero diagonal.

  ``W_ij = (1/N) sum_mu xi_i^mu xi_j^mu`` for ``i != j``, ``W_ii = 0``.

  Args:
    patterns: ``[K, N]`` of ±1, the patterns to store (rows of zeros: ignored).

  Returns:
    ``W [N, N]``, symmetric, in the patterns' float dtype (float32 for ints).

  Raises:
    ValueError: ``patterns`` not a non-empty ``[K, N]`` array of ±1 (and zero rows).
  """
  return _hebbian(_check_patterns(patterns))


@jax.jit
def _pseudoinverse(patterns: jax.Array) -> jax.Array:
  projection = jnp.matmul(jnp.linalg.pinv(patterns), patterns, precision=lax.Precision.HIGHEST)
  return _zero_diagonal((projection + projection.T) / 2)


def pseudoinverse(patterns) -> jax.Array:
  """The projection (pseudo-inverse) rule: ``W = patterns^+ patterns`` with a zero diagonal.

  ``patterns^+ patterns = patterns^T (patterns patterns^T)^+ patterns`` is the
  orthogonal projection onto the span of the patterns (Personnaz, Guyon &
  Dreyfus 1985), so ``W xi = xi`` for every stored pattern before the diagonal
  is removed. With the diagonal removed (Kanter & Sompolinsky 1987; larger
  basins of attraction) the input of unit ``i`` is ``xi_i (1 - P_ii)`` with
  ``P_ii <= 1``, so every stored pattern is still a fixed point of
  :func:`recall`. Up to ``N`` linearly independent patterns are stored,
  correlated ones included; linearly dependent ones are handled by the
  pseudo-inverse (``jnp.linalg.pinv``'s default cutoff).

  Args:
    patterns: ``[K, N]`` of ±1, the patterns to store (rows of zeros: ignored).

  Returns:
    ``W [N, N]``, symmetric (symmetrised against rounding), zero diagonal.

  Raises:
    ValueError: ``patterns`` not a non-empty ``[K, N]`` array of ±1 (and zero rows).
  """
  return _pseudoinverse(_check_patterns(patterns))


@jax.jit
def _storkey(patterns: jax.Array) -> jax.Array:
  num_units = patterns.shape[1]

  def learn(W, xi):  # pylint: disable=invalid-name
    # With a zero diagonal, h_i = sum_{k != i} w_ik xi_k, and h_ij = h_i - w_ij xi_j.
    fields = jnp.matmul(W, xi, precision=lax.Precision.HIGHEST)
    local = fields[:, None] - W * xi[None, :]  # [i, j] = h_ij
    crosstalk = xi[:, None] * local.T  # [i, j] = xi_i h_ji; its transpose is h_ij xi_j
    update = (jnp.outer(xi, xi) - (crosstalk + crosstalk.T)) / num_units  # exactly symmetric
    return _zero_diagonal(W + update), None

  weights, _ = lax.scan(learn, jnp.zeros((num_units, num_units), patterns.dtype), patterns)
  return weights


def storkey(patterns) -> jax.Array:
  """Storkey's (1997) incremental rule; capacity about ``N / sqrt(2 ln N)`` random patterns.

  Patterns are learned one after another, starting from ``W = 0``::

      w_ij <- w_ij + (xi_i xi_j - xi_i h_ji - h_ij xi_j) / N,
      h_ij  = sum_{k != i, j} w_ik xi_k                     (the weights before this pattern)

  for ``i != j``; the diagonal stays 0 (it does not enter ``h_ij``). Unlike the
  Hebbian rule this is local and incremental but subtracts the pattern's
  crosstalk with what is already stored.

  Args:
    patterns: ``[K, N]`` of ±1, the patterns to store, learned in this order
      (rows of zeros: ignored).

  Returns:
    ``W [N, N]``, symmetric, zero diagonal.

  Raises:
    ValueError: ``patterns`` not a non-empty ``[K, N]`` array of ±1 (and zero rows).
  """
  return _storkey(_check_patterns(patterns))


# ----------------------------------------------------------------------------- energy


def energy(W, states) -> jax.Array:  # pylint: disable=invalid-name
  """``E(s) = -1/2 s^T W s`` for every state.

  Asynchronous updates (:func:`recall` with ``mode="async"``) never increase it
  when ``W`` is symmetric with a non-negative diagonal: flipping unit ``i``
  changes it by ``-2 |h_i|`` (zero diagonal), where ``h_i = sum_j W_ij s_j``.

  Args:
    W: ``[N, N]`` weights.
    states: ``[..., N]`` states (any real values are accepted here).

  Returns:
    ``[...]``.

  Raises:
    ValueError: ``W`` not square, or ``states``' last axis not ``N``.
  """
  W = _check_weights(W)  # pylint: disable=invalid-name
  states = jnp.asarray(states)
  if states.ndim < 1 or states.shape[-1] != W.shape[0]:
    raise ValueError(f"states: expected shape [..., {W.shape[0]}] (N from W), got {states.shape}")
  fields = jnp.matmul(states, W.T, precision=lax.Precision.HIGHEST)
  return -0.5 * jnp.sum(states * fields, axis=-1)


# ----------------------------------------------------------------------------- recall


def _threshold(fields: jax.Array, current: jax.Array) -> jax.Array:
  """``sign(fields)``, keeping ``current`` where the field is exactly 0."""
  one = jnp.ones((), current.dtype)
  return jnp.where(fields > 0, one, jnp.where(fields < 0, -one, current))


def _async_sweep(W, states, order, collect: bool):  # pylint: disable=invalid-name
  """One asynchronous sweep of flat states ``[B, N]`` in ``order [B, N]`` (unit indices).

  Returns the states after the sweep and, if ``collect``, the states after
  every single-unit update ``[N, B, N]`` (else None).
  """
  rows = jnp.arange(states.shape[0])

  def update_unit(current, units):  # units [B]: the unit each state updates now
    fields = jnp.sum(W[units] * current, axis=-1)
    updated = current.at[rows, units].set(_threshold(fields, current[rows, units]))
    return updated, (updated if collect else None)

  return lax.scan(update_unit, states, order.T)


@functools.partial(jax.jit, static_argnames=("num_states", "num_units"))
def _flat_orders(key, sweep, num_states: int, num_units: int) -> jax.Array:
  """Unit orders ``int32 [num_states, num_units]`` of one sweep (see :func:`unit_orders`)."""
  if key is None:
    return jnp.broadcast_to(jnp.arange(num_units, dtype=jnp.int32), (num_states, num_units))
  sweep_key = jax.random.fold_in(key, sweep)
  return jax.vmap(lambda index: jax.random.permutation(
      jax.random.fold_in(sweep_key, index), num_units).astype(jnp.int32))(jnp.arange(num_states))


def unit_orders(key, sweep, batch_shape: tuple[int, ...], num_units: int) -> jax.Array:
  """The order in which asynchronous :func:`recall` updates the units of each state in a sweep.

  Each state gets its own order, drawn anew every sweep: for the state at flat
  (row-major) index ``b`` of the batch it is
  ``jax.random.permutation(fold_in(fold_in(key, sweep), b), num_units)``, so a
  state's dynamics depend on its flat position and ``key`` but not on the
  batch size. With ``key=None`` the order is ``0, 1, ..., N - 1`` in every
  sweep (deterministic sequential dynamics).

  Args:
    key: a JAX PRNG key, or None.
    sweep: the sweep's index, counted from 0.
    batch_shape: the states' batch shape ``...``.
    num_units: ``N``.

  Returns:
    ``int32 [..., N]``, each row a permutation of ``0..N-1``.
  """
  batch_shape = tuple(batch_shape)
  num_states = int(np.prod(batch_shape, dtype=np.int64))
  orders = _flat_orders(key, sweep, num_states=num_states, num_units=num_units)
  return orders.reshape(batch_shape + (num_units,))


def sweep_trajectory(W, states, order) -> jax.Array:  # pylint: disable=invalid-name
  """The states after every single-unit update of one asynchronous sweep.

  Update ``t`` sets unit ``order[..., t]`` of each state to the sign of its
  input ``sum_j W_ij s_j`` (keeping it when the input is exactly 0), given
  the state after update ``t - 1``. :func:`recall` with ``mode="async"`` runs
  exactly these sweeps with the orders of :func:`unit_orders`.

  Args:
    W: ``[N, N]`` weights.
    states: ``[..., N]`` of ±1.
    order: ``int [..., N]``, the units in update order for each state (usually
      a permutation of ``0..N-1``; any unit indices are accepted).

  Returns:
    ``[N, ..., N]``; entry ``t`` is the states after update ``t``; the last is
    the result of the sweep.

  Raises:
    ValueError: ``W`` not square, ``states`` not ``[..., N]`` of ±1, or
      ``order`` not of ``states``' shape.
  """
  W = _check_weights(W)  # pylint: disable=invalid-name
  states = _check_states(states, W.shape[0], W.dtype)
  order = jnp.asarray(order)
  if order.shape != states.shape or not jnp.issubdtype(order.dtype, jnp.integer):
    raise ValueError(f"order: expected integers of the states' shape {states.shape}, got "
                     f"{order.dtype} {order.shape}")
  num_units = W.shape[0]
  trajectory = _trajectory_flat(W, states.reshape(-1, num_units), order.reshape(-1, num_units))
  return trajectory.reshape((num_units,) + states.shape)


@jax.jit
def _trajectory_flat(W, states, order):  # pylint: disable=invalid-name
  return _async_sweep(W, states, order, collect=True)[1]


@functools.partial(jax.jit, static_argnames=("mode",))
def _recall_flat(W, states, key, max_sweeps, mode):  # pylint: disable=invalid-name
  """:func:`recall` on flat states ``[B, N]``."""
  num_states, num_units = states.shape

  def sweep(index, current):
    if mode == "sync":
      return _threshold(jnp.matmul(current, W.T, precision=lax.Precision.HIGHEST), current)
    order = _flat_orders(key, index, num_states, num_units)
    return _async_sweep(W, current, order, collect=False)[0]

  def not_done(carry):
    index, _, _, active = carry
    return (index < max_sweeps) & jnp.any(active)

  def run_sweep(carry):
    index, current, sweeps, active = carry
    updated = sweep(index, current)
    changed = active & jnp.any(updated != current, axis=-1)
    current = jnp.where(changed[:, None], updated, current)
    return index + 1, current, sweeps + changed.astype(jnp.int32), changed

  start = (jnp.zeros((), jnp.int32), states, jnp.zeros((num_states,), jnp.int32),
           jnp.ones((num_states,), bool))
  _, states, sweeps, _ = lax.while_loop(not_done, run_sweep, start)
  return states, sweeps


def recall(W, states, *, mode: str = "async", max_sweeps=100,  # pylint: disable=invalid-name
           key=None) -> tuple[jax.Array, jax.Array]:
  """Runs the binary Hopfield dynamics from ``states`` to a fixed point (or ``max_sweeps``).

  Each unit's input is ``h_i = sum_j W_ij s_j``; an update sets ``s_i`` to
  ``sign(h_i)``, keeping ``s_i`` when ``h_i`` is exactly 0.

  * ``mode="async"``: a sweep updates the ``N`` units one at a time, each
    seeing the updates before it, in a random order drawn per state and per
    sweep from ``key`` (:func:`unit_orders`; a ``lax.scan`` over units). With a
    symmetric ``W`` with a non-negative diagonal the energy never increases
    and every state reaches a fixed point. ``key=None`` is allowed and means
    the fixed order ``0, 1, ..., N - 1`` in every sweep.
  * ``mode="sync"``: a sweep updates all units at once from the previous
    state. It can end in a 2-cycle instead of a fixed point.

  Sweeps run in a ``lax.while_loop`` until no state changes or ``max_sweeps``
  sweeps have run. Each state stops on its own: once a sweep leaves it
  unchanged it is a fixed point and is not changed again.

  Works under ``jax.jit`` (``mode`` static; ``max_sweeps`` and ``key`` may be
  traced). The ±1 check of ``states`` is skipped when they are traced.

  Args:
    W: ``[N, N]`` weights, e.g. from :func:`hebbian`.
    states: ``[..., N]`` of ±1, the initial states (e.g. corrupted patterns).
    mode: ``"async"`` or ``"sync"``.
    max_sweeps: the most sweeps to run, >= 1.
    key: a JAX PRNG key for the asynchronous orders; None for index order.
      Ignored by ``mode="sync"``.

  Returns:
    ``(states [..., N], sweeps int32 [...])``, the final states (in the input
    float dtype; W's dtype for integer input) and, per state, the number of
    sweeps that changed it (0 for a state that was already a fixed point).
    The sweep that finds a state unchanged is not counted, so a state is a
    certified fixed point exactly when ``sweeps < max_sweeps``;
    ``sweeps == max_sweeps`` means every sweep changed it and the loop stopped
    without seeing a fixed point (e.g. a synchronous 2-cycle).

  Raises:
    ValueError: ``W`` not square, ``states`` not ``[..., N]`` of ±1, an unknown
      ``mode``, or ``max_sweeps < 1``.
  """
  if mode not in MODES:
    raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
  if _is_concrete(max_sweeps) and (np.ndim(max_sweeps) != 0 or int(max_sweeps) < 1):
    raise ValueError(f"max_sweeps: must be an int >= 1, got {max_sweeps!r}")
  W = _check_weights(W)  # pylint: disable=invalid-name
  states = _check_states(states, W.shape[0], W.dtype)
  num_units = W.shape[0]
  final, sweeps = _recall_flat(W, states.reshape(-1, num_units),
                               None if mode == "sync" else key,
                               jnp.asarray(max_sweeps, jnp.int32), mode=mode)
  return final.reshape(states.shape), sweeps.reshape(states.shape[:-1])


# ----------------------------------------------------------------------------- modern Hopfield


def retrieve(memories, queries, *, beta=1.0, steps: int = 1) -> jax.Array:
  """The modern continuous Hopfield update (Ramsauer et al. 2020), iterated ``steps`` times.

  ``xi <- X^T softmax(beta X xi)`` with the memories ``X [M, D]`` as rows: one
  step is softmax attention of the query over the memories as keys and values.
  For large ``beta`` it returns the memory with the largest dot product with
  the query (the nearest one when all memories have the same norm, as ±1
  patterns do), even for ``M`` far above ``D``; as ``beta -> 0`` it returns the
  mean of the memories. Differentiable with respect to memories, queries and
  ``beta``, and works under ``jit``/``vmap``: usable as a layer.

  Args:
    memories: ``X [M, D]``, any real values.
    queries: ``[..., D]`` state patterns (any real values).
    beta: inverse temperature, a scalar (may be traced).
    steps: how many updates, an int >= 0 (0 returns the queries).

  Returns:
    ``[..., D]``, the retrieved patterns (dtype of ``queries @ memories``).

  Raises:
    ValueError: ``memories`` not ``[M, D]``, ``queries``' last axis not ``D``,
      or ``steps`` not an int >= 0.
  """
  memories = jnp.asarray(memories)
  queries = jnp.asarray(queries)
  if memories.ndim != 2 or memories.shape[0] < 1:
    raise ValueError(f"memories: expected a non-empty [M, D] array, got shape {memories.shape}")
  if queries.ndim < 1 or queries.shape[-1] != memories.shape[1]:
    raise ValueError(f"queries: expected shape [..., {memories.shape[1]}] (D from memories), "
                     f"got {queries.shape}")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"steps: must be an int >= 0, got {steps!r}")
  dtype = jnp.result_type(memories, queries)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32

  def update(_, state):
    scores = beta * jnp.matmul(state, memories.T.astype(dtype))  # [..., M]
    return jnp.matmul(jax.nn.softmax(scores, axis=-1), memories.astype(dtype)).astype(dtype)

  return lax.fori_loop(0, int(steps), update, queries.astype(dtype))
