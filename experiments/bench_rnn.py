"""The benchmark suite: rnn_jax against Flax Linen, PyTorch and (on GPU) cuDNN through JAX.

    python -m experiments.bench_rnn                 # full table
    python -m experiments.bench_rnn --quick         # tiny shapes, a smoke run
    python -m experiments.bench_rnn --cells lstm --shapes 128,28,28,128

For every cell (simple RNN, LSTM, GRU) and shape ``(B, T, I, H)`` it times,
side by side in one process and interleaved round by round, the forward pass
and the forward+backward pass (gradient of ``sum(outputs)`` with respect to
parameters and inputs) of:

* rnn_jax's ``rnn`` with its defaults, and a sweep of ``unroll``, ``hoist``
  and ``vjp`` ("autodiff" or "fused");
* for LSTM and GRU on CPU, when the ``rnn_jax_onednn`` extension is installed
  (``pip install ./rnn_jax_onednn``), oneDNN's RNN primitives
  (``kernel="onednn"``, the "onednn" variant);
* Flax Linen ``nn.RNN`` over SimpleCell / OptimizedLSTMCell / GRUCell;
* PyTorch ``nn.RNN/LSTM/GRU`` when torch is installed, with as many threads as
  JAX has cores;
* ``jax.experimental.rnn.lstm`` (cuDNN) on GPU.

It prints medians in ms, ratios to each alternative and the fraction of a
measured matmul peak, plus the MNIST-rows training step against PyTorch, and
writes ``results.json`` and ``results.png`` to ``--out``. By default it runs
twice, in one process per allocator (glibc's malloc, which a user's own
program gets, and tcmalloc preloaded, which our scripts use; ``--allocator``),
and prints both tables together, each row naming its allocator. Every timing is
float32, time-major ``[T, B, I]`` inputs, zero initial carries. Recorded runs,
their commands and figures: ``experiments/results/README.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from rnn_jax.training import runtime

ALLOCATORS = ("both", "tcmalloc", "glibc")


def _requested_allocator(argv) -> str:
  """The ``--allocator`` value in ``argv`` (read before JAX is imported; checked with the other
  flags later)."""
  for position, arg in enumerate(argv):
    if arg.startswith("--allocator="):
      return arg.split("=", 1)[1]
    if arg == "--allocator" and position + 1 < len(argv):
      return argv[position + 1]
  return "both"


if __name__ == "__main__" and _requested_allocator(sys.argv[1:]) == "tcmalloc":
  runtime.use_fast_allocator()  # Re-executes this script with tcmalloc preloaded.

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments import benchmarking  # pylint: disable=wrong-import-position
from rnn_jax.training.config import setting  # pylint: disable=wrong-import-position
from rnn_jax.training.script import UsageError  # pylint: disable=wrong-import-position


@dataclasses.dataclass(frozen=True)
class BenchRnnConfig(benchmarking.BenchConfig):
  """The suite's settings; each field is a flag (``--no-sweep`` and the other dashed spellings
  are aliases of ``--no_sweep``, ...)."""

  out: str = setting("experiments/results/bench", "Folder the results are written to (with "
                     "--allocator=both, one subfolder per allocator).")
  quick: bool = setting(False, "Tiny shapes and few rounds: a smoke run.")
  cells: tuple[str, ...] = setting(benchmarking.CELLS, "Cells to time.",
                                   choices=benchmarking.CELLS)
  shapes: tuple[int, ...] = setting((), "Shapes B,T,I,H, four integers each, one after the "
                                    "other (default: the three of issue 4; --quick: two tiny "
                                    "ones).", lower=1)
  unrolls: tuple[int, ...] = setting((1, 2, 4), "unroll values swept (--quick: 1,2).", lower=1)
  rounds: int | None = setting(None, "Timed calls per case (default 15; --quick: 3).", lower=1)
  min_time: float | None = setting(None, "Keep timing each group at least this many seconds "
                                   "(default 1; --quick: 0).", lower=0.0, aliases=("min-time",))
  no_torch: bool = setting(False, "Leave PyTorch out.", aliases=("no-torch",))
  no_flax: bool = setting(False, "Leave Flax Linen out.", aliases=("no-flax",))
  no_train: bool = setting(False, "Skip the training-step ratio.", aliases=("no-train",))
  no_sweep: bool = setting(False, "Time only rnn_jax's defaults (and oneDNN where it runs).",
                           aliases=("no-sweep",))
  allocator: str = setting("both", "malloc of the timed process: glibc's (what a user's own "
                           "program gets), tcmalloc preloaded (what our scripts use), or both, "
                           "one process each, results in <out>/glibc and <out>/tcmalloc.",
                           choices=ALLOCATORS)

  def check(self) -> None:
    if len(self.shapes) % 4:
      raise UsageError(f"flag --shapes={','.join(map(str, self.shapes))}: a shape is B,T,I,H; "
                       "give four integers per shape")

  def resolved(self) -> BenchRnnConfig:
    """The config with the ``--quick`` and ordinary defaults of ``unrolls``, ``rounds`` and
    ``min_time`` filled in."""
    return dataclasses.replace(
        self, unrolls=(1, 2) if self.quick and self.unrolls == (1, 2, 4) else self.unrolls,
        rounds=self.rounds or (3 if self.quick else 15),
        min_time=(0.0 if self.quick else 1.0) if self.min_time is None else self.min_time)

  def shape_list(self) -> list[tuple[int, int, int, int]]:
    """The ``(B, T, I, H)`` shapes to time."""
    if not self.shapes:
      return list(benchmarking.QUICK_SHAPES if self.quick else benchmarking.DEFAULT_SHAPES)
    return [tuple(self.shapes[at:at + 4]) for at in range(0, len(self.shapes), 4)]


def onednn_runs(cell_name: str) -> bool:
  """Whether ``kernel="onednn"`` can run this benchmark cell here."""
  from rnn_jax import onednn  # pylint: disable=import-outside-toplevel
  return cell_name in ("lstm", "gru") and jax.default_backend() == "cpu" and onednn.available()


def rnn_jax_variants(mode: str, unrolls, sweep: bool, cell_name: str | None = None) -> dict:
  """``variant name -> build_rnn_jax keyword arguments`` for one mode.

  "default" is ``rnn``'s defaults (``kernel=None``, ``unroll=None``,
  ``vjp=None``, ``hoist=None``: chosen per backend and layer, see the
  ``TUNED_*`` attributes in ``rnn_jax.layer.Layer`` and ``rnn_jax.Cell``).
  Where the oneDNN extension can run ``cell_name`` (LSTM, GRU on CPU),
  "onednn" is ``kernel="onednn"``: the measurement that decides the cells'
  ``TUNED_KERNEL``. The sweep's variants name their options, all on the scan
  ("u2 hoist" is ``unroll=2, hoist=True`` with autodiff; "u2 fused"
  ``vjp="fused"``).
  """
  variants = {"default": {}}
  if onednn_runs(cell_name):
    variants["onednn"] = {"kernel": "onednn"}
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


def time_group(cell_name, shape, mode, config, on_gpu, with_torch) -> list:
  """Times every library and variant for one (cell, shape, mode); returns result rows."""
  pick = 0 if mode == "fwd" else 1
  cases, meta = {}, {}
  for variant, options in rnn_jax_variants(mode, config.unrolls, not config.no_sweep,
                                           cell_name).items():
    built = benchmarking.build_rnn_jax(cell_name, shape, **options)
    cases[f"rnn_jax {variant}"] = (built[pick], built[2])
    meta[f"rnn_jax {variant}"] = ("rnn_jax", variant)
  if not config.no_flax:
    built = benchmarking.build_flax(cell_name, shape)
    cases["flax"] = (built[pick], built[2])
    meta["flax"] = ("flax", "nn.RNN")
  if with_torch:
    built = benchmarking.build_torch(cell_name, shape, device="cuda" if on_gpu else "cpu")
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
  timings = benchmarking.time_interleaved(cases, rounds=config.rounds,
                                          min_round_s=config.min_time)
  flops = benchmarking.model_flops(cell_name, shape, mode)
  rows = []
  for name, timing in timings.items():
    library, variant = meta[name]
    rows.append({
        "cell": cell_name, "shape": list(shape), "mode": mode, "name": name,
        "library": library, "variant": variant,
        "median_ms": 1e3 * timing["median_s"], "min_ms": 1e3 * timing["min_s"],
        "stdev_ms": 1e3 * timing["stdev_s"], "repeats": timing["repeats"],
        "compile_s": timing["warmup_s"], "gflops": flops / timing["median_s"] / 1e9,
    })
  return rows


def summarize(rows, peaks) -> list:
  """One line per (cell, shape, mode): rnn_jax default and best, alternatives, ratios."""
  summary = []
  keys = sorted({(r["cell"], tuple(r["shape"]), r["mode"]) for r in rows},
                key=lambda k: (benchmarking.CELLS.index(k[0]), k[1], k[2]))
  for cell_name, shape, mode in keys:
    group = {r["name"]: r for r in rows
             if (r["cell"], tuple(r["shape"]), r["mode"]) == (cell_name, shape, mode)}
    ours = {n: r for n, r in group.items() if r["library"] == "rnn_jax"}
    best = min(ours.values(), key=lambda r: r["median_ms"])
    default = ours["rnn_jax default"]
    line = {"cell": cell_name, "shape": list(shape), "mode": mode,
            "rnn_jax_ms": default["median_ms"], "best_ms": best["median_ms"],
            "best_variant": best["variant"],
            "peak_fraction": default["gflops"] * 1e9 / peaks[(cell_name, shape)]}
    for other in ("flax", "torch", "jax cudnn"):
      if other in group:
        line[f"{other}_ms"] = group[other]["median_ms"]
        line[f"{other}_over_rnn_jax"] = group[other]["median_ms"] / default["median_ms"]
    summary.append(line)
  return summary


def format_table(summary) -> str:
  others = [o for o in ("flax", "torch", "jax cudnn") if any(f"{o}_ms" in s for s in summary)]
  with_allocator = any("allocator" in s for s in summary)
  header = ["cell", "B,T,I,H", "pass"] + ["allocator"] * with_allocator + [
      "rnn_jax ms", "best sweep (ms)"]
  for other in others:
    header += [f"{other} ms", f"{other}/ours"]
  header.append("% GEMM peak")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for s in summary:
    cells = [s["cell"], ",".join(map(str, s["shape"])), s["mode"]] + [
        s.get("allocator", "")] * with_allocator + [
            f"{s['rnn_jax_ms']:.2f}", f"{s['best_variant']} ({s['best_ms']:.2f})"]
    for other in others:
      if f"{other}_ms" in s:
        cells += [f"{s[other + '_ms']:.2f}", f"{s[other + '_over_rnn_jax']:.2f}x"]
      else:
        cells += ["-", "-"]
    cells.append(f"{100 * s['peak_fraction']:.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_sweep(rows) -> str:
  """Every rnn_jax variant's median, one line per group, for choosing defaults."""
  lines = []
  keys = sorted({(r["cell"], tuple(r["shape"]), r["mode"]) for r in rows},
                key=lambda k: (benchmarking.CELLS.index(k[0]), k[1], k[2]))
  for key in keys:
    group = [r for r in rows if (r["cell"], tuple(r["shape"]), r["mode"]) == key
             and r["library"] == "rnn_jax"]
    parts = ", ".join(f"{r['variant']} {r['median_ms']:.2f}" for r in group)
    lines.append(f"{key[0]:10s} {','.join(map(str, key[1])):16s} {key[2]:7s} {parts}")
  return "\n".join(lines)


