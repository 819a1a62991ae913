"""Tests of rnn_jax.training.language_model: TBPTT carry, evaluation, sampling, learning, resume.

References are independent of the code under test: the loss of one long
window (for the carried state), per-character losses of whole segments read
in one ``apply`` (for evaluation), and greedy decoding that re-reads the
whole prefix for every character (for generation).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax.training import checkpoint, language_model, loop, optim, text

from tiny_task import assert_trees_equal

VOCAB, EMBED, HIDDEN = 7, 4, 16


@functools.lru_cache(maxsize=None)
def tiny_model(cell="gru", dropout=0.0):
  core = rnn_jax.gru(HIDDEN) if cell == "gru" else rnn_jax.stack(
      [rnn_jax.lstm(HIDDEN), rnn_jax.mingru(HIDDEN)], dropout=dropout)
  return language_model.CharLM(core, VOCAB, EMBED, dropout)


def random_params(model, seed=0, scale=0.6):
  """Parameters with every leaf random (biases too), so every parameter matters."""
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: jnp.asarray(scale * rng.standard_normal(leaf.shape),
                                               leaf.dtype), shapes)


def token_losses(model, params, ids, carry=None):
  """Per-character cross-entropy of ``ids [B, T]`` read in one ``apply`` (NumPy log-softmax)."""
  logits, _ = model.apply(params, jnp.asarray(ids[:, :-1]), carry)
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]


@pytest.mark.parametrize("cell", ["gru", "stack"])
def test_carried_state_equals_one_long_window(cell):
  """Window 2 from window 1's carry == the same characters inside one window of 2K."""
  model, window = tiny_model(cell), 6
  params = random_params(model)
  ids = np.random.default_rng(1).integers(0, VOCAB, (3, 2 * window + 1)).astype(np.int32)
  loss_fn = jax.jit(language_model.loss_function(model, window, tbptt=True))
  rows, tokens = np.arange(3, dtype=np.int32), jnp.asarray(ids)
  batch = lambda w, reset: text.TextBatch(tokens, rows, np.full(3, w * window, np.int32),
                                          np.bool_(reset))
  zeros = model.initial_carry(3)
  loss_1, _, carry = loss_fn(params, batch(0, True), None, zeros)
  loss_2, metrics, _ = loss_fn(params, batch(1, False), None, carry)
  reference = token_losses(model, params, ids)
  np.testing.assert_allclose(loss_1, reference[:, :window].mean(), rtol=1e-5)
  np.testing.assert_allclose(loss_2, reference[:, window:].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["bpc"], loss_2 / np.log(2), rtol=1e-6)
  # reset=True starts from zeros whatever the carry: the window read on its own.
  loss_reset, _, _ = loss_fn(params, batch(1, True), None, carry)
  alone = token_losses(model, params, ids[:, window:])
  np.testing.assert_allclose(loss_reset, alone.mean(), rtol=1e-5)
  assert abs(float(loss_reset) - float(loss_2)) > 1e-3


def test_gradient_stops_at_the_window_boundary():
  """The carry enters behind stop_gradient: no gradient flows into the previous window."""
  model, window = tiny_model(), 5
  params = random_params(model)
  ids = np.random.default_rng(2).integers(0, VOCAB, (2, window + 1)).astype(np.int32)
  batch = text.TextBatch(jnp.asarray(ids), np.arange(2, dtype=np.int32), np.zeros(2, np.int32),
                         np.bool_(False))
  loss_fn = language_model.loss_function(model, window, tbptt=True)

  def loss_through_carry(scale):
    carry = scale * jnp.ones((2, HIDDEN))
    return loss_fn(params, batch, None, carry)[0]

  assert float(jax.grad(loss_through_carry)(0.3)) == 0.0
  assert float(loss_through_carry(0.3)) != float(loss_through_carry(0.0))


