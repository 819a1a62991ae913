"""rnn_jax.linen.RNN and Cell: params are layer.init's pytree, outputs rnn_jax.rnn's; they train,
jit, step and drop into flax.linen.RNN."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnn_jax
from rnn_jax import linen as rnn_linen

INPUT, HIDDEN, STEPS, BATCH = 3, 4, 5, 3
LENGTHS = np.array([2, 5, 3], np.int32)
STACKED = rnn_jax.stack([rnn_jax.bidirectional(rnn_jax.lstm(HIDDEN), rnn_jax.gru(HIDDEN)),
                         rnn_jax.simple_rnn(HIDDEN)], dropout=0.5)
DROPOUT_STACK = rnn_jax.stack([rnn_jax.simple_rnn(HIDDEN)] * 2, dropout=0.5)


class KeyProbe(nn.Module):
  """Returns the keys Flax hands a top-level module's first ``param`` and ``make_rng`` calls."""

  @nn.compact
  def __call__(self, xs, with_dropout=False):
    key = self.param("layer", lambda rng, size: jax.random.key_data(rng), xs.shape[-1])
    if with_dropout:
      return jax.random.key_data(self.make_rng("dropout"))
    return key


def _inputs(seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((BATCH, STEPS, INPUT)),
                     jnp.float32)


@pytest.mark.parametrize("cell", [rnn_jax.lstm(HIDDEN), STACKED], ids=["lstm", "stack"])
def test_params_are_cell_init_pytree(cell):
  xs = _inputs(0)
  root = jax.random.key(42)
  variables = rnn_linen.RNN(cell).init(root, xs)
  assert set(variables) == {"params"} and set(variables["params"]) == {"layer"}
  param_key = jax.random.wrap_key_data(KeyProbe().init(root, xs)["params"]["layer"])
  expected = cell.init(param_key, INPUT)
  got = variables["params"]["layer"]
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for want_leaf, got_leaf in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(got_leaf, want_leaf)


def test_apply_matches_rnn_and_jits(rnn_jit):
  xs = _inputs(1)
  model = rnn_linen.RNN(STACKED, return_carry=True, reverse=True)
  variables = model.init(jax.random.key(0), xs)
  params = variables["params"]["layer"]
  want_out, want_carry = rnn_jit(STACKED, params, xs, lengths=LENGTHS, reverse=True)
  got_out, got_carry = jax.jit(model.apply)(variables, xs, lengths=LENGTHS)
  np.testing.assert_allclose(got_out, want_out, atol=1e-6)
  assert jax.tree.structure(got_carry) == jax.tree.structure(want_carry)
  for got, want in zip(jax.tree.leaves(got_carry), jax.tree.leaves(want_carry)):
    np.testing.assert_allclose(got, want, atol=1e-6)
  # Time-major inputs and an explicit initial carry pass through.
  carry = jax.tree.map(lambda leaf: leaf + 0.5, STACKED.initial_carry((BATCH,)))
  tm_out = jax.jit(rnn_linen.RNN(STACKED, time_major=True).apply)(
      variables, jnp.swapaxes(xs, 0, 1), initial_carry=carry)
  want_tm, _ = rnn_jit(STACKED, params, xs, initial_carry=carry)
  np.testing.assert_allclose(jnp.swapaxes(tm_out, 0, 1), want_tm, atol=1e-6)


