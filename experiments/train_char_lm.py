r"""Trains a character-level language model with truncated BPTT over stateful streams.

    python -m experiments.train_char_lm                     # Tiny Shakespeare, the README's model
    python -m experiments.train_char_lm --text_file=my.txt --cell=gru --hidden_size=256
    python -m experiments.train_char_lm --tbptt=false       # random windows from a zero state

The text (``--text_file``, or Tiny Shakespeare found as
:func:`rnn_jax.training.text.find_text_file` says) is split 90/5/5 by
character offset as tensorflow-datasets splits it; the vocabulary is the
training split's characters plus ``<unk>``. The model is embedding -> the
recurrent core (``--cell`` x ``--num_layers``) -> dense; ``--dropout`` drops
the embeddings, the core's outputs and, in a stack, between layers.

Training (``--tbptt``, the default): the training text is cut into
``--batch_size`` contiguous streams and step ``i`` trains on window ``i`` of
``--window`` characters of each, starting from the carry the previous window
ended with (gradients stop at the window boundary); the carry is part of the
checkpointed state. ``--tbptt=false``: random windows, each from a zero state.
Adam with linear warmup and cosine decay, gradients clipped to ``--clip_norm``.

Everything a run writes goes to ``--workdir`` (default ``runs/char_lm-<hash
of the config>``): Orbax checkpoints, ``config.json``, ``vocabulary.json``,
``metrics.jsonl``, TensorBoard events (if installed), ``curves.png`` (train
and validation loss) and ``sample.txt`` (a sample of ``--sample_length``
characters). Rerunning the same command resumes from the newest readable
checkpoint and ends bitwise equal to an uninterrupted run; SIGINT/SIGTERM save
and exit with status 128 + the signal number; a NaN/inf loss stops the run
(status 1) keeping the last good checkpoint; a data error is status 1; a
refusal (bad flag value, missing extra, workdir of another run) is one line
and status 2 before any work. The last line of output is one JSON object
(``val_loss``, ``test_loss`` in nats/char, ``val_bpc``, ``test_bpc``,
``steps``, ``devices``, ``wall_seconds``, ``chars_per_second``, ...); the rates are always numbers
(see :class:`rnn_jax.training.script.TrainingRate`).

Data parallelism (:mod:`rnn_jax.training.distributed`), as in
``experiments/train_mnist.py``: the run uses every device it sees
(``--num_devices=N``: the first N), shards the ``--batch_size`` streams of
each step (and their carry) over a ``data`` mesh axis and replicates the
parameters and optimizer state; the batch must divide by the device count.
Evaluation shards its streams, padded with masked-out ones to a multiple of
the device count, so every character counts once and the figures are one
device's up to float rounding. Several processes join with
``--coordinator_address=host:port --num_processes=P --process_id=i``, each
loading only its share of every batch; only process 0 prints, writes metrics,
plots, the sample and the JSON line. The device count is not part of the
config: a run checkpointed on 4 devices resumes on 2. On one device the run
is the single-device one, bitwise.

Sample from a trained run with ``python -m experiments.generate --workdir=DIR``.
From Python: ``train_char_lm.run({"steps": 100}, "runs/x", train_char_lm.Options())``.
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
  from rnn_jax.training import (classification, distributed, language_model, loop, optim,
                                script, text)
  from rnn_jax.training import config as config_lib
  from rnn_jax.training.config import setting
except ImportError as missing:  # The `train` extra is not installed.
  runtime.exit_for_missing_extra(missing, __name__, "the training toolkit")

UsageError = script.UsageError

@dataclasses.dataclass(frozen=True)
class CharLMConfig(config_lib.Config):
  """What a run trains (its identity: ``config.json``, the default workdir's hash); the
  defaults are the README's Tiny Shakespeare model. Each field is a flag of the same name;
  ``vjp`` is ``backward`` in ``config.json`` (``--backward``: a deprecated alias)."""

  text_file: str | None = setting(None, "UTF-8 text to train on (default: Tiny Shakespeare).",
                                  path=True)
  cell: str = setting("lstm", "Recurrent cell: a key of "
                      "rnn_jax.training.classification.CELLS.",
                      choices=lambda: sorted(classification.CELLS))
  hidden_size: int = setting(512, "Units per layer.", lower=1)
  num_layers: int = setting(1, "Stacked layers.", lower=1)
  embed_size: int = setting(64, "Embedding width.", lower=1)
  dropout: float = setting(0.1, "Drop rate of the embeddings, between layers and of the "
                           "core's outputs, in training.", lower=0.0, below=1.0)
  batch_size: int = setting(32, "Streams (windows per step).", lower=1)
  window: int = setting(64, "Characters per window (the truncation length K of BPTT).",
                        lower=1)
  steps: int = setting(4000, "Training steps.", lower=1)
  learning_rate: float = setting(3e-3, "Peak Adam learning rate (warmup, then cosine decay "
                                 "to 0).", above=0.0)
  warmup_steps: int = setting(100, "Linear warmup steps.", lower=0)
  clip_norm: float = setting(1.0, "Clip gradients to this global norm; 0 disables.", lower=0.0)
  tbptt: bool = setting(True, "Truncated BPTT over stateful streams; false: random windows "
                        "from a zero state.")
  seed: int = setting(0, "Seed of the initialisation, data and dropout.", lower=0)
  unroll: int | None = setting(None, "Time steps per scan iteration (default: the cell's "
                               "tuned value).", lower=1)
  vjp: str = setting("auto", "Gradient of the scan (rnn_jax.rnn's vjp=); auto: the cell's "
                     "tuned choice.", choices=("auto", *VJPS), key="backward",
                     aliases=("backward",))


@dataclasses.dataclass(frozen=True)
class Options(config_lib.DeviceOptions):
  """How a run is carried out and reported; unlike the config, a rerun may change them.

  Attributes:
    log_every: steps between progress lines.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: checkpoints kept.
    eval_every: steps between validation evaluations (0: only at the end).
    eval_streams: streams a split is cut into for evaluation.
    eval_window: characters per evaluation window.
    sample_length: characters of the final sample (0: none).
    sample_temperature: its temperature.
    plots: write ``curves.png`` (needs matplotlib).
    platform, num_devices, coordinator_address, num_processes, process_id:
      where the run computes (:class:`rnn_jax.training.config.DeviceOptions`).
  """

  log_every: int = setting(100, "Steps between progress lines.", lower=1)
  checkpoint_every: int = setting(500, "Steps between checkpoints.", lower=1)
  keep_checkpoints: int = setting(3, "Checkpoints kept.", lower=1)
  eval_every: int = setting(1000, "Steps between validation evaluations (0: only at the end).",
                            lower=0)
  eval_streams: int = setting(32, "Streams a split is cut into for evaluation (each character "
                              "is predicted once, the carry passed along each stream).", lower=1)
  eval_window: int = setting(256, "Characters per evaluation window.", lower=1)
  sample_length: int = setting(300, "Characters of the final sample (0: none).", lower=0)
  sample_temperature: float = setting(0.8, "Temperature of the final sample (0: greedy).",
                                      lower=0.0)
  plots: bool = setting(True, "Write curves.png (needs matplotlib).")


def define_flags() -> None:
  """The script's absl flags (defined only when it runs as a script, so importing it is free)."""
  CharLMConfig.define_flags()
  Options.define_flags()
  flags.DEFINE_string("workdir", None, "Run directory (default runs/char_lm-<config hash>).")


def resolve_config(config: Mapping | CharLMConfig = ()) -> dict:
  """The run's config as a dict of identity keys (what ``config.json`` holds): the defaults of
  :class:`CharLMConfig` overridden by ``config``, checked (:class:`UsageError` naming the flag)."""
  return CharLMConfig.resolve(config).to_dict()


def build_model(config: Mapping, vocab_size: int) -> language_model.CharLM:
  """The run's model for ``vocab_size`` ids (training and :mod:`experiments.generate`)."""
  core = classification.build_core(config["cell"], config["hidden_size"], config["num_layers"],
                                   dropout=config["dropout"])
  return language_model.CharLM(core, vocab_size, config["embed_size"], config["dropout"],
                               unroll=config["unroll"],
                               vjp=None if config["backward"] == "auto" else config["backward"])


def build_optimizer(config: Mapping):
  """Adam, warmup then cosine decay over ``steps``, clipped to ``clip_norm``."""
  schedule = optim.make_schedule(config["learning_rate"], config["steps"],
                                 config["warmup_steps"], cosine=True)
  return optim.make_optimizer("adam", schedule, clip_norm=config["clip_norm"] or None)


def initial_state(config: Mapping, model: language_model.CharLM, optimizer) -> loop.TrainState:
  """The state of step 0 (also the template a checkpoint is restored into)."""
  return language_model.create_state(model, optimizer, jax.random.key(config["seed"]),
                                     config["batch_size"], tbptt=config["tbptt"])


def check_vocabulary(workdir: str, vocabulary: text.Vocabulary) -> None:
  """Saves the vocabulary in ``workdir``, or refuses one there that differs (another text)."""
  path = os.path.join(workdir, "vocabulary.json")
  if os.path.exists(path):
    saved = text.Vocabulary.load(path)
    if saved != vocabulary:
      raise UsageError(f"flag --workdir={workdir}: its vocabulary.json ({len(saved.chars)} "
                       f"characters) is not this text's ({len(vocabulary.chars)}); the text "
                       "changed: use another --workdir")
    return
  vocabulary.save(path)


def plot_loss_curves(records, path: str, title: str) -> None:
  """Training loss (interval means) and validation loss against the step, in nats/char."""
  from rnn_jax.training.plots import pyplot  # pylint: disable=import-outside-toplevel
  plt = pyplot()
  train = [r for r in records if r.get("kind") == "train"]
  # "eval": the kind of validation records before it said what they are.
  evals = [r for r in records if r.get("kind") in ("validation", "eval")]
  figure, axis = plt.subplots(figsize=(7, 4))
  axis.plot([r["step"] for r in train], [r["loss"] for r in train], label="train (interval mean)")
  axis.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
  axis.set(xlabel="step", ylabel="cross-entropy (nats/char)", title=title)
  if train:
    axis.set_ylim(min([r["loss"] for r in train] + [r["val_loss"] for r in evals]) - 0.05,
                  min(max(r["loss"] for r in train), 3.0))
  axis.grid(alpha=0.3)
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)