@pytest.mark.parametrize("streams, window", [(1, 64), (3, 7)])
def test_evaluation_counts_each_character_once(streams, window):
  model = tiny_model()
  params = random_params(model, seed=3)
  ids = np.random.default_rng(4).integers(0, VOCAB, 50).astype(np.int32)
  result = language_model.evaluate(model, params, ids, num_streams=streams, window=window)
  assert result["count"] == 49
  # Reference: each stream's segment read in one apply from zeros; S as evaluation_streams cuts.
  length = -(-(-(-49 // streams)) // window) * window
  total = sum(token_losses(model, params, ids[None, start:start + length + 1]).sum()
              for start in range(0, 49, length))
  np.testing.assert_allclose(result["loss"], total / 49, rtol=1e-5)
  np.testing.assert_allclose(result["bpc"], result["loss"] / np.log(2), rtol=1e-12)


def test_temperature_zero_is_argmax_and_top_k_stays_in_the_top_k():
  logits = jnp.asarray(np.random.default_rng(5).normal(size=(200, 11)) * 2, jnp.float32)
  keys = jax.random.split(jax.random.key(0), 20)
  sample = jax.jit(jax.vmap(language_model.sample_next, in_axes=(0, None, None, None, None)))
  greedy = sample(keys, logits, 0.0, 0, 1.0)
  np.testing.assert_array_equal(greedy, np.broadcast_to(np.argmax(logits, -1), (20, 200)))
  top3 = np.argsort(-np.asarray(logits), -1)[:, :3]
  drawn = np.asarray(sample(keys, logits, 2.0, 3, 1.0))
  assert all(np.isin(drawn[:, row], top3[row]).all() for row in range(200))
  assert len(np.unique(drawn)) > 3  # Not just argmax: several of the top 3 across rows.
  # top_p below the largest probability keeps only the most likely token.
  np.testing.assert_array_equal(sample(keys, logits, 1.0, 0, 1e-6), greedy)
  # Unrestricted sampling follows the softmax (frequency of the argmax, 4000 draws).
  probs = np.asarray(jax.nn.softmax(logits[0]))
  many = jax.jit(jax.vmap(language_model.sample_next, in_axes=(0, None, None)))(
      jax.random.split(jax.random.key(1), 4000), logits[0], 1.0)
  np.testing.assert_allclose(np.mean(np.asarray(many) == np.argmax(probs)), probs.max(),
                             atol=0.03)


def test_generation_greedy_equals_rereading_the_prefix_and_seeds_repeat():
  model = tiny_model("stack")
  params = random_params(model, seed=6)
  prompt = np.array([1, 4, 2], np.int32)
  greedy = np.asarray(language_model.generate(model, params, prompt, jax.random.key(0),
                                              length=12, temperature=0.0))
  # Reference: re-read the whole prefix for every character. The model is causal, so the
  # prefix padded to a fixed length gives the same logits at its last real position.
  apply = jax.jit(lambda ids: model.apply(params, ids)[0])
  prefix = list(prompt)
  for _ in range(12):
    padded = np.zeros((1, 15), np.int32)
    padded[0, :len(prefix)] = prefix
    prefix.append(int(np.argmax(apply(padded)[0, len(prefix) - 1])))
  np.testing.assert_array_equal(greedy, prefix[3:])
  sample = functools.partial(language_model.generate, model, params, prompt, length=40,
                             temperature=1.0, top_k=4, exclude=VOCAB - 1)
  first, again = sample(jax.random.key(3)), sample(jax.random.key(3))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, sample(jax.random.key(4)))
  assert not (np.asarray(first) == VOCAB - 1).any()


def _periodic_setup():
  model = language_model.CharLM(rnn_jax.lstm(24), VOCAB, 8, dropout=0.0)
  optimizer = optim.make_optimizer("adam", 2e-2, clip_norm=1.0)
  train_step = loop.make_train_step(language_model.loss_function(model, 8), optimizer, seed=0)
  return model, optimizer, train_step


_PERIODIC = functools.lru_cache(maxsize=None)(_periodic_setup)
# "abcdefabcdef..." over 6 ids, with a seventh id (<unk>) never seen.
_PERIODIC_IDS = np.tile(np.arange(6, dtype=np.int32), 100)


def _fit_periodic(state, num_steps, store=None):
  _, _, train_step = _PERIODIC()
  batches = text.StreamWindows(_PERIODIC_IDS, batch_size=4, window=8)
  return loop.fit(state, train_step, batches, num_steps=num_steps, store=store,
                  checkpoint_every=7, reporter=loop.Reporter(log=lambda line: None))


def _periodic_state():
  model, optimizer, _ = _PERIODIC()
  return language_model.create_state(model, optimizer, jax.random.key(0), 4)


def test_a_tiny_text_is_learned_to_near_zero_loss():
  model, _, _ = _PERIODIC()
  state = _fit_periodic(_periodic_state(), 80)
  result = language_model.evaluate(model, state.params, _PERIODIC_IDS[:97], num_streams=2,
                                   window=16)
  assert result["loss"] < 0.02, result


def test_resume_equals_uninterrupted_bitwise(tmp_path):
  uninterrupted = _fit_periodic(_periodic_state(), 20)
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))
  _fit_periodic(_periodic_state(), 11, store)  # Saves 7 and 11.
  step, restored = store.restore_latest(_periodic_state())
  assert step == 11 and np.abs(np.asarray(restored.aux.c)).max() > 0
  resumed = _fit_periodic(restored, 20, store)
  assert_trees_equal(resumed, uninterrupted)


def test_variational_dropout_shares_one_mask_over_the_steps_of_each_sequence():
  """The model's dropout of batch-major features ``[B, T, F]``: with ``variational`` one mask
  per sequence (constant over ``T``), else a mask per step; inverted scaling either way."""
  features = jnp.ones((16, 20, 32))
  key = jax.random.key(0)
  locked = language_model.CharLM(rnn_jax.gru(4), VOCAB, 8, 0.5, variational=True)
  per_step = language_model.CharLM(rnn_jax.gru(4), VOCAB, 8, 0.5)
  dropped = np.asarray(locked._drop(key, features))  # pylint: disable=protected-access
  np.testing.assert_array_equal(dropped, np.broadcast_to(dropped[:, :1], dropped.shape))
  assert set(np.unique(dropped)) == {0.0, 2.0}
  assert not np.array_equal(dropped[0], dropped[1])  # Each sequence its own mask.
  fresh = np.asarray(per_step._drop(key, features))  # pylint: disable=protected-access
  assert not np.array_equal(fresh[:, 0], fresh[:, 1])
  assert 0.4 < (dropped == 0.0).mean() < 0.6 and 0.4 < (fresh == 0.0).mean() < 0.6


def test_the_lm_kit_options_build_the_core_they_name():
  task = language_model.CharLMTask(num_layers=2, hidden_size=8, proj_size=3, layer_norm=True,
                                   zoneout=0.1, weight_drop=0.2, variational_dropout=True)
  model = task.model(VOCAB)
  wrapped = rnn_jax.weight_drop(rnn_jax.zoneout(rnn_jax.lstm(8, proj_size=3, layer_norm=True),
                                                0.1), 0.2)
  assert model.core == rnn_jax.stack([wrapped, wrapped], dropout=0.1, variational=True)
  assert model.variational and model.uses_dropout()
  plain = language_model.CharLMTask(dropout=0.0).model(VOCAB)
  assert plain.core == rnn_jax.lstm(512) and not plain.uses_dropout()
  assert language_model.last10_loss({"loss": 1.0, "count": 3}, {"loss": 2.0, "count": 1}) == 1.25
