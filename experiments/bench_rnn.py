"""The benchmark suite: rnn_jax against Flax Linen, PyTorch and (on GPU) cuDNN through JAX.

    python -m experiments.bench_rnn                 # full table, with the sweep
    python -m experiments.bench_rnn --no-sweep --write_guide   # the Performance guide's tables
    python -m experiments.bench_rnn --quick         # tiny shapes, a smoke run
    python -m experiments.bench_rnn --cells lstm --shapes 128,28,28,128

For every cell (LSTM and GRU by default; the simple RNN on request) and shape
``(B, T, I, H)`` it times, side by side in one process and interleaved round
by round, the forward pass and the forward+backward pass (``value_and_grad``
of ``sum(outputs)`` with respect to the parameters and the inputs, as a
user's training script runs it) of:

* rnn_jax's ``rnn`` with its defaults, and a sweep of ``unroll``, ``hoist``
  and ``vjp`` ("autodiff" or "fused");
* for LSTM and GRU on CPU, when the ``rnn_jax_onednn`` extension is installed
  (``pip install ./rnn_jax_onednn``; the defaults then run its C++ loop,
  ``kernel="cpu_loop"``), oneDNN's RNN primitives (``kernel="onednn"``, the
  "onednn" variant) and the pure-JAX scan (``kernel="scan"``, the "scan"
  variant);
* Flax Linen ``nn.RNN`` over SimpleCell / OptimizedLSTMCell / GRUCell;
* PyTorch ``nn.RNN/LSTM/GRU`` when torch is installed, with as many threads as
  JAX has cores;
* ``jax.experimental.rnn.lstm`` (cuDNN) on GPU.

Every case is timed in turn with the others, round after round in shuffled
order, each timed call right after an untimed call of the same case (as in a
training loop: a call that follows another library's long call runs on cold
cores, :func:`experiments.benchmarking.time_interleaved`'s ``rewarm``).
The whole table is timed ``--repeats`` times (3 by default) in one process;
each row's median ms and ratios (Flax's and torch's time over ours, and our
forward+backward over our forward) are printed as the median over those runs
with their min-max. Per row it also prints the achieved GFLOP/s
(:func:`experiments.benchmarking.model_flops`: ``2 B T (I + H) G H`` forward,
three times that forward+backward) and its fraction of a GEMM peak measured
at the start of every run (a 2048^2 float32 matmul under ``jax.jit``;
fractions above 1 are left out). Then the MNIST-rows training step against
PyTorch. It writes ``results.json`` and ``results.png`` to ``--out``. By
default it runs in one process per allocator (glibc's malloc, which a user's
own program gets, and tcmalloc preloaded, which our scripts use;
``--allocator``; ``--allocator=all`` adds glibc after
:func:`rnn_jax.training.runtime.keep_freed_memory`, which the scripts use where
tcmalloc is not installed) and prints the tables together, each row naming its
allocator; ``--write_guide`` then rewrites the block between
``<!-- bench_rnn:begin -->`` and ``<!-- bench_rnn:end -->`` of
``docs/guides/performance.md`` with the tables, the CPU model and flags, the
versions and the date. Every timing is float32, batch-major ``[B, T, I]``
inputs (``--time_major``: ``[T, B, I]`` for every library), zero initial
carries. Recorded runs, their commands and figures:
``experiments/results/README.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

from rnn_jax.training import runtime

ALLOCATORS = ("both", "all", "tcmalloc", "glibc", "glibc_kept")
RUNS_OF = {"both": ("glibc", "tcmalloc"), "all": ("glibc", "glibc_kept", "tcmalloc")}
"""The single-allocator runs of ``--allocator=both`` and ``--allocator=all``."""


def _requested_allocator(argv) -> str:
  """The ``--allocator`` value in ``argv`` (read before JAX is imported; checked with the other
  flags later)."""
  for position, arg in enumerate(argv):
    if arg.startswith("--allocator="):
      return arg.split("=", 1)[1]
    if arg == "--allocator" and position + 1 < len(argv):
      return argv[position + 1]
  return "both"


if __name__ == "__main__":
  if _requested_allocator(sys.argv[1:]) == "tcmalloc":
    runtime.use_fast_allocator()  # Re-executes this script with tcmalloc preloaded.
  elif _requested_allocator(sys.argv[1:]) == "glibc_kept":
    runtime.keep_freed_memory()  # Before JAX starts its threads.

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments import benchmarking  # pylint: disable=wrong-import-position
from rnn_jax.training.config import setting  # pylint: disable=wrong-import-position


PUBLISHED_CELLS = ("lstm", "gru")
"""The cells of the published tables (``--cells``' default); ``simple_rnn`` on request."""

GUIDE_BEGIN = "<!-- bench_rnn:begin -->"
GUIDE_END = "<!-- bench_rnn:end -->"
"""The markers of the block of ``docs/guides/performance.md`` that ``--write_guide`` rewrites."""

RATIOS = ("flax_over_rnn_jax", "torch_over_rnn_jax", "jax cudnn_over_rnn_jax",
          "fwd_bwd_over_fwd")
"""The per-row ratios printed with their spread over runs (median, min-max)."""


@dataclasses.dataclass(frozen=True)
class BenchRnnConfig(benchmarking.BenchConfig):
  """The suite's settings; each field is a flag (``--no-sweep`` and the other dashed spellings
  are aliases of ``--no_sweep``, ...)."""

  out: str = setting("experiments/results/bench", "Folder the results are written to (with "
                     "--allocator=both or all, one subfolder per allocator).")
  quick: bool = setting(False, "Tiny shapes, few rounds, one run and a small GEMM peak: a smoke "
                        "run.")
  cells: tuple[str, ...] = setting(PUBLISHED_CELLS, "Cells to time.",
                                   choices=benchmarking.CELLS)
  shapes: tuple[int, ...] = setting((), "Shapes B,T,I,H, four integers each, one after the "
                                    "other (default: the three of issue 4; --quick: two tiny "
                                    "ones).", lower=1)
  unrolls: tuple[int, ...] = setting((1, 2, 4), "unroll values swept (--quick: 1,2).", lower=1)
  rounds: int | None = setting(None, "Timed calls per case and run (default 7; --quick: 3).",
                               lower=1)
  min_time: float | None = setting(None, "Keep timing each group at least this many seconds "
                                   "per run (default 0.5; --quick: 0).", lower=0.0,
                                   aliases=("min-time",))
  repeats: int | None = setting(None, "Whole-table runs in one process; every ratio is printed "
                                "as the median and min-max over them (default 3; --quick: 1).",
                                lower=1)
  time_major: bool = setting(False, "Time every library on time-major [T, B, I] inputs instead "
                             "of batch-major [B, T, I] (what a user's script passes).",
                             aliases=("time-major",))
  no_torch: bool = setting(False, "Leave PyTorch out.", aliases=("no-torch",))
  no_flax: bool = setting(False, "Leave Flax Linen out.", aliases=("no-flax",))
  no_train: bool = setting(False, "Skip the training-step ratio.", aliases=("no-train",))
  no_sweep: bool = setting(False, "Time only rnn_jax's defaults (and oneDNN where it runs).",
                           aliases=("no-sweep",))
  allocator: str = setting("both", "malloc of the timed process: glibc's (what a user's own "
                           "program gets), glibc_kept (glibc after runtime.keep_freed_memory(), "
                           "what our scripts use without tcmalloc), tcmalloc preloaded (what "
                           "they use with it); both (glibc and tcmalloc) or all three, one "
                           "process each, results in <out>/<allocator>.", choices=ALLOCATORS)
  write_guide: bool = setting(False, "Rewrite the tables between the bench_rnn markers of "
                              "--guide with this run's.", aliases=("write-guide",))
  guide: str = setting("docs/guides/performance.md", "The page --write_guide rewrites.")

  def check(self) -> None:
    benchmarking.split_shapes(self.shapes)

  def resolved(self) -> BenchRnnConfig:
    """The config with the ``--quick`` and ordinary defaults of ``unrolls``, ``rounds``,
    ``min_time`` and ``repeats`` filled in."""
    return dataclasses.replace(
        self, unrolls=(1, 2) if self.quick and self.unrolls == (1, 2, 4) else self.unrolls,
        rounds=self.rounds or (3 if self.quick else 7),
        min_time=(0.0 if self.quick else 0.5) if self.min_time is None else self.min_time,
        repeats=self.repeats or (1 if self.quick else 3))

  def shape_list(self) -> list[tuple[int, int, int, int]]:
    """The ``(B, T, I, H)`` shapes to time."""
    if not self.shapes:
      return list(benchmarking.QUICK_SHAPES if self.quick else benchmarking.DEFAULT_SHAPES)
    return benchmarking.split_shapes(self.shapes)


def onednn_runs(cell_name: str) -> bool:
  """Whether ``kernel="onednn"`` can run this benchmark cell here."""
  from rnn_jax import onednn  # pylint: disable=import-outside-toplevel
  return cell_name in ("lstm", "gru") and jax.default_backend() == "cpu" and onednn.available()


def rnn_jax_variants(mode: str, unrolls, sweep: bool, cell_name: str | None = None) -> dict:
  """``variant name -> build_rnn_jax keyword arguments`` for one mode.

  "default" is ``rnn``'s defaults (``kernel=None``, ``unroll=None``,
  ``vjp=None``, ``hoist=None``: chosen per backend and layer, see the
  ``TUNED_*`` attributes in ``rnn_jax.layer.Layer`` and ``rnn_jax.Cell``).
  Where the oneDNN extension can run ``cell_name`` (LSTM, GRU on CPU; the
  default is then its C++ loop, ``kernel="cpu_loop"``), "onednn" is
  ``kernel="onednn"`` and "scan" is ``kernel="scan"`` with the tuned options:
  the measurements that decide the cells' tuned kernels. The sweep's variants name their options, all on the scan
  ("u2 hoist" is ``unroll=2, hoist=True`` with autodiff; "u2 fused"
  ``vjp="fused"``).
  """
  variants = {"default": {}}
  if onednn_runs(cell_name):
    variants["onednn"] = {"kernel": "onednn"}
    variants["scan"] = {"kernel": "scan"}
  if not sweep:
    return variants
  for unroll in unrolls:
    variants[f"u{unroll}"] = {"unroll": unroll, "hoist": False, "vjp": "autodiff",
                              "kernel": "scan"}
    variants[f"u{unroll} hoist"] = {"unroll": unroll, "hoist": True, "vjp": "autodiff",
                                    "kernel": "scan"}
    if mode == "fwd+bwd":
      # The fused backward always hoists in its differentiated forward.
      variants[f"u{unroll} fused"] = {"unroll": unroll, "vjp": "fused", "kernel": "scan"}
  return variants


@dataclasses.dataclass(frozen=True)
class Group:
  """One (cell, shape, mode) of the table: its built cases ``name -> (fn, args)`` and, per
  case, ``(library, variant)``."""

  cell: str
  shape: tuple[int, int, int, int]
  mode: str
  cases: dict
  meta: dict


def build_group(cell_name, shape, mode, config, on_gpu, with_torch) -> Group:
  """Builds (does not compile) every library and variant for one (cell, shape, mode)."""
  pick = 0 if mode == "fwd" else 1
  layout = {"time_major": config.time_major}
  cases, meta = {}, {}
  for variant, options in rnn_jax_variants(mode, config.unrolls, not config.no_sweep,
                                           cell_name).items():
    built = benchmarking.build_rnn_jax(cell_name, shape, **options, **layout)
    cases[f"rnn_jax {variant}"] = (built[pick], built[2])
    meta[f"rnn_jax {variant}"] = ("rnn_jax", variant)
  if not config.no_flax:
    built = benchmarking.build_flax(cell_name, shape, **layout)
    cases["flax"] = (built[pick], built[2])
    meta["flax"] = ("flax", "nn.RNN")
  if with_torch:
    built = benchmarking.build_torch(cell_name, shape, device="cuda" if on_gpu else "cpu",
                                     **layout)
    cases["torch"] = (built[pick], built[2])
    meta["torch"] = ("torch", "cuDNN" if on_gpu else "native")
  if on_gpu and cell_name == "lstm":
    try:
      built = benchmarking.build_cudnn_lstm(shape)
      benchmarking.time_function(built[pick], *built[2], repeats=1, warmup=1)
      cases["jax cudnn"] = (built[pick], built[2])
      meta["jax cudnn"] = ("jax.experimental.rnn", "cuDNN")
    except Exception as error:  # pylint: disable=broad-except
      print(f"  jax.experimental.rnn failed, left out: {error!r}"[:300], flush=True)
  return Group(cell_name, tuple(shape), mode, cases, meta)


def time_group(group: Group, config, run: int, peak_gflops: float) -> list:
  """Times every case of ``group`` interleaved; returns one result row per case for ``run``."""
  timings = benchmarking.time_interleaved(group.cases, rounds=config.rounds,
                                          min_round_s=config.min_time, rewarm=True)
  rows = []
  for name, timing in timings.items():
    library, variant = group.meta[name]
    gflops = benchmarking.achieved_gflops(group.cell, group.shape, group.mode,
                                          timing["median_s"])
    rows.append({
        "cell": group.cell, "shape": list(group.shape), "mode": group.mode, "run": run,
        "name": name, "library": library, "variant": variant,
        "median_ms": 1e3 * timing["median_s"], "min_ms": 1e3 * timing["min_s"],
        "stdev_ms": 1e3 * timing["stdev_s"], "repeats": timing["repeats"],
        "compile_s": timing["warmup_s"], "faults_per_call": timing["faults_per_call"],
        "gflops": gflops,
        "peak_fraction": benchmarking.peak_fraction(gflops, peak_gflops),
    })
  return rows


def _row_key(row) -> tuple:
  """The sort key of a (cell, shape, mode) row: cells in :data:`benchmarking.CELLS` order."""
  return benchmarking.CELLS.index(row["cell"]), tuple(row["shape"]), row["mode"]


def summarize(rows) -> list:
  """One line per (cell, shape, mode, run): rnn_jax default and best, alternatives, ratios
  (``<other>_over_rnn_jax``: the other's time over ours; ``fwd_bwd_over_fwd``: our
  forward+backward over our forward in the same run)."""
  summary = []
  keys = sorted({(r["cell"], tuple(r["shape"]), r["mode"], r["run"]) for r in rows},
                key=lambda k: (_row_key({"cell": k[0], "shape": k[1], "mode": k[2]}), k[3]))
  for cell_name, shape, mode, run in keys:
    group = {r["name"]: r for r in rows
             if (r["cell"], tuple(r["shape"]), r["mode"], r["run"]) == (cell_name, shape, mode,
                                                                       run)}
    ours = {n: r for n, r in group.items() if r["library"] == "rnn_jax"}
    best = min(ours.values(), key=lambda r: r["median_ms"])
    default = ours["rnn_jax default"]
    line = {"cell": cell_name, "shape": list(shape), "mode": mode, "run": run,
            "rnn_jax_ms": default["median_ms"], "best_ms": best["median_ms"],
            "best_variant": best["variant"], "gflops": default["gflops"],
            "peak_fraction": default["peak_fraction"],
            "faults_per_call": default.get("faults_per_call")}
    for other in ("flax", "torch", "jax cudnn"):
      if other in group:
        line[f"{other}_ms"] = group[other]["median_ms"]
        line[f"{other}_over_rnn_jax"] = group[other]["median_ms"] / default["median_ms"]
    summary.append(line)
  forward_ms = {(s["cell"], tuple(s["shape"]), s["run"]): s["rnn_jax_ms"]
                for s in summary if s["mode"] == "fwd"}
  for line in summary:
    forward = forward_ms.get((line["cell"], tuple(line["shape"]), line["run"]))
    if line["mode"] == "fwd+bwd" and forward:
      line["fwd_bwd_over_fwd"] = line["rnn_jax_ms"] / forward
  return summary


def spread(values) -> dict:
  """``{"median", "min", "max"}`` of a non-empty sequence of numbers."""
  return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def aggregate(per_run) -> list:
  """:func:`summarize`'s per-run lines merged over runs, one line per (cell, shape, mode):
  times and GFLOP/s as medians, each ratio of :data:`RATIOS` as its median with ``<ratio>_spread``
  its ``{"median", "min", "max"}``, ``peak_fraction`` the median of the runs' fractions that
  are not above 1 (``None`` if none), ``runs`` their number."""
  merged = []
  keys = sorted({(s["cell"], tuple(s["shape"]), s["mode"]) for s in per_run},
                key=lambda k: _row_key({"cell": k[0], "shape": k[1], "mode": k[2]}))
  for cell_name, shape, mode in keys:
    lines = [s for s in per_run if (s["cell"], tuple(s["shape"]), s["mode"]) == (cell_name,
                                                                                  shape, mode)]
    line = {"cell": cell_name, "shape": list(shape), "mode": mode, "runs": len(lines)}
    for key in ("rnn_jax_ms", "best_ms", "gflops", "flax_ms", "torch_ms", "jax cudnn_ms"):
      if key in lines[0]:
        line[key] = statistics.median(s[key] for s in lines)
    variants = [s["best_variant"] for s in lines]
    line["best_variant"] = max(variants, key=variants.count)
    fractions = [s["peak_fraction"] for s in lines if s["peak_fraction"] is not None]
    line["peak_fraction"] = statistics.median(fractions) if fractions else None
    faults = [s["faults_per_call"] for s in lines if s.get("faults_per_call") is not None]
    line["faults_per_call"] = statistics.median(faults) if faults else None
    for ratio in RATIOS:
      if ratio in lines[0]:
        line[f"{ratio}_spread"] = spread([s[ratio] for s in lines])
        line[ratio] = line[f"{ratio}_spread"]["median"]
    if "allocator" in lines[0]:
      line["allocator"] = lines[0]["allocator"]
    merged.append(line)
  return merged


def format_ratio(line, ratio: str) -> str:
  """``"1.02 (0.98-1.05)"``: the median over runs and the min-max (only the median for one
  run); ``"-"`` where the line has no such ratio."""
  if ratio not in line:
    return "-"
  values = line.get(f"{ratio}_spread")
  if values is None or line.get("runs", 1) == 1:
    return f"{line[ratio]:.2f}"
  return f"{values['median']:.2f} ({values['min']:.2f}-{values['max']:.2f})"


def format_faults(line) -> str:
  """rnn_jax's minor page faults per call (median over runs), ``"-"`` where not recorded."""
  faults = line.get("faults_per_call")
  return "-" if faults is None else f"{faults:,.0f}"


def format_fraction(fraction: float | None) -> str:
  """A peak fraction in percent, ``"-"`` for one left out (above 1)."""
  return "-" if fraction is None else f"{100 * fraction:.1f}"


def format_table(summary, sweep: bool = True) -> str:
  """The aggregated lines as a Markdown table, every pass and allocator."""
  others = [o for o in ("flax", "torch", "jax cudnn") if any(f"{o}_ms" in s for s in summary)]
  with_allocator = any("allocator" in s for s in summary)
  header = ["cell", "B,T,I,H", "pass"] + ["allocator"] * with_allocator + ["rnn_jax ms"] + [
      "best sweep (ms)"] * sweep
  for other in others:
    header += [f"{other} ms", f"{other}/ours"]
  header += ["fwd+bwd/fwd", "GFLOP/s", "% GEMM peak", "page faults / call"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for s in summary:
    cells = [s["cell"], ",".join(map(str, s["shape"])), s["mode"]] + [
        s.get("allocator", "")] * with_allocator + [f"{s['rnn_jax_ms']:.2f}"] + [
            f"{s['best_variant']} ({s['best_ms']:.2f})"] * sweep
    for other in others:
      cells += ([f"{s[other + '_ms']:.2f}", format_ratio(s, f"{other}_over_rnn_jax")]
                if f"{other}_ms" in s else ["-", "-"])
    cells += [format_ratio(s, "fwd_bwd_over_fwd"), f"{s['gflops']:.1f}",
              format_fraction(s["peak_fraction"]), format_faults(s)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_sweep(rows) -> str:
  """Every rnn_jax variant's median (over cases' rounds, then over runs), one line per group,
  for choosing defaults."""
  lines = []
  keys = sorted({(r["cell"], tuple(r["shape"]), r["mode"]) for r in rows},
                key=lambda k: _row_key({"cell": k[0], "shape": k[1], "mode": k[2]}))
  for key in keys:
    group = [r for r in rows if (r["cell"], tuple(r["shape"]), r["mode"]) == key
             and r["library"] == "rnn_jax"]
    variants = list(dict.fromkeys(r["variant"] for r in group))
    parts = ", ".join(
        f"{v} {statistics.median(r['median_ms'] for r in group if r['variant'] == v):.2f}"
        for v in variants)
    lines.append(f"{key[0]:10s} {','.join(map(str, key[1])):16s} {key[2]:7s} {parts}")
  return "\n".join(lines)


def build_training(on_gpu, with_torch) -> dict:
  """The MNIST-rows training step (batch 128, LSTM 128, Adam): ``name -> (step, args)`` for
  rnn_jax's default, fused backward, oneDNN and the scan (where the extension is installed)
  and torch."""
  cases = {"rnn_jax": benchmarking.build_train_step_rnn_jax(),
           "rnn_jax fused": benchmarking.build_train_step_rnn_jax(vjp="fused", kernel="scan")}
  if onednn_runs("lstm"):
    cases["rnn_jax onednn"] = benchmarking.build_train_step_rnn_jax(kernel="onednn")
    cases["rnn_jax scan"] = benchmarking.build_train_step_rnn_jax(kernel="scan")
  if with_torch:
    cases["torch"] = benchmarking.build_train_step_torch(device="cuda" if on_gpu else "cpu")
  return cases


def time_training(cases, config) -> dict:
  """One run of the training step cases: ``name -> median ms`` and ``torch_over_rnn_jax``."""
  timings = benchmarking.time_interleaved(cases, rounds=max(config.rounds, 20),
                                          min_round_s=config.min_time, rewarm=True)
  result = {name: 1e3 * t["median_s"] for name, t in timings.items()}
  if "torch" in result:
    result["torch_over_rnn_jax"] = result["torch"] / result["rnn_jax"]
  return result


def aggregate_training(runs) -> dict:
  """The training step's runs merged: each time its median over runs, ``torch_over_rnn_jax``
  its median with ``torch_over_rnn_jax_spread``; ``runs`` their number."""
  if not runs:
    return {}
  merged = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
  if "torch_over_rnn_jax" in merged:
    merged["torch_over_rnn_jax_spread"] = spread([r["torch_over_rnn_jax"] for r in runs])
  merged["runs"] = len(runs)
  return merged


def plot(summary, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  modes = ["fwd", "fwd+bwd"]
  libraries = ["rnn_jax", "flax", "torch", "jax cudnn"]
  fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
  for ax, mode in zip(axes, modes):
    group = [s for s in summary if s["mode"] == mode]
    labels = [f"{s['cell']}\n{','.join(map(str, s['shape']))}" for s in group]
    present = [lib for lib in libraries
               if any((s.get(f"{lib}_ms") if lib != "rnn_jax" else s["rnn_jax_ms"]) for s in group)]
    width = 0.8 / max(1, len(present))
    for k, lib in enumerate(present):
      values = [(s["rnn_jax_ms"] if lib == "rnn_jax" else s.get(f"{lib}_ms", np.nan))
                for s in group]
      ax.bar(np.arange(len(group)) + k * width, values, width, label=lib)
    ax.set_xticks(np.arange(len(group)) + 0.4 - width / 2)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.set_title(f"{mode}")
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_json(folder: str, record: dict) -> None:
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "results.json"), "w") as f:
    json.dump(record, f, indent=1)


# ---------------------------------------------------------------------------
# The Performance guide's block: the tables of one run per allocator.


def command_line(argv) -> str:
  """``python -m experiments.bench_rnn ARGS`` as typed, an argument with spaces quoted as
  ``--flag="a b"`` (the form the docs' command checks read)."""
  shown = []
  for arg in argv:
    if any(c.isspace() for c in arg):
      name, equals, value = arg.partition("=")
      arg = f'{name}="{value}"' if equals and name.startswith("--") else f'"{arg}"'
    shown.append(arg)
  return " ".join(["python -m experiments.bench_rnn", *shown])


def guide_block(record: dict) -> str:
  """The Markdown between the guide's markers for a combined record (:func:`combine`)."""
  machines = record["machines"]
  allocators = list(machines)
  first = machines[allocators[0]]
  flags = ", ".join(first.get("cpu_flags", [])) or "flags unknown"
  loads = "; ".join(f"{a} run {m['load_average_start'][0]:.2f} at the start, "
                    f"{m['load_average_end'][0]:.2f} at the end" for a, m in machines.items())
  peaks = ", ".join(f"{a} {statistics.median(m['gemm_peak_gflops']):.0f}"
                    for a, m in machines.items())
  runs = max(s["runs"] for s in record["summary"])
  layout = "time-major `[T, B, I]`" if record.get("time_major") else "batch-major `[B, T, I]`"
  torch_part = (f", torch {first['torch']} ({first['torch_threads']} threads)"
                if "torch" in first else "")
  prose = (
      f"{first['label'] + ': ' if first.get('label') else ''}{first['cpu_model']} "
      f"x{first['cpu_count']} ({flags}); jax {first['jax']}, flax {first.get('flax', '-')}"
      f"{torch_part}; float32, {layout} inputs. Measured {first['time_utc'][:10]} "
      f"(UTC), {runs} whole-table runs per allocator in one process each; load average "
      f"(1 min): {loads}. GEMM peak (a {first['gemm_peak_size']}x{first['gemm_peak_size']} "
      "float32 matmul under `jax.jit`, median of its runs): "
      f"{peaks} GFLOP/s. Ratios are the other's time over rnn_jax's (above 1: rnn_jax is "
      "faster), as the median over runs (min-max). GFLOP/s counts the matmuls only, "
      "2·B·T·(I+H)·G·H forward and three times that forward+backward "
      "(`experiments.benchmarking.model_flops`); % of peak is left out (-) above 100. Page "
      "faults / call: the process's minor page faults during one of rnn_jax's calls (median over "
      "calls and runs), each a fresh 4 KiB page the kernel zeroes.")
  lines = [
      "<!-- Written by the command below (--write_guide); edits inside this block are lost. -->",
      "",
      textwrap.fill(prose, width=100, break_on_hyphens=False, break_long_words=False),
      "",
      "```bash",
      command_line(record["argv"]),
      "```",
  ]
  passes = (("fwd+bwd", "Forward+backward (`value_and_grad` of `sum(outputs)` with respect to "
             "the parameters and the inputs), rnn_jax's defaults:"),
            ("fwd", "Forward only (evaluation, generation):"))
  for mode, title in passes:
    header = ["cell", "B, T, I, H", "allocator", "rnn_jax ms (page faults / call)",
              "Flax / ours", "torch / ours"]
    header += ["ours fwd+bwd / fwd"] * (mode == "fwd+bwd") + ["GFLOP/s (% of peak)"]
    lines += ["", title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in (s for s in record["summary"] if s["mode"] == mode):
      cells = [s["cell"], ", ".join(map(str, s["shape"])), s["allocator"],
               f"{s['rnn_jax_ms']:.2f} ({format_faults(s)})", format_ratio(s, "flax_over_rnn_jax"),
               format_ratio(s, "torch_over_rnn_jax")]
      cells += [format_ratio(s, "fwd_bwd_over_fwd")] * (mode == "fwd+bwd")
      cells.append(f"{s['gflops']:.1f} ({format_fraction(s['peak_fraction'])})")
      lines.append("| " + " | ".join(cells) + " |")
  training = record.get("training", {})
  if any(training.values()):
    lines += ["", "MNIST-rows training step (batch 128, LSTM 128, Adam), ms:", "",
              "| allocator | rnn_jax | torch | torch / ours |", "|---|---|---|---|"]
    for allocator, step in training.items():
      if step:
        ratio = format_ratio(step, "torch_over_rnn_jax")
        lines.append(f"| {allocator} | {step['rnn_jax']:.2f} | {step.get('torch', float('nan')):.2f}"
                     f" | {ratio} |")
  return "\n".join(lines)


def read_guide_block(text: str) -> str:
  """What stands between the markers of ``text`` (without them and their newlines).

  Raises:
    ValueError: ``text`` lacks a marker, or has them more than once or out of order.
  """
  if text.count(GUIDE_BEGIN) != 1 or text.count(GUIDE_END) != 1 or (
      text.index(GUIDE_BEGIN) > text.index(GUIDE_END)):
    raise ValueError(f"guide: expected one {GUIDE_BEGIN} line followed by one {GUIDE_END} "
                     "line; add them around the tables to rewrite")
  inside = text[text.index(GUIDE_BEGIN) + len(GUIDE_BEGIN):text.index(GUIDE_END)]
  return inside.strip("\n")


def replace_guide_block(text: str, block: str) -> str:
  """``text`` with what stands between its markers replaced by ``block``; the markers and
  everything outside them unchanged (``ValueError`` as :func:`read_guide_block`)."""
  read_guide_block(text)
  before, rest = text.split(GUIDE_BEGIN)
  after = rest.split(GUIDE_END)[1]
  return f"{before}{GUIDE_BEGIN}\n{block}\n{GUIDE_END}{after}"


def write_guide(path: str, record: dict) -> None:
  """Rewrites the block of the guide at ``path`` from a combined record."""
  with open(path) as f:
    text = f.read()
  try:
    text = replace_guide_block(text, guide_block(record))
  except ValueError as error:
    raise SystemExit(f"error: flag --guide={path}: {error}") from None
  with open(path, "w") as f:
    f.write(text)
  print(f"rewrote the bench_rnn block of {path}")


def combine(records: dict, argv) -> dict:
  """One record from ``allocator -> record`` of single-allocator runs: ``machines``,
  ``summary`` (every allocator's lines, sorted), ``training`` per allocator, ``argv``."""
  summary = []
  for allocator, record in records.items():
    summary += [dict(line, allocator=allocator) for line in record["summary"]]
  summary.sort(key=lambda s: (_row_key(s), s["allocator"]))
  first = next(iter(records.values()))
  return {"allocators": list(records), "machines": {a: r["machine"] for a, r in records.items()},
          "summary": summary, "training": {a: r["training_step_ms"] for a, r in records.items()},
          "time_major": first.get("time_major", False), "argv": list(argv)}


def check_allocator(wanted: str) -> None:
  """Exits with a one-line error unless this process runs with the ``wanted`` allocator."""
  name = runtime.allocator_name()
  active = name if name in ("tcmalloc", "glibc_kept") else "glibc"  # Or glibc with tunables.
  if wanted == "tcmalloc" and active != "tcmalloc":
    raise SystemExit("error: --allocator=tcmalloc: tcmalloc is not installed (Debian/Ubuntu: "
                     "apt-get install libtcmalloc-minimal4); use --allocator=glibc")
  if wanted == "glibc_kept" and active != "glibc_kept":
    raise SystemExit("error: --allocator=glibc_kept: glibc's mallopt is not available here "
                     "(tcmalloc preloaded, or another C library); use --allocator=glibc")
  if wanted == "glibc" and active != "glibc":
    raise SystemExit("error: --allocator=glibc: tcmalloc is preloaded (LD_PRELOAD); unset it")


def without_flags(argv, names) -> list:
  """``argv`` without the flags ``names`` (``--name=value``, ``--name value`` or ``--name``)."""
  kept, skip = [], False
  for arg in argv:
    if skip:
      skip = False
      continue
    name = arg.split("=", 1)[0].lstrip("-").replace("-", "_")
    if arg.startswith("--") and name in names:
      skip = "=" not in arg and name not in ("write_guide",)
      continue
    kept.append(arg)
  return kept


def run_both_allocators(argv, config) -> None:
  """Runs this benchmark once per allocator of ``--allocator=both`` or ``all``, each in its own
  process, and prints their tables together (and, with ``--write_guide``, rewrites the guide
  from them)."""
  if runtime.find_tcmalloc() is None:
    raise SystemExit(f"error: --allocator={config.allocator}: tcmalloc is not installed "
                     "(Debian/Ubuntu: apt-get install libtcmalloc-minimal4); use "
                     "--allocator=glibc")
  given = list(sys.argv[1:] if argv is None else argv)
  rest = without_flags(given, ("allocator", "out", "write_guide"))
  records = {}
  for allocator in RUNS_OF[config.allocator]:
    folder = os.path.join(config.out, allocator)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RNN_JAX_NO_TCMALLOC")}
    print(f"\n## allocator {allocator}: {folder}", flush=True)
    subprocess.run([sys.executable, "-m", "experiments.bench_rnn", *rest,
                    f"--allocator={allocator}", f"--out={folder}"], env=env, check=True)
    with open(os.path.join(folder, "results.json")) as f:
      records[allocator] = json.load(f)
  record = combine(records, given)
  print(f"\n## allocators {', '.join(records)}\n"
        + format_table(record["summary"], sweep=not config.no_sweep))
  write_json(config.out, record)
  if config.write_guide:
    write_guide(config.guide, record)


def main(argv=None) -> None:
  config = benchmarking.parse(BenchRnnConfig, argv)
  if config.allocator in RUNS_OF:
    run_both_allocators(argv, config)
    return
  check_allocator(config.allocator)
  config = config.resolved()
  on_gpu = jax.default_backend() == "gpu"
  with_torch = not config.no_torch and benchmarking.torch_available()
  if with_torch and not on_gpu:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(os.cpu_count() or 1)
  machine = benchmarking.describe_machine(config.label)
  print(f"# {machine['label'] or machine['device']} | backend {machine['backend']} | "
        f"{machine['cpu_model']} x{machine['cpu_count']} ({', '.join(machine['cpu_flags'])}) | "
        f"jax {machine['jax']} | flax {machine.get('flax', '-')} | "
        f"torch {machine.get('torch', '-')} | allocator {machine['allocator']} | "
        f"load {machine['load_average_start']}", flush=True)

  groups = [build_group(cell_name, shape, mode, config, on_gpu, with_torch)
            for cell_name in config.cells for shape in config.shape_list()
            for mode in ("fwd", "fwd+bwd")]
  training_cases = {} if config.no_train else build_training(on_gpu, with_torch)
  rows, training_runs, peaks = [], [], []
  os.makedirs(config.out, exist_ok=True)
  for run in range(config.repeats):
    peaks.append(benchmarking.gemm_peak(64 if config.quick else benchmarking.GEMM_PEAK_SIZE))
    print(f"run {run + 1}/{config.repeats}: GEMM peak {peaks[-1]:.1f} GFLOP/s", flush=True)
    for group in groups:
      start = time.perf_counter()
      rows += time_group(group, config, run, peaks[-1])
      print(f"  timed {group.cell} {group.shape} {group.mode} in "
            f"{time.perf_counter() - start:.1f}s", flush=True)
      write_json(config.out, {"machine": machine, "partial": True, "rows": rows})
    if training_cases:
      training_runs.append(time_training(training_cases, config))
  machine["gemm_peak_gflops"] = peaks
  machine["gemm_peak_size"] = 64 if config.quick else benchmarking.GEMM_PEAK_SIZE
  machine["load_average_end"] = os.getloadavg()
  per_run = summarize(rows)
  summary = [dict(line, allocator=machine["allocator"]) for line in aggregate(per_run)]
  training = aggregate_training(training_runs)

  print("\nrnn_jax variants (median ms):\n" + format_sweep(rows))
  print("\n" + format_table(summary, sweep=not config.no_sweep))
  if training:
    print("\nMNIST-rows training step (B=128, LSTM 128, Adam), median ms over runs: "
          + ", ".join(f"{k} {v:.2f}" for k, v in training.items()
                      if isinstance(v, float) and k != "torch_over_rnn_jax")
          + (f"; torch/ours {format_ratio(training, 'torch_over_rnn_jax')}"
             if "torch_over_rnn_jax" in training else ""))
  print(f"GEMM peak per run (GFLOP/s): {', '.join(f'{p:.1f}' for p in peaks)}")
  print(f"load average at end: {machine['load_average_end']}")

  record = {"machine": machine, "argv": sys.argv, "time_major": config.time_major,
            "summary": summary, "per_run": per_run, "rows": rows,
            "training_step_ms": training, "training_runs": training_runs}
  write_json(config.out, record)
  plot(summary, os.path.join(config.out, "results.png"),
       f"rnn_jax benchmark on {machine['label'] or machine['device']} ({machine['backend']})")
  print(f"wrote {config.out}/results.json and results.png")
  if config.write_guide:
    write_guide(config.guide, combine({machine["allocator"]: record},
                                      sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  main()
