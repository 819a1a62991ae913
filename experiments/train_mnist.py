r"""Trains a recurrent classifier on MNIST read as a sequence (rows, pixels or permuted pixels).

    python -m experiments.train_mnist                      # default: GRU 128, 5 epochs, ~2 min
    python -m experiments.train_mnist --preset=lstm100     # a tutorial configuration
    python -m experiments.train_mnist --cell=gru --hidden_size=64 --epochs=2 --workdir=runs/gru

Presets (explicit flags override their values):
  lstm100    one LSTM layer of 100, batch 100, Adam 1e-4, 10 epochs (tutorial: 0.9338)
  lstm256x2  two LSTM layers of 256, dropout keep 0.5 between and after the layers,
             Adam 1e-3, batch 64, 2000 steps
  rnn150     one tanh RNN of 150, RMSProp(1e-3, decay 0.9), batch 128, 3000 steps
             (tutorial: 97.66% on the first 128 test images), evaluated with a moving
             average of the parameters (--ema_decay; the JSON also gives the accuracy of
             the final parameters)
  rnn50      one tanh RNN of 50, batch 100, 2500 steps of plain gradient descent; unlike
             the tutorial, the rate 0.3 decays to 0 by a cosine and gradients are clipped
             to global norm 1 (chosen on a 5,000-image validation split)
  best       our best rows configuration (>= 99.0% on the 10,000 test images)

The task is :class:`rnn_jax.training.classification.ClassificationTask`, run by
:func:`rnn_jax.training.task.train_and_evaluate`; the MNIST guide says what a
run writes (``--workdir``, default ``runs/<preset or "default">-<config hash>``),
how it resumes, validates (``--validation_examples``, metrics kind
``"validation"``; the test set is kind ``"test"``) and runs data-parallel, and
its exit statuses. The last line is one JSON object (``test_accuracy``, ...).
From Python::

    from experiments import train_mnist
    summary = train_mnist.run({"cell": "lstm", "steps": 300}, "runs/lstm",
                              train_mnist.Options(plots=False))
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from rnn_jax.training import runtime  # Standard library only: safe before the extras.

if __name__ == "__main__":
  runtime.use_fast_allocator()  # Re-executes with tcmalloc before JAX allocates anything.

try:
  from absl import app

  import experiments
  from rnn_jax.layer import VJPS
  from rnn_jax.training import classification, cores, datasets, optim, script
  from rnn_jax.training import task as task_lib
  from rnn_jax.training.config import Config, setting
except ImportError as missing:  # The `train` extra is not installed.
  runtime.exit_for_missing_extra(missing, __name__, "the training toolkit")

UsageError = script.UsageError


@dataclasses.dataclass(frozen=True)
class MnistConfig(Config):
  """What a run trains: its identity (``config.json``, the default workdir's hash); each field
  is a flag. ``vjp`` is ``backward`` in ``config.json`` (``--backward``: a deprecated alias)."""

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
  cell: str = setting("gru", "Recurrent cell (rnn_jax.training.cores.CELLS).",
                      choices=lambda: sorted(cores.CELLS))
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
  unroll: int | None = setting(None, "Time steps per scan iteration (default: the cell's "
                               "TUNED_UNROLL for the backend).", lower=1)
  vjp: str = setting("auto", "Gradient of the scan (rnn_jax.rnn's vjp=): autodiff, fused (the "
                     "hand-written reverse scan) or auto: the cell's tuned choice.",
                     choices=("auto", *VJPS), key="backward", aliases=("backward",))
  remat: bool = setting(False, "Rematerialise each scan step in the backward pass (less "
                        "memory, up to 1/3 more compute; see the Performance guide).")
  remat_every: int = setting(0, "Keep the carry only every K steps in the backward pass and "
                             "recompute each chunk (memory grows as sqrt(T) for K near "
                             "sqrt(T)); 0: off.", lower=0, added=True)
  compute_dtype: str = setting("float32", "Operands of the core's matrix products: float32, or "
                               "bfloat16 with float32 accumulation, carries, gates and "
                               "parameters (rnn_jax.rnn's compute_dtype).",
                               choices=tuple(cores.COMPUTE_DTYPES), added=True)
  ema_decay: float = setting(0.0, "Evaluate a moving average of the parameters with this decay "
                             "(0: the final parameters).", lower=0.0, upper=0.99999)
  max_train_examples: int = setting(0, "Use only the first N training examples (0: all; for "
                                    "tests).", lower=0)
  validation_examples: int = setting(0, "Hold out the last N images of the training file as a "
                                     "validation split (0: none).", lower=0, added=True)

  def check(self) -> None:
    if self.remat and self.remat_every:
      raise UsageError(f"flags --remat and --remat_every={self.remat_every}: pick one (per-step "
                       "checkpoints, or every K steps)")
    if not self.steps and not self.epochs:
      raise UsageError("flag --epochs=0 with --steps=0: give a positive --epochs or --steps")
    if self.max_train_examples and self.batch_size > self.max_train_examples:
      raise UsageError(f"flag --batch_size={self.batch_size}: larger than "
                       f"--max_train_examples={self.max_train_examples}")


PRESETS = MnistConfig.PRESETS


@dataclasses.dataclass(frozen=True)
class Options(task_lib.RunSettings):
  """How a run is carried out and reported (not its identity): where it computes, how often
  it logs, saves and evaluates (:class:`~rnn_jax.training.task.RunSettings`), and these."""

  eval_every: int = setting(0, "Steps between evaluations during training: of the validation "
                            "split with --validation_examples (0: every epoch), else of the test "
                            "set (0: none; the test set is always evaluated at the end).",
                            lower=0)
  data_dir: str | None = setting(None, "Folder with the IDX files (default: searched).")
  max_test_examples: int = setting(0, "Evaluate only the first N test examples (0: all).",
                                   lower=0)
  eval_batch_size: int = setting(1000, "Evaluation batch size.", lower=1)
  plots: bool = setting(True, "Write curves.png and prediction_by_step.png.")


def default_workdir(config: MnistConfig, preset: str | None = None) -> str:
  """``runs/<preset or "default">-<first 8 hex digits of the SHA-256 of its identity>``."""
  return config.default_workdir(preset or "default")


def run(config: Mapping | MnistConfig, workdir: str | None = None, options: Options = Options(),
        *, preset: str | None = None, say: Callable[[str], None] = script.say) -> dict:
  """Trains and evaluates; returns the summary the script prints last (``test_accuracy``, ...).

  ``config``: a :class:`MnistConfig`, or field values over the defaults and ``preset``'s.
  Raises what :func:`rnn_jax.training.task.train_and_evaluate` raises.
  """
  config = MnistConfig.resolve(config, preset)
  task = classification.ClassificationTask.from_config(
      config.to_dict(), data_dir=options.data_dir, search_dirs=experiments.data_search_dirs(),
      max_test_examples=options.max_test_examples,
      eval_batch_size=options.eval_batch_size, plots=options.plots, title=preset or "default")
  summary = task_lib.train_and_evaluate(task, config, workdir, options,
                                        name=preset or "default", say=say)
  return {**summary, "preset": preset}


parse_flags = script.flags_parser(MnistConfig, Options, workdir_help="Run directory (default "
                                  "runs/<preset>-<config hash>).")
main_with_exit_codes = script.main_of(run, MnistConfig, Options)


if __name__ == "__main__":
  app.run(main_with_exit_codes, flags_parser=parse_flags)
