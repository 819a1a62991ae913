"""Tests of rnn_jax.compose: stack and bidirectional against tests/reference.py, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
import reference
from testing import assert_close, normal, random_carry

T, I = 5, 3
LENGTHS = np.array([[0, T, T + 4], [-2, 2, 4]], np.int32)  # batch shape (2, 3)


def outer_product(forward, backward):
  """A merge function of the kind Flax's ``merge_fn`` takes: ``[..., 3], [..., 2] -> [..., 6]``."""
  return (forward[..., :, None] * backward[..., None, :]).reshape(*forward.shape[:-1], -1)


MODELS = {
    "stack2": lambda: rnn_jax.stack([rnn_jax.lstm(4), rnn_jax.gru(3)]),
    "stack3": lambda: rnn_jax.stack([rnn_jax.simple_rnn(2, "relu"), rnn_jax.lstm(3, 0.0),
                                     rnn_jax.gru(4, reset_after=False)]),
    "bi_concat": lambda: rnn_jax.bidirectional(rnn_jax.lstm(3), rnn_jax.gru(2)),
    "bi_sum": lambda: rnn_jax.bidirectional(rnn_jax.gru(3), rnn_jax.simple_rnn(3), "sum"),
    "bi_mean": lambda: rnn_jax.bidirectional(rnn_jax.lstm(3), rnn_jax.lstm(3), "mean"),
    "bi_function": lambda: rnn_jax.bidirectional(rnn_jax.lstm(3), rnn_jax.gru(2), outer_product),
    "stack_of_bi": lambda: rnn_jax.stack([
        rnn_jax.bidirectional(rnn_jax.lstm(2), rnn_jax.gru(3)),
        rnn_jax.bidirectional(rnn_jax.simple_rnn(2), rnn_jax.simple_rnn(2), "sum")]),
    "bi_of_stacks": lambda: rnn_jax.bidirectional(
        rnn_jax.stack([rnn_jax.gru(2), rnn_jax.lstm(3)]),
        rnn_jax.stack([rnn_jax.simple_rnn(3), rnn_jax.gru(2)])),
}
OUTPUT_SIZES = {"stack2": 3, "stack3": 4, "bi_concat": 5, "bi_sum": 3, "bi_mean": 3,
                "bi_function": 6, "stack_of_bi": 2, "bi_of_stacks": 5}
# Every model with lengths + reverse; the other combinations for one stack and one bidirectional.
CASES = [(name, True, True) for name in MODELS] + [
    (name, lengths, reverse) for name in ("stack2", "bi_concat")
    for lengths, reverse in ((False, False), (True, False), (False, True))]


@pytest.mark.parametrize("name, with_lengths, reverse", CASES)
def test_matches_reference(name, with_lengths, reverse, rnn_jit, random_params):
  """Stacks (mixed cells), bidirectional (each merge) and nestings, given carries."""
  model = MODELS[name]()
  assert model.output_size == OUTPUT_SIZES[name]
  params = random_params(model, I, seed=1)
  xs = normal(2, (2, 3, T, I))
  carry = random_carry(model, (2, 3), seed=3)
  lengths = LENGTHS if with_lengths else None
  outputs, final = rnn_jit(model, params, xs, initial_carry=carry, lengths=lengths,
                           reverse=reverse)
  assert outputs.shape == (2, 3, T, OUTPUT_SIZES[name])
  ref_outputs, ref_final = reference.run_model(model, params, xs, carry, lengths, reverse)
  assert_close(outputs, ref_outputs)
  assert_close(final, ref_final)
  assert jax.tree.structure(final) == jax.tree.structure(model.initial_carry((2, 3)))


def test_bidirectional_backward_starts_at_true_last_step(rnn_jit, random_params):
  forward, backward = rnn_jax.lstm(3), rnn_jax.gru(2)
  model = rnn_jax.bidirectional(forward, backward)
  params = random_params(model, I, seed=4)
  xs = normal(5, (3, T, I))
  lengths = np.array([3, T, 1], np.int32)
  outputs, (final_forward, final_backward) = rnn_jit(model, params, xs, lengths=lengths)
  last = xs[np.arange(3), lengths - 1]
  _, first_backward = backward.step(params["backward"], backward.initial_carry((3,)), last)
  for b, length in enumerate(lengths):
    np.testing.assert_allclose(outputs[b, length - 1, 3:], first_backward[b], atol=1e-6)
    np.testing.assert_array_equal(outputs[b, length:], 0.0)
  # The backward final carry is after the first step; the forward one after the last valid step.
  np.testing.assert_allclose(final_backward, outputs[:, 0, 3:], atol=1e-6)
  np.testing.assert_allclose(final_forward.h, outputs[np.arange(3), lengths - 1, :3], atol=1e-6)


