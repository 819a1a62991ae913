"""Tests of ``python -m experiments.train_ppo``: it learns, resumes exactly, refuses bad flags.

The training runs (marked slow: each compiles a PPO update) call
:func:`experiments.train_ppo.run` in-process with a tiny agent (the compiled update is shared
by the runs of one config); the interruption is the SIGTERM a kill sends, caught by the
training loop, which saves and stops. The refusals run the script.
"""

import json
import os
import signal

import jax
import numpy as np
import pytest

from experiments import train_ppo
from rnn_jax.training import loop, runs
from scripts import one_line, run_experiment

# Memory length 2: the context is seen at steps 0-1 and asked for at step 2 (one step to keep).
TINY = {"memory_length": 2, "hidden_size": 16, "num_envs": 16, "rollout_length": 12,
        "updates": 12, "epochs": 2, "minibatches": 2, "learning_rate": 1e-2}
OPTIONS = train_ppo.Options(log_every=1, checkpoint_every=4, eval_every=6, eval_episodes=200,
                            plots=False)


def _params(workdir, config):
  task = train_ppo.PPOTask(train_ppo.PPOConfig.resolve(config)).load(lambda line: None)
  _, state = runs.restore_newest(workdir, task.create_state())
  return state


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The tiny LSTM run, uninterrupted: ``(workdir, summary)``."""
  workdir = tmp_path_factory.mktemp("straight")
  return workdir, train_ppo.run(TINY, str(workdir), OPTIONS, say=lambda line: None)


@pytest.mark.slow  # A training run: compiling the update takes seconds.
def test_a_short_run_learns_the_shortest_memory(straight):
  workdir, summary = straight
  assert summary["env"] == "MemoryChain-bsuite" and summary["cell"] == "lstm"
  assert summary["memory_length"] == 2 and summary["eval_episodes"] == 200
  assert summary["env_steps"] == 12 * 16 * 12 and summary["env_steps_per_second"] > 0
  assert summary["success_rate"] >= 0.9, summary  # Chance: 0.5.
  assert summary["mean_return"] == pytest.approx(2 * summary["success_rate"] - 1)
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 13))
  assert [r["step"] for r in records if r["kind"] == "eval"] == [6, 12]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "4", "8"]


@pytest.mark.slow  # A training run: compiling the update takes seconds.
def test_interrupted_and_rerun_ends_as_the_uninterrupted_run(straight, tmp_path):
  """SIGTERM after update 5 saves a checkpoint and stops; the same call again resumes from it
  and ends with the uninterrupted run's parameters, environments and metrics, bitwise."""
  straight_dir, straight_summary = straight

  def kill_after_update_5(line):
    if line.startswith("step 5/12  loss"):
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(loop.Interrupted) as stopped:
    train_ppo.run(TINY, str(tmp_path), OPTIONS, say=kill_after_update_5)
  assert stopped.value.step == 5 and stopped.value.signum == signal.SIGTERM
  resumed = train_ppo.run(TINY, str(tmp_path), OPTIONS, say=lambda line: None)
  assert resumed["resumed_from"] == 5 and resumed["steps"] == 12
  for key in ("mean_return", "success_rate", "env_steps"):
    assert resumed[key] == straight_summary[key]
  ends = [_params(workdir, TINY) for workdir in (straight_dir, tmp_path)]
  jax.tree.map(np.testing.assert_array_equal, ends[0].params, ends[1].params)
  jax.tree.map(np.testing.assert_array_equal, ends[0].aux, ends[1].aux)
  read = lambda workdir: {(r["kind"], r["step"]): r for r in map(
      json.loads, open(workdir / "metrics.jsonl"))}
  first, second = read(straight_dir), read(tmp_path)
  assert set(first) == set(second)
  timing = {"steps_per_second", "env_steps_per_second", "eta_seconds", "wall_seconds"}
  for key, record in first.items():
    assert {name: value for name, value in record.items() if name not in timing} == {
        name: value for name, value in second[key].items() if name not in timing}, key


@pytest.mark.slow  # A training run: compiling the update takes seconds.
def test_the_feed_forward_control_stays_at_chance(tmp_path):
  summary = train_ppo.run({**TINY, "cell": "none"}, str(tmp_path), OPTIONS,
                          say=lambda line: None)
  assert summary["cell"] == "none" and 0.35 <= summary["success_rate"] <= 0.65, summary


@pytest.mark.parametrize("args, flag", [
    (["--cell=transformer"], "--cell"),
    (["--minibatches=3"], "--minibatches=3: must divide --num_envs=64"),
    (["--env=Catch-bsuite", "--memory_length=4"], "--memory_length=4: an option of"),
    (["--num_devices=2"], "PPO runs on one device"),
])
def test_bad_flag_prints_one_line_and_exits_2(args, flag):
  line = one_line(run_experiment("train_ppo", *args, "--workdir=/nonexistent/never-created"), 2)
  assert flag in line, line
  assert not os.path.exists("/nonexistent/never-created")