def run(config: Mapping, workdir: str | None = None, options: Options = Options(), *,
        say: Callable[[str], None] = script.say) -> dict:
  """Trains and evaluates a character LM; returns the summary the script prints last.

  Raises:
    UsageError: refused before any training.
    rnn_jax.training.text.DataError: the text cannot be found or read.
    rnn_jax.training.loop.NonFiniteLoss, rnn_jax.training.loop.Interrupted:
      see :func:`rnn_jax.training.loop.fit`.
  """
  started = time.perf_counter()
  config = resolve_config(config)
  script.check_extras(options.plots)
  mesh = script.data_mesh(options, config["batch_size"])
  # One device of one process: the single-device path, with the text kept on the device.
  sharded = mesh if mesh.size > 1 or jax.process_count() > 1 else None
  primary = distributed.is_primary()
  if not primary:
    say = lambda line: None
  path, vocabulary, splits = text.load_splits(config["text_file"])
  try:
    batches = (text.StreamWindows(splits["train"], config["batch_size"], config["window"])
               if config["tbptt"] else
               text.RandomWindows(splits["train"], config["batch_size"], config["window"],
                                  config["seed"]))
  except ValueError as error:
    raise UsageError(str(error)) from error
  workdir = workdir or CharLMConfig.resolve(config).default_workdir("char_lm")
  if primary:  # The workdir is shared; the other processes go by process 0's check.
    script.check_workdir_config(workdir, config)
    check_vocabulary(workdir, vocabulary)

  model = build_model(config, vocabulary.size)
  optimizer = build_optimizer(config)
  state = initial_state(config, model, optimizer)
  if sharded is not None:
    # Parameters and optimizer state on every device; the carry of stream b on row b.
    host_aux = jax.device_get(state.aux)
    state = distributed.replicate(state._replace(aux=None), sharded)._replace(
        aux=None if host_aux is None else distributed.global_batch(
            sharded, config["batch_size"],
            lambda rows: jax.tree.map(lambda leaf: np.asarray(leaf)[rows], host_aux)))
  chars_per_step = config["batch_size"] * config["window"]
  say(f"{config['cell']} x{config['num_layers']} H={config['hidden_size']} "
      f"E={config['embed_size']} ({loop.num_params(state.params):,} parameters), vocabulary "
      f"{len(vocabulary.chars)} + <unk>; {path}: {len(splits['train']):,} train / "
      f"{len(splits['validation']):,} validation / {len(splits['test']):,} test characters; "
      f"{'TBPTT over ' if config['tbptt'] else 'random windows, '}{config['batch_size']} "
      f"{'streams' if config['tbptt'] else 'per batch'} x {config['window']} characters, "
      f"{config['steps']} steps ({config['steps'] * chars_per_step / len(splits['train']):.1f} "
      f"passes), {script.placement(mesh, sharded)}; workdir {workdir}")

  store, state, resumed_from, log, write_metrics = script.open_run(
      workdir, state, keep_checkpoints=options.keep_checkpoints, primary=primary, say=say)

  def evaluate(params, split):
    return language_model.evaluate(model, params, splits[split], options.eval_streams,
                                   options.eval_window, mesh=sharded)

  def run_eval(step, current):
    result = evaluate(current.params, "validation")
    write_metrics("validation", {"step": step, "val_loss": result["loss"], "val_bpc": result["bpc"]})
    say(f"step {step}: validation loss {result['loss']:.4f} nats/char, "
        f"{result['bpc']:.4f} bits/char")
    return result

  rate = script.TrainingRate(write_metrics, resumed_from or 0, options.log_every)

  train_started = time.perf_counter()
  train_step = loop.make_train_step(
      language_model.loss_function(model, config["window"], config["tbptt"]), optimizer,
      seed=config["seed"])
  if sharded is None:
    batch_for_step = batches
  else:
    def batch_for_step(step):
      # Each process loads only its rows' windows; the batch depends on (seed, step) alone.
      tokens, rows, starts = distributed.global_batch(
          sharded, config["batch_size"],
          lambda rows: (batches.window_tokens(step, rows), rows.astype(np.int32),
                        np.zeros(len(rows), np.int32)))
      return text.TextBatch(tokens, rows, starts,
                            distributed.replicate(np.bool_(batches.reset(step)), sharded))

  state = loop.fit(state, train_step, batch_for_step, num_steps=config["steps"], store=store,
                   checkpoint_every=options.checkpoint_every, log_every=options.log_every,
                   steps_per_epoch=batches.windows_per_pass,
                   metric_formats=language_model.METRIC_FORMATS, on_log=rate.on_log,
                   on_eval=run_eval, eval_every=options.eval_every,
                   throughput=(chars_per_step, "chars"), log=say)
  train_seconds = time.perf_counter() - train_started
  eval_started = time.perf_counter()
  validation = run_eval(config["steps"], state)
  test = evaluate(state.params, "test")
  say(f"test loss {test['loss']:.4f} nats/char, {test['bpc']:.4f} bits/char "
      f"({test['count']:,} characters)")
  eval_seconds = time.perf_counter() - eval_started

  sample = None
  if options.sample_length and primary:
    params = state.params
    if sharded is not None:  # A host copy: generation runs on this process's device alone.
      params = jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)), params)
    prompt = sample_prompt(vocabulary, path)
    tokens = language_model.generate(
        model, params, vocabulary.encode(prompt, strict=True),
        jax.random.key(config["seed"]), length=options.sample_length,
        temperature=options.sample_temperature, exclude=vocabulary.unknown_id)
    sample = prompt + vocabulary.decode(np.asarray(tokens))
    with open(os.path.join(workdir, "sample.txt"), "w", encoding="utf-8") as stream:
      stream.write(sample)
    say(f"sample (temperature {options.sample_temperature:g}, {options.sample_length} "
        f"characters after the prompt):\n{sample}")
  if options.plots and primary:
    plot_loss_curves(log.read(), os.path.join(workdir, "curves.png"),
                     f"{config['cell']} x{config['num_layers']} H={config['hidden_size']}, "
                     f"{'TBPTT' if config['tbptt'] else 'random windows'}")
  if log is not None:
    log.close()
  store.close()
  chars_per_second = chars_per_step * rate.steps_per_second(
      int(state.step) - (resumed_from or 0), train_seconds)
  return {
      "val_loss": validation["loss"], "val_bpc": validation["bpc"],
      "test_loss": test["loss"], "test_bpc": test["bpc"],
      "val_chars": validation["count"], "test_chars": test["count"],
      "steps": int(state.step), "parameters": loop.num_params(state.params),
      "resumed_from": resumed_from, "train_seconds": round(train_seconds, 2),
      "eval_seconds": round(eval_seconds, 2),
      "chars_per_second": round(chars_per_second),
      "wall_seconds": round(time.perf_counter() - started, 2), "devices": mesh.size,
      "load_average": [round(value, 2) for value in os.getloadavg()],
      "allocator": runtime.allocator_name(), "workdir": workdir, "config": config,
  }


def sample_prompt(vocabulary: text.Vocabulary, path: str) -> str:
  """The final sample's prompt: the first line of the text (at most 40 characters)."""
  with open(path, encoding="utf-8") as stream:
    first_line = stream.readline(40).rstrip("\n")
  return first_line or vocabulary.chars[0]


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}; all settings are --flags")
  started = time.perf_counter()
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config, _ = CharLMConfig.from_flags()
  options, _ = Options.from_flags()
  summary = run(config, flags.FLAGS.workdir, options)
  summary["wall_seconds"] = round(time.perf_counter() - started, 2)
  if distributed.is_primary():
    print(json.dumps(summary), flush=True)


main_with_exit_codes = script.with_exit_codes(main)
parse_flags = script.parse_flags


if __name__ == "__main__":
  define_flags()
  app.run(main_with_exit_codes, flags_parser=parse_flags)