def test_structure_init_and_equality():
  model = rnn_jax.stack([rnn_jax.lstm(4), rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(3))])
  params = jax.eval_shape(lambda key: model.init(key, 6), jax.random.key(0))
  assert isinstance(params, tuple) and len(params) == 2
  assert params[0]["w_ih"].shape == (6, 16)
  assert set(params[1]) == {"forward", "backward"}
  assert params[1]["forward"]["w_ih"].shape == (4, 6)
  assert params[1]["backward"]["w_ih"].shape == (4, 9)
  assert model.input_size(params) == 6 and model.output_size == 5
  carry = model.initial_carry((7,))
  assert isinstance(carry[0], rnn_jax.LSTMState) and carry[1][1].shape == (7, 3)

  again = rnn_jax.stack([rnn_jax.lstm(4), rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(3))])
  assert again == model and hash(again) == hash(model)
  assert rnn_jax.stack([rnn_jax.lstm(4)], dropout=0.5) != rnn_jax.stack([rnn_jax.lstm(4)])
  assert rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(2), "sum") == rnn_jax.bidirectional(
      rnn_jax.gru(2), rnn_jax.gru(2), "sum")


# Dropout is observed through a probe: layer 0 is a relu RNN with positive
# weights and inputs, so its outputs h are > 0; layer 1 is relu(x @ I), which
# passes its input through unchanged. The stack's outputs are then exactly
# layer 0's outputs after dropout.
F, BIG_B, BIG_T = 32, 64, 8


def _probe(dropout, variational, layers=2):
  model = rnn_jax.stack([rnn_jax.simple_rnn(F, "relu")] * layers, dropout, variational)
  rng = np.random.default_rng(0)
  first = {"w_ih": jnp.asarray(rng.uniform(0.1, 0.5, (2, F)), jnp.float32),
           "w_hh": jnp.asarray(rng.uniform(0.0, 0.1, (F, F)), jnp.float32),
           "b": jnp.asarray(rng.uniform(0.1, 0.5, F), jnp.float32)}
  identity = {"w_ih": jnp.eye(F), "w_hh": jnp.zeros((F, F)), "b": jnp.zeros(F)}
  params = (first,) + (identity,) * (layers - 1)
  xs = jnp.asarray(rng.uniform(0.0, 1.0, (BIG_B, BIG_T, 2)), jnp.float32)
  clean, _ = rnn_jax.rnn(rnn_jax.simple_rnn(F, "relu"), first, xs)
  assert np.all(clean > 0)
  return model, params, xs, clean


@pytest.mark.parametrize("variational", [False, True])
def test_dropout_rate_scaling_and_masks(variational, rnn_jit):
  rate = 0.3
  model, params, xs, clean = _probe(rate, variational)
  dropped, _ = rnn_jit(model, params, xs, dropout_rng=jax.random.key(1))
  zero = np.asarray(dropped) == 0
  # Inverted dropout: every kept unit is scaled by exactly 1 / (1 - rate).
  np.testing.assert_allclose(np.asarray(dropped)[~zero], np.asarray(clean)[~zero] / (1 - rate),
                             rtol=1e-6)
  if variational:  # one mask per sequence and unit, the same at every time step
    assert np.all(zero == zero[:, :1])
    assert abs(zero[:, 0].mean() - rate) < 0.05  # 2048 draws: 5 standard deviations
  else:
    assert not np.all(zero == zero[:, :1])
    assert abs(zero.mean() - rate) < 0.02  # 16384 draws: 5.5 standard deviations
  again, _ = rnn_jit(model, params, xs, dropout_rng=jax.random.key(1))
  np.testing.assert_array_equal(again, dropped)
  other, _ = rnn_jit(model, params, xs, dropout_rng=jax.random.key(2))
  assert not np.array_equal(other == 0, zero)
  # No dropout_rng: no dropout (evaluation).
  np.testing.assert_allclose(rnn_jit(model, params, xs)[0], clean, rtol=1e-6)


def test_dropout_only_between_layers(rnn_jit):
  # A one-layer stack has no layer after which to drop.
  model, params, xs, clean = _probe(0.5, False, layers=1)
  np.testing.assert_allclose(rnn_jit(model, params, xs, dropout_rng=jax.random.key(3))[0], clean,
                             rtol=1e-6)
  # Three layers: two dropouts (probability 0.5 each); the last layer's outputs are not dropped.
  model, params, xs, clean = _probe(0.5, False, layers=3)
  dropped = np.asarray(rnn_jit(model, params, xs, dropout_rng=jax.random.key(3))[0])
  kept = dropped != 0
  np.testing.assert_allclose(dropped[kept], np.asarray(clean)[kept] * 4, rtol=1e-6)
  assert abs(kept.mean() - 0.25) < 0.02


