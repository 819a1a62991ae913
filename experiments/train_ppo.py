r"""Trains a recurrent PPO agent on a gymnax memory task (issue 19's end-to-end client of resets).

    python -m experiments.train_ppo                        # MemoryChain-bsuite, memory 10, LSTM
    python -m experiments.train_ppo --cell=none            # the feed-forward control (~0.5)
    python -m experiments.train_ppo --env=Catch-bsuite     # a task that needs no memory

The agent (:mod:`experiments.ppo`) is a recurrent core (``--cell``, built by
:func:`rnn_jax.training.cores.build_core`; ``none``: one dense ``tanh`` layer,
no memory) with linear policy and value heads. Each training step is one PPO
update: a rollout of ``--rollout_length`` steps of ``--num_envs`` vmapped
environments, acting and environment steps together in one compiled
``lax.scan`` (``rnn_jax.reset_carry`` then ``layer.step``), then ``--epochs``
passes over minibatches of environments that replay the stored rollouts with
``rnn(core, params, obs, initial_carry=<carry at the rollout's start>,
resets=<the step begins an episode>)``. GAE, the clipped objective, a clipped
value loss, an entropy bonus, Adam after gradient clipping.

``MemoryChain-bsuite`` (``--memory_length``, gymnax's default 5, set here to
10): the context bit is shown at the first steps of an episode, the answer is
asked ``memory_length`` steps later (reward +1 right, -1 wrong), so a policy
without memory answers right half the time. ``Catch-bsuite``: catch a falling
ball (+1 caught, -1 missed); the observation shows everything, so the
feed-forward control solves it too. ``success_rate`` is the fraction of the
final evaluation's greedy episodes with a positive return (right answer, ball
caught).

The run goes through :func:`rnn_jax.training.task.train_and_evaluate` like the
other scripts: ``--workdir`` (default ``runs/ppo-<config hash>``) holds
``config.json``, Orbax checkpoints (the environments' states, the carry and
the running returns included: rerunning a killed command resumes exactly),
``metrics.jsonl`` (a ``train`` record per update, or the means over
``--log_every`` updates; ``eval`` records), TensorBoard events when tensorboard is installed and
``returns.png``. The last line is one JSON object (``env``, ``cell``,
``memory_length``, ``mean_return``, ``success_rate``, ``env_steps``,
``env_steps_per_second``, ``wall_seconds``, ...). From Python::

    from experiments import train_ppo
    summary = train_ppo.run({"updates": 20}, "runs/ppo", train_ppo.Options(plots=False))
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

from rnn_jax.training import runtime  # Standard library only: safe before the extras.

if __name__ == "__main__":
  runtime.use_fast_allocator()  # Re-executes with tcmalloc before JAX allocates anything.

try:
  import gymnax  # noqa: F401  # pylint: disable=unused-import  # Refused here when missing.
  import jax
  import jax.numpy as jnp
  from absl import app

  from experiments import ppo
  from rnn_jax.training import cores, loop, optim, script
  from rnn_jax.training import task as task_lib
  from rnn_jax.training.config import Config, setting
except ImportError as missing:  # The `train` extra is not installed.
  runtime.exit_for_missing_extra(missing, __name__, "the PPO experiment")

UsageError = script.UsageError
MEMORY_CHAIN = "MemoryChain-bsuite"
NO_CORE = "none"


@dataclasses.dataclass(frozen=True)
class PPOConfig(Config):
  """What a run trains: its identity (``config.json``, the default workdir's hash); each field
  is a flag."""

  env: str = setting(MEMORY_CHAIN, "gymnax environment.", choices=ppo.ENVS)
  memory_length: int = setting(10, "MemoryChain-bsuite: steps between the context and the "
                               "question (gymnax's default is 5).", lower=1)
  cell: str = setting("lstm", "Recurrent core (rnn_jax.training.cores.CELLS), or none: a "
                      "feed-forward policy (the control).",
                      choices=lambda: (NO_CORE, *sorted(cores.CELLS)))
  hidden_size: int = setting(64, "Units of the core (the heads' input).", lower=1)
  num_envs: int = setting(64, "Environments stepped together.", lower=1)
  rollout_length: int = setting(64, "Steps of each environment per update.", lower=1)
  updates: int = setting(100, "PPO updates (training steps); each runs num_envs x "
                         "rollout_length environment steps.", lower=1)
  epochs: int = setting(4, "Passes over each rollout.", lower=1)
  minibatches: int = setting(4, "Minibatches of environments per pass.", lower=1)
  learning_rate: float = setting(3e-3, "Adam learning rate.", above=0.0)
  clip_norm: float = setting(0.5, "Clip gradients to this global norm; 0 disables.", lower=0.0)
  gamma: float = setting(0.99, "Discount.", lower=0.0, upper=1.0)
  gae_lambda: float = setting(0.95, "GAE lambda.", lower=0.0, upper=1.0)
  clip_epsilon: float = setting(0.2, "PPO ratio (and value) clipping.", above=0.0)
  value_coef: float = setting(0.5, "Weight of the value loss.", lower=0.0)
  entropy_coef: float = setting(0.01, "Weight of the entropy bonus.", lower=0.0)
  seed: int = setting(0, "Seed of the initialisation, environments and actions.", lower=0)

  def check(self) -> None:
    if self.num_envs % self.minibatches:
      raise UsageError(f"flag --minibatches={self.minibatches}: must divide "
                       f"--num_envs={self.num_envs}")
    if self.env != MEMORY_CHAIN and self.memory_length != PPOConfig.memory_length:
      raise UsageError(f"flag --memory_length={self.memory_length}: an option of "
                       f"--env={MEMORY_CHAIN}, not --env={self.env}")

  def hyperparameters(self) -> ppo.Hyperparameters:
    """The PPO settings of :func:`experiments.ppo.make_update`."""
    return ppo.Hyperparameters(**{field.name: getattr(self, field.name)
                                  for field in dataclasses.fields(ppo.Hyperparameters)})


@dataclasses.dataclass(frozen=True)
class Options(task_lib.RunSettings):
  """How a run is carried out and reported (not its identity): where it computes, how often
  it logs, saves and evaluates (:class:`~rnn_jax.training.task.RunSettings`), and these."""

  log_every: int = setting(1, "Updates between progress lines and train metrics records "
                           "(means over the interval).", lower=1)
  checkpoint_every: int = setting(25, "Updates between checkpoints.", lower=1)
  eval_every: int = setting(0, "Updates between evaluations during training (0: ten in a "
                            "run).", lower=0)
  eval_episodes: int = setting(1000, "Greedy episodes of each evaluation.", lower=1)
  plots: bool = setting(True, "Write returns.png (needs matplotlib).")


@dataclasses.dataclass(frozen=True)
class PPOTask:
  """PPO as a :class:`rnn_jax.training.task.Task`: a training step is one update (a rollout
  and its epochs), the carried ``aux`` is the :class:`experiments.ppo.Runner` (environments,
  carry, running returns), the one split ``"eval"`` is greedy episodes of fresh environments.
  """

  config: PPOConfig
  eval_episodes: int = 1000
  plots: bool = True
  env: Any = None
  env_params: Any = None

  @property
  def batch_size(self) -> int:
    return self.config.num_envs

  @property
  def env_steps_per_update(self) -> int:
    return self.config.num_envs * self.config.rollout_length

  @property
  def metric_formats(self) -> Mapping[str, str]:
    return {"loss": "loss {:.4f}", "episode_return": "return {:.3f}",
            "success_rate": "success {:.3f}", "entropy": "entropy {:.3f}"}

  @property
  def throughput(self) -> tuple[int, str]:
    return self.env_steps_per_update, "env_steps"

  @property
  def memory_length(self) -> int | None:
    """MemoryChain's memory length as the environment has it (``None`` for other tasks)."""
    return int(self.env_params.memory_length) if self.config.env == MEMORY_CHAIN else None

  @property
  def net(self) -> ppo.ActorCritic:
    config = self.config
    core = (None if config.cell == NO_CORE else
            cores.build_core(config.cell, config.hidden_size,
                             sequence_length=config.rollout_length))
    return ppo.ActorCritic(core, config.hidden_size, self.env.num_actions)

  def load(self, say: Callable[[str], None]) -> PPOTask:
    del say
    env, env_params = ppo.make_env(self.config.env, self.config.memory_length)
    return dataclasses.replace(self, env=env, env_params=env_params)

  def num_steps(self) -> int:
    return self.config.updates

  def steps_per_epoch(self) -> int:
    return 0  # No data set to pass over: the progress lines show no epoch.

  def describe(self, num_params: int) -> str:
    config = self.config
    memory = f", memory length {self.memory_length}" if self.memory_length else ""
    core = "feed-forward (no core)" if config.cell == NO_CORE else f"{config.cell} core"
    return (f"PPO on {config.env}{memory}: {core} H={config.hidden_size}, {num_params:,} params; "
            f"{config.updates} updates of {config.num_envs} envs x {config.rollout_length} steps")

  def check_workdir(self, workdir: str) -> None:
    del workdir  # Nothing besides config.json.

  def _optimizer(self):
    return optim.make_optimizer("adam", self.config.learning_rate,
                                clip_norm=self.config.clip_norm or None)

  def create_state(self) -> loop.TrainState:
    net, config = self.net, self.config
    params_key, env_key = jax.random.split(jax.random.key(config.seed))
    params = net.init(params_key, ppo.observation_size(self.env, self.env_params))
    runner = ppo.reset(self.env, self.env_params, env_key, config.num_envs, net)
    # Copies: equal constants may share one buffer, and the train step donates each leaf once.
    return loop.init_state(params, self._optimizer(), aux=jax.tree.map(jnp.copy, runner))

  def make_train_step(self):
    """``train_step(state, None) -> (state, metrics)``: one PPO update with the key
    ``fold_in(key(seed), step)``; a non-finite loss or parameters leave the state as it was and
    record the step in ``bad_step`` (as :func:`rnn_jax.training.loop.make_train_step` does).
    Compiled once per config in a process (a resumed or repeated run reuses it)."""
    if ("train", self.config) not in _COMPILED:
      _COMPILED["train", self.config] = self._train_step()
    return _COMPILED["train", self.config]

  def _train_step(self):
    update = ppo.make_update(self.env, self.env_params, self.net, self._optimizer(),
                             self.config.hyperparameters())
    step_key = jax.random.key(self.config.seed)

    def train_step(state: loop.TrainState, batch):
      del batch
      params, opt_state, runner, metrics = update(
          state.params, state.opt_state, state.aux, jax.random.fold_in(step_key, state.step))
      finite = [jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(params)]
      finite = jnp.isfinite(metrics["loss"]) & jnp.stack(finite).all()
      return loop.commit_step(state, finite, params=params, opt_state=opt_state,
                              aux=runner), metrics

    return jax.jit(train_step, donate_argnums=0)

  def batches(self, mesh) -> Callable[[int], None]:
    del mesh  # One device (run() refuses more): the rollout makes the data.
    return lambda step: None

  def eval_every(self, requested: int) -> int:
    return requested or max(self.config.updates // 10, 1)

  def watched_split(self) -> str:
    return "eval"

  def final_splits(self) -> tuple[str, ...]:
    return ("eval",)

  def evaluate(self, split: str, state, mesh) -> dict:
    """Greedy episodes of fresh environments, the same ones at every evaluation."""
    del split, mesh
    key = jax.random.fold_in(jax.random.key(self.config.seed), ppo.EVAL_STREAM)
    signature = ("eval", self.config, self.eval_episodes)
    if signature not in _COMPILED:
      env, env_params, net, episodes = self.env, self.env_params, self.net, self.eval_episodes
      _COMPILED[signature] = jax.jit(
          lambda params, key: ppo.evaluate(env, env_params, net, params, key, episodes))
    result = _COMPILED[signature](state.params, key)
    return {name: round(float(value), 6) if name != "episodes" else int(value)
            for name, value in jax.device_get(result).items()}

  def report(self, split: str, step: int, result: dict) -> tuple[dict, str]:
    record = {"step": step, **result}
    return record, (f"step {step}/{self.config.updates}  {split}: mean return "
                    f"{result['mean_return']:.3f}  success rate {result['success_rate']:.3f} "
                    f"({result['episodes']} greedy episodes)")

  def finish(self, state, workdir: str, records: list, mesh, primary: bool,
             say: Callable[[str], None]) -> dict:
    """``returns.png``: the training episodes' mean return and the evaluations."""
    del state, mesh
    if primary and self.plots:
      path = os.path.join(workdir, "returns.png")
      plot_returns(records, path, self.env_steps_per_update,
                   title=f"{self.config.env}: {self.config.cell} H={self.config.hidden_size}")
      say(f"wrote {path}")
    return {}

  def summary(self, results: Mapping[str, dict], steps_per_second: float) -> dict:
    final = results["eval"]
    return {"env": self.config.env, "cell": self.config.cell,
            "memory_length": self.memory_length, "mean_return": final["mean_return"],
            "success_rate": final["success_rate"], "eval_episodes": final["episodes"],
            "env_steps": self.config.updates * self.env_steps_per_update,
            "env_steps_per_second": round(steps_per_second * self.env_steps_per_update, 1),
            "updates_per_second": round(steps_per_second, 3)}


_COMPILED: dict = {}
"""The jitted train step and evaluation of each config run in this process."""


def plot_returns(records: list, path: str, env_steps_per_update: int, title: str = "") -> None:
  """Writes the return curve: the training episodes' mean return (``train`` records) and the
  greedy evaluations (``eval`` records) against environment steps, and their success rates."""
  from rnn_jax.training import plots  # pylint: disable=import-outside-toplevel  # matplotlib.
  plt = plots.pyplot()
  figure, (ax_return, ax_success) = plt.subplots(1, 2, figsize=(11, 4))
  for kind, style, label in (("train", "-", "training episodes (sampled)"),
                             ("eval", "o-", "evaluation (greedy)")):
    chosen = [record for record in records if record.get("kind") == kind]
    if not chosen:
      continue
    steps = [record["step"] * env_steps_per_update / 1000 for record in chosen]
    returns = [record["episode_return" if kind == "train" else "mean_return"]
               for record in chosen]
    ax_return.plot(steps, returns, style, label=label)
    ax_success.plot(steps, [record["success_rate"] for record in chosen], style, label=label)
  ax_return.set(xlabel="environment steps (thousands)", ylabel="mean episode return")
  ax_success.set(xlabel="environment steps (thousands)", ylabel="success rate (return > 0)",
                 ylim=(0, 1.02))
  plots.save_panels(figure, (ax_return, ax_success), title, path)


def run(config: Mapping | PPOConfig, workdir: str | None = None, options: Options = Options(),
        *, say: Callable[[str], None] = script.say) -> dict:
  """Trains and evaluates; returns the summary the script prints last (``success_rate``, ...).

  ``config``: a :class:`PPOConfig`, or field values over its defaults.

  Raises:
    UsageError: bad values, or more than one device or process (PPO runs on one device).
    And what :func:`rnn_jax.training.task.train_and_evaluate` raises.
  """
  config = PPOConfig.resolve(config)
  if options.num_processes > 1 or options.num_devices > 1:
    raise UsageError(f"flag --num_devices={options.num_devices}, --num_processes="
                     f"{options.num_processes}: PPO runs on one device of one process; "
                     "use --num_devices=1")
  task = PPOTask(config, eval_episodes=options.eval_episodes, plots=options.plots)
  return task_lib.train_and_evaluate(task, config, workdir, dataclasses.replace(
      options, num_devices=1), name="ppo", say=say)


parse_flags = script.flags_parser(PPOConfig, Options, workdir_help="Run directory (default "
                                  "runs/ppo-<config hash>).")
main_with_exit_codes = script.main_of(run, PPOConfig, Options)


if __name__ == "__main__":
  app.run(main_with_exit_codes, flags_parser=parse_flags)