def test_dropout_uses_flax_dropout_rng(rnn_jit):
  xs = _inputs(2)
  model = rnn_linen.RNN(DROPOUT_STACK)
  variables = model.init(jax.random.key(0), xs)
  params = variables["params"]["layer"]
  dropout_root = jax.random.key(7)
  probe_vars = KeyProbe().init(jax.random.key(0), xs)
  dropout_key = jax.random.wrap_key_data(
      KeyProbe().apply(probe_vars, xs, with_dropout=True, rngs={"dropout": dropout_root}))
  apply = jax.jit(model.apply, static_argnames="deterministic")
  got = apply(variables, xs, deterministic=False, rngs={"dropout": dropout_root})
  want, _ = rnn_jit(DROPOUT_STACK, params, xs, dropout_rng=dropout_key)
  np.testing.assert_allclose(got, want, atol=1e-6)
  deterministic, _ = rnn_jit(DROPOUT_STACK, params, xs)
  assert np.abs(np.asarray(got) - np.asarray(deterministic)).max() > 1e-3
  np.testing.assert_allclose(apply(variables, xs), deterministic, atol=1e-6)
  with pytest.raises(Exception, match="dropout"):  # stack dropout needs the rng stream
    model.apply(variables, xs, deterministic=False)
  # A cell without dropout needs no rng even when not deterministic.
  plain = rnn_linen.RNN(rnn_jax.gru(HIDDEN))
  plain_vars = plain.init(jax.random.key(0), xs)
  plain_apply = jax.jit(plain.apply, static_argnames="deterministic")
  np.testing.assert_allclose(plain_apply(plain_vars, xs, deterministic=False),
                             plain_apply(plain_vars, xs), atol=0)


def test_vjp_reaches_rnn():
  xs = _inputs(4)
  cell = rnn_jax.lstm(HIDDEN)
  variables = rnn_linen.RNN(cell).init(jax.random.key(0), xs)
  grads = {vjp: jax.jit(jax.grad(lambda v, vjp=vjp: jnp.sum(rnn_linen.RNN(cell, vjp=vjp).apply(
      v, xs, lengths=LENGTHS))))(variables) for vjp in ("autodiff", "fused")}
  for autodiff, fused in zip(jax.tree.leaves(grads["autodiff"]), jax.tree.leaves(grads["fused"])):
    np.testing.assert_allclose(fused, autodiff, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="vjp"):
    rnn_linen.RNN(cell, vjp="bogus").apply(variables, xs)


class Classifier(nn.Module):
  """An RNN layer inside a Flax model: last valid output -> Dense."""

  @nn.compact
  def __call__(self, xs, lengths):
    outputs = rnn_linen.RNN(rnn_jax.lstm(HIDDEN))(xs, lengths=lengths)
    return nn.Dense(2)(rnn_jax.last_output(outputs, lengths))


def test_flax_model_trains_one_optax_step():
  xs, labels = _inputs(3), jnp.array([0, 1, 1])
  model = Classifier()
  params = model.init(jax.random.key(0), xs, LENGTHS)["params"]
  assert set(params) == {"RNN_0", "Dense_0"} and set(params["RNN_0"]) == {"layer"}
  optimizer = optax.sgd(0.1)
  opt_state = optimizer.init(params)

  def loss_fn(params):
    logits = model.apply({"params": params}, xs, LENGTHS)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  new_params, _, loss, grads = train_step(params, opt_state)
  cell_grads = grads["RNN_0"]["layer"]
  assert set(cell_grads) == {"w_ih", "w_hh", "b"}
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(cell_grads))
  # An SGD step of 0.1 along the gradient lowers the loss (first order: by ~0.1 |g|^2).
  grad_sq = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads))
  new_loss = jax.jit(loss_fn)(new_params)
  assert new_loss < loss - 0.05 * grad_sq, (float(loss), float(new_loss), grad_sq)


def test_a_flax_cell_is_named():
  with pytest.raises(TypeError, match=r"RNN.layer \(for a flax.linen cell use flax.linen.RNN\): "
                                      r"expected an rnn_jax layer .* got flax"):
    rnn_linen.RNN(nn.GRUCell(4))
  with pytest.raises(TypeError, match=r"Cell.layer .* got flax"):
    rnn_linen.Cell(nn.GRUCell(4))