def test_gradients_through_composites(x64, random_params, check_gradients):
  # Each cell's own gradients are checked in test_unroll; here the composition.
  model = rnn_jax.stack([rnn_jax.bidirectional(rnn_jax.simple_rnn(2), rnn_jax.gru(2)),
                         rnn_jax.simple_rnn(2)])
  params = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64),
                        random_params(model, 2, seed=6))
  xs = normal(7, (2, 4, 2), jnp.float64)
  carry = random_carry(model, (2,), seed=8, dtype=jnp.float64)
  check_gradients(model, params, xs, carry, np.array([3, 1], np.int32), reverse=True)


def test_merge_function_keeps_the_layer_a_value():
  model = rnn_jax.bidirectional(rnn_jax.lstm(3), rnn_jax.gru(2), outer_product)
  assert model == rnn_jax.bidirectional(rnn_jax.lstm(3), rnn_jax.gru(2), outer_product)
  assert hash(model) == hash(rnn_jax.bidirectional(rnn_jax.lstm(3), rnn_jax.gru(2), outer_product))
  assert model != rnn_jax.bidirectional(rnn_jax.lstm(3), rnn_jax.gru(2))
  assert repr(model) == "bidirectional(lstm(3), gru(2), merge=outer_product)"
  maximum = rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(2), jnp.maximum)
  assert repr(maximum) == "bidirectional(gru(2), gru(2), merge=maximum)"
  assert maximum.output_size == 2
  with pytest.raises(ValueError, match="summary: bidirectional.merge=maximum. mixed"):
    rnn_jax.summary(maximum, jnp.zeros((1, T, 2)), None)


@pytest.mark.parametrize("make, match", [
    (lambda: rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(2), "max"),
     r"merge must be one of \['concat', 'mean', 'sum'\] or a function .* got 'max'"),
    (lambda: rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(3), jnp.add),
     r"merge=add: cannot merge outputs of sizes 2 and 3"),
    (lambda: rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(2), lambda f, b: (f, b)),
     r"merge=<lambda>: expected one array"),
    (lambda: rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(3), "sum"),
     r"merge='sum' needs equal output sizes, got 2 and 3"),
    (lambda: rnn_jax.stack([rnn_jax.gru(2)], dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (lambda: rnn_jax.stack([rnn_jax.gru(2)], dropout=-0.1), r"dropout must be in \[0, 1\), got -0.1"),
    (lambda: rnn_jax.stack([rnn_jax.gru(2)], dropout=float("nan")), r"dropout must be in \[0, 1\)"),
    (lambda: rnn_jax.stack([]), r"stack needs at least one cell"),
])
def test_bad_arguments(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_errors_name_the_argument():
  model = rnn_jax.stack([rnn_jax.lstm(2), rnn_jax.gru(3)])
  params = jax.eval_shape(lambda key: model.init(key, I), jax.random.key(0))  # checks read shapes
  with pytest.raises(ValueError, match=r"xs: expected input size 3 .* got shape \(2, 5, 4\)"):
    rnn_jax.rnn(model, params, jnp.ones((2, T, 4)))
  wrong = (rnn_jax.LSTMState(jnp.zeros((2, 2)), jnp.zeros((2, 2))), jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match=r"initial_carry: expected leaves of shape \(2, 3\)"):
    rnn_jax.rnn(model, params, jnp.ones((2, T, I)), initial_carry=wrong)


@pytest.mark.parametrize("backward, fused_scans", [("autodiff", 0), ("fused", 3)])
def test_backward_option_reaches_every_layer(backward, fused_scans):
  # Three plain-cell scans (bidirectional pair + second layer); the fused
  # backward shows up as one custom-VJP call per scan in the traced program.
  model = rnn_jax.stack([rnn_jax.bidirectional(rnn_jax.lstm(2), rnn_jax.gru(2)), rnn_jax.lstm(3)])
  params = jax.eval_shape(lambda key: model.init(key, I), jax.random.key(0))
  xs = jax.ShapeDtypeStruct((2, T, I), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda p, x: rnn_jax.rnn(model, p, x, vjp=backward)[0])(params, xs)
  assert str(jaxpr).count("custom_vjp_call") == fused_scans


REMAT_LAYERS = {
    "lstm": rnn_jax.lstm(3),
    "mingru": rnn_jax.mingru(3),
    "minlstm": rnn_jax.minlstm(3),
    "lru": rnn_jax.lru(3, 3, skip="dense"),
    "mingru_sequential": rnn_jax.mingru(3, parallel=False),
    "bi_of_stack": rnn_jax.bidirectional(rnn_jax.stack([rnn_jax.gru(2), rnn_jax.minlstm(3)]),
                                         rnn_jax.lru(2, 2, skip="none")),
}


@pytest.mark.parametrize("name", sorted(REMAT_LAYERS))
def test_remat_any_layer_same_outputs_and_gradients(name):
  """remat works for every layer kind (it raised for mingru/minlstm/lru before)."""
  layer = REMAT_LAYERS[name]
  wrapped = rnn_jax.remat(layer)
  assert rnn_jax.remat(wrapped) == wrapped and wrapped.output_size == layer.output_size
  params = layer.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 5, 2))
  lengths = jnp.array([5, 3])

  def loss(model, p):
    outputs, final = rnn_jax.rnn(model, p, xs, lengths=lengths, reverse=True)
    return jnp.sum(jnp.sin(outputs)) + sum(jnp.sum(jnp.real(leaf)) for leaf in jax.tree.leaves(final))

  grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  (value, grads), (value_remat, grads_remat) = grad(layer, params), grad(wrapped, params)
  np.testing.assert_allclose(value_remat, value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6),
               grads, grads_remat)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(wrapped, p)))(params))
  assert "remat" in jaxpr or "checkpoint" in jaxpr


