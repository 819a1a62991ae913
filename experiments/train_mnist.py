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
  best       our best rows configuration (>= 99.0% on the 10,000 test images)

Everything a run writes goes to ``--workdir`` (default ``runs/<preset or
"default">-<hash of the config>``): Orbax checkpoints, ``metrics.jsonl``,
``config.json``, TensorBoard events (if tensorboard is installed),
``curves.png`` and ``prediction_by_step.png``. Rerunning the same command
resumes from the newest readable checkpoint and ends with exactly the
parameters of an uninterrupted run. SIGINT/SIGTERM save a checkpoint and exit
with status 128 + the signal number; a NaN/inf loss stops the run (status 1)
keeping the last good checkpoint.

The last line of output is one JSON object with the final figures
(``test_accuracy``, ``test_loss``, ``steps``, ``wall_seconds``, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time

from absl import app, flags, logging

PRESETS = {
    "lstm100": dict(cell="lstm", hidden_size=100, num_layers=1, dropout=0.0, optimizer="adam",
                    learning_rate=1e-4, batch_size=100, epochs=10.0, steps=0, schedule="constant",
                    warmup_steps=0, clip_norm=0.0),
    "lstm256x2": dict(cell="lstm", hidden_size=256, num_layers=2, dropout=0.5, optimizer="adam",
                      learning_rate=1e-3, batch_size=64, steps=2000, schedule="constant",
                      warmup_steps=0, clip_norm=0.0),
    "rnn150": dict(cell="rnn", hidden_size=150, num_layers=1, dropout=0.0, optimizer="rmsprop",
                   learning_rate=1e-3, decay=0.9, batch_size=128, steps=3000,
                   schedule="constant", warmup_steps=0, clip_norm=0.0, ema_decay=0.999),
    "best": dict(cell="gru", hidden_size=256, num_layers=1, dropout=0.0, optimizer="adam",
                 learning_rate=2e-3, batch_size=128, epochs=10.0, steps=0, schedule="cosine",
                 warmup_steps=200, clip_norm=1.0),
}

# Flags that change what is trained: a workdir remembers them, and a rerun
# with different values is refused instead of silently resuming.
CONFIG_FLAGS = ("dataset", "view", "permutation_seed", "cell", "hidden_size", "num_layers",
                "dropout", "optimizer", "learning_rate", "decay", "momentum", "schedule",
                "warmup_steps", "clip_norm", "batch_size", "epochs", "steps", "seed", "unroll",
                "backward", "remat", "ema_decay",
                "max_train_examples")

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", None, sorted(PRESETS), "A tutorial configuration (see the module doc).")
flags.DEFINE_string("cell", "gru", "Cell name: a key of rnn_jax.models.CELLS (lstm, gru, rnn, "
                    "irnn, ...).")
flags.DEFINE_integer("hidden_size", 128, "Hidden units per layer.", lower_bound=1)
flags.DEFINE_integer("num_layers", 1, "Stacked recurrent layers.", lower_bound=1)
flags.DEFINE_float("dropout", 0.0, "Drop rate (1 - keep) between layers and after the last one, "
                   "in training.", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_enum("optimizer", "adam", ["adam", "rmsprop", "sgd"], "Optimizer.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.", lower_bound=0.0)
flags.DEFINE_float("decay", 0.9, "RMSProp decay of the mean square.", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_enum("schedule", "cosine", ["constant", "cosine"],
                  "Learning-rate schedule after the warmup.")
flags.DEFINE_integer("warmup_steps", 100, "Linear warmup steps from 0.", lower_bound=0)
flags.DEFINE_float("clip_norm", 1.0, "Clip gradients to this global norm; 0 disables.",
                   lower_bound=0.0)
flags.DEFINE_float("ema_decay", 0.0, "Evaluate a moving average of the parameters with this "
                   "decay (0: the final parameters).", lower_bound=0.0, upper_bound=0.99999)
flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=1)
flags.DEFINE_float("epochs", 5.0, "Training epochs (ignored when --steps > 0).", lower_bound=0.0)
flags.DEFINE_integer("steps", 0, "Training steps; 0: use --epochs.", lower_bound=0)
flags.DEFINE_enum("view", "rows", ["rows", "pixels", "permuted_pixels"],
                  "How an image becomes a sequence.")
flags.DEFINE_integer("permutation_seed", 0, "Pixel order of the permuted_pixels view.")
flags.DEFINE_string("dataset", "mnist", "mnist or fashion_mnist.")
flags.DEFINE_integer("seed", 0, "Seed of the initialisation, data order and dropout.")
flags.DEFINE_string("workdir", None, "Run directory (default runs/<preset>-<config hash>).")
flags.DEFINE_string("data_dir", None, "Folder with the IDX files (default: searched).")
flags.DEFINE_enum("platform", None, ["cpu", "gpu", "cuda", "rocm", "tpu"],
                  "JAX platform (default: JAX's choice).")
flags.DEFINE_integer("unroll", None, "Time steps per scan iteration (default: the value "
                     "measured fastest for the cell on this backend, rnn_jax.unroll.AUTO_UNROLL).",
                     lower_bound=1)
flags.DEFINE_enum("backward", "auto", ["auto", "autodiff", "fused"], "Gradient of the scan: JAX "
                  "autodiff, rnn_jax.backward's hand-written reverse scan, or auto: the one "
                  "measured fastest for the cell on this backend (rnn_jax.unroll.AUTO_BACKWARD).")
flags.DEFINE_boolean("remat", False, "Rematerialise each scan step in the backward pass "
                     "(pixel view, LSTM 128, batch 256: 3.5x less XLA scratch memory; up to "
                     "1/3 more compute, no slowdown measured on our CPU).")
flags.DEFINE_integer("log_every", 100, "Steps between progress lines.", lower_bound=1)
flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.", lower_bound=1)
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.", lower_bound=1)
flags.DEFINE_integer("eval_every", 0, "Steps between test-set evaluations (0: only at the "
                     "end).", lower_bound=0)
flags.DEFINE_integer("eval_batch_size", 1000, "Evaluation batch size.", lower_bound=1)
flags.DEFINE_integer("max_train_examples", 0, "Use only the first N training examples "
                     "(0: all; for tests).", lower_bound=0)
flags.DEFINE_integer("max_test_examples", 0, "Evaluate only the first N test examples "
                     "(0: all; for tests).", lower_bound=0)
flags.DEFINE_boolean("plots", True, "Write curves.png and prediction_by_step.png.")


class UsageError(Exception):
  """A bad flag value: printed as one line, exit status 2."""


def parse_flags(argv):
  """absl's parser, but a bad flag gives one line on stderr and exit status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    message = " ".join(str(error).split())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def resolve_config() -> dict:
  """The run's settings: flag values, a preset's values for flags not given explicitly."""
  config = {name: FLAGS[name].value for name in CONFIG_FLAGS}
  if FLAGS.preset:
    for name, value in PRESETS[FLAGS.preset].items():
      if not FLAGS[name].present:
        config[name] = value
  if not config["steps"] and not config["epochs"]:
    raise UsageError("flag --epochs=0 with --steps=0: give a positive --epochs or --steps")
  return config


def validate(config: dict) -> None:
  """Checks the values absl's bounds cannot; raises :class:`UsageError` naming the flag."""
  from rnn_jax import data, models
  if config["cell"] not in models.CELLS:
    raise UsageError(f"flag --cell={config['cell']}: unknown cell; choose one of "
                     f"{', '.join(sorted(models.CELLS))}")
  if config["dataset"] not in data.DATASETS:
    raise UsageError(f"flag --dataset={config['dataset']}: unknown dataset; choose one of "
                     f"{', '.join(data.DATASETS)}")
  if config["learning_rate"] <= 0:
    raise UsageError(f"flag --learning_rate={config['learning_rate']}: must be > 0")
  if config["dropout"] >= 1.0:
    raise UsageError(f"flag --dropout={config['dropout']}: must be < 1")
  if config["max_train_examples"] and config["batch_size"] > config["max_train_examples"]:
    raise UsageError(f"flag --batch_size={config['batch_size']}: larger than "
                     f"--max_train_examples={config['max_train_examples']}")


def default_workdir(config: dict) -> str:
  digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
  return os.path.join("runs", f"{FLAGS.preset or 'default'}-{digest}")


def check_workdir_config(workdir: str, config: dict) -> None:
  """Records ``config`` in ``workdir/config.json``; refuses a different one already there."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as stream:
      saved = json.load(stream)
    changed = [f"--{name}={config.get(name)} (was {saved.get(name)})"
               for name in sorted(set(saved) | set(config)) if saved.get(name) != config.get(name)]
    if changed:
      raise UsageError(f"flag --workdir={workdir}: holds a run with other settings: "
                       f"{', '.join(changed)}; use another --workdir")
    return
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as stream:
    json.dump(config, stream, indent=1, sort_keys=True)


def run(config: dict, workdir: str, say) -> dict:
  """Trains and evaluates; returns the final summary."""
  import jax
  import numpy as np
  from rnn_jax import checkpoint, data, metrics, models, plots, runtime, train

  started = time.perf_counter()
  train_images, train_labels = data.load(config["dataset"], "train", FLAGS.data_dir)
  test_images, test_labels = data.load(config["dataset"], "test", FLAGS.data_dir)
  if config["max_train_examples"]:
    train_images = train_images[:config["max_train_examples"]]
    train_labels = train_labels[:config["max_train_examples"]]
  if FLAGS.max_test_examples:
    test_images, test_labels = (test_images[:FLAGS.max_test_examples],
                                test_labels[:FLAGS.max_test_examples])
  view = dict(view=config["view"], permutation_seed=config["permutation_seed"])
  train_inputs = data.as_sequences(train_images, **view)
  test_inputs = data.as_sequences(test_images, **view)
  num_steps = train.steps_for(len(train_labels), config["batch_size"], config["epochs"],
                              config["steps"])

  core = models.build_core(config["cell"], config["hidden_size"], config["num_layers"],
                           dropout=config["dropout"], remat=config["remat"])
  model = models.classifier(core, data.NUM_CLASSES, dropout=config["dropout"],
                            unroll=config["unroll"],
                            backward=None if config["backward"] == "auto" else config["backward"])
  schedule = train.make_schedule(config["learning_rate"], num_steps, config["warmup_steps"],
                                 cosine=config["schedule"] == "cosine")
  optimizer = train.make_optimizer(config["optimizer"], schedule, decay=config["decay"],
                                   momentum=config["momentum"],
                                   clip_norm=config["clip_norm"] or None)
  state = train.create_state(model, optimizer, jax.random.key(config["seed"]),
                             train_inputs.shape[-1])
  say(f"{config['cell']} x{config['num_layers']} H={config['hidden_size']} "
      f"({models.num_params(state.params):,} parameters) on {config['dataset']} "
      f"{config['view']} {list(train_inputs.shape[1:])}, {len(train_labels)} train / "
      f"{len(test_labels)} test examples, {num_steps} steps of batch {config['batch_size']}, "
      f"{config['optimizer']} lr {config['learning_rate']:g} ({config['schedule']}), "
      f"on {jax.devices()[0].platform}; workdir {workdir}")
  if jax.devices()[0].platform == "cpu" and not runtime.fast_allocator_active():
    say("note: running with glibc malloc; installing tcmalloc (Debian: apt-get install "
        "libtcmalloc-minimal4) speeds up CPU training steps up to ~1.4x, picked up automatically")

  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                     max_to_keep=FLAGS.keep_checkpoints, log=say)
  restored = store.restore_latest(state)
  resumed_from = None
  if restored is not None:
    resumed_from, state = restored
    say(f"resumed from the checkpoint at step {resumed_from}")
  log = metrics.MetricsLog(workdir)
  eval_step = train.make_eval_step(model)

  use_ema = config["ema_decay"] > 0

  def run_eval(step, current):
    result = train.evaluate(eval_step, current.ema_params if use_ema else current.params,
                            test_inputs, test_labels, FLAGS.eval_batch_size)
    log.write("eval", {"step": step, "test_loss": result["loss"],
                       "test_accuracy": result["accuracy"]})
    say(f"step {step}: test accuracy {100 * result['accuracy']:.2f}% "
        f"({result['correct']}/{result['count']}), test loss {result['loss']:.4f}")
    return result

  records = []

  def on_log(record):
    if int(record["step"]) > (resumed_from or 0) + FLAGS.log_every:  # not the compile interval
      records.append(record)
    log.write("train", record)

  train_started = time.perf_counter()
  state = train.fit(state, train.make_train_step(model, optimizer, config["seed"],
                                                 config["ema_decay"]),
                    train_inputs, train_labels, seed=config["seed"],
                    batch_size=config["batch_size"], num_steps=num_steps, store=store,
                    checkpoint_every=FLAGS.checkpoint_every, log_every=FLAGS.log_every,
                    on_log=on_log, on_eval=run_eval, eval_every=FLAGS.eval_every, log=say)
  train_seconds = time.perf_counter() - train_started
  eval_started = time.perf_counter()
  final = run_eval(num_steps, state)
  eval_seconds = time.perf_counter() - eval_started
  if use_ema:
    without_ema = train.evaluate(eval_step, state.params, test_inputs, test_labels,
                                 FLAGS.eval_batch_size)
    say(f"without the parameter average: test accuracy {100 * without_ema['accuracy']:.2f}%, "
        f"test loss {without_ema['loss']:.4f}")
  final_params = state.ema_params if use_ema else state.params

  per_step = model.step_outputs(final_params, test_inputs[:5])
  say(f"per-step outputs for a batch of 5 test images: {list(per_step.shape)} "
      "(batch, steps, hidden)")
  if FLAGS.plots:
    plots.plot_curves(log.read(), os.path.join(workdir, "curves.png"),
                      title=f"{FLAGS.preset or 'default'}: {config['cell']} "
                      f"x{config['num_layers']} H={config['hidden_size']}")
    probabilities = np.asarray(jax.nn.softmax(model.step_logits(final_params,
                                                                test_inputs[:1])[0]))
    plots.plot_prediction_by_step(test_images[0], probabilities, int(test_labels[0]),
                                  os.path.join(workdir, "prediction_by_step.png"))
  log.close()
  store.close()
  steps_per_second = None
  if len(records) >= 2:
    steps_per_second = ((records[-1]["step"] - records[0]["step"])
                        / (records[-1]["wall_seconds"] - records[0]["wall_seconds"]))
  return {
      "test_accuracy": final["accuracy"], "test_loss": final["loss"],
      "test_examples": final["count"], "steps": int(state.step),
      "parameter_average": use_ema,
      "test_accuracy_final_params": (without_ema if use_ema else final)["accuracy"],
      "resumed_from": resumed_from, "train_seconds": round(train_seconds, 2),
      "steps_per_second": steps_per_second and round(steps_per_second, 2),
      "eval_seconds": round(eval_seconds, 2),
      "wall_seconds": round(time.perf_counter() - started, 2),
      "preset": FLAGS.preset, "workdir": workdir, "config": config,
  }


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}; all settings are --flags")
  started = time.perf_counter()
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config = resolve_config()
  validate(config)
  workdir = FLAGS.workdir or default_workdir(config)
  check_workdir_config(workdir, config)
  if FLAGS.platform:
    import jax
    jax.config.update("jax_platforms", FLAGS.platform)

  def say(line):
    print(line, flush=True)

  summary = run(config, workdir, say)
  summary["wall_seconds"] = round(time.perf_counter() - started, 2)
  print(json.dumps(summary), flush=True)


def entry_point():
  from rnn_jax import runtime
  runtime.use_fast_allocator()

  def main_with_errors(argv):
    from rnn_jax import data, train
    try:
      main(argv)
    except UsageError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)
    except data.DataError as error:
      print(f"data error: {error}", file=sys.stderr)
      sys.exit(1)
    except train.NonFiniteLoss as error:
      print(f"stopped: {error}", file=sys.stderr)
      sys.exit(1)
    except train.Interrupted as error:
      print(f"interrupted: {error}", file=sys.stderr)
      sys.exit(128 + error.signum)
    except KeyboardInterrupt:  # Outside the training loop: the saved checkpoints stand.
      print("interrupted: SIGINT received outside the training loop; the checkpoints already "
            "saved are kept; rerun the same command to resume", file=sys.stderr)
      sys.exit(128 + signal.SIGINT)

  app.run(main_with_errors, flags_parser=parse_flags)


if __name__ == "__main__":
  entry_point()