def test_options_record_and_its_sugar_reach_rnn(rnn_jit):
  xs = _inputs(5)
  options = rnn_jax.RunOptions(reverse=True, unroll=2)
  model = rnn_linen.RNN(STACKED, options=options)
  variables = model.init(jax.random.key(0), xs)
  assert model.run_options == options
  want, _ = rnn_jit(STACKED, variables["params"]["layer"], xs, lengths=LENGTHS, reverse=True)
  np.testing.assert_allclose(jax.jit(model.apply)(variables, xs, lengths=LENGTHS), want,
                             atol=1e-6)
  # A keyword given replaces that field of the record; the others stay.
  forward = rnn_linen.RNN(STACKED, options=options, reverse=False)
  assert forward.run_options == rnn_jax.RunOptions(reverse=False, unroll=2)
  want_forward, _ = rnn_jit(STACKED, variables["params"]["layer"], xs, lengths=LENGTHS)
  np.testing.assert_allclose(forward.apply(variables, xs, lengths=LENGTHS), want_forward,
                             atol=1e-6)
  with pytest.raises(TypeError, match="options: expected an rnn_jax.RunOptions"):
    rnn_linen.RNN(STACKED, options={"reverse": True}).apply(variables, xs)


def test_cell_is_the_deprecated_name_of_layer():
  xs = _inputs(6)
  with pytest.warns(DeprecationWarning, match=r"RNN\(cell=...\) is deprecated; use layer="):
    old = rnn_linen.RNN(cell=rnn_jax.gru(HIDDEN), return_carry=True)
  assert old == rnn_linen.RNN(rnn_jax.gru(HIDDEN), return_carry=True)
  variables = old.init(jax.random.key(0), xs)
  assert set(variables["params"]) == {"layer"}
  with pytest.raises(ValueError, match="pass the layer once"):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      rnn_linen.RNN(rnn_jax.gru(HIDDEN), cell=rnn_jax.gru(HIDDEN))


STEPPABLE = rnn_jax.stack([rnn_jax.lstm(HIDDEN), rnn_jax.gru(HIDDEN + 1)])


def test_rnn_steps_like_its_run():
  xs = _inputs(7)
  model = rnn_linen.RNN(STEPPABLE, return_carry=True)
  variables = model.init(jax.random.key(1), xs)
  want_out, want_carry = jax.jit(model.apply)(variables, xs)
  step = jax.jit(lambda variables, carry, x: model.apply(variables, carry, x, method="step"))
  carry = model.initial_carry((BATCH,))
  assert jax.tree.structure(carry) == jax.tree.structure(STEPPABLE.initial_carry((BATCH,)))
  outputs = []
  for t in range(STEPS):
    carry, y = step(variables, carry, xs[:, t])
    outputs.append(y)
  np.testing.assert_allclose(jnp.stack(outputs, 1), want_out, atol=1e-6)
  for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(want_carry)):
    np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="no parameters yet"):
    model.apply({}, carry, xs[:, 0], method="step")
  with pytest.raises(TypeError, match="cannot be stepped"):
    bidirectional = rnn_linen.RNN(STACKED)
    bidirectional.apply(bidirectional.init(jax.random.key(0), xs),
                        STACKED.initial_carry((BATCH,)), xs[:, 0], method="step")