_CHUNKED = jax.jit(jax.value_and_grad(
    lambda model, p, xs, carry, lengths, reverse: (lambda out: jnp.sum(jnp.sin(out[0])) + sum(
        jnp.sum(leaf * leaf) for leaf in jax.tree.leaves(out[1])))(
            rnn_jax.rnn(model, p, xs, initial_carry=carry, lengths=lengths, reverse=reverse)),
    argnums=(1, 2, 3)), static_argnums=(0, 5))


@pytest.mark.parametrize("layer, every", [
    # T = 12: k = 1, a divisor (4) and a non-divisor (5, > T/3: a padded last chunk) for the
    # LSTM; the non-divisor for the other kinds. k > T: the test below.
    (rnn_jax.lstm(3), 1), (rnn_jax.lstm(3), 4), (rnn_jax.lstm(3), 5),
    (rnn_jax.gru(2, reset_after=False), 5), (rnn_jax.minlstm(3, parallel=False), 5),
    (rnn_jax.stack([rnn_jax.gru(2), rnn_jax.mingru(3)]), 5),
], ids=repr)
def test_remat_every_k_steps_has_the_gradients_of_the_plain_layer(layer, every):
  """Gradients w.r.t. params, inputs and the initial carry, with lengths and reverse."""
  chunked = rnn_jax.remat(layer, every=every)
  params = layer.init(jax.random.key(0), 2)
  xs = jnp.asarray(normal(3, (3, 12, 2)))
  carry = random_carry(layer, (3,), seed=4)
  for lengths in (None, jnp.array([12, 7, 0])):
    for reverse in (False, True):
      want = _CHUNKED(layer, params, xs, carry, lengths, reverse)
      got = _CHUNKED(chunked, params, xs, carry, lengths, reverse)
      jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got, want)


def test_remat_every_longer_than_the_sequence_and_its_value():
  layer = rnn_jax.lstm(3)
  params = layer.init(jax.random.key(0), 2)
  xs = jnp.asarray(normal(5, (2, 6, 2)))
  want = _CHUNKED(layer, params, xs, layer.initial_carry(2), None, False)
  got = _CHUNKED(rnn_jax.remat(layer, every=50), params, xs, layer.initial_carry(2), None, False)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got, want)
  assert repr(rnn_jax.remat(rnn_jax.stack([layer]), every=7)) == "stack([remat(lstm(3), every=7)])"
  assert rnn_jax.remat(rnn_jax.remat(layer, every=7)) == rnn_jax.remat(layer)
  assert rnn_jax.remat(layer, every=7) == rnn_jax.remat(layer, every=7)
  for bad in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match="every must be a positive int"):
      rnn_jax.remat(layer, every=bad)


def test_remat_every_sqrt_t_keeps_memory_to_a_twentieth():
  """LSTM 128, batch 8, T = 20,000, loss on the final carry: the compiled gradient's temporary
  memory (XLA's own figure, not a timing) with every=sqrt(T) is at most 1/20 of plain
  autodiff's (vjp="autodiff"; a remat ignores vjp)."""
  layer = rnn_jax.lstm(128)
  params = jax.eval_shape(lambda key: layer.init(key, 1), jax.random.key(0))
  xs = jax.ShapeDtypeStruct((8, 20_000, 1), jnp.float32)

  def temporaries(model):
    loss = lambda p, x: jnp.sum(rnn_jax.rnn(model, p, x, vjp="autodiff")[1].h)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  default, chunked = temporaries(layer), temporaries(rnn_jax.remat(layer, every=141))
  assert default > 800 * 2**20  # About 20,000 steps x 12 residuals of [8, 128] float32.
  assert chunked * 20 <= default, (chunked, default)
