r"""Gradient flow through time on MNIST: how the loss's gradient at each step's carry falls off.

    python -m experiments.gradient_flow                     # about 3 minutes on a 2-core CPU
    python -m experiments.gradient_flow --views=pixels --cells=rnn,lstm --train_steps=1000

For each view of MNIST as a sequence (``--views``: ``pixels``, 784 steps of
one pixel; ``rows``, 28 steps of 28 pixels) and each cell (``--cells``: the
tanh RNN, the ReLU RNN with identity initialisation (IRNN), LSTM with forget
bias 0 and 1, GRU, minGRU; any other key of
``rnn_jax.training.classification.CELLS`` too), a classifier (cell of
``--hidden_size`` units, then a dense layer on its summary of the sequence) is
measured at initialisation and again after ``--train_steps`` steps of
training (``--optimizer``, ``--learning_rate``, gradients clipped to
``--clip_norm``). The measurement is :func:`rnn_jax.carry_gradient_norms`:
the norm of the gradient of the mean cross-entropy on a fixed batch of the
first ``--norm_examples`` test images with respect to the carry each step
reads, over the whole batch and all carry units, against the distance from
the loss ``T - 1 - t``. It is computed in float64 (``--norm_dtype``) because
in float32 the gated cells' norms underflow to exactly 0 within the 784 pixel
steps. A ReLU's derivative at exactly 0 is 0, so the IRNN's gradient is
exactly 0 at the steps before any unit's pre-activation leaves 0 (the blank
top rows of the image): those points cannot appear on a log scale and are
reported as ``zero_beyond_distance``.

The tanh RNN is also trained once more per view without clipping, and the raw
global gradient norm (before any clipping) of every training step is
recorded for both runs, and for every cell's run.

Everything goes to ``--workdir`` (default ``runs/gradient_flow``):
``carry_grad_norm_<view>.png`` (norm against distance on a log scale, one
line per cell, panels at initialisation and after training),
``global_grad_norm.png`` (the tanh RNN's raw global gradient norm per step,
clipped and unclipped runs, and their training loss) and ``results.json``
(settings and every number; norm arrays are indexed by the distance from the
loss, entry 0 the carry read by the last step). Progress goes to stdout; the
last line is one JSON object with the headline figures. A bad flag is one
line on stderr and exit status 2; missing data is status 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable, Mapping, NamedTuple

from rnn_jax.training import runtime  # Standard library only: safe before the extras.

if __name__ == "__main__":
  runtime.use_fast_allocator()  # Re-executes with tcmalloc before JAX allocates anything.

try:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from absl import app

  import experiments
  import rnn_jax
  from rnn_jax.training import classification, datasets, loop, optim, plots, script
  from rnn_jax.training.config import Config, setting
except ImportError as missing:  # The `train` extra is not installed.
  runtime.exit_for_missing_extra(missing, __name__, "this experiment")

LSTM_FORGET_BIAS_0 = "lstm_fb0"
"""The extra cell name of this experiment: ``rnn_jax.lstm(H, forget_bias=0.0)`` (``lstm`` of
``classification.CELLS`` has the default forget bias 1)."""

CELL_LABELS = {
    "rnn": "tanh RNN", "irnn": "IRNN (ReLU, identity init)",
    LSTM_FORGET_BIAS_0: "LSTM, forget bias 0", "lstm": "LSTM, forget bias 1", "gru": "GRU",
    "mingru": "minGRU", "minlstm": "minLSTM", "lru": "LRU",
}
"""Legend labels by cell name (a cell missing here is labelled by its name)."""

NORM_DTYPES = ("float32", "float64")
MNIST_TRAIN_SIZE, MNIST_TEST_SIZE = 60_000, 10_000

def cell_names() -> list[str]:
  """The names ``--cells`` accepts: the keys of ``classification.CELLS`` and ``lstm_fb0``."""
  return sorted([*classification.CELLS, LSTM_FORGET_BIAS_0])


def build_cell(name: str, hidden_size: int):
  """The cell called ``name`` (see :func:`cell_names`) with ``hidden_size`` units."""
  if name == LSTM_FORGET_BIAS_0:
    return rnn_jax.lstm(hidden_size, forget_bias=0.0)
  return classification.CELLS[name](hidden_size)


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class GradientFlowConfig(Config):
  """The run's settings (``config`` in results.json, with ``train_steps`` per view); each field
  is a flag."""

  views: tuple[str, ...] = setting(("pixels", "rows"), "Views of MNIST as a sequence.",
                                   choices=datasets.VIEWS)
  cells: tuple[str, ...] = setting(("rnn", "irnn", LSTM_FORGET_BIAS_0, "lstm", "gru", "mingru"),
                                   f"Cells ({LSTM_FORGET_BIAS_0}: LSTM, forget bias 0).",
                                   choices=cell_names)
  hidden_size: int = setting(64, "Hidden units of every cell.", lower=1)
  batch_size: int = setting(32, "Training batch size.", lower=1, upper=MNIST_TRAIN_SIZE)
  train_steps: tuple[str, ...] = setting(("pixels:300", "rows:500"), "Training steps per view, "
                                         "as view:steps pairs, or one number for every view.")
  optimizer: str = setting("adam", "Optimizer.", choices=optim.OPTIMIZERS)
  learning_rate: float = setting(1e-3, "Constant learning rate.", above=0.0)
  clip_norm: float = setting(1.0, "Global-norm clipping of every training run except the tanh "
                             "RNN's unclipped comparison run.", above=0.0)
  norm_examples: int = setting(64, "Test images in the fixed batch whose loss the carry "
                               "gradients are taken of.", lower=1, upper=MNIST_TEST_SIZE)
  eval_examples: int = setting(1000, "Test images of the accuracy reported at initialisation "
                               "and after training.", lower=1, upper=MNIST_TEST_SIZE)
  norm_dtype: str = setting("float64", "Precision of the carry gradient measurement (float32 "
                            "underflows to 0 far from the loss).", choices=NORM_DTYPES)
  seed: int = setting(0, "Seed of the initialisation and data order.", lower=0)

  def check(self) -> None:
    for name in ("views", "cells"):
      values = getattr(self, name)
      if not values:
        raise script.UsageError(f"flag --{name}=: give at least one value")
      if len(set(values)) != len(values):
        raise script.UsageError(f"flag --{name}={','.join(values)}: lists a value twice")
    for name in ("learning_rate", "clip_norm"):
      if not math.isfinite(getattr(self, name)):
        raise script.UsageError(f"flag --{name}={getattr(self, name)}: must be finite")
    self.steps_per_view()

  def steps_per_view(self) -> dict[str, int]:
    """``train_steps`` for exactly the chosen views, in their order: ``{"pixels": 300, ...}``.

    Raises:
      rnn_jax.training.script.UsageError: pairs that do not parse, a view without
        steps, a number of steps below 1.
    """
    flag = f"flag --train_steps={','.join(self.train_steps)}"
    steps = parse_train_steps(list(self.train_steps))
    if "*" in steps:
      steps = {view: steps["*"] for view in self.views}
    missing = [view for view in self.views if view not in steps]
    if missing:
      raise script.UsageError(f"{flag}: gives no steps for the view(s) {', '.join(missing)}")
    if any(value < 1 for value in steps.values()):
      raise script.UsageError(f"{flag}: every number of steps must be >= 1")
    return {view: steps[view] for view in self.views}


def parse_train_steps(values: list[str]) -> dict[str, int]:
  """``["pixels:200", "rows:500"] -> {"pixels": 200, "rows": 500}``; ``["300"] -> {"*": 300}``."""
  try:
    if len(values) == 1 and ":" not in values[0]:
      return {"*": int(values[0])}
    pairs = [value.split(":") for value in values]
    return {view.strip(): int(steps) for view, steps in pairs}
  except ValueError:
    raise script.UsageError(f"flag --train_steps={','.join(values)}: expected view:steps "
                            "pairs (pixels:200,rows:500) or one integer") from None


@dataclasses.dataclass(frozen=True)
class Options(Config):
  """How a run is carried out (not part of its config)."""

  data_dir: str | None = setting(None, "Folder with the MNIST IDX files (default: searched, see "
                                 "rnn_jax.training.datasets.find_data_dir).")


# ----------------------------------------------------------------------------- measurement


class GradNormHistory(NamedTuple):
  """The state of :func:`record_global_norm`: steps seen and the norm of each (NaN: not yet)."""

  count: jax.Array
  norms: jax.Array


def record_global_norm(num_steps: int) -> optax.GradientTransformation:
  """An identity transformation that writes the global norm of each step's gradients in its state.

  Chained before clipping, ``opt_state[0].norms [num_steps]`` holds the raw
  norm of every step, while the update uses what the rest of the chain makes
  of the gradients. (A step the training loop drops for a non-finite loss
  leaves its entry NaN.)
  """
  def init(params):
    del params
    return GradNormHistory(jnp.zeros((), jnp.int32), jnp.full((num_steps,), jnp.nan, jnp.float32))

  def update(updates, state, params=None):
    del params
    norms = state.norms.at[state.count].set(optax.tree.norm(updates))
    return updates, GradNormHistory(state.count + 1, norms)

  return optax.GradientTransformation(init, update)


@functools.partial(jax.jit, static_argnums=0)
def _carry_gradient_norms(core, params, inputs, labels):
  def loss(outputs):  # The classifier's loss, from the core's outputs.
    logits = rnn_jax.summary(core, outputs) @ params["dense"]["w"] + params["dense"]["b"]
    return classification.cross_entropy(logits, labels)

  return rnn_jax.carry_gradient_norms(core, params["core"], inputs, loss)


def carry_gradient_norms_by_distance(model: classification.Classifier, params, inputs: np.ndarray,
                                     labels: np.ndarray, dtype: str) -> np.ndarray:
  """``||dL/dcarry||`` of the mean cross-entropy of ``model`` on a batch, by distance to the loss.

  Args:
    model: the classifier.
    params: its parameters (real ones are cast to ``dtype`` for the measurement).
    inputs: ``[B, T, I]``.
    labels: ``[B]``.
    dtype: ``"float32"`` or ``"float64"`` (measured with 64-bit JAX enabled).

  Returns:
    float64 ``[T]``: entry ``d`` is the norm at the carry read by step ``T - 1 - d``.
  """
  with jax.enable_x64(dtype == "float64"):
    cast = lambda leaf: (jnp.asarray(leaf, dtype) if jnp.issubdtype(leaf.dtype, jnp.floating)
                         else jnp.asarray(leaf))
    norms = _carry_gradient_norms(model.core, jax.tree.map(cast, params), cast(inputs),
                                  jnp.asarray(labels))
    return np.asarray(norms, np.float64)[::-1].copy()


def describe_norms(norms: np.ndarray) -> dict:
  """Headline figures of one ``[T]`` norm curve indexed by distance.

  Returns:
    ``{"at_distance_0", "at_max_distance", "ratio_max_to_0", "zero_beyond_distance"}``;
    the last is the largest distance with a norm > 0 when the norms beyond it
    are exactly 0 (-1: all are), else ``None``.
  """
  nonzero = np.flatnonzero(norms > 0)
  last_nonzero = int(nonzero[-1]) if len(nonzero) else -1
  return {
      "at_distance_0": float(norms[0]),
      "at_max_distance": float(norms[-1]),
      "ratio_max_to_0": float(norms[-1] / norms[0]) if norms[0] > 0 else float("nan"),
      "zero_beyond_distance": last_nonzero if last_nonzero < len(norms) - 1 else None,
  }


class ViewData(NamedTuple):
  """One view's data: the training split and the fixed measurement and evaluation batches."""

  train_inputs: np.ndarray
  train_labels: np.ndarray
  norm_inputs: np.ndarray
  norm_labels: np.ndarray
  eval_inputs: np.ndarray
  eval_labels: np.ndarray


