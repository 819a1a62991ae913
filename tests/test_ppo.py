"""Tests of :mod:`experiments.ppo`: the rollout's carry handling and GAE, against references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ppo
from rnn_jax.training import cores


def _staggered_runner(env, env_params, net, num_envs):
  """Fresh environments whose episodes are at different steps (MemoryChain's ``time``), the
  carry random and the first step a new episode for two of them only."""
  runner = ppo.reset(env, env_params, jax.random.key(0), num_envs, net)
  time = jnp.arange(num_envs) % (env_params.memory_length + 1)
  carry = jax.tree.map(lambda leaf: jax.random.normal(jax.random.key(1), leaf.shape),
                       runner.carry)
  start = jnp.arange(num_envs) % 3 == 0
  return runner._replace(env_state=runner.env_state.replace(time=time), carry=carry, start=start)


@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_replaying_a_rollout_with_resets_gives_the_acting_steps_outputs(cell):
  """``rnn(..., initial_carry=<carry at the start>, resets=starts)`` over a stored rollout gives
  the values and log-probabilities the acting loop (``reset_carry`` + ``layer.step``) computed,
  with episodes ending at different steps in each environment; without ``resets`` it does not."""
  env, env_params = ppo.make_env("MemoryChain-bsuite", 3)
  num_envs, steps = 6, 11
  net = ppo.ActorCritic(cores.build_core(cell, 8, sequence_length=steps), 8, env.num_actions)
  params = net.init(jax.random.key(2), ppo.observation_size(env, env_params))
  runner = _staggered_runner(env, env_params, net, num_envs)
  _, stored, _ = jax.jit(lambda params, runner: ppo.rollout(
      env, env_params, net, params, runner, jax.random.key(3), steps))(params, runner)
  starts = np.asarray(stored.starts)
  assert len({tuple(np.flatnonzero(row)) for row in starts}) >= 4  # Episodes end apart.
  assert starts[:, 1:].sum() >= num_envs  # Every environment starts an episode inside.

  logits, values = net.sequence(params, runner.carry, stored.obs, stored.starts)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), stored.actions[..., None], -1)
  np.testing.assert_allclose(values, stored.values, atol=1e-5)
  np.testing.assert_allclose(log_probs[..., 0], stored.log_probs, atol=1e-5)
  _, without_resets = net.sequence(params, runner.carry, stored.obs,
                                   jnp.zeros_like(stored.starts))
  assert not np.allclose(without_resets, stored.values, atol=1e-3)


def test_the_feed_forward_control_has_no_carry():
  env, env_params = ppo.make_env("MemoryChain-bsuite", 3)
  net = ppo.ActorCritic(None, 4, env.num_actions)
  params = net.init(jax.random.key(0), ppo.observation_size(env, env_params))
  obs = jax.random.normal(jax.random.key(1), (2, 5, 3))
  _, values = net.sequence(params, None, obs, jnp.zeros((2, 5), bool))
  _, _, value = net.step(params, None, obs[:, 2], jnp.zeros(2, bool))
  np.testing.assert_allclose(values[:, 2], value, atol=1e-6)
  features = np.tanh(np.asarray(obs) @ np.asarray(params["core"]["w"]) + params["core"]["b"])
  np.testing.assert_allclose(values, features @ params["value"]["w"][:, 0] + params["value"]["b"],
                             atol=1e-5)


def _numpy_gae(rewards, values, dones, last_value, gamma, gae_lambda):
  advantage = np.zeros_like(rewards)
  following_advantage, following_value = np.zeros(rewards.shape[0]), last_value
  for t in reversed(range(rewards.shape[1])):
    going_on = 1.0 - dones[:, t]
    delta = rewards[:, t] + gamma * following_value * going_on - values[:, t]
    following_advantage = delta + gamma * gae_lambda * going_on * following_advantage
    advantage[:, t], following_value = following_advantage, values[:, t]
  return advantage


def test_advantages_match_a_numpy_loop_and_do_not_bootstrap_across_episodes():
  rng = np.random.default_rng(0)
  rewards, values = rng.normal(size=(3, 9)), rng.normal(size=(3, 9))
  dones, last_value = rng.random((3, 9)) < 0.3, rng.normal(size=3)
  advantage, returns = ppo.advantages(jnp.asarray(rewards), jnp.asarray(values),
                                      jnp.asarray(dones), jnp.asarray(last_value), 0.9, 0.8)
  expected = _numpy_gae(rewards, values, dones, last_value, 0.9, 0.8)
  np.testing.assert_allclose(advantage, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(returns, expected + values, rtol=1e-5, atol=1e-5)
  # At an episode's last step the advantage is its reward minus its value.
  np.testing.assert_allclose(np.asarray(advantage)[dones], (rewards - values)[dones], atol=1e-5)