def time_training(config, on_gpu, with_torch) -> dict:
  """The MNIST-rows training step (batch 128, LSTM 128, Adam): rnn_jax against torch."""
  cases = {"rnn_jax": benchmarking.build_train_step_rnn_jax(),
           "rnn_jax fused": benchmarking.build_train_step_rnn_jax(vjp="fused", kernel="scan")}
  if onednn_runs("lstm"):
    cases["rnn_jax onednn"] = benchmarking.build_train_step_rnn_jax(kernel="onednn")
  if with_torch:
    step, step_args = benchmarking.build_train_step_torch(device="cuda" if on_gpu else "cpu")
    cases["torch"] = (step, step_args)
  timings = benchmarking.time_interleaved(cases, rounds=max(config.rounds, 20),
                                          min_round_s=config.min_time)
  result = {name: 1e3 * t["median_s"] for name, t in timings.items()}
  if "torch" in result:
    result["torch_over_rnn_jax"] = result["torch"] / result["rnn_jax"]
  return result


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


def check_allocator(wanted: str) -> None:
  """Exits with a one-line error unless this process runs with the ``wanted`` allocator."""
  active = "tcmalloc" if runtime.fast_allocator_active() else "glibc"
  if wanted == "tcmalloc" and active != "tcmalloc":
    raise SystemExit("error: --allocator=tcmalloc: tcmalloc is not installed (Debian/Ubuntu: "
                     "apt-get install libtcmalloc-minimal4); use --allocator=glibc")
  if wanted == "glibc" and active != "glibc":
    raise SystemExit("error: --allocator=glibc: tcmalloc is preloaded (LD_PRELOAD); unset it")


