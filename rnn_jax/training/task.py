"""One experiment runner: a small :class:`Task` protocol and :func:`train_and_evaluate`.

A task says what is trained and how it is judged; :func:`train_and_evaluate`
holds what every run does, once: join the other processes and build the data
mesh, load the data, guard the workdir (``config.json``), create the state and
place it on the mesh, resume from the newest checkpoint, train with
:func:`~rnn_jax.training.loop.fit` (progress records, the training rate,
evaluation during training), evaluate the final state on each split, let the
task write what it writes at the end (plots, samples), and return the
summary the scripts print as their last line.

Tasks in the toolkit:
:class:`~rnn_jax.training.classification.ClassificationTask` (MNIST-family
images read as sequences) and
:class:`~rnn_jax.training.language_model.CharLMTask` (a character LM with
truncated BPTT). A task is a frozen dataclass of its settings; :meth:`Task.load`
returns a copy holding its data, and the other methods read it from there.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Protocol

from rnn_jax.training import config as config_lib
from rnn_jax.training import script


class Task(Protocol):
  """What :func:`train_and_evaluate` needs of a task.

  Attributes:
    batch_size: the global batch, which must divide by the device count.
    metric_formats: the training metrics and how progress lines show them
      (the ``metric_formats`` of :class:`~rnn_jax.training.loop.Reporter`).
    throughput: ``(items per step, name)`` for the progress lines and the
      rate (the reporter's ``throughput``), or ``None``: steps/s.
    plots: whether the run writes its figures (needs matplotlib).
  """

  batch_size: int
  metric_formats: Mapping[str, str]
  throughput: tuple[int, str] | None
  plots: bool

  def load(self, say: Callable[[str], None]) -> Task:
    """The task with its data loaded; raises ``UsageError`` (e.g. a batch larger than the data)
    or ``DataError`` before any work."""

  def num_steps(self) -> int:
    """The run's total number of training steps."""

  def steps_per_epoch(self) -> int:
    """Training steps per pass over the training data."""

  def describe(self, num_params: int) -> str:
    """The first line of a run, up to where it computes (``, on cpu; workdir ...`` follows)."""

  def check_workdir(self, workdir: str) -> None:
    """Saves or checks what the task keeps in the workdir besides ``config.json`` (process 0)."""

  def create_state(self):
    """The state of step 0 (the restore target). Its ``aux`` leaves, if any, have the batch as
    leading axis: on a mesh, row ``b`` goes with row ``b`` of the batch."""

  def make_train_step(self):
    """The jitted train step (:func:`~rnn_jax.training.loop.make_train_step` of its loss)."""

  def batches(self, mesh) -> Callable[[int], Any]:
    """``batch_for_step``; ``mesh``: ``None`` on one device, else the data mesh to shard over."""

  def eval_every(self, requested: int) -> int:
    """Steps between evaluations during training, given the ``--eval_every`` asked for."""

  def watched_split(self) -> str:
    """The split evaluated during training."""

  def final_splits(self) -> tuple[str, ...]:
    """The splits evaluated at the end, in order."""

  def evaluate(self, split: str, state, mesh) -> dict:
    """The figures of ``state`` on ``split`` (all processes take part)."""

  def report(self, split: str, step: int, result: dict) -> tuple[dict, str]:
    """``(metrics record, progress line)`` of an evaluation; the record's kind is ``split``."""

  def finish(self, state, workdir: str, records: list, mesh, primary: bool,
             say: Callable[[str], None]) -> dict:
    """Writes what the task writes at the end (figures, samples: on ``primary``); returns
    summary entries. ``records``: the metrics written so far (process 0; else empty)."""

  def summary(self, results: Mapping[str, dict], steps_per_second: float) -> dict:
    """The task's figures in the last line, from the final ``results`` by split."""


@dataclasses.dataclass(frozen=True)
class RunSettings(config_lib.DeviceOptions):
  """How a run is carried out, for every task; unlike the config, a rerun may change them.

  Attributes:
    log_every: steps between progress lines.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: checkpoints kept.
    eval_every: steps between evaluations during training (0: the task's default).
    platform, num_devices, coordinator_address, num_processes, process_id:
      where the run computes (:class:`~rnn_jax.training.config.DeviceOptions`).
  """

  log_every: int = config_lib.setting(100, "Steps between progress lines.", lower=1)
  checkpoint_every: int = config_lib.setting(500, "Steps between checkpoints.", lower=1)
  keep_checkpoints: int = config_lib.setting(3, "Checkpoints kept.", lower=1)
  eval_every: int = config_lib.setting(0, "Steps between evaluations during training (0: the "
                                       "task's default).", lower=0)


def train_and_evaluate(task: Task, config: config_lib.Config, workdir: str | None,
                       options: RunSettings, *, name: str,
                       say: Callable[[str], None] = script.say) -> dict:
  """Trains ``task`` and evaluates it; returns the summary the scripts print last.

  Args:
    task: the task (not loaded yet).
    config: its config: ``config.json`` in the workdir holds its identity, and
      the summary its values.
    workdir: where checkpoints, metrics and figures go; ``None``:
      ``config.default_workdir(name)``. A workdir holding another config is
      refused; one holding checkpoints of this config is resumed.
    options: how the run is carried out.
    name: the default workdir's prefix.
    say: where progress lines go (process 0 only).

  Returns:
    ``task.summary(...)`` followed by ``steps``, ``resumed_from``,
    ``train_seconds``, ``eval_seconds``, ``wall_seconds``, ``devices``,
    ``workdir`` and ``config``.

  Raises:
    UsageError: refused before any training (bad values, missing extras, a
      platform this machine lacks, a workdir with other settings).
    rnn_jax.training.idx.DataError: the data cannot be found or read.
    rnn_jax.training.loop.NonFiniteLoss, rnn_jax.training.loop.Interrupted:
      see :func:`rnn_jax.training.loop.fit`.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from rnn_jax.training import distributed, loop  # pylint: disable=import-outside-toplevel
  started = time.perf_counter()
  script.check_extras(task.plots)
  mesh = script.data_mesh(options, task.batch_size)
  # One device of one process: the single-device path, with the data kept on the device.
  sharded = mesh if mesh.size > 1 or jax.process_count() > 1 else None
  primary = distributed.is_primary()
  if not primary:
    say = lambda line: None
  workdir = workdir or config.default_workdir(name)
  if primary and os.path.isdir(workdir):  # Another run may be writing it: refused before work.
    script.become_writer(workdir)
  task = task.load(say)
  if primary:  # One writer before anything is written (a new workdir is created only now).
    script.become_writer(workdir)
    script.check_workdir_config(workdir, config.identity())  # The other processes go by it.
    task.check_workdir(workdir)

  state = task.create_state()
  if sharded is not None:
    state = distributed.place_state(state, sharded, task.batch_size)
  say(f"{task.describe(loop.num_params(state.params))}, {script.placement(mesh, sharded)}; "
      f"workdir {workdir}")
  store, state, resumed_from, log, write_metrics = script.open_run(
      workdir, state, keep_checkpoints=options.keep_checkpoints, primary=primary, say=say)

  def run_eval(split, step, current):
    result = task.evaluate(split, current, sharded)
    record, line = task.report(split, step, result)
    write_metrics(split, record)
    say(line)
    return result

  num_steps = task.num_steps()
  rate = script.TrainingRate(write_metrics, resumed_from or 0, options.log_every)
  train_started = time.perf_counter()
  watched = task.watched_split()
  reporter = loop.Reporter(
      log_every=options.log_every, metric_formats=task.metric_formats,
      steps_per_epoch=task.steps_per_epoch(), throughput=task.throughput, on_log=rate.on_log,
      on_eval=lambda step, current: run_eval(watched, step, current),
      eval_every=task.eval_every(options.eval_every), log=say)
  state = loop.fit(state, task.make_train_step(), task.batches(sharded), num_steps=num_steps,
                   store=store, checkpoint_every=options.checkpoint_every, reporter=reporter)
  train_seconds = time.perf_counter() - train_started
  eval_started = time.perf_counter()
  results = {split: run_eval(split, num_steps, state) for split in task.final_splits()}
  eval_seconds = time.perf_counter() - eval_started
  extras = task.finish(state, workdir, log.read() if log is not None else [], sharded, primary,
                       say)
  if log is not None:
    log.close()
  store.close()
  steps_per_second = rate.steps_per_second(int(state.step) - (resumed_from or 0), train_seconds)
  return {
      **task.summary(results, steps_per_second), **extras,
      "steps": int(state.step), "resumed_from": resumed_from,
      "train_seconds": round(train_seconds, 2), "eval_seconds": round(eval_seconds, 2),
      "wall_seconds": round(time.perf_counter() - started, 2), "devices": mesh.size,
      "workdir": workdir, "config": config.to_dict(),
  }

