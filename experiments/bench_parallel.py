"""Parallel-in-time recurrences against their sequential mode and the LSTM.

    python -m experiments.bench_parallel                  # T = 784 and 4096
    python -m experiments.bench_parallel --quick          # tiny, a smoke run
    python -m experiments.bench_parallel --steps 784 --rounds 5

For each sequence length T it times, side by side in one process and
interleaved round by round (:func:`experiments.benchmarking.time_interleaved`),
the forward pass and the forward+backward pass (gradient of ``sum(outputs)``
with respect to the parameters and the inputs) of:

* minGRU, minLSTM and the LRU (:mod:`rnn_jax.linear_rnn`) in their parallel
  mode (``jax.lax.associative_scan``) and their sequential mode (the core's
  ``jax.lax.scan``), the latter with ``hoist=False`` and ``hoist=True`` (all
  steps' coefficients computed before the scan), and with no options at all
  ("default": the mode and hoisting in the layer's ``TUNED_PARALLEL`` and
  ``TUNED_HOIST`` for the backend, which this table is how we choose);
* rnn_jax's LSTM scan (:func:`experiments.benchmarking.build_rnn_jax`, plain
  autodiff and the fused custom backward), the reference of the ratios.

All at batch 16, hidden (and LRU state) 128, input size 1 (pixel MNIST's
shape), float32, time-major, zero initial state. It prints median ms and the
ratio to the LSTM, and writes ``bench_parallel.json`` to ``--out``. Recorded
runs, their commands and figures: ``experiments/results/README.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os

from rnn_jax.training import runtime

if __name__ == "__main__":
  runtime.use_fast_allocator()

import rnn_jax  # pylint: disable=wrong-import-position
from experiments import benchmarking  # pylint: disable=wrong-import-position
from rnn_jax.training.config import setting  # pylint: disable=wrong-import-position

LAYERS = ("mingru", "minlstm", "lru")


def linear_layer(name: str, hidden: int, parallel: bool | None):
  """The layer benchmarked for ``name``; the LRU has a dense skip (input 1 != output H)."""
  layer = {"mingru": lambda: rnn_jax.mingru(hidden, parallel=parallel),
           "minlstm": lambda: rnn_jax.minlstm(hidden, parallel=parallel),
           "lru": lambda: rnn_jax.lru(hidden, hidden, skip="dense", parallel=parallel)}[name]
  return layer()


def cases_for(shape) -> dict:
  """``case name -> (forward, forward_backward, args)`` for one shape.

  "default" is what ``rnn`` runs with no options (``parallel=None``,
  ``hoist=None``: the layer's tuned mode for the backend); the LSTM is the
  scan (``kernel="scan"``) with plain autodiff and with the fused backward.
  """
  hidden = shape[3]
  cases = {}
  for name in LAYERS:
    cases[f"{name} default"] = benchmarking.build_rnn(linear_layer(name, hidden, None), shape)
    cases[f"{name} parallel"] = benchmarking.build_rnn(linear_layer(name, hidden, True), shape)
    for hoist in (False, True):
      cases[f"{name} sequential" + " hoist" * hoist] = benchmarking.build_rnn(
          linear_layer(name, hidden, False), shape, hoist=hoist)
  cases["lstm"] = benchmarking.build_rnn_jax("lstm", shape, kernel="scan", vjp="autodiff")
  cases["lstm fused-bwd"] = benchmarking.build_rnn_jax("lstm", shape, kernel="scan", vjp="fused")
  return cases


def time_shape(shape, rounds: int) -> list:
  """One row per (case, mode) with the median and the ratio to the LSTM in that mode."""
  cases = cases_for(shape)
  rows = []
  for mode, index in (("fwd", 0), ("fwd+bwd", 1)):
    timed = {name: (parts[index], parts[2]) for name, parts in cases.items()
             if not (mode == "fwd" and name == "lstm fused-bwd")}  # same forward as "lstm"
    results = benchmarking.time_interleaved(timed, rounds=rounds, warmup=1)
    lstm_ms = results["lstm"]["median_s"] * 1e3
    for name, result in results.items():
      ms = result["median_s"] * 1e3
      rows.append({"shape": list(shape), "mode": mode, "case": name, "median_ms": ms,
                   "min_ms": result["min_s"] * 1e3, "compile_s": result["warmup_s"],
                   "repeats": result["repeats"], "vs_lstm": ms / lstm_ms})
      print(f"  T={shape[1]:5d} {mode:8s} {name:24s} {ms:9.2f} ms  x{ms / lstm_ms:5.2f} of lstm"
            f"  (compile {result['warmup_s']:.1f} s)", flush=True)
  return rows


def format_table(rows) -> str:
  """A Markdown table: one line per case, the median ms (and ratio to the LSTM) per T and mode."""
  columns = sorted({(row["shape"][1], row["mode"]) for row in rows})
  cases = list(dict.fromkeys(row["case"] for row in rows))
  cell = {(row["case"], row["shape"][1], row["mode"]): row for row in rows}
  header = "| layer | " + " | ".join(f"T={t} {mode} ms (x LSTM)" for t, mode in columns) + " |"
  lines = [header, "|---" * (len(columns) + 1) + "|"]
  for case in cases:
    entries = []
    for t, mode in columns:
      row = cell.get((case, t, mode))
      entries.append("-" if row is None else f"{row['median_ms']:.1f} ({row['vs_lstm']:.2f})")
    lines.append(f"| {case} | " + " | ".join(entries) + " |")
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ParallelConfig(benchmarking.BenchConfig):
  """The benchmark's settings; each field is a flag."""

  steps: tuple[int, ...] = setting((784, 4096), "Sequence lengths T.", lower=1)
  batch: int = setting(16, "Batch size B.", lower=1)
  hidden: int = setting(128, "Hidden units H.", lower=1)
  input: int = setting(1, "Input features I.", lower=1)
  rounds: int = setting(5, "Timed calls per case.", lower=1)
  quick: bool = setting(False, "T = 64, batch 4, hidden 16, 2 rounds: a smoke run "
                        "(bench_parallel_quick.json).")


def main(argv=None) -> None:
  config = benchmarking.parse(ParallelConfig, argv)
  if config.quick:
    config = dataclasses.replace(config, steps=(64,), batch=4, hidden=16, rounds=2)

  machine = benchmarking.describe_machine(config.label)
  print(f"machine: {machine['device']} ({machine['backend']}, {machine['cpu_count']} cores, "
        f"{machine.get('cpu_model', '')}), allocator {machine['allocator']}", flush=True)
  rows = []
  for steps in config.steps:
    rows += time_shape((config.batch, steps, config.input, config.hidden), config.rounds)
  table = format_table(rows)
  print(table)
  machine["load_average_end"] = os.getloadavg()
  os.makedirs(config.out, exist_ok=True)
  path = os.path.join(config.out, "bench_parallel_quick.json" if config.quick
                      else "bench_parallel.json")
  with open(path, "w") as f:
    json.dump({"machine": machine, "rows": rows, "table": table}, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
