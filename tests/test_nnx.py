"""rnn_jax.nnx.RNN: params are layer.init's pytree, outputs and gradients rnn_jax.rnn's; dropout."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnn_jax
from rnn_jax import nnx as rnn_nnx

INPUT, HIDDEN, STEPS, BATCH = 3, 4, 5, 3
LENGTHS = np.array([2, 5, 3], np.int32)
STACK = rnn_jax.stack([rnn_jax.lstm(HIDDEN), rnn_jax.gru(HIDDEN)])
BIDIRECTIONAL = rnn_jax.bidirectional(rnn_jax.lstm(HIDDEN), rnn_jax.gru(HIDDEN))
DROPOUT_STACK = rnn_jax.stack([rnn_jax.simple_rnn(HIDDEN)] * 2, dropout=0.5)


def _inputs(seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((BATCH, STEPS, INPUT)),
                     jnp.float32)


def _assert_trees_close(got, want, atol=1e-6):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(got_leaf, want_leaf, atol=atol)


def test_params_are_layer_init_pytree():
  model = rnn_nnx.RNN(STACK, INPUT, rngs=nnx.Rngs(0))
  expected = STACK.init(nnx.Rngs(0).params(), INPUT)
  _assert_trees_close(model.params.get_value(), expected, atol=0)
  assert set(nnx.state(model, nnx.Param)) == {"params"}


@pytest.mark.parametrize("layer, options", [
    (rnn_jax.lstm(HIDDEN), {}),
    (rnn_jax.gru(HIDDEN), {"reverse": True}),
    (STACK, {"lengths": LENGTHS}),
    (BIDIRECTIONAL, {"lengths": LENGTHS, "time_major": True}),
], ids=["lstm", "gru-reverse", "stack-lengths", "bidirectional-time-major"])
def test_outputs_and_carry_match_rnn(rnn_jit, layer, options):
  xs = _inputs(1)
  lengths = options.get("lengths")
  flags = {k: v for k, v in options.items() if k != "lengths"}
  model = rnn_nnx.RNN(layer, INPUT, rngs=nnx.Rngs(1), **flags)
  model_xs = jnp.swapaxes(xs, 0, 1) if flags.get("time_major") else xs
  got_out, got_carry = nnx.jit(lambda model, xs: model(xs, lengths=lengths))(model, model_xs)
  want_out, want_carry = rnn_jit(layer, model.params.get_value(), model_xs, lengths=lengths,
                                 **flags)
  np.testing.assert_allclose(got_out, want_out, atol=1e-6)
  _assert_trees_close(got_carry, want_carry)


def test_gradients_match_rnn_and_optimizer_steps():
  xs = _inputs(2)
  model = rnn_nnx.RNN(STACK, INPUT, rngs=nnx.Rngs(2))
  initial_carry = jax.tree.map(lambda leaf: leaf + 0.3, STACK.initial_carry((BATCH,)))
  cotangent = jnp.asarray(np.random.default_rng(4).standard_normal((BATCH, STEPS, HIDDEN)),
                          jnp.float32)

  def loss_of_outputs(outputs, carry):
    return jnp.sum(outputs * cotangent) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(carry))

  def model_loss(model):
    return loss_of_outputs(*model(xs, lengths=LENGTHS, initial_carry=initial_carry))

  def rnn_loss(params):
    return loss_of_outputs(*rnn_jax.rnn(STACK, params, xs, lengths=LENGTHS,
                                        initial_carry=initial_carry))

  old_params = model.params.get_value()
  want = jax.jit(jax.grad(rnn_loss))(old_params)
  got = nnx.jit(nnx.grad(model_loss))(model)
  _assert_trees_close(got["params"].get_value(), want, atol=1e-5)

  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(model_loss)(model)
    optimizer.update(model, grads)
    return loss

  loss = train_step(model, optimizer)
  np.testing.assert_allclose(loss, rnn_loss(old_params), rtol=1e-5)
  stepped = jax.tree.map(lambda p, g: p - 0.1 * g, old_params, want)
  _assert_trees_close(model.params.get_value(), stepped, atol=1e-5)


def test_dropout_draws_from_the_dropout_stream(rnn_jit):
  xs = _inputs(5)
  model = rnn_nnx.RNN(DROPOUT_STACK, INPUT, rngs=nnx.Rngs(params=0, dropout=7),
                      return_carry=False)
  params = model.params.get_value()
  no_dropout, _ = rnn_jit(DROPOUT_STACK, params, xs)
  forward = nnx.jit(lambda model, xs: model(xs))
  # The layer's own stream: the key it holds next, and a new one each call.
  next_key = nnx.clone(model.dropout_rngs)()
  first = forward(model, xs)
  want_first, _ = rnn_jit(DROPOUT_STACK, params, xs, dropout_rng=next_key)
  np.testing.assert_allclose(first, want_first, atol=1e-6)
  second = forward(model, xs)
  assert np.abs(np.asarray(first) - np.asarray(second)).max() > 1e-3
  assert np.abs(np.asarray(first) - no_dropout).max() > 1e-3
  # A call's own rngs take precedence.
  given = model(xs, rngs=nnx.Rngs(dropout=3))
  want_given, _ = rnn_jit(DROPOUT_STACK, params, xs, dropout_rng=nnx.Rngs(dropout=3).dropout())
  np.testing.assert_allclose(given, want_given, atol=1e-6)
  # Deterministic: per call, after model.eval(), or in a view.
  np.testing.assert_allclose(model(xs, deterministic=True), no_dropout, atol=1e-6)
  np.testing.assert_allclose(forward(nnx.view(model, deterministic=True), xs), no_dropout,
                             atol=1e-6)
  model.eval()
  np.testing.assert_allclose(forward(model, xs), no_dropout, atol=1e-6)
  # A layer without dropout holds no stream and needs none.
  plain = rnn_nnx.RNN(rnn_jax.gru(HIDDEN), INPUT, rngs=nnx.Rngs(0), return_carry=False)
  assert plain.dropout_rngs is None
  want_plain, _ = rnn_jit(rnn_jax.gru(HIDDEN), plain.params.get_value(), xs)
  np.testing.assert_allclose(plain(xs), want_plain, atol=1e-6)


@pytest.mark.parametrize("not_a_layer", [rnn_jax.lstm, "lstm"], ids=["constructor", "string"])
def test_rejects_what_is_not_an_rnn_jax_layer(not_a_layer):
  with pytest.raises(TypeError, match="rnn_jax layer"):
    rnn_nnx.RNN(not_a_layer, INPUT, rngs=nnx.Rngs(0))


def test_options_reach_rnn():
  with pytest.raises(ValueError, match="vjp"):
    rnn_nnx.RNN(rnn_jax.lstm(HIDDEN), INPUT, rngs=nnx.Rngs(0), vjp="bogus")(_inputs(0))


def test_rejects_a_flax_cell():
  with pytest.raises(TypeError, match="LSTMCell"):
    rnn_nnx.RNN(nnx.LSTMCell(INPUT, HIDDEN, rngs=nnx.Rngs(0)), INPUT, rngs=nnx.Rngs(0))