def train_and_measure(cell: str, view: str, data: ViewData, settings: dict, clip: bool,
                      say: Callable[[str], None]) -> dict:
  """Measures one cell on one view at initialisation, trains it, measures it again.

  Returns:
    ``{"norms_init", "norms_trained"}`` (``[T]`` by distance; ``None`` after a
    run stopped by a non-finite loss), ``{"eval_init", "eval_trained"}``
    (:func:`classification.evaluate`'s dicts), ``"global_grad_norm"``
    (``[steps]``, raw), ``"train_log"`` (interval records of the training
    loss) and ``"diverged_at"`` (the step of a non-finite loss, or ``None``).
  """
  num_steps = settings["train_steps"][view]
  model = classification.classifier(build_cell(cell, settings["hidden_size"]),
                                    datasets.NUM_CLASSES)
  optimizer = optax.chain(
      record_global_norm(num_steps),
      optim.make_optimizer(settings["optimizer"], settings["learning_rate"],
                           clip_norm=settings["clip_norm"] if clip else None))
  state = classification.create_state(model, optimizer, jax.random.key(settings["seed"]),
                                      data.train_inputs.shape[-1])
  eval_step = classification.make_eval_step(model)

  def measure(params):
    norms = carry_gradient_norms_by_distance(model, params, data.norm_inputs, data.norm_labels,
                                             settings["norm_dtype"])
    evaluation = classification.evaluate(eval_step, params, data.eval_inputs, data.eval_labels,
                                         batch_size=len(data.eval_labels))
    return norms, evaluation

  norms_init, eval_init = measure(state.params)
  train_log = []
  log_every = max(1, num_steps // 10)
  label = f"{view} {cell}{'' if clip else ' unclipped'}"
  try:
    state = classification.fit_classifier(
        state, classification.make_train_step(model, optimizer, settings["seed"]),
        data.train_inputs, data.train_labels, seed=settings["seed"],
        batch_size=settings["batch_size"], num_steps=num_steps, reporter=loop.Reporter(
            log_every=log_every,
            on_log=lambda record: train_log.append({key: record[key]
                                                    for key in ("step", "loss", "accuracy")}),
            log=lambda line: say(f"  {label}: {line}")))
  except loop.NonFiniteLoss as error:
    say(f"  {label}: {error}")
    return {"norms_init": norms_init, "norms_trained": None, "eval_init": eval_init,
            "eval_trained": None, "global_grad_norm": None, "train_log": train_log,
            "diverged_at": error.step}
  norms_trained, eval_trained = measure(state.params)
  return {"norms_init": norms_init, "norms_trained": norms_trained, "eval_init": eval_init,
          "eval_trained": eval_trained,
          "global_grad_norm": np.asarray(state.opt_state[0].norms, np.float64),
          "train_log": train_log, "diverged_at": None}


def load_view(view: str, images: dict, settings: dict) -> ViewData:
  """The sequences of one view; ``images`` maps split -> ``(images, labels)``."""
  train_images, train_labels = images["train"]
  test_images, test_labels = images["test"]
  norm_count, eval_count = settings["norm_examples"], settings["eval_examples"]
  return ViewData(datasets.as_sequences(train_images, view), train_labels,
                  datasets.as_sequences(test_images[:norm_count], view), test_labels[:norm_count],
                  datasets.as_sequences(test_images[:eval_count], view), test_labels[:eval_count])


def _rounded(values) -> list | None:
  """A float array as a JSON list with 4 significant digits (non-finite values as ``None``)."""
  if values is None:
    return None
  return [float(f"{value:.4g}") if math.isfinite(value) else None for value in values]


def _json_float(value: float | None) -> float | None:
  """``value`` with 4 significant digits, or ``None`` if it is not a finite number."""
  return float(f"{value:.4g}") if value is not None and math.isfinite(value) else None


def run(settings: Mapping | GradientFlowConfig, workdir: str, data_dir=None,
        figures: bool = True, say: Callable[[str], None] = script.say) -> dict:
  """Runs the experiment; writes results.json and (if ``figures``) the PNGs; returns the summary.

  ``settings``: a :class:`GradientFlowConfig`, or field values over its defaults.

  Raises:
    rnn_jax.training.script.UsageError: bad settings, an unwritable workdir or
      matplotlib missing, before any work.
    rnn_jax.training.datasets.DataError: the data cannot be found or read.
  """
  config = GradientFlowConfig.resolve(settings)
  settings = {**config.to_dict(), "train_steps": config.steps_per_view()}
  started = time.perf_counter()
  if figures:
    try:
      import matplotlib  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError as error:
      raise script.UsageError(f"the figures need matplotlib ({error}); "
                              "pip install -e '.[train]'") from None
  images = {split: datasets.load("mnist", split, data_dir, experiments.data_search_dirs())
            for split in datasets.SPLITS}
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise script.UsageError(f"flag --workdir={workdir}: cannot write there "
                            f"({error.strerror or error})") from error
  say(f"cells {', '.join(settings['cells'])}, H={settings['hidden_size']}; "
      f"{settings['optimizer']} lr {settings['learning_rate']:g}, batch {settings['batch_size']}, "
      f"clip {settings['clip_norm']:g}; carry gradients of the loss on {settings['norm_examples']} "
      f"test images in {settings['norm_dtype']}; on {jax.devices()[0].platform}")
  results = {"views": {}}
  for view in settings["views"]:
    data = load_view(view, images, settings)
    num_steps = settings["train_steps"][view]
    say(f"{view}: T = {data.train_inputs.shape[1]} steps of {data.train_inputs.shape[2]} "
        f"inputs, {num_steps} training steps per cell")
    view_results = {"sequence_length": int(data.train_inputs.shape[1]),
                    "train_steps": num_steps}
    runs = [(cell, True) for cell in settings["cells"]]
    runs += [run for run in (("rnn", True), ("rnn", False)) if run not in runs]  # Clipping.
    outcomes = {}
    for cell, clip in runs:
      outcomes[cell, clip] = train_and_measure(cell, view, data, settings, clip, say)
      say(f"{view} {cell}{'' if clip else ' unclipped'}: "
          + _progress_figures(outcomes[cell, clip]))
    view_results["cells"] = {cell: _cell_record(cell, outcomes[cell, True])
                             for cell in settings["cells"]}
    view_results["clipping"] = {
        name: {"global_grad_norm": _rounded(outcomes["rnn", clip]["global_grad_norm"]),
               "train_log": outcomes["rnn", clip]["train_log"],
               "diverged_at": outcomes["rnn", clip]["diverged_at"],
               "eval_accuracy": (outcomes["rnn", clip]["eval_trained"] or {}).get("accuracy")}
        for name, clip in (("clipped", True), ("unclipped", False))}
    results["views"][view] = view_results
  summary = _summary(results, settings)
  results.update(config=settings, summary=summary, notes=(
      "norms_* are indexed by the distance from the loss (entry d: the carry read by step "
      "T - 1 - d); global_grad_norm is the raw norm of each step's gradients, before clipping"))
  if figures:
    for view, view_results in results["views"].items():
      plot_carry_gradient_norms(view, view_results, settings,
                                os.path.join(workdir, f"carry_grad_norm_{view}.png"))
    plot_global_grad_norm(results["views"], settings,
                          os.path.join(workdir, "global_grad_norm.png"))
  results["wall_seconds"] = round(time.perf_counter() - started, 1)
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as file:
    json.dump(results, file, indent=1)
  return {**summary, "workdir": workdir, "wall_seconds": results["wall_seconds"]}


def _cell_record(cell: str, outcome: dict) -> dict:
  """The JSON record of one cell's measurement."""
  record = {"label": CELL_LABELS.get(cell, cell), "diverged_at": outcome["diverged_at"],
            "train_log": outcome["train_log"]}
  for stage in ("init", "trained"):
    norms, evaluation = outcome[f"norms_{stage}"], outcome[f"eval_{stage}"]
    record[f"norms_{stage}"] = _rounded(norms)
    record[stage] = None if norms is None else {
        **{key: (_json_float(value) if isinstance(value, float) else value)
           for key, value in describe_norms(norms).items()},
        "eval_accuracy": evaluation["accuracy"], "eval_loss": round(evaluation["loss"], 4)}
  record["global_grad_norm"] = _rounded(outcome["global_grad_norm"])
  return record


def _progress_figures(outcome: dict) -> str:
  """One run's norm ratios and accuracies, for its progress line."""
  ratios = [f"{describe_norms(outcome[f'norms_{stage}'])['ratio_max_to_0']:.3g}"
            for stage in ("init", "trained") if outcome[f"norms_{stage}"] is not None]
  text = f"norm(max distance) / norm(distance 0) {' -> '.join(ratios)}"
  if outcome["eval_trained"] is None:
    return text + f"; stopped by a non-finite loss at step {outcome['diverged_at']}"
  return (text + f"; eval accuracy {outcome['eval_init']['accuracy']:.1%} -> "
          f"{outcome['eval_trained']['accuracy']:.1%}")


def _norm_statistics(norms: list | None) -> dict | None:
  """Median and maximum of a per-step global gradient norm list (``None`` entries skipped)."""
  if norms is None:
    return None
  values = np.array([np.nan if value is None else value for value in norms])
  return {"median": _json_float(float(np.nanmedian(values))),
          "max": _json_float(float(np.nanmax(values)))}


def _summary(results: dict, settings: dict) -> dict:
  """The last stdout line: per view and cell the norm ratio and accuracy; the clipping runs."""
  ratios, accuracy, clipping = {}, {}, {}
  for view, view_results in results["views"].items():
    cells = view_results["cells"]
    ratios[view] = {cell: [(record[stage] or {}).get("ratio_max_to_0")
                           for stage in ("init", "trained")] for cell, record in cells.items()}
    accuracy[view] = {cell: (record["trained"] or {}).get("eval_accuracy")
                      for cell, record in cells.items()}
    clipping[view] = {name: _norm_statistics(record["global_grad_norm"])
                      for name, record in view_results["clipping"].items()}
  return {"norm_ratio_max_distance_to_0_init_trained": ratios,
          f"eval_accuracy_after_training_{settings['eval_examples']}_test": accuracy,
          "tanh_rnn_global_grad_norm_median_max": clipping}


# ----------------------------------------------------------------------------- figures


def plot_carry_gradient_norms(view: str, view_results: dict, settings: dict, path: str) -> None:
  """Carry gradient norm against the distance from the loss, at init and after training."""
  plt = plots.pyplot()
  figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
  length = view_results["sequence_length"]
  distance = np.arange(length)
  stages = (("init", "at initialisation"),
            ("trained", f"after {view_results['train_steps']} training steps"))
  for axis, (stage, title) in zip(axes, stages):
    for index, (cell, record) in enumerate(view_results["cells"].items()):
      label = record["label"]
      if record[f"norms_{stage}"] is None:
        axis.plot([], [], color=f"C{index}", label=f"{label} (diverged)")
        continue
      norms = np.array([np.nan if value is None else value for value in record[f"norms_{stage}"]])
      zero_beyond = record[stage]["zero_beyond_distance"]
      if zero_beyond == -1:
        label += " (exactly 0 at every distance: not drawn)"
      elif zero_beyond is not None:
        label += f" (exactly 0 beyond distance {zero_beyond})"
      if stage == "trained":
        label += f", acc {record['trained']['eval_accuracy']:.0%}"
      axis.plot(distance, np.where(norms > 0, norms, np.nan), color=f"C{index}",
                marker="o" if length <= 64 else None, ms=3, lw=1.4, label=label)
    axis.set(yscale="log", xlabel="distance from the loss (T - 1 - t)", title=title)
    axis.grid(alpha=0.3, which="both" if length <= 64 else "major")
    axis.legend(fontsize=7, loc="lower left")
  axes[0].set_ylabel("||dL / d carry_t||")
  figure.suptitle(f"MNIST {view} (T = {length}): gradient of the mean cross-entropy on "
                  f"{settings['norm_examples']} test images w.r.t. the carry read at step t "
                  f"(H = {settings['hidden_size']}, {settings['norm_dtype']})", fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)


def plot_global_grad_norm(views: dict, settings: dict, path: str) -> None:
  """The tanh RNN's raw global gradient norm and training loss per step, clipped vs unclipped."""
  plt = plots.pyplot()
  figure, axes = plt.subplots(2, len(views), figsize=(6 * len(views), 6.4), squeeze=False)
  for column, (view, view_results) in enumerate(views.items()):
    for name, color in (("unclipped", "C3"), ("clipped", "C0")):
      run_record = view_results["clipping"][name]
      label = (f"clipped to {settings['clip_norm']:g} (the update uses the clipped gradient)"
               if name == "clipped" else "unclipped")
      if run_record["diverged_at"] is not None:
        label += f", diverged at step {run_record['diverged_at']}"
      elif run_record["eval_accuracy"] is not None:
        label += f", acc {run_record['eval_accuracy']:.0%}"
      if run_record["global_grad_norm"] is not None:
        norms = np.array([np.nan if v is None else v for v in run_record["global_grad_norm"]])
        axes[0, column].plot(np.arange(1, len(norms) + 1), norms, color=color, lw=1,
                             label=label)
      log = run_record["train_log"]
      axes[1, column].plot([r["step"] for r in log], [r["loss"] for r in log], "o-",
                           color=color, ms=3, label=name)
    axes[0, column].axhline(settings["clip_norm"], color="gray", ls="--", lw=1,
                            label="clipping threshold")
    axes[0, column].set(yscale="log", xlabel="training step",
                        ylabel="raw global gradient norm (before clipping)",
                        title=f"tanh RNN, MNIST {view} (T = {view_results['sequence_length']})")
    axes[1, column].set(xlabel="training step", ylabel="training loss (mean over the interval)")
    for axis in axes[:, column]:
      axis.grid(alpha=0.3)
      axis.legend(fontsize=7)
  figure.suptitle(f"tanh RNN H = {settings['hidden_size']}, {settings['optimizer']} lr "
                  f"{settings['learning_rate']:g}, batch {settings['batch_size']}", fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)


# ----------------------------------------------------------------------------- entry point


parse_flags = script.flags_parser(GradientFlowConfig, Options, workdir_help="Where "
                                  "results.json and the PNGs go (default runs/gradient_flow).")
main_with_exit_codes = script.main_of(
    lambda settings, workdir, options: run(settings, workdir or "runs/gradient_flow",
                                           options.data_dir),
    GradientFlowConfig, Options)


if __name__ == "__main__":
  app.run(main_with_exit_codes, flags_parser=parse_flags)
