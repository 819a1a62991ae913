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

import argparse
import json
import os

from rnn_jax.training import runtime

if __name__ == "__main__":
  runtime.use_fast_allocator()

import rnn_jax  # pylint: disable=wrong-import-position
from experiments import benchmarking  # pylint: disable=wrong-import-position
from experiments.bench_rnn import describe_machine  # pylint: disable=wrong-import-position

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


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", default="784,4096", help="sequence lengths T, comma-separated")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--input", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=5, help="timed calls per case")
  parser.add_argument("--quick", action="store_true", help="T = 64, batch 4, hidden 16, 2 rounds")
  parser.add_argument("--out", default="experiments/results")
  parser.add_argument("--label", default="", help="a name for the machine, printed and saved")
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.batch, args.hidden, args.rounds = "64", 4, 16, 2

  machine = describe_machine(args.label)
  print(f"machine: {machine['device']} ({machine['backend']}, {machine['cpu_count']} cores, "
        f"{machine.get('cpu_model', '')}), allocator {machine['allocator']}", flush=True)
  rows = []
  for steps in (int(t) for t in args.steps.split(",")):
    rows += time_shape((args.batch, steps, args.input, args.hidden), args.rounds)
  table = format_table(rows)
  print(table)
  machine["load_average_end"] = os.getloadavg()
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "bench_parallel_quick.json" if args.quick
                      else "bench_parallel.json")
  with open(path, "w") as f:
    json.dump({"machine": machine, "rows": rows, "table": table}, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
