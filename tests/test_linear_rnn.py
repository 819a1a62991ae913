"""Tests of rnn_jax.linear_rnn: minGRU, minLSTM and the LRU, parallel and sequential.

The references below are NumPy loops written from the papers' equations
(Feng et al. 2024; Orvieto et al. 2023), float64/complex128, one sequence and
one step at a time: the gates use the plain ``f / (f + i)`` form, not the
library's log-space form, and the LRU uses complex matrices, not the
library's real/imaginary split.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import rnn_jax
from rnn_jax import linear_rnn
import reference

BATCH, STEPS, INPUT = 4, 9, 3
LENGTHS = np.array([STEPS, 4, 0, STEPS + 3])  # full, partial, empty, clipped to STEPS


def np_g(v):
  return np.where(v >= 0, v + 0.5, reference.sigmoid(v))


def np_candidate(name, v):
  return np_g(v) if name == "g" else v


def mingru_step(params, h, x, candidate):
  """``z = sigmoid(x W_z + b_z)``, ``h = (1 - z) h + z cand(x W_h + b_h)``."""
  hidden = h.shape[0]
  k = x @ params["w_ih"] + params["b"]
  z = reference.sigmoid(k[:hidden])
  h = (1.0 - z) * h + z * np_candidate(candidate, k[hidden:])
  return h, h


def minlstm_step(params, h, x, candidate):
  """``f' = f / (f + i)``, ``i' = i / (f + i)``, ``h = f' h + i' cand(x W_h + b_h)``."""
  hidden = h.shape[0]
  k = x @ params["w_ih"] + params["b"]
  f = reference.sigmoid(k[:hidden])
  i = reference.sigmoid(k[hidden:2 * hidden])
  h = f / (f + i) * h + i / (f + i) * np_candidate(candidate, k[2 * hidden:])
  return h, h


def lru_step(params, h, x, skip):
  """``h = lambda h + gamma (B x)``, ``y = Re(C h) + D x`` with complex ``B``, ``C``."""
  lam = np.exp(-np.exp(params["nu_log"]) + 1j * np.exp(params["theta_log"]))
  big_b = (params["B_re"] + 1j * params["B_im"]).T  # [H, I], the paper's layout
  big_c = (params["C_re"] + 1j * params["C_im"]).T  # [O, H]
  h = lam * h + np.exp(params["gamma_log"]) * (big_b @ x)
  y = (big_c @ h).real
  if skip == "diagonal":
    y = y + params["D"] * x
  elif skip == "dense":
    y = y + params["D"].T @ x
  return h, y


def linear_layer(cell, params):
  """Reference sequence function ``(xs [T, I], h, length, reverse) -> (ys [T, O], h)``."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  step = {
      "mingru": lambda h, x: mingru_step(params, h, x, cell.candidate),
      "minlstm": lambda h, x: minlstm_step(params, h, x, cell.candidate),
      "lru": lambda h, x: lru_step(params, h, x, cell.skip),
  }[cell.name]

  def run(xs, h, length, reverse):
    valid = reference.clip_length(length, xs.shape[0])
    outputs = np.zeros((xs.shape[0], cell.output_size))
    for t in (range(valid - 1, -1, -1) if reverse else range(valid)):
      h, outputs[t] = step(h, xs[t])
    return outputs, h

  return run


# Explicitly parallel (the default, parallel=None, picks the backend's tuned mode).
CELLS = {
    "mingru": rnn_jax.mingru(5, parallel=True),
    "mingru_g": rnn_jax.mingru(5, "g", parallel=True),
    "minlstm": rnn_jax.minlstm(5, parallel=True),
    "minlstm_g": rnn_jax.minlstm(5, "g", parallel=True),
    "lru_diagonal": rnn_jax.lru(6, INPUT, parallel=True),
    "lru_dense": rnn_jax.lru(6, 4, skip="dense", r_min=0.5, r_max=0.99, max_phase=1.0,
                             parallel=True),
    "lru_none": rnn_jax.lru(6, 4, skip="none", parallel=True),
}


def sequential(cell):
  return cell.with_parallel(False)


