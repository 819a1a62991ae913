"""Recurrent PPO on gymnax environments: the actor-critic, the compiled rollout, GAE, the update.

What ``python -m experiments.train_ppo`` trains (the script holds the flags and the run):

* :class:`ActorCritic`: a recurrent core (any ``--cell`` of
  :func:`rnn_jax.training.cores.build_core`), or for ``cell=None`` one dense
  ``tanh`` layer on the observation (the feed-forward control), then linear
  policy and value heads on its features;
* :func:`rollout`: ``num_envs`` vmapped gymnax environments and the policy
  stepped together inside ONE ``lax.scan``: ``rnn_jax.reset_carry`` zeroes the
  carry of the environments whose episode just started, then ``layer.step``;
* :func:`advantages`: generalised advantage estimation (no bootstrap across an
  episode's end);
* :func:`make_update`: one PPO update, a rollout then ``epochs`` passes of
  minibatches over the environments; each minibatch replays its stored rollouts with
  ``rnn(core, params, obs, initial_carry=<carry at rollout start>, resets=starts)``
  (the clipped objective, a clipped value loss, an entropy bonus);
* :func:`evaluate`: greedy episodes from fresh environments; an episode is a
  success when its return is positive (MemoryChain: the right answer; Catch:
  the ball caught).

``starts[e, t]`` says that step ``t`` of environment ``e`` begins a new
episode: the ``done`` of the step before (gymnax resets an environment inside
``env.step`` when its episode ends).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

import rnn_jax

ENVS = ("MemoryChain-bsuite", "Catch-bsuite")
"""The gymnax environments ``--env`` accepts: MemoryChain needs memory, Catch does not."""

EVAL_STREAM = 2**31 - 1
"""``fold_in`` data of the evaluation keys (training folds in the update's step)."""


def make_env(name: str, memory_length: int):
  """The gymnax environment ``name`` and its parameters (MemoryChain's ``memory_length`` set).

  Returns:
    ``(env, env_params)``; ``env.step`` and ``env.reset`` act on one environment.
  """
  import gymnax  # pylint: disable=import-outside-toplevel  # The `train` extra.
  env, env_params = gymnax.make(name)
  if name == "MemoryChain-bsuite":
    env_params = env_params.replace(memory_length=memory_length)
  return env, env_params


def observation_size(env, env_params) -> int:
  """Features of a flattened observation."""
  shape = env.observation_space(env_params).shape
  return int(jnp.prod(jnp.array(shape))) if shape else 1


@dataclasses.dataclass(frozen=True)
class ActorCritic:
  """A shared core and linear policy and value heads.

  Attributes:
    core: an rnn_jax layer whose outputs are the features, or ``None``: one dense
      ``tanh`` layer of ``hidden_size`` on the observation (no memory).
    hidden_size: the features' width (the core's output size).
    num_actions: the policy's logits.
  """

  core: Any
  hidden_size: int
  num_actions: int

  def init(self, key: jax.Array, obs_size: int) -> dict:
    """``{"core", "policy", "value"}``; heads orthogonal with gains 0.01 and 1 (CleanRL's)."""
    core_key, policy_key, value_key = jax.random.split(key, 3)
    if self.core is None:
      core = {"w": jax.nn.initializers.orthogonal(jnp.sqrt(2.0))(
          core_key, (obs_size, self.hidden_size)), "b": jnp.zeros(self.hidden_size)}
    else:
      core = self.core.init(core_key, obs_size)
    head = lambda key, gain, size: {
        "w": jax.nn.initializers.orthogonal(gain)(key, (self.hidden_size, size)),
        "b": jnp.zeros(size)}
    return {"core": core, "policy": head(policy_key, 0.01, self.num_actions),
            "value": head(value_key, 1.0, 1)}

  def initial_carry(self, num_envs: int) -> Any:
    """The core's zero carry for ``num_envs`` environments (``None`` without a core)."""
    return None if self.core is None else self.core.initial_carry((num_envs,))

  def heads(self, params: dict, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(logits [..., A], value [...])`` of ``features [..., H]``."""
    logits = features @ params["policy"]["w"] + params["policy"]["b"]
    value = (features @ params["value"]["w"] + params["value"]["b"])[..., 0]
    return logits, value

  def step(self, params: dict, carry: Any, obs: jax.Array, start: jax.Array):
    """One acting step of ``E`` environments: ``(carry, logits [E, A], value [E])``.

    Args:
      params: from :meth:`init`.
      carry: the carry after the previous step.
      obs: ``[E, O]``.
      start: bool ``[E]``: the step begins a new episode (the carry starts over).
    """
    if self.core is None:
      features = jnp.tanh(obs @ params["core"]["w"] + params["core"]["b"])
    else:
      carry = rnn_jax.reset_carry(self.core, carry, start)
      carry, features = self.core.step(params["core"], carry, obs)
    return (carry, *self.heads(params, features))

  def sequence(self, params: dict, carry: Any, obs: jax.Array, starts: jax.Array):
    """The policy over stored rollouts: ``(logits [E, T, A], values [E, T])``.

    Args:
      params: from :meth:`init`.
      carry: the carry at the rollout's start (before its first step's reset).
      obs: ``[E, T, O]``.
      starts: bool ``[E, T]``, the flags :meth:`step` saw.
    """
    if self.core is None:
      features = jnp.tanh(obs @ params["core"]["w"] + params["core"]["b"])
    else:
      features, _ = rnn_jax.rnn(self.core, params["core"], obs, initial_carry=carry,
                                resets=starts)
    return self.heads(params, features)


class Runner(NamedTuple):
  """What a rollout continues from (the train state's ``aux``); leaves ``[E, ...]``.

  Attributes:
    env_state: the gymnax states.
    obs: ``[E, O]``, the observation the next step acts on.
    start: bool ``[E]``: the next step begins an episode.
    carry: the core's carry after the last step (``None`` without a core).
    episode_return: ``[E]``, the return so far of each running episode.
  """

  env_state: Any
  obs: jax.Array
  start: jax.Array
  carry: Any
  episode_return: jax.Array


class Rollout(NamedTuple):
  """A stored rollout, ``[E, T, ...]`` (batch-major, as ``rnn`` reads it)."""

  obs: jax.Array
  starts: jax.Array
  actions: jax.Array
  log_probs: jax.Array
  values: jax.Array
  rewards: jax.Array
  dones: jax.Array
  finished_returns: jax.Array  # An episode's return at its last step, else 0.


def flatten(obs: jax.Array, num_envs: int) -> jax.Array:
  """``[E, ...]`` observations as ``[E, O]`` float32."""
  return obs.reshape(num_envs, -1).astype(jnp.float32)


def reset(env, env_params, key: jax.Array, num_envs: int, net: ActorCritic) -> Runner:
  """Fresh environments; the first step starts their episodes."""
  obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_envs),
                                                          env_params)
  return Runner(env_state, flatten(obs, num_envs), jnp.ones(num_envs, bool),
                net.initial_carry(num_envs), jnp.zeros(num_envs))


def rollout(env, env_params, net: ActorCritic, params: dict, runner: Runner, key: jax.Array,
            num_steps: int) -> tuple[Runner, Rollout, jax.Array]:
  """``num_steps`` steps of every environment, sampling actions, in one ``lax.scan``.

  Returns:
    ``(runner, rollout, last_value)``: where the next rollout starts, this one
    (``[E, T, ...]``), and the value ``[E]`` of the observation after it.
  """
  num_envs = runner.obs.shape[0]
  env_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

  def one_step(runner, key):
    act_key, env_key = jax.random.split(key)
    carry, logits, value = net.step(params, runner.carry, runner.obs, runner.start)
    action = jax.random.categorical(act_key, logits)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
    obs, env_state, reward, terminated, truncated, _ = env_step(
        jax.random.split(env_key, num_envs), runner.env_state, action, env_params)
    done = terminated | truncated
    episode_return = runner.episode_return + reward
    step = Rollout(runner.obs, runner.start, action, log_prob, value, reward.astype(jnp.float32),
                   done, jnp.where(done, episode_return, 0.0))
    runner = Runner(env_state, flatten(obs, num_envs), done, carry,
                    jnp.where(done, 0.0, episode_return))
    return runner, step

  runner, steps = jax.lax.scan(one_step, runner, jax.random.split(key, num_steps))
  _, _, last_value = net.step(params, runner.carry, runner.obs, runner.start)
  return runner, jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), steps), last_value


def advantages(rewards: jax.Array, values: jax.Array, dones: jax.Array, last_value: jax.Array,
               gamma: float, gae_lambda: float) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over ``[E, T]`` rollouts.

  ``dones[:, t]``: the episode ended with step ``t`` (no bootstrap from the next
  value, which is the next episode's).

  Returns:
    ``(advantages [E, T], returns [E, T])``, returns = advantages + values.
  """
  def backwards(carry, inputs):
    next_advantage, next_value = carry
    reward, value, done = inputs
    going_on = 1.0 - done.astype(jnp.float32)
    delta = reward + gamma * next_value * going_on - value
    advantage = delta + gamma * gae_lambda * going_on * next_advantage
    return (advantage, value), advantage

  time_major = lambda leaf: jnp.swapaxes(leaf, 0, 1)
  _, advantage = jax.lax.scan(backwards, (jnp.zeros_like(last_value), last_value),
                              (time_major(rewards), time_major(values), time_major(dones)),
                              reverse=True)
  advantage = time_major(advantage)
  return advantage, advantage + values


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
  """The PPO settings of :func:`make_update`: the script's flags of the same names (whose
  defaults and help are in ``experiments.train_ppo.PPOConfig``)."""

  num_envs: int
  rollout_length: int
  epochs: int
  minibatches: int
  gamma: float
  gae_lambda: float
  clip_epsilon: float
  value_coef: float
  entropy_coef: float


def ppo_loss(net: ActorCritic, params: dict, carry: Any, batch: Rollout, advantage: jax.Array,
             returns: jax.Array, hp: Hyperparameters) -> tuple[jax.Array, dict]:
  """The PPO loss of a minibatch of stored rollouts (``[e, T, ...]``) and its parts."""
  logits, values = net.sequence(params, carry, batch.obs, batch.starts)
  log_probs = jax.nn.log_softmax(logits)
  log_prob = jnp.take_along_axis(log_probs, batch.actions[..., None], -1)[..., 0]
  ratio = jnp.exp(log_prob - batch.log_probs)
  advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
  clipped = jnp.clip(ratio, 1.0 - hp.clip_epsilon, 1.0 + hp.clip_epsilon)
  policy_loss = -jnp.minimum(ratio * advantage, clipped * advantage).mean()
  values_clipped = batch.values + jnp.clip(values - batch.values, -hp.clip_epsilon,
                                           hp.clip_epsilon)
  value_loss = 0.5 * jnp.maximum((values - returns) ** 2, (values_clipped - returns) ** 2).mean()
  entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
  loss = policy_loss + hp.value_coef * value_loss - hp.entropy_coef * entropy
  return loss, {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss,
                "entropy": entropy, "approx_kl": ((ratio - 1.0) - jnp.log(ratio)).mean()}


def make_update(env, env_params, net: ActorCritic, optimizer: optax.GradientTransformation,
                hp: Hyperparameters) -> Callable:
  """``update(params, opt_state, runner, key) -> (params, opt_state, runner, metrics)``.

  One PPO update: a rollout of ``hp.rollout_length`` steps of ``hp.num_envs``
  environments, then ``hp.epochs`` passes over them in ``hp.minibatches``
  minibatches of environments (whole rollouts: the recurrent core replays each
  from its carry at the rollout's start). ``metrics``: the mean losses, and of
  the episodes that ended in the rollout their number, mean return and success
  rate (return > 0).
  """
  grad_fn = jax.grad(lambda *args: ppo_loss(net, *args, hp=hp), argnums=0, has_aux=True)
  per_minibatch = hp.num_envs // hp.minibatches

  def update(params, opt_state, runner: Runner, key):
    rollout_key, shuffle_key = jax.random.split(key)
    start_carry = runner.carry
    runner, stored, last_value = rollout(env, env_params, net, params, runner, rollout_key,
                                         hp.rollout_length)
    advantage, returns = advantages(stored.rewards, stored.values, stored.dones, last_value,
                                    hp.gamma, hp.gae_lambda)

    def one_minibatch(carry, envs):
      params, opt_state = carry
      take = lambda leaf: leaf[envs]
      grads, parts = grad_fn(params, jax.tree.map(take, start_carry),
                             jax.tree.map(take, stored), advantage[envs], returns[envs])
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), parts

    def one_epoch(carry, key):
      order = jax.random.permutation(key, hp.num_envs).reshape(hp.minibatches, per_minibatch)
      return jax.lax.scan(one_minibatch, carry, order)

    (params, opt_state), parts = jax.lax.scan(one_epoch, (params, opt_state),
                                              jax.random.split(shuffle_key, hp.epochs))
    episodes = stored.dones.sum()
    per_episode = lambda total: total / jnp.maximum(episodes, 1)
    metrics = {**jax.tree.map(jnp.mean, parts),
               "episode_return": per_episode(stored.finished_returns.sum()),
               "success_rate": per_episode((stored.dones & (stored.finished_returns > 0)).sum()),
               "episodes": episodes.astype(jnp.float32)}
    return params, opt_state, runner, metrics

  return update


def evaluate(env, env_params, net: ActorCritic, params: dict, key: jax.Array,
             num_episodes: int) -> dict:
  """The first episode of ``num_episodes`` fresh environments, acting greedily (argmax).

  Runs until every episode has ended (at most ``max_steps_in_episode`` steps).

  Returns:
    ``{"mean_return", "success_rate", "episodes"}`` (device scalars but ``episodes``).
  """
  reset_key, step_key = jax.random.split(key)
  runner = reset(env, env_params, reset_key, num_episodes, net)
  env_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

  def one_step(loop):
    runner, finished, returns, t = loop
    carry, logits, _ = net.step(params, runner.carry, runner.obs, runner.start)
    obs, env_state, reward, terminated, truncated, _ = env_step(
        jax.random.split(jax.random.fold_in(step_key, t), num_episodes), runner.env_state,
        jnp.argmax(logits, -1), env_params)
    done = terminated | truncated
    returns = returns + jnp.where(finished, 0.0, reward)
    runner = Runner(env_state, flatten(obs, num_episodes), done, carry, runner.episode_return)
    return runner, finished | done, returns, t + 1

  def running(loop):
    _, finished, _, t = loop
    return ~finished.all() & (t < env_params.max_steps_in_episode)

  _, _, returns, _ = jax.lax.while_loop(
      running, one_step,
      (runner, jnp.zeros(num_episodes, bool), jnp.zeros(num_episodes), jnp.zeros((), jnp.int32)))
  return {"mean_return": returns.mean(), "success_rate": (returns > 0).mean(),
          "episodes": num_episodes}
