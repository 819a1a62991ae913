"""rnn_jax.nnx.RNN and Cell: params are layer.init's pytree, outputs and gradients rnn_jax.rnn's;
dropout; nnx.Optimizer training with every layer kind; stepping."""

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
  _assert_trees_close(model.layer_params(), expected, atol=0)
  assert set(nnx.state(model, nnx.Param)) == {"params"}
  # The Param holds the stack's tuple as a dict keyed by position (see the module doc).
  assert set(model.params.get_value()) == {0, 1}
  _assert_trees_close(rnn_nnx.from_param_value(STACK, model.params.get_value(), INPUT),
                      expected, atol=0)
  fresh = STACK.init(jax.random.key(9), INPUT)
  model.set_layer_params(fresh)
  _assert_trees_close(model.layer_params(), fresh, atol=0)
  with pytest.raises(ValueError, match="params: expected a pytree like"):
    model.set_layer_params(fresh[0])


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
  model = rnn_nnx.RNN(layer, INPUT, rngs=nnx.Rngs(1), return_carry=True, **flags)
  model_xs = jnp.swapaxes(xs, 0, 1) if flags.get("time_major") else xs
  got_out, got_carry = nnx.jit(lambda model, xs: model(xs, lengths=lengths))(model, model_xs)
  want_out, want_carry = rnn_jit(layer, model.layer_params(), model_xs, lengths=lengths,
                                 **flags)
  np.testing.assert_allclose(got_out, want_out, atol=1e-6)
  _assert_trees_close(got_carry, want_carry)


def test_gradients_match_rnn_and_optimizer_steps():
  xs = _inputs(2)
  model = rnn_nnx.RNN(STACK, INPUT, rngs=nnx.Rngs(2), return_carry=True)
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

  old_params = model.layer_params()
  want = jax.jit(jax.grad(rnn_loss))(old_params)
  got = nnx.jit(nnx.grad(model_loss))(model)
  _assert_trees_close(rnn_nnx.from_param_value(STACK, got["params"].get_value(), INPUT), want,
                      atol=1e-5)

  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(model_loss)(model)
    optimizer.update(model, grads)
    return loss

  loss = train_step(model, optimizer)
  np.testing.assert_allclose(loss, rnn_loss(old_params), rtol=1e-5)
  stepped = jax.tree.map(lambda p, g: p - 0.1 * g, old_params, want)
  _assert_trees_close(model.layer_params(), stepped, atol=1e-5)


def test_dropout_draws_from_the_dropout_stream(rnn_jit):
  xs = _inputs(5)
  model = rnn_nnx.RNN(DROPOUT_STACK, INPUT, rngs=nnx.Rngs(params=0, dropout=7))
  params = model.layer_params()
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
  plain = rnn_nnx.RNN(rnn_jax.gru(HIDDEN), INPUT, rngs=nnx.Rngs(0))
  assert plain.dropout_rngs is None
  want_plain, _ = rnn_jit(rnn_jax.gru(HIDDEN), plain.layer_params(), xs)
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


class Classifier(nnx.Module):
  """The documented NNX pattern: an rnn_jax layer, then a linear head on its summary."""

  def __init__(self, layer, *, rngs):
    self.rnn = rnn_nnx.RNN(layer, INPUT, rngs=rngs)
    self.head = nnx.Linear(layer.output_size, 2, rngs=rngs)

  def __call__(self, xs, lengths):
    return self.head(rnn_jax.summary(self.rnn.layer, self.rnn(xs, lengths=lengths), lengths))


@pytest.mark.slow   # compiles two training steps per layer (NNX's optimizer state changes type)
@pytest.mark.parametrize("layer", [
    STACK,
    rnn_jax.stack([rnn_jax.bidirectional(rnn_jax.stack([rnn_jax.gru(HIDDEN)] * 2, dropout=0.3),
                                         rnn_jax.lstm(HIDDEN)),
                   rnn_jax.simple_rnn(HIDDEN)], dropout=0.3),
], ids=["stack", "stack-in-bidirectional-in-stack-dropout"])
def test_nnx_optimizer_trains_every_layer_kind(layer):
  """nnx.Optimizer + nnx.jit + nnx.value_and_grad for several steps (the second used to fail
  for a stack: a tuple inside a Param came back from the optimizer as a dict)."""
  xs, labels = _inputs(6), jnp.array([0, 1, 1])
  model = Classifier(layer, rngs=nnx.Rngs(params=0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
  before = model.rnn.layer_params()

  def loss_fn(model):
    logits = model(xs, LENGTHS)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(5)]
  assert losses[-1] < losses[0] - 0.05, losses
  after = model.rnn.layer_params()
  assert jax.tree.structure(after) == jax.tree.structure(before)
  assert all(float(jnp.abs(a - b).max()) > 0
             for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))
  model.eval()
  want = rnn_jax.rnn(layer, after, xs, lengths=LENGTHS)[0]
  np.testing.assert_allclose(model.rnn(xs, lengths=LENGTHS), want, atol=1e-6)