def random_carry(cell, rng, batch=BATCH):
  shape = (batch, cell.hidden_size)
  carry = rng.standard_normal(shape)
  if cell.name == "lru":
    carry = carry + 1j * rng.standard_normal(shape)
  return carry


# Reversal is the same code for every cell, so each cell runs in one direction.
@pytest.mark.parametrize("name, reverse", [("mingru_g", False), ("minlstm", True),
                                           ("lru_diagonal", True), ("lru_dense", False)])
def test_parallel_and_sequential_match_numpy_reference(name, reverse, rnn_jit, random_params):
  cell = CELLS[name]
  params = random_params(cell, INPUT, seed=1)
  rng = np.random.default_rng(2)
  xs = rng.standard_normal((BATCH, STEPS, INPUT)).astype(np.float32)
  h0 = random_carry(cell, rng)
  want, want_final = reference.run_batch(linear_layer(cell, params), xs, list(h0), LENGTHS,
                                         reverse)
  results = {}
  for mode in (cell, sequential(cell)):
    outputs, final = rnn_jit(mode, params, xs, initial_carry=jnp.asarray(h0, cell.initial_carry(
        (BATCH,)).dtype), lengths=LENGTHS, reverse=reverse)
    assert outputs.shape == (BATCH, STEPS, cell.output_size) and outputs.dtype == jnp.float32
    np.testing.assert_allclose(outputs, want, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(final, np.stack(want_final), atol=2e-5, rtol=2e-5)
    results[mode.parallel] = (outputs, final)
  np.testing.assert_allclose(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(results[True][1], results[False][1], atol=1e-5, rtol=1e-5)
  # Length 0 returns the initial carry unchanged and zero outputs.
  np.testing.assert_allclose(results[True][1][2], h0[2], rtol=1e-6)
  assert not np.any(np.asarray(results[True][0][2]))


def test_parallel_matches_sequential_on_a_long_sequence(rnn_jit, random_params):
  """200 steps (not a power of two), reversed without lengths: within 1e-5."""
  rng = np.random.default_rng(3)
  xs = rng.standard_normal((2, 200, INPUT)).astype(np.float32)
  cell = CELLS["lru_dense"]
  params = cell.init(jax.random.key(4), INPUT)
  parallel, final_p = rnn_jit(cell, params, xs, reverse=True)
  serial, final_s = rnn_jit(sequential(cell), params, xs, reverse=True)
  np.testing.assert_allclose(parallel, serial, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(final_p, final_s, atol=1e-5, rtol=1e-5)


def test_step_generates_the_same_outputs(rnn_jit, random_params):
  """Feeding ``cell.step`` one input at a time reproduces the parallel run."""
  cell = CELLS["lru_dense"]
  params = random_params(cell, INPUT, seed=5)
  xs = np.random.default_rng(6).standard_normal((BATCH, STEPS, INPUT)).astype(np.float32)
  outputs, final = rnn_jit(cell, params, xs)
  step = jax.jit(cell.step)
  h = cell.initial_carry((BATCH,))
  for t in range(STEPS):
    h, y = step(params, h, xs[:, t])
    np.testing.assert_allclose(y, outputs[:, t], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(h, final, atol=1e-5, rtol=1e-5)


def _loss(cell, params, xs, lengths, reverse, weights):
  outputs, final = rnn_jax.rnn(cell, params, xs, lengths=lengths, reverse=reverse)
  final = jnp.concatenate([jnp.real(final), jnp.imag(final)], axis=-1)
  return jnp.sum(outputs * weights[0]) + jnp.sum(final * weights[1])


@pytest.mark.parametrize("name, reverse", [("mingru_g", False), ("minlstm", True),
                                           ("lru_diagonal", True)])
def test_gradients_match_finite_differences(name, reverse, x64, random_params):
  cell = CELLS[name]
  rng = np.random.default_rng(7)
  params = jax.tree.map(lambda p: p.astype(jnp.float64), random_params(cell, INPUT, seed=8))
  xs = jnp.asarray(rng.standard_normal((3, 6, INPUT)))
  lengths = jnp.array([6, 2, 5])
  weights = (jnp.asarray(rng.standard_normal((3, 6, cell.output_size))),
             jnp.asarray(rng.standard_normal((3, 2 * cell.hidden_size))))
  theta, unravel = ravel_pytree((params, xs))
  assert theta.dtype == jnp.float64

  def loss(v):
    params_v, xs_v = unravel(v)
    return _loss(cell, params_v, xs_v, lengths, reverse, weights)

  grad = jax.jit(jax.grad(loss))(theta)
  numeric = reference.central_differences(jax.jit(jax.vmap(loss)), theta)
  np.testing.assert_allclose(grad, numeric, atol=1e-7, rtol=1e-6)


def test_parallel_gradients_match_sequential(random_params):
  """Backward through the associative scan equals backward through the sequential scan."""
  cell = CELLS["lru_dense"]
  rng = np.random.default_rng(9)
  params = random_params(cell, INPUT, seed=10)
  xs = jnp.asarray(rng.standard_normal((BATCH, STEPS, INPUT)), jnp.float32)
  weights = (jnp.asarray(rng.standard_normal((BATCH, STEPS, cell.output_size)), jnp.float32),
             jnp.asarray(rng.standard_normal((BATCH, 2 * cell.hidden_size)), jnp.float32))
  grad = jax.jit(jax.grad(_loss, argnums=(1, 2)), static_argnums=(0, 4))
  parallel = grad(cell, params, xs, LENGTHS, True, weights)
  serial = grad(sequential(cell), params, xs, LENGTHS, True, weights)
  for got, want in zip(jax.tree.leaves(parallel), jax.tree.leaves(serial)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("parallel, reverse", [(True, False), (False, True)])
def test_stack_and_bidirectional(parallel, reverse, rnn_jit, random_params):
  """A stack of (bidirectional minGRU/LRU, LSTM, minLSTM) against the references.

  Also the reference check of the variants not in the test above.
  """
  mode = (lambda c: c) if parallel else sequential
  bidir = rnn_jax.bidirectional(mode(CELLS["mingru"]), mode(CELLS["lru_none"]), "concat")
  model = rnn_jax.stack([bidir, rnn_jax.lstm(3), mode(CELLS["minlstm_g"])])
  params = random_params(model, INPUT, seed=11)
  xs = np.random.default_rng(12).standard_normal((BATCH, STEPS, INPUT)).astype(np.float32)
  outputs, final = rnn_jit(model, params, xs, lengths=LENGTHS, reverse=reverse)
  layer = reference.stack_layers([
      reference.bidirectional_layers(linear_layer(bidir.forward, params[0]["forward"]),
                                     linear_layer(bidir.backward, params[0]["backward"])),
      reference.cell_layer(model.layers[1], params[1]),
      linear_layer(model.layers[2], params[2]),
  ])
  zero = ((np.zeros(5), np.zeros(6, complex)), (np.zeros(3), np.zeros(3)), np.zeros(5))
  want, want_finals = reference.run_batch(layer, xs, None, LENGTHS, reverse, zero)
  assert outputs.shape == (BATCH, STEPS, 5)
  np.testing.assert_allclose(outputs, want, atol=2e-5, rtol=2e-5)
  for got, per_sequence in zip(jax.tree.leaves(final),
                               zip(*[jax.tree.leaves(f) for f in want_finals])):
    np.testing.assert_allclose(got, np.stack(per_sequence), atol=2e-5, rtol=2e-5)


def test_bfloat16_inputs_give_float32_outputs(rnn_jit):
  cell = CELLS["mingru"]
  params = cell.init(jax.random.key(0), INPUT)
  xs = np.random.default_rng(13).standard_normal((2, STEPS, INPUT)).astype(np.float32)
  out_16, _ = rnn_jit(cell, params, jnp.asarray(xs, jnp.bfloat16))
  out_32, _ = rnn_jit(cell, params, jnp.asarray(jnp.asarray(xs, jnp.bfloat16), jnp.float32))
  assert out_16.dtype == jnp.float32
  np.testing.assert_allclose(out_16, out_32, atol=1e-6)


def test_lru_ring_initialisation():
  """|lambda|^2 ~ U[r_min^2, r_max^2], arg lambda ~ U[0, max_phase], gamma = sqrt(1 - |lambda|^2)."""
  r_min, r_max, max_phase, size = 0.4, 0.9, 0.5, 4000
  params = rnn_jax.lru(size, 2, r_min=r_min, r_max=r_max, max_phase=max_phase,
                       skip="none").init(jax.random.key(0), 3)
  radius = np.exp(-np.exp(np.asarray(params["nu_log"], np.float64)))
  phase = np.exp(np.asarray(params["theta_log"], np.float64))
  assert radius.min() >= r_min - 1e-6 and radius.max() <= r_max + 1e-6
  assert phase.min() >= 0 and phase.max() <= max_phase + 1e-6
  # Means of uniforms, within 4 standard errors.
  np.testing.assert_allclose(np.mean(radius**2), (r_min**2 + r_max**2) / 2,
                             atol=4 * (r_max**2 - r_min**2) / np.sqrt(12 * size))
  np.testing.assert_allclose(np.mean(phase), max_phase / 2, atol=4 * max_phase / np.sqrt(12 * size))
  np.testing.assert_allclose(np.exp(params["gamma_log"]), np.sqrt(1 - radius**2), rtol=1e-4)
  assert params["B_re"].shape == (3, size) and params["C_im"].shape == (size, 2)
  np.testing.assert_allclose(np.std(params["B_re"]), 1 / np.sqrt(2 * 3), rtol=0.05)
  np.testing.assert_allclose(np.std(params["C_re"]), 1 / np.sqrt(size), rtol=0.05)


def test_chrono_initialisation():
  """Initial memory timescales 1 / (1 - a) = 1 + u with u ~ U[1, T_max - 1] (Tallec & Ollivier)."""
  t_max, size = 100.0, 2000
  x = jnp.zeros((size, 1))  # zero input: the coefficients come from the biases alone
  for cell in (rnn_jax.mingru(size, max_timescale=t_max),
               rnn_jax.minlstm(size, max_timescale=t_max)):
    params = cell.init(jax.random.key(0), 1)
    a, _, _ = cell.project(params, x[0])
    timescale = 1.0 / (1.0 - np.asarray(a, np.float64))
    assert timescale.min() >= 2.0 - 1e-3 and timescale.max() <= t_max + 0.5
    np.testing.assert_allclose(np.mean(timescale - 1.0), t_max / 2,
                               atol=4 * (t_max - 2) / np.sqrt(12 * size))
    np.testing.assert_array_equal(params["b"][-size:], 0.0)  # the candidate's bias untouched
  with pytest.raises(ValueError, match="max_timescale"):
    rnn_jax.mingru(4, max_timescale=1.5)


def test_g_is_continuous_and_positive():
  v = jnp.array([-30.0, -1.0, -1e-7, 0.0, 1e-7, 2.0])
  np.testing.assert_allclose(linear_rnn.g(v), np_g(np.asarray(v, np.float64)), rtol=1e-6)
  assert np.all(np.asarray(linear_rnn.g(v)) > 0)


def test_linear_scan_matches_a_loop():
  rng = np.random.default_rng(14)
  a, b = rng.uniform(-1, 1, (2, 37, 3))
  h0 = rng.standard_normal(3)
  states, h = [], h0
  for t in range(37):
    h = a[t] * h + b[t]
    states.append(h)
  got = jax.jit(linear_rnn.linear_scan)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                                        jnp.asarray(h0, jnp.float32))
  np.testing.assert_allclose(got, np.stack(states), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_linear_scan_custom_gradient_matches_autodiff(dtype, x64):
  """The hand-written VJP against JAX's autodiff of the same associative scan."""
  rng = np.random.default_rng(15)
  shape = (11, 2, 3)
  a, b, h0 = rng.uniform(-1, 1, shape), rng.standard_normal(shape), rng.standard_normal(shape[1:])
  if dtype == np.complex128:
    a = a * np.exp(1j * rng.uniform(0, np.pi, shape))
    b, h0 = b + 1j * rng.standard_normal(shape), h0 - 0.5j
  weights = rng.standard_normal((2,) + shape)

  def loss(scan, a, b, h0):
    h = scan(a, b, h0)
    return jnp.sum(jnp.real(h) * weights[0] + jnp.imag(h) * weights[1])

  grad = lambda scan: jax.jit(jax.grad(functools.partial(loss, scan), argnums=(0, 1, 2)))
  custom = grad(linear_rnn.linear_scan)(a, b, h0)
  autodiff = grad(linear_rnn._associative_scan)(a, b, h0)  # pylint: disable=protected-access
  for got, want in zip(custom, autodiff):
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=1e-12)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="skip='dense'"):
    rnn_jax.lru(4, 2).init(jax.random.key(0), 3)
  with pytest.raises(ValueError, match="candidate"):
    rnn_jax.mingru(4, "tanh")
  with pytest.raises(ValueError, match="r_min"):
    rnn_jax.lru(4, 2, r_min=0.9, r_max=0.5)
  with pytest.raises(ValueError, match="skip"):
    rnn_jax.lru(4, 2, skip="full")
  cell = rnn_jax.minlstm(4)
  with pytest.raises(ValueError, match="input size 3"):
    rnn_jax.rnn(cell, cell.init(jax.random.key(0), 3), jnp.zeros((2, 5, 4)))


def test_mode_is_chosen_per_backend_unless_set():
  for make in (lambda **kw: rnn_jax.mingru(4, **kw), lambda **kw: rnn_jax.minlstm(4, **kw),
               lambda **kw: rnn_jax.lru(4, 3, **kw)):
    tuned = make()
    assert tuned.parallel is None
    kind = type(tuned)
    for backend in ("cpu", "gpu", "tpu"):
      assert tuned.runs_parallel(backend) == kind.TUNED_PARALLEL.get(backend, False)
    assert tuned.runs_parallel("gpu") and tuned.runs_parallel("tpu")
    assert tuned.runs_parallel() == tuned.runs_parallel(jax.default_backend())
    for mode in (True, False):
      switched = tuned.with_parallel(mode)
      assert switched == make(parallel=mode) and hash(switched) == hash(make(parallel=mode))
      assert switched.runs_parallel("cpu") is mode and switched.runs_parallel("gpu") is mode
      assert switched.with_parallel(None) == tuned
    assert repr(tuned) == repr(make()) and "parallel" not in repr(tuned)
    assert "parallel=False" in repr(make(parallel=False))
  for bad in (1, "yes", 0.0):
    with pytest.raises(ValueError, match="parallel must be True, False or None"):
      rnn_jax.mingru(4, parallel=bad)


def test_the_default_mode_runs_as_the_backend_tuned_one():
  """The default lowers to the same program as the mode it resolves to on this backend."""
  cell = rnn_jax.minlstm(3)
  params = cell.init(jax.random.key(0), 2)
  xs = jnp.ones((2, 6, 2))
  lowered = lambda layer: jax.jit(lambda p, x: rnn_jax.rnn(layer, p, x)[0]).lower(
      params, xs).as_text()
  chosen = cell.with_parallel(cell.runs_parallel())
  assert lowered(cell) == lowered(chosen)
  assert lowered(cell) != lowered(cell.with_parallel(not cell.runs_parallel()))


def test_a_single_input_feature_is_not_hoisted_by_default():
  """hoist=None follows TUNED_HOIST, but one input feature always runs the projection in the step."""
  cell = rnn_jax.minlstm(3, parallel=False)
  lowered = lambda inputs, **kw: jax.jit(lambda p, x: rnn_jax.rnn(cell, p, x, **kw)[0]).lower(
      cell.init(jax.random.key(0), inputs), jnp.ones((2, 5, inputs))).as_text()
  assert lowered(1) == lowered(1, hoist=False) != lowered(1, hoist=True)
  tuned = type(cell).TUNED_HOIST.get(jax.default_backend(), False)
  assert lowered(4) == lowered(4, hoist=tuned) != lowered(4, hoist=not tuned)
