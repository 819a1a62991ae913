r"""Capacity of Hopfield networks: recall accuracy against the load K/N, random patterns vs MNIST.

    python -m experiments.hopfield_capacity                     # a few minutes on a 2-core CPU
    python -m experiments.hopfield_capacity --corruption=0.2 --workdir=runs/hopfield_20

Classical networks (:mod:`rnn_jax.hopfield`, N = 784 units): for each data set
(``random``: unbiased ±1 patterns; ``mnist``: training digits binarised as
pixel > 127 -> +1, else -1, in a seeded random order) and each K in
``--num_patterns``, the first K patterns are stored with each rule (Hebbian,
Storkey, pseudo-inverse); ``--num_queries`` of them (drawn at random, paired
across rules) are corrupted by flipping exactly ``round(corruption * N)``
units and recalled with the asynchronous dynamics. A query counts as
*recalled* when the final state equals the stored pattern in every unit. Also
recorded: the mean overlap ``m = s . xi / N`` of the final state with its
target, the fraction of the queried patterns that are fixed points when
uncorrupted, the mean number of sweeps, and the overlap of the final state
with the sign of the stored patterns' sum (the "mean pattern", where
correlated patterns end up under the Hebbian rule).

Modern network (:func:`rnn_jax.hopfield.retrieve`): for each M in
``--modern_memories`` (far above N) the first M patterns are the memories,
``--modern_queries`` of them are corrupted the same way, and one update is
applied with each beta in ``--modern_betas``; a query is recalled when the
sign of the result equals the stored pattern in every unit.

Everything goes to ``--workdir`` (default ``runs/hopfield_capacity``):
``results.json`` (config and every number), ``capacity.png`` (recall against
K/N per rule and data set, beside the classical estimates, and the modern
retrieval against M/N) and ``recalled_digits.png`` (stored, corrupted and
recalled digits for each rule). Progress and a table go to stdout; the last
line is one JSON object with the headline figures. A bad flag is one line on
stderr and exit status 2; missing data is status 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Mapping

from rnn_jax.training import runtime  # Standard library only: safe before the extras.

try:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from absl import app

  import experiments
  from rnn_jax import hopfield
  from rnn_jax.training import datasets, plots, script
  from rnn_jax.training.config import Config, setting
except ImportError as missing:  # The `train` extra is not installed.
  runtime.exit_for_missing_extra(missing, __name__, "this experiment")

NUM_UNITS = 784  # 28 x 28 pixels
DATASETS = ("random", "mnist")
RULES = {"hebbian": hopfield.hebbian, "storkey": hopfield.storkey,
         "pseudoinverse": hopfield.pseudoinverse}
MNIST_TRAIN_SIZE = 60_000



@dataclasses.dataclass(frozen=True)
class HopfieldConfig(Config):
  """The run's settings (``config`` in results.json); each field is a flag. The sizes are kept
  sorted and de-duplicated."""

  datasets: tuple[str, ...] = setting(DATASETS, "Pattern sets.", choices=DATASETS)
  rules: tuple[str, ...] = setting(tuple(RULES), "Learning rules.", choices=tuple(RULES))
  num_patterns: tuple[int, ...] = setting(
      (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 256, 320, 392, 480,
       588), "Numbers K of stored patterns for the classical rules.", lower=1, upper=NUM_UNITS)
  num_queries: int = setting(100, "Corrupted queries per K (drawn with replacement when K is "
                             "smaller).", lower=1)
  corruption: float = setting(0.1, "Fraction of the units flipped in a query.", lower=0.0,
                              upper=0.5)
  mode: str = setting("async", "Classical recall dynamics.", choices=hopfield.MODES)
  max_sweeps: int = setting(100, "Most sweeps per recall.", lower=1)
  modern_memories: tuple[int, ...] = setting(
      (784, 7840, 23520, 60000), "Numbers M of memories for the modern retrieval; empty: skip "
      "it.", lower=1, upper=MNIST_TRAIN_SIZE)
  modern_betas: tuple[float, ...] = setting((0.01, 0.03, 0.1, 1.0), "Inverse temperatures of "
                                            "the modern retrieval.", above=0.0)
  modern_queries: int = setting(200, "Corrupted queries per M (at most the smallest M).",
                                lower=1)
  digits_patterns: int = setting(32, "K of the classical networks in recalled_digits.png (needs "
                                 "mnist), in 8..the largest K.")
  seed: int = setting(0, "Seed of the patterns, queries and update orders.", lower=0)

  def validate(self) -> HopfieldConfig:
    """:meth:`Config.validate`, then the sizes sorted and de-duplicated."""
    config = super().validate()
    return dataclasses.replace(config, **{
        name: tuple(sorted(set(getattr(config, name))))
        for name in ("num_patterns", "modern_memories", "modern_betas")})

  def check(self) -> None:
    for name in ("datasets", "rules", "num_patterns", "modern_betas"):
      if not getattr(self, name):
        raise script.UsageError(f"flag --{name}=: give at least one value")
    if self.modern_memories and self.modern_queries > min(self.modern_memories):
      raise script.UsageError(f"flag --modern_queries={self.modern_queries}: must be at most "
                              f"the smallest --modern_memories ({min(self.modern_memories)})")
    if "mnist" in self.datasets and not 8 <= self.digits_patterns <= max(self.num_patterns):
      raise script.UsageError(f"flag --digits_patterns={self.digits_patterns}: must be in "
                              f"8..{max(self.num_patterns)} (the largest --num_patterns)")


@dataclasses.dataclass(frozen=True)
class Options(Config):
  """How a run is carried out (not part of its config)."""

  data_dir: str | None = setting(None, "Folder with the MNIST IDX files (default: searched, see "
                                 "rnn_jax.training.datasets.find_data_dir).")


# ----------------------------------------------------------------------------- data


def pattern_pool(dataset: str, count: int, seed: int, data_dir=None) -> np.ndarray:
  """``count`` patterns ``int8 [count, 784]`` of ±1: random, or MNIST digits in a seeded order.

  Every K or M of the run takes the first K or M rows, so the stored sets are nested.
  """
  rng = np.random.default_rng([seed, DATASETS.index(dataset)])
  if dataset == "random":
    return np.where(rng.random((count, NUM_UNITS)) < 0.5, -1, 1).astype(np.int8)
  images, _ = datasets.load("mnist", "train", data_dir, experiments.data_search_dirs())
  order = rng.permutation(len(images))[:count]
  return np.where(images[order].reshape(count, NUM_UNITS) > 127, 1, -1).astype(np.int8)


def corrupt(rng: np.random.Generator, patterns: np.ndarray, fraction: float) -> np.ndarray:
  """``patterns [Q, N]`` as float32, exactly ``round(fraction N)`` random units flipped per row."""
  flips = round(fraction * patterns.shape[1])
  corrupted = patterns.astype(np.float32)
  if flips:
    units = np.argpartition(rng.random(patterns.shape), flips - 1, axis=1)[:, :flips]
    np.put_along_axis(corrupted, units, -np.take_along_axis(corrupted, units, axis=1), axis=1)
  return corrupted


def mean_pairwise_overlap(patterns: np.ndarray) -> float:
  """Mean of ``xi^a . xi^b / N`` over pairs ``a != b``."""
  as_float = patterns.astype(np.float64)
  gram = as_float @ as_float.T / patterns.shape[1]
  count = len(patterns)
  return float((gram.sum() - np.trace(gram)) / (count * (count - 1)))


# ----------------------------------------------------------------------------- experiments


def store(pool: np.ndarray, rule: str, count: int, padded_size: int) -> jax.Array:
  """``W [N, N]`` storing ``pool[:count]`` with ``rule``.

  The patterns are padded with rows of zeros (which every rule ignores) to
  ``padded_size``, so that every K shares one compiled learning rule.
  """
  stored = np.zeros((padded_size, NUM_UNITS), np.float32)
  stored[:count] = pool[:count]
  return RULES[rule](stored)


def classical(weights: jax.Array, pool: np.ndarray, count: int, targets: np.ndarray,
              queries: np.ndarray, settings: dict, key) -> dict:
  """Recalls ``queries [Q, N]`` (corrupted ``targets [Q, N]``); the figures of one point."""
  _, fixed_sweeps = hopfield.recall(weights, targets, mode=settings["mode"], max_sweeps=1, key=key)
  states, sweeps = hopfield.recall(weights, queries, mode=settings["mode"],
                                   max_sweeps=settings["max_sweeps"], key=key)
  states, sweeps = np.asarray(states), np.asarray(sweeps)
  mean_pattern = np.where(pool[:count].sum(axis=0) > 0, 1.0, -1.0)
  return {
      "recalled": float(np.mean(np.all(states == targets, axis=-1))),
      "overlap": float(np.mean(states * targets)),
      "stored_fixed": float(np.mean(np.asarray(fixed_sweeps) == 0)),
      "sweeps": float(np.mean(sweeps)),
      "unsettled": float(np.mean(sweeps >= settings["max_sweeps"])),
      "mean_pattern_overlap": float(np.mean(states @ mean_pattern) / NUM_UNITS),
  }


_retrieve = jax.jit(hopfield.retrieve, static_argnames="steps")


def modern(memories: jax.Array, targets: np.ndarray, queries: np.ndarray, beta: float,
           chunk: int = 100) -> tuple[dict, np.ndarray]:
  """One retrieval step of ``queries`` from ``memories``; the figures of one point and the signs."""
  signs = np.concatenate([
      np.sign(np.asarray(_retrieve(memories, queries[start:start + chunk], beta=jnp.float32(beta))))
      for start in range(0, len(queries), chunk)])
  return {
      "recalled": float(np.mean(np.all(signs == targets, axis=-1))),
      "overlap": float(np.mean(signs * targets)),
  }, signs


def digit_examples(pool: np.ndarray, settings: dict, key, count: int = 8) -> dict:
  """The first ``count`` stored digits, corrupted, and what each network recalls from them.

  The classical networks store ``--digits_patterns`` digits; the modern one the
  largest ``--modern_memories`` with the largest beta.
  """
  rng = np.random.default_rng([settings["seed"], 2])
  stored = pool[:count].astype(np.float32)
  digits = {"stored": stored, "corrupted": corrupt(rng, stored, settings["corruption"])}
  for rule in settings["rules"]:
    weights = store(pool, rule, settings["digits_patterns"], max(settings["num_patterns"]))
    digits[rule] = np.asarray(hopfield.recall(weights, digits["corrupted"], mode=settings["mode"],
                                              max_sweeps=settings["max_sweeps"], key=key)[0])
  if settings["modern_memories"]:
    memories = jnp.asarray(pool[:settings["modern_memories"][-1]], jnp.float32)
    digits["modern"] = modern(memories, stored, digits["corrupted"],
                              settings["modern_betas"][-1])[1]
  return digits


def run(settings: Mapping | HopfieldConfig, workdir: str, data_dir=None,
        plots: bool = True) -> dict:
  """Runs the experiment; writes results.json and (if ``plots``) the PNGs; returns the summary.

  ``settings``: a :class:`HopfieldConfig`, or field values over its defaults.
  """
  settings = HopfieldConfig.resolve(settings).to_dict()
  started = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  ks, ms = settings["num_patterns"], settings["modern_memories"]
  pool_size = max([*ks, *ms])
  estimates = {
      "hebbian_retrieval": 0.138,
      "hebbian_exact": 1 / (2 * math.log(NUM_UNITS)),
      "storkey": 1 / math.sqrt(2 * math.log(NUM_UNITS)),
      "pseudoinverse": 1.0,
  }
  print(f"N = {NUM_UNITS} units; K/N estimates: Hebbian 0.138 (retrieval state), "
        f"{estimates['hebbian_exact']:.3f} (exact fixed points, N/(2 ln N)); Storkey "
        f"{estimates['storkey']:.3f} (1/sqrt(2 ln N)); pseudo-inverse 1", flush=True)
  base_key = jax.random.key(settings["seed"])
  results = {"classical": [], "modern": [], "pattern_overlap": {}}
  digits = {}
  for dataset_index, dataset in enumerate(settings["datasets"]):
    pool = pattern_pool(dataset, pool_size, settings["seed"], data_dir)
    results["pattern_overlap"][dataset] = round(mean_pairwise_overlap(pool[:500]), 4) + 0.0
    print(f"{dataset}: mean pairwise overlap xi.xi'/N of the first 500 patterns "
          f"{results['pattern_overlap'][dataset]:.3f}", flush=True)
    for count in ks:
      rng = np.random.default_rng([settings["seed"], dataset_index, count])
      chosen = rng.choice(count, settings["num_queries"], replace=count < settings["num_queries"])
      targets = pool[chosen].astype(np.float32)
      queries = corrupt(rng, targets, settings["corruption"])
      key = jax.random.fold_in(jax.random.fold_in(base_key, dataset_index), count)
      line = []
      for rule in settings["rules"]:
        weights = store(pool, rule, count, max(ks))
        point = classical(weights, pool, count, targets, queries, settings, key)
        results["classical"].append({"dataset": dataset, "rule": rule, "num_patterns": count,
                                     "load": round(count / NUM_UNITS, 5),
                                     **{k: round(v, 4) for k, v in point.items()}})
        line.append(f"{rule} {point['recalled']:.2f} (m {point['overlap']:.2f}, "
                    f"{point['sweeps']:.1f} sweeps)")
      print(f"{dataset} K={count} (K/N {count / NUM_UNITS:.3f}): " + "; ".join(line), flush=True)
    for size in ms:
      rng = np.random.default_rng([settings["seed"], dataset_index, size, 1])
      chosen = rng.choice(size, settings["modern_queries"], replace=False)
      targets = pool[chosen].astype(np.float32)
      queries = corrupt(rng, targets, settings["corruption"])
      memories = jnp.asarray(pool[:size], jnp.float32)
      line = []
      for beta in settings["modern_betas"]:
        point, signs = modern(memories, targets, queries, beta)
        results["modern"].append({"dataset": dataset, "num_memories": size,
                                  "load": round(size / NUM_UNITS, 3), "beta": beta,
                                  **{k: round(v, 4) for k, v in point.items()}})
        line.append(f"beta {beta:g} {point['recalled']:.2f}")
      del memories
      print(f"{dataset} modern M={size} (M/N {size / NUM_UNITS:.1f}): " + "; ".join(line),
            flush=True)
    if dataset == "mnist" and plots:
      digits = digit_examples(pool, settings, jax.random.fold_in(base_key, dataset_index))
  table = format_table(results, settings)
  print(table, flush=True)
  summary = {
      "capacity_at_90": capacity_at(results["classical"], 0.9),
      "modern_at_largest_m": {
          f"{row['dataset']} beta={row['beta']:g}": row["recalled"]
          for row in results["modern"] if row["num_memories"] == (ms[-1] if ms else None)},
      "pattern_overlap": results["pattern_overlap"],
  }
  results.update(config=settings, num_units=NUM_UNITS, estimates=estimates, summary=summary)
  if plots:
    plot_capacity(results, os.path.join(workdir, "capacity.png"))
    if digits:
      plot_digits(digits, settings, os.path.join(workdir, "recalled_digits.png"))
  results["wall_seconds"] = round(time.perf_counter() - started, 1)
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as file:
    json.dump(results, file, indent=1)
  return {**summary, "workdir": workdir, "wall_seconds": results["wall_seconds"]}


def capacity_at(rows: list[dict], level: float) -> dict:
  """Per ``dataset rule``: the largest K/N below which every measured point recalls >= ``level``."""
  capacity = {}
  for row in rows:
    name = f"{row['dataset']} {row['rule']}"
    capacity.setdefault(name, [0.0, True])
    if capacity[name][1] and row["recalled"] >= level:
      capacity[name][0] = row["load"]
    else:
      capacity[name][1] = False
  return {name: load for name, (load, _) in capacity.items()}


def format_table(results: dict, settings: dict) -> str:
  """Markdown tables: recalled fraction per K and rule; modern recalled fraction per M and beta."""
  columns = [(d, r) for d in settings["datasets"] for r in settings["rules"]]
  lookup = {(row["dataset"], row["rule"], row["num_patterns"]): row
            for row in results["classical"]}
  lines = ["| K | K/N | " + " | ".join(f"{d} {r}" for d, r in columns) + " |",
           "|---:|---:|" + "---:|" * len(columns)]
  for count in settings["num_patterns"]:
    cells = [f"{lookup[(d, r, count)]['recalled']:.2f}" for d, r in columns]
    lines.append(f"| {count} | {count / NUM_UNITS:.3f} | " + " | ".join(cells) + " |")
  if results["modern"]:
    betas = settings["modern_betas"]
    modern_lookup = {(row["dataset"], row["num_memories"], row["beta"]): row["recalled"]
                     for row in results["modern"]}
    heads = [f"{d} β={b:g}" for d in settings["datasets"] for b in betas]
    lines += ["", "| modern M | M/N | " + " | ".join(heads) + " |",
              "|---:|---:|" + "---:|" * len(heads)]
    for size in settings["modern_memories"]:
      cells = [f"{modern_lookup[(d, size, b)]:.2f}" for d in settings["datasets"] for b in betas]
      lines.append(f"| {size} | {size / NUM_UNITS:.1f} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


_COLORS = {"hebbian": "tab:blue", "storkey": "tab:orange", "pseudoinverse": "tab:green"}
_LABELS = {"hebbian": "Hebbian", "storkey": "Storkey", "pseudoinverse": "pseudo-inverse"}


def plot_capacity(results: dict, path: str) -> None:
  """Recalled fraction and overlap against K/N per data set and rule, and the modern retrieval."""
  plt = plots.pyplot()
  settings, estimates = results["config"], results["estimates"]
  names = list(settings["datasets"])
  figure, axes = plt.subplots(2, len(names) + 1, figsize=(4.6 * (len(names) + 1), 7.2),
                              squeeze=False)
  for column, dataset in enumerate(names):
    for rule in settings["rules"]:
      rows = [r for r in results["classical"] if r["dataset"] == dataset and r["rule"] == rule]
      loads = [r["load"] for r in rows]
      axes[0, column].plot(loads, [r["recalled"] for r in rows], "o-", ms=3,
                           color=_COLORS[rule], label=_LABELS[rule])
      axes[1, column].plot(loads, [r["overlap"] for r in rows], "o-", ms=3, color=_COLORS[rule],
                           label=_LABELS[rule])
    for row in range(2):
      axis = axes[row, column]
      for value, style, label in (
          (estimates["hebbian_exact"], ":", "N/(2 ln N)"),
          (estimates["hebbian_retrieval"], "--", "0.138 N (Hebbian)"),
          (estimates["storkey"], "-.", "N/sqrt(2 ln N) (Storkey)")):
        axis.axvline(value, color="gray", linestyle=style, linewidth=1, label=label)
      axis.set_xscale("log")
      axis.set_xlabel("stored patterns K / N")
      axis.grid(alpha=0.3)
    overlap = round(results["pattern_overlap"][dataset], 2) + 0.0  # no "-0.00"
    axes[0, column].set_title(f"{dataset} patterns (mean overlap {overlap:.2f})")
    axes[0, column].set_ylabel(f"fraction recalled exactly ({settings['corruption']:.0%} flipped)")
    axes[1, column].set_ylabel("mean overlap s·ξ/N after recall")
  axes[0, 0].legend(fontsize=7, loc="lower left")
  modern_axes = axes[:, len(names)]
  for dataset, marker in zip(names, "os"):
    for index, beta in enumerate(settings["modern_betas"]):
      rows = [r for r in results["modern"] if r["dataset"] == dataset and r["beta"] == beta]
      color = plt.cm.viridis(index / max(1, len(settings["modern_betas"]) - 1))
      for row, field in enumerate(("recalled", "overlap")):
        modern_axes[row].plot([r["load"] for r in rows], [r[field] for r in rows],
                              marker + ("-" if dataset == "random" else "--"), ms=4, color=color,
                              label=f"{dataset} β={beta:g}")
  modern_axes[0].set_title("modern retrieval, one step")
  modern_axes[0].set_ylabel("fraction recalled exactly")
  modern_axes[1].set_ylabel("mean overlap sign(ξ_new)·ξ/N")
  for axis in modern_axes:
    axis.set_xscale("log")
    axis.set_xlabel("stored memories M / N")
    axis.grid(alpha=0.3)
  modern_axes[0].legend(fontsize=7, loc="center left", ncol=2)
  figure.suptitle(f"Hopfield recall, N = {NUM_UNITS}, {settings['mode']} dynamics, "
                  f"{settings['num_queries']} queries per point")
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)


def plot_digits(digits: dict, settings: dict, path: str) -> None:
  """Rows: stored digits, corrupted queries, each rule's recall, the modern retrieval."""
  plt = plots.pyplot()
  rows = [("stored", "stored"), ("corrupted", f"{settings['corruption']:.0%} flipped")]
  rows += [(rule, f"{_LABELS[rule]}, K={settings['digits_patterns']}")
           for rule in settings["rules"]]
  if digits.get("modern") is not None:
    rows.append(("modern", f"modern, M={settings['modern_memories'][-1]}, "
                           f"β={settings['modern_betas'][-1]:g}"))
  count = len(digits["stored"])
  figure, axes = plt.subplots(len(rows), count, figsize=(1.1 * count + 1.6, 1.15 * len(rows)),
                              squeeze=False)
  for row, (name, label) in enumerate(rows):
    for column in range(count):
      axis = axes[row, column]
      axis.imshow(np.asarray(digits[name][column]).reshape(28, 28), cmap="gray_r", vmin=-1, vmax=1)
      axis.set_xticks([])
      axis.set_yticks([])
    axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)


# ----------------------------------------------------------------------------- entry point


parse_flags = script.flags_parser(HopfieldConfig, Options, workdir_help="Where results.json and "
                                  "the PNGs go (default runs/hopfield_capacity).")
main_with_exit_codes = script.main_of(
    lambda settings, workdir, options: run(settings, workdir or "runs/hopfield_capacity",
                                           options.data_dir),
    HopfieldConfig, Options)


if __name__ == "__main__":
  app.run(main_with_exit_codes, flags_parser=parse_flags)