def run_both_allocators(argv, config) -> None:
  """Runs this benchmark once per allocator, each in its own process, and prints both tables."""
  if runtime.find_tcmalloc() is None:
    raise SystemExit("error: --allocator=both: tcmalloc is not installed (Debian/Ubuntu: "
                     "apt-get install libtcmalloc-minimal4); use --allocator=glibc")
  rest = list(sys.argv[1:] if argv is None else argv)
  summaries = []
  for allocator in ("glibc", "tcmalloc"):
    folder = os.path.join(config.out, allocator)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RNN_JAX_NO_TCMALLOC")}
    print(f"\n## allocator {allocator}: {folder}", flush=True)
    subprocess.run([sys.executable, "-m", "experiments.bench_rnn", *rest,
                    f"--allocator={allocator}", f"--out={folder}"], env=env, check=True)
    with open(os.path.join(folder, "results.json")) as f:
      record = json.load(f)
    summaries += [dict(line, allocator=record["machine"]["allocator"])
                  for line in record["summary"]]
  summaries.sort(key=lambda s: (benchmarking.CELLS.index(s["cell"]), s["shape"], s["mode"]))
  print("\n## both allocators\n" + format_table(summaries))
  write_json(config.out, {"allocators": ["glibc", "tcmalloc"], "summary": summaries,
                          "argv": sys.argv})


