r"""Trains a recurrent classifier on MNIST read as a sequence (rows, pixels or permuted pixels).

    python -m experiments.train_mnist                      # default: GRU 128, 5 epochs, ~2 min
    python -m experiments.train_mnist --preset=lstm100     # a tutorial configuration
    python -m experiments.train_mnist --cell=gru --hidden_size=64 --epochs=2 --workdir=runs/gru

Presets (explicit flags override their values):
  lstm100    one LSTM layer of 100, batch 100, Adam 1e-4, 10 epochs (tutorial: 0.9338)
  lstm256x2  two LSTM layers of 256, dropout keep 0.5 between and after the layers,
             Adam 1e-3, batch 64, 2000 steps
  rnn150     one tanh RNN of 150, RMSProp(1e-3, decay 0.9), batch 128, 3000 steps
             (tutorial: 97.66% on the first 128 test images); training exactly as the
             tutorial, evaluated with a moving average of the parameters (--ema_decay,
             TF's ExponentialMovingAverage with num_updates; the JSON also gives the
             accuracy of the final parameters)
  rnn50      one tanh RNN of 50, batch 100, 2500 steps of plain gradient descent (SGD
             without momentum; tutorial: about 94%, hand-written BPTT; here the gradient
             comes from jax.grad). Unlike the tutorial, the learning rate 0.3 decays to 0
             by a cosine and gradients are clipped to global norm 1: chosen on a 5,000-image
             validation split; a constant rate without clipping stayed near 93% on the test
             set (0.1 and up diverged)
  best       our best rows configuration (>= 99.0% on the 10,000 test images)

Validation: ``--validation_examples=N`` holds out the last N images of the
training file (the TF tutorials' reader kept 55,000/5,000) and trains on the
rest; the validation loss and accuracy are logged every epoch (or every
``--eval_every`` steps), written to ``metrics.jsonl`` (kind ``"validation"``)
and drawn in ``curves.png``, and the test set is evaluated once, at the end.
The default and the presets train on all 60,000 (``N = 0``).

Everything a run writes goes to ``--workdir`` (default ``runs/<preset or
"default">-<hash of the config>``): Orbax checkpoints, ``metrics.jsonl``,
``config.json``, TensorBoard events (if tensorboard is installed),
``curves.png`` and ``prediction_by_step.png``. Rerunning the same command
resumes from the newest readable checkpoint and ends with exactly the
parameters of an uninterrupted run. SIGINT/SIGTERM save a checkpoint and exit
with status 128 + the signal number; a NaN/inf loss stops the run (status 1)
keeping the last good checkpoint; a data error is status 1. Every refusal (a
bad flag value, a platform this machine lacks, a missing extra such as
matplotlib for the plots) is one line on stderr and status 2, before any work.

The last line of output is one JSON object with the final figures
(``test_accuracy``, ``test_loss``, ``steps``, ``devices``, ``wall_seconds``, ...).

Data parallelism (:mod:`rnn_jax.training.distributed`): the run uses every
device it sees (``--num_devices=N``: the first N), shards each global batch
(``--batch_size``, which must divide by the device count) over a ``data``
mesh axis and replicates the state. Several processes (hosts) join with
``--coordinator_address=host:port --num_processes=P --process_id=i``, each
loading only its rows of every batch; process 0 alone prints and writes
metrics and plots, and Orbax writes each checkpoint once. The device count is
not part of the config: a run checkpointed on 4 devices resumes on 2. On one
device and one process the run is exactly the single-device one (the
training split stays on the device).

From Python, without flags, :func:`run` takes a config (:class:`MnistConfig`'s
defaults overridden by a preset's values and then by the given ones) and
:class:`Options`::

    from experiments import train_mnist
    summary = train_mnist.run({"cell": "lstm", "steps": 300}, "runs/lstm",
                              train_mnist.Options(plots=False))
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, Mapping

from rnn_jax.training import runtime  # Standard library only: safe before the extras.

if __name__ == "__main__":
  runtime.use_fast_allocator()  # Re-executes with tcmalloc before JAX allocates anything.

try:
  import jax
  import numpy as np
  from absl import app, flags, logging

  from rnn_jax.layer import VJPS
  from rnn_jax.training import (classification, datasets, distributed, loop, optim, plots,
                                script)
  from rnn_jax.training import config as config_lib
  from rnn_jax.training.config import setting
except ImportError as missing:  # The `train` extra is not installed.
  runtime.exit_for_missing_extra(missing, __name__, "the training toolkit")

@dataclasses.dataclass(frozen=True)
class MnistConfig(config_lib.Config):
  """What a run trains (its identity: ``config.json``, the default workdir's hash).

  Each field is a flag of the same name; :data:`PRESETS` are partial configs
  (see the module doc). ``vjp`` is ``backward`` in ``config.json`` and the
  final JSON line (its name when the runs were published; ``--backward`` is a
  deprecated alias of ``--vjp``).
  """

  PRESETS = {
      "lstm100": dict(cell="lstm", hidden_size=100, learning_rate=1e-4, batch_size=100,
                      epochs=10.0, schedule="constant", warmup_steps=0, clip_norm=0.0),
      "lstm256x2": dict(cell="lstm", hidden_size=256, num_layers=2, dropout=0.5,
                        learning_rate=1e-3, batch_size=64, steps=2000, schedule="constant",
                        warmup_steps=0, clip_norm=0.0),
      "rnn150": dict(cell="rnn", hidden_size=150, optimizer="rmsprop", learning_rate=1e-3,
                     steps=3000, schedule="constant", warmup_steps=0, clip_norm=0.0,
                     ema_decay=0.999),
      "rnn50": dict(cell="rnn", hidden_size=50, optimizer="sgd", momentum=0.0,
                    learning_rate=0.3, batch_size=100, steps=2500, schedule="cosine",
                    warmup_steps=0, clip_norm=1.0),
      "best": dict(hidden_size=256, epochs=10.0, warmup_steps=200),
  }

  dataset: str = setting("mnist", "Dataset.", choices=datasets.DATASETS)
  view: str = setting("rows", "How an image becomes a sequence.", choices=datasets.VIEWS)
  permutation_seed: int = setting(0, "Pixel order of the permuted_pixels view.", lower=0)
  cell: str = setting("gru", "Cell: a key of rnn_jax.training.classification.CELLS.",
                      choices=lambda: sorted(classification.CELLS))
  hidden_size: int = setting(128, "Hidden units per layer.", lower=1)
  num_layers: int = setting(1, "Stacked recurrent layers.", lower=1)
  dropout: float = setting(0.0, "Drop rate (1 - keep) between layers and after the last one, "
                           "in training.", lower=0.0, below=1.0)
  optimizer: str = setting("adam", "Optimizer.", choices=optim.OPTIMIZERS)
  learning_rate: float = setting(2e-3, "Peak learning rate.", above=0.0)
  decay: float = setting(0.9, "RMSProp decay of the mean square.", lower=0.0, upper=1.0)
  momentum: float = setting(0.9, "SGD momentum (0: plain gradient descent).", lower=0.0,
                            upper=1.0)
  schedule: str = setting("cosine", "Learning-rate schedule after the warmup.",
                          choices=optim.SCHEDULES)
  warmup_steps: int = setting(100, "Linear warmup steps from 0.", lower=0)
  clip_norm: float = setting(1.0, "Clip gradients to this global norm; 0 disables.", lower=0.0)
  batch_size: int = setting(128, "Training batch size.", lower=1)
  epochs: float = setting(5.0, "Training epochs (ignored when --steps > 0).", lower=0.0)
  steps: int = setting(0, "Training steps; 0: use --epochs.", lower=0)
  seed: int = setting(0, "Seed of the initialisation, data order and dropout.", lower=0)
  unroll: int | None = setting(None, "Time steps per scan iteration (default: the value "
                               "measured fastest for the cell on this backend, its "
                               "TUNED_UNROLL).", lower=1)
  vjp: str = setting("auto", "Gradient of the scan (rnn_jax.rnn's vjp=): JAX autodiff, "
                     "rnn_jax.fused's hand-written reverse scan, or auto: the one measured "
                     "fastest for the cell on this backend.", choices=("auto", *VJPS),
                     key="backward", aliases=("backward",))
  remat: bool = setting(False, "Rematerialise each scan step in the backward pass (up to 1/3 "
                        "more compute for much less memory; see the Performance guide).")
  ema_decay: float = setting(0.0, "Evaluate a moving average of the parameters with this decay "
                             "(0: the final parameters).", lower=0.0, upper=0.99999)
  max_train_examples: int = setting(0, "Use only the first N training examples (0: all; for "
                                    "tests).", lower=0)
  validation_examples: int = setting(0, "Hold out the last N images of the training file as a "
                                     "validation split, evaluated during training (0: none, "
                                     "train on all).", lower=0, added=True)

  def check(self) -> None:
    if not self.steps and not self.epochs:
      raise UsageError("flag --epochs=0 with --steps=0: give a positive --epochs or --steps")
    if self.max_train_examples and self.batch_size > self.max_train_examples:
      raise UsageError(f"flag --batch_size={self.batch_size}: larger than "
                       f"--max_train_examples={self.max_train_examples}")


PRESETS = MnistConfig.PRESETS


@dataclasses.dataclass(frozen=True)
class Options(config_lib.DeviceOptions):
  """How a run is carried out and reported; unlike the config, a rerun may change them.

  Attributes:
    data_dir: folder with the IDX files (``None``: searched, see
      :func:`rnn_jax.training.datasets.find_data_dir`).
    max_test_examples: evaluate only the first N test examples (0: all).
    log_every: steps between progress lines.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: checkpoints kept.
    eval_every: steps between evaluations during training: of the
      validation split when the config holds one out (0: every epoch), else
      of the test set (0: none; the test set is always evaluated at the end).
    eval_batch_size: evaluation batch size.
    plots: write ``curves.png`` and ``prediction_by_step.png`` (needs matplotlib).
    platform, num_devices, coordinator_address, num_processes, process_id:
      where the run computes (:class:`rnn_jax.training.config.DeviceOptions`).
  """

  data_dir: str | None = setting(None, "Folder with the IDX files (default: searched).")
  max_test_examples: int = setting(0, "Evaluate only the first N test examples (0: all; for "
                                   "tests).", lower=0)
  log_every: int = setting(100, "Steps between progress lines.", lower=1)
  checkpoint_every: int = setting(500, "Steps between checkpoints.", lower=1)
  keep_checkpoints: int = setting(3, "Checkpoints kept.", lower=1)
  eval_every: int = setting(0, "Steps between evaluations during training: of the validation "
                            "split with --validation_examples (0: every epoch), else of the test "
                            "set (0: none; the test set is always evaluated at the end).",
                            lower=0)
  eval_batch_size: int = setting(1000, "Evaluation batch size.", lower=1)
  plots: bool = setting(True, "Write curves.png and prediction_by_step.png.")


UsageError = script.UsageError


FLAGS = flags.FLAGS
MnistConfig.define_flags()
Options.define_flags()
flags.DEFINE_string("workdir", None, "Run directory (default runs/<preset>-<config hash>).")


def check_extras(options: Options) -> None:
  """Refuses a run whose optional packages are missing (Orbax always, matplotlib for plots)."""
  script.check_extras(options.plots)


def default_workdir(config: MnistConfig, preset: str | None = None) -> str:
  """``runs/<preset or "default">-<first 8 hex digits of the SHA-256 of its identity>``."""
  return config.default_workdir(preset or "default")


def hold_out(images: np.ndarray, labels: np.ndarray, validation_examples: int
             ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Splits a training file into ``(train, validation)``: validation is its last N examples.

  Args:
    images: the training file's ``[N_file, ...]`` images.
    labels: its ``[N_file]`` labels.
    validation_examples: ``N``, in ``0..N_file - 1``; 0 gives an empty validation split.

  Returns:
    ``((images[:-N], labels[:-N]), (images[-N:], labels[-N:]))`` (views, no copies).

  Raises:
    UsageError: ``N`` negative or not below the file's example count.
  """
  count = len(labels)
  if not 0 <= validation_examples < count:
    raise UsageError(f"flag --validation_examples={validation_examples}: must be in 0..{count - 1}"
                     f" (the training file has {count} examples)")
  split = count - validation_examples
  return (images[:split], labels[:split]), (images[split:], labels[split:])


def run(config: Mapping, workdir: str | None = None, options: Options = Options(), *,
        preset: str | None = None, say: Callable[[str], None] = script.say) -> dict:
  """Trains and evaluates a classifier on an MNIST-family dataset; returns the final summary.

  Args:
    config: a :class:`MnistConfig`, or field values overriding its defaults
      (and the preset's); see :meth:`rnn_jax.training.config.Config.resolve`.
    workdir: where checkpoints, metrics, plots and ``config.json`` go;
      ``None``: :func:`default_workdir`. A workdir holding another config is
      refused; one holding checkpoints of this config is resumed.
    options: see :class:`Options`.
    preset: a key of :data:`PRESETS`, applied under ``config``.
    say: where progress lines go.

  Returns:
    ``{"test_accuracy", "test_loss", "test_examples", "steps", ...}``, what
    the script prints as its last line.

  Raises:
    UsageError: refused before any training (bad values, missing extras, a
      platform this machine lacks, a workdir with other settings, a batch
      larger than the training set).
    rnn_jax.training.datasets.DataError: the data cannot be found or read.
    rnn_jax.training.loop.NonFiniteLoss, rnn_jax.training.loop.Interrupted:
      see :func:`rnn_jax.training.loop.fit`.
  """
  started = time.perf_counter()
  settings = MnistConfig.resolve(config, preset)
  config = settings.to_dict()
  check_extras(options)
  mesh = script.data_mesh(options, config["batch_size"])
  # One device of one process: the single-device path, with the split kept on the device.
  sharded = mesh if mesh.size > 1 or jax.process_count() > 1 else None
  primary = distributed.is_primary()
  if not primary:
    say = lambda line: None
  data_dir = datasets.find_data_dir(config["dataset"], options.data_dir)
  say(f"{config['dataset']} data from {data_dir}")
  train_images, train_labels = datasets.load(config["dataset"], "train", data_dir)
  test_images, test_labels = datasets.load(config["dataset"], "test", data_dir)
  (train_images, train_labels), (validation_images, validation_labels) = hold_out(
      train_images, train_labels, config["validation_examples"])
  if config["max_train_examples"]:
    train_images = train_images[:config["max_train_examples"]]
    train_labels = train_labels[:config["max_train_examples"]]
  if options.max_test_examples:
    test_images, test_labels = (test_images[:options.max_test_examples],
                                test_labels[:options.max_test_examples])
  if config["batch_size"] > len(train_labels):
    raise UsageError(f"flag --batch_size={config['batch_size']}: larger than the "
                     f"{len(train_labels)} training examples")
  workdir = workdir or default_workdir(settings, preset)
  if primary:  # The workdir is shared; the other processes go by process 0's check.
    script.check_workdir_config(workdir, settings.identity())

  view = dict(view=config["view"], permutation_seed=config["permutation_seed"])
  train_inputs = datasets.as_sequences(train_images, **view)
  test_inputs = datasets.as_sequences(test_images, **view)
  splits = {"test": (test_inputs, test_labels)}
  if config["validation_examples"]:
    splits["validation"] = (datasets.as_sequences(validation_images, **view), validation_labels)
  num_steps = optim.steps_for(len(train_labels), config["batch_size"], config["epochs"],
                              config["steps"])

  core = classification.build_core(config["cell"], config["hidden_size"], config["num_layers"],
                                   dropout=config["dropout"], remat=config["remat"])
  model = classification.classifier(
      core, datasets.NUM_CLASSES, dropout=config["dropout"], unroll=config["unroll"],
      vjp=None if config["backward"] == "auto" else config["backward"])
  schedule = optim.make_schedule(config["learning_rate"], num_steps, config["warmup_steps"],
                                 cosine=config["schedule"] == "cosine")
  optimizer = optim.make_optimizer(config["optimizer"], schedule, decay=config["decay"],
                                   momentum=config["momentum"],
                                   clip_norm=config["clip_norm"] or None)
  state = classification.create_state(model, optimizer, jax.random.key(config["seed"]),
                                      train_inputs.shape[-1])
  if sharded is not None:
    state = distributed.replicate(state, sharded)
  validation = (f"{len(validation_labels)} validation (the training file's last) / "
                if "validation" in splits else "")
  say(f"{config['cell']} x{config['num_layers']} H={config['hidden_size']} "
      f"({loop.num_params(state.params):,} parameters) on {config['dataset']} "
      f"{config['view']} {list(train_inputs.shape[1:])}, {len(train_labels)} train / "
      f"{validation}{len(test_labels)} test examples, {num_steps} steps of batch "
      f"{config['batch_size']}, {config['optimizer']} lr {config['learning_rate']:g} "
      f"({config['schedule']}), {script.placement(mesh, sharded)}; workdir {workdir}")

  store, state, resumed_from, log, write_metrics = script.open_run(
      workdir, state, keep_checkpoints=options.keep_checkpoints, primary=primary, say=say)
  eval_step = classification.make_eval_step(model)

  use_ema = config["ema_decay"] > 0

  def run_eval(split, step, current):
    inputs, labels = splits[split]
    result = classification.evaluate(eval_step, current.ema_params if use_ema else current.params,
                                     inputs, labels, options.eval_batch_size, mesh=sharded)
    write_metrics(split, {"step": step, f"{split}_loss": result["loss"],
                                         f"{split}_accuracy": result["accuracy"]})
    say(f"step {step}: {split} accuracy {100 * result['accuracy']:.2f}% "
        f"({result['correct']}/{result['count']}), {split} loss {result['loss']:.4f}")
    return result

  # With a validation split, training looks at it (every epoch by default), never at the test set.
  watched = "validation" if "validation" in splits else "test"
  eval_every = options.eval_every
  if watched == "validation" and not eval_every:
    eval_every = len(train_labels) // config["batch_size"]  # An epoch (BatchOrder's).

  rate = script.TrainingRate(write_metrics, resumed_from or 0, options.log_every)

  train_started = time.perf_counter()
  state = classification.fit_classifier(
      state, classification.make_train_step(model, optimizer, config["seed"],
                                            config["ema_decay"]),
      train_inputs, train_labels, seed=config["seed"], batch_size=config["batch_size"],
      num_steps=num_steps, mesh=sharded, store=store, checkpoint_every=options.checkpoint_every,
      log_every=options.log_every, on_log=rate.on_log,
      on_eval=lambda step, current: run_eval(watched, step, current), eval_every=eval_every,
      log=say)
  train_seconds = time.perf_counter() - train_started
  eval_started = time.perf_counter()
  final_validation = run_eval("validation", num_steps, state) if watched == "validation" else None
  final = run_eval("test", num_steps, state)
  eval_seconds = time.perf_counter() - eval_started
  if use_ema:
    without_ema = classification.evaluate(eval_step, state.params, test_inputs, test_labels,
                                          options.eval_batch_size, mesh=sharded)
    say(f"without the parameter average: test accuracy {100 * without_ema['accuracy']:.2f}%, "
        f"test loss {without_ema['loss']:.4f}")
  # On the host (the same values): process 0 alone computes these, on its own default device.
  final_params = jax.device_get(state.ema_params if use_ema else state.params)
  if primary:
    per_step = model.step_outputs(final_params, test_inputs[:5])
    say(f"per-step outputs for a batch of 5 test images: {list(per_step.shape)} "
        "(batch, steps, hidden)")
  if options.plots and primary:
    plots.plot_curves(log.read(), os.path.join(workdir, "curves.png"),
                      title=f"{preset or 'default'}: {config['cell']} "
                      f"x{config['num_layers']} H={config['hidden_size']}")
    probabilities = np.asarray(jax.nn.softmax(model.step_logits(final_params,
                                                                test_inputs[:1])[0]))
    plots.plot_prediction_by_step(test_images[0], probabilities, int(test_labels[0]),
                                  os.path.join(workdir, "prediction_by_step.png"))
  if log is not None:
    log.close()
  store.close()
  steps_per_second = rate.steps_per_second(int(state.step) - (resumed_from or 0), train_seconds)
  return {
      "test_accuracy": final["accuracy"], "test_loss": final["loss"],
      "test_examples": final["count"],
      **({"validation_accuracy": final_validation["accuracy"],
          "validation_loss": final_validation["loss"],
          "validation_examples": final_validation["count"]} if final_validation else {}),
      "steps": int(state.step),
      "parameter_average": use_ema,
      "test_accuracy_final_params": (without_ema if use_ema else final)["accuracy"],
      "resumed_from": resumed_from, "train_seconds": round(train_seconds, 2),
      "steps_per_second": round(steps_per_second, 2),
      "eval_seconds": round(eval_seconds, 2),
      "wall_seconds": round(time.perf_counter() - started, 2), "devices": mesh.size,
      "preset": preset, "workdir": workdir, "config": config,
  }


parse_flags = script.parse_flags


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}; all settings are --flags")
  started = time.perf_counter()
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config, preset = MnistConfig.from_flags()
  options, _ = Options.from_flags()
  summary = run(config, FLAGS.workdir, options, preset=preset)
  summary["wall_seconds"] = round(time.perf_counter() - started, 2)
  if distributed.is_primary():
    print(json.dumps(summary), flush=True)


main_with_exit_codes = script.with_exit_codes(main)


if __name__ == "__main__":
  app.run(main_with_exit_codes, flags_parser=parse_flags)