def test_cell_in_flax_linen_rnn_scan_and_a_loop_matches_rnn(rnn_jit):
  xs = _inputs(8)
  cell = rnn_linen.Cell(STEPPABLE)
  assert cell.num_feature_axes == 1
  flax_rnn = nn.RNN(cell, return_carry=True)
  variables = flax_rnn.init(jax.random.key(2), xs)
  params = variables["params"]["cell"]["layer"]
  assert jax.tree.structure(params) == jax.tree.structure(STEPPABLE.init(jax.random.key(0), INPUT))
  want_out, want_carry = rnn_jit(STEPPABLE, params, xs, lengths=LENGTHS)
  got_carry, got_out = jax.jit(flax_rnn.apply)(variables, xs, seq_lengths=LENGTHS)
  mask = np.arange(STEPS) < LENGTHS[:, None]   # flax.linen.RNN does not zero padded outputs
  np.testing.assert_allclose(np.asarray(got_out)[mask], want_out[mask], atol=1e-6)
  for got, want in zip(jax.tree.leaves(got_carry), jax.tree.leaves(want_carry)):
    np.testing.assert_allclose(got, want, atol=1e-6)
  # nn.scan of the cell over time-major inputs.
  scanned = nn.scan(rnn_linen.Cell, variable_broadcast="params", split_rngs={"params": False},
                    in_axes=0, out_axes=0)(STEPPABLE)
  carry0 = cell.initialize_carry(jax.random.key(0), xs[:, 0].shape)
  cell_variables = {"params": variables["params"]["cell"]}
  _, scan_out = scanned.apply(cell_variables, carry0, jnp.swapaxes(xs, 0, 1))
  want_full, _ = rnn_jit(STEPPABLE, params, xs)
  np.testing.assert_allclose(jnp.swapaxes(scan_out, 0, 1), want_full, atol=1e-6)
  # A hand-written decoder loop feeding each output's mean back in.
  carry, x, decoded = carry0, xs[:, 0], []
  for _ in range(3):
    carry, y = cell.apply(cell_variables, carry, x)
    decoded.append(y)
    x = jnp.repeat(y.mean(-1, keepdims=True), INPUT, axis=-1)
  carry, x = STEPPABLE.initial_carry((BATCH,)), xs[:, 0]
  for want_y in decoded:
    carry, y = STEPPABLE.step(params, carry, x)
    np.testing.assert_allclose(want_y, y, atol=1e-6)
    x = jnp.repeat(y.mean(-1, keepdims=True), INPUT, axis=-1)


def test_resets_reach_rnn_and_step_and_cell_reset_like_the_run(rnn_jit):
  xs = _inputs(9)
  resets = np.array([[False, False, True, False, False], [True, False, False, False, True],
                     [False, True, False, True, False]])
  model = rnn_linen.RNN(STEPPABLE, return_carry=True)
  variables = model.init(jax.random.key(2), xs)
  want_out, want_carry = rnn_jit(STEPPABLE, variables["params"]["layer"], xs, resets=resets)
  got_out, got_carry = jax.jit(lambda v, x, r: model.apply(v, x, resets=r))(variables, xs, resets)
  np.testing.assert_allclose(got_out, want_out, atol=1e-6)
  cell = rnn_linen.Cell(STEPPABLE)
  for apply_step in (lambda c, x, r: model.apply(variables, c, x, resets=r, method="step"),
                     lambda c, x, r: cell.apply(variables, c, x, resets=r)):
    carry, outputs = model.initial_carry((BATCH,)), []
    for t in range(STEPS):
      carry, y = jax.jit(apply_step)(carry, xs[:, t], resets[:, t])
      outputs.append(y)
    np.testing.assert_allclose(jnp.stack(outputs, 1), want_out, atol=1e-6)
    for got, want in zip(jax.tree.leaves((carry, got_carry)), jax.tree.leaves((want_carry,) * 2)):
      np.testing.assert_allclose(got, want, atol=1e-6)


def test_compute_dtype_reaches_rnn_and_step():
  xs = _inputs(9)
  model = rnn_linen.RNN(STEPPABLE, return_carry=True, compute_dtype=jnp.bfloat16)
  assert model.layer == rnn_jax.with_compute_dtype(STEPPABLE, jnp.bfloat16)
  variables = model.init(jax.random.key(1), xs)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  outputs, carry = jax.jit(model.apply)(variables, xs)
  want, want_carry = jax.jit(lambda p, xs: rnn_jax.rnn(STEPPABLE, p, xs,
                                                       compute_dtype=jnp.bfloat16))(
      variables["params"]["layer"], xs)
  assert outputs.dtype == jnp.bfloat16
  np.testing.assert_array_equal(outputs, want)
  y = model.apply(variables, model.initial_carry((BATCH,)), xs[:, 0], method="step")[1]
  np.testing.assert_allclose(y, want[:, 0].astype(jnp.float32), atol=1e-2)  # want is bf16.
  assert rnn_linen.RNN(STEPPABLE).apply(variables, xs).dtype == jnp.float32