def main(argv=None) -> None:
  config = benchmarking.parse(BenchRnnConfig, argv)
  if config.allocator == "both":
    run_both_allocators(argv, config)
    return
  check_allocator(config.allocator)
  config = config.resolved()
  shapes = config.shape_list()
  cells = config.cells
  on_gpu = jax.default_backend() == "gpu"
  with_torch = not config.no_torch and benchmarking.torch_available()
  if with_torch and not on_gpu:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(os.cpu_count() or 1)
  machine = benchmarking.describe_machine(config.label)
  print(f"# {machine['label'] or machine['device']} | backend {machine['backend']} | "
        f"{machine['cpu_model']} x{machine['cpu_count']} | jax {machine['jax']} | "
        f"torch {machine.get('torch', '-')} | allocator {machine['allocator']} | "
        f"load {machine['load_average_start']}", flush=True)

  rows, peaks = [], {}
  os.makedirs(config.out, exist_ok=True)
  for cell_name in cells:
    for shape in shapes:
      peaks[(cell_name, shape)] = benchmarking.gemm_peak(cell_name, shape)
      for mode in ("fwd", "fwd+bwd"):
        start = time.perf_counter()
        rows += time_group(cell_name, shape, mode, config, on_gpu, with_torch)
        print(f"  timed {cell_name} {shape} {mode} in {time.perf_counter() - start:.1f}s",
              flush=True)
        write_json(config.out, {"machine": machine, "partial": True, "rows": rows})
  summary = [dict(line, allocator=machine["allocator"]) for line in summarize(rows, peaks)]
  training = {} if config.no_train else time_training(config, on_gpu, with_torch)
  machine["load_average_end"] = os.getloadavg()

  print("\nrnn_jax variants (median ms):\n" + format_sweep(rows))
  print("\n" + format_table(summary))
  if training:
    print("\nMNIST-rows training step (B=128, LSTM 128, Adam), median ms: "
          + ", ".join(f"{k} {v:.2f}" for k, v in training.items()))
  print(f"load average at end: {machine['load_average_end']}")

  record = {"machine": machine, "argv": sys.argv, "summary": summary, "rows": rows,
            "gemm_peak_gflops": {f"{c} {','.join(map(str, s))}": p / 1e9
                                 for (c, s), p in peaks.items()},
            "training_step_ms": training}
  write_json(config.out, record)
  plot(summary, os.path.join(config.out, "results.png"),
       f"rnn_jax benchmark on {machine['label'] or machine['device']} ({machine['backend']})")
  print(f"wrote {config.out}/results.json and results.png")


if __name__ == "__main__":
  main()