def test_options_record_and_its_sugar(rnn_jit):
  xs = _inputs(7)
  options = rnn_jax.RunOptions(reverse=True, vjp="autodiff")
  model = rnn_nnx.RNN(STACK, INPUT, rngs=nnx.Rngs(0), options=options)
  assert model.options == options
  want, _ = rnn_jit(STACK, model.layer_params(), xs, lengths=LENGTHS, reverse=True)
  np.testing.assert_allclose(model(xs, lengths=LENGTHS), want, atol=1e-6)
  forward = rnn_nnx.RNN(STACK, INPUT, rngs=nnx.Rngs(0), options=options, reverse=False)
  assert forward.options == rnn_jax.RunOptions(reverse=False, vjp="autodiff")
  with pytest.raises(TypeError, match="options: expected an rnn_jax.RunOptions"):
    rnn_nnx.RNN(STACK, INPUT, rngs=nnx.Rngs(0), options={"reverse": True})


STEPPABLE = rnn_jax.stack([rnn_jax.lstm(HIDDEN), rnn_jax.gru(HIDDEN + 1)])


def test_rnn_and_cell_step_like_the_run(rnn_jit):
  xs = _inputs(8)
  model = rnn_nnx.RNN(STEPPABLE, INPUT, rngs=nnx.Rngs(3), return_carry=True)
  want_out, want_carry = rnn_jit(STEPPABLE, model.layer_params(), xs, lengths=LENGTHS)
  cell = rnn_nnx.Cell(STEPPABLE, INPUT, rngs=nnx.Rngs(3))
  _assert_trees_close(cell.layer_params(), model.layer_params(), atol=0)
  step = nnx.jit(lambda module, carry, x: module.step(carry, x))
  for module in (model, cell):
    carry = module.initial_carry((BATCH,))
    outputs = []
    for t in range(STEPS):
      new_carry, y = step(module, carry, xs[:, t])
      valid = t < LENGTHS[:, None]          # hold the carry past each length, as rnn does
      carry = jax.tree.map(lambda new, old: jnp.where(valid, new, old), new_carry, carry)
      outputs.append(jnp.where(valid, y, 0.0))
    np.testing.assert_allclose(jnp.stack(outputs, 1), want_out, atol=1e-6)
    _assert_trees_close(carry, want_carry)
  # The cell in flax.nnx.RNN, following NNX's cell protocol.
  assert cell.num_feature_axes == 1
  assert jax.tree.structure(cell.initialize_carry(xs[:, 0].shape)) == jax.tree.structure(
      want_carry)
  flax_carry, flax_out = nnx.RNN(cell, return_carry=True)(xs, seq_lengths=LENGTHS)
  mask = np.arange(STEPS) < LENGTHS[:, None]   # flax.nnx.RNN does not zero padded outputs
  np.testing.assert_allclose(np.asarray(flax_out)[mask], want_out[mask], atol=1e-6)
  _assert_trees_close(flax_carry, want_carry)
  with pytest.raises(TypeError, match="cannot be stepped"):
    rnn_nnx.Cell(BIDIRECTIONAL, INPUT, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="carry_init"):
    cell.initialize_carry(xs[:, 0].shape, carry_init=jnp.zeros)


def test_resets_reach_rnn_and_step_and_cell_reset_like_the_run(rnn_jit):
  xs = _inputs(9)
  resets = np.array([[False, False, True, False, False], [True, False, False, False, True],
                     [False, True, False, True, False]])
  model = rnn_nnx.RNN(STEPPABLE, INPUT, rngs=nnx.Rngs(3), return_carry=True)
  want_out, want_carry = rnn_jit(STEPPABLE, model.layer_params(), xs, resets=resets)
  got_out, got_carry = nnx.jit(lambda m, x, r: m(x, resets=r))(model, xs, resets)
  np.testing.assert_allclose(got_out, want_out, atol=1e-6)
  _assert_trees_close(got_carry, want_carry)
  cell = rnn_nnx.Cell(STEPPABLE, INPUT, rngs=nnx.Rngs(3))
  step = nnx.jit(lambda m, c, x, r: m.step(c, x, resets=r))
  call = nnx.jit(lambda m, c, x, r: m(c, x, resets=r))   # a cell's __call__ is one step
  for module, advance in ((model, step), (cell, step), (cell, call)):
    carry, outputs = module.initial_carry((BATCH,)), []
    for t in range(STEPS):
      carry, y = advance(module, carry, xs[:, t], resets[:, t])
      outputs.append(y)
    np.testing.assert_allclose(jnp.stack(outputs, 1), want_out, atol=1e-6)
    _assert_trees_close(carry, want_carry)


def test_compute_dtype_reaches_rnn_and_step():
  xs = _inputs(9)
  model = rnn_nnx.RNN(STEPPABLE, INPUT, rngs=nnx.Rngs(3), return_carry=True,
                      compute_dtype=jnp.bfloat16)
  assert model.layer == rnn_jax.with_compute_dtype(STEPPABLE, jnp.bfloat16)
  params = model.layer_params()
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  outputs, carry = nnx.jit(lambda module, xs: module(xs))(model, xs)
  want, want_carry = jax.jit(lambda p, xs: rnn_jax.rnn(STEPPABLE, p, xs,
                                                       compute_dtype=jnp.bfloat16))(params, xs)
  assert outputs.dtype == jnp.bfloat16
  np.testing.assert_array_equal(outputs, want)
  _assert_trees_close(carry, want_carry, atol=0)
  y = model.step(model.initial_carry((BATCH,)), xs[:, 0])[1]
  np.testing.assert_allclose(y, want[:, 0].astype(jnp.float32), atol=1e-2)  # want is bf16.
  with pytest.raises(ValueError, match="compute_dtype must be None or a floating dtype"):
    rnn_nnx.RNN(STEPPABLE, INPUT, rngs=nnx.Rngs(3), compute_dtype="int8")
