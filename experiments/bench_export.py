"""Inference time of an exported model in onnxruntime against rnn_jax's jitted forward and torch's.

    python -m experiments.bench_export                    # the three benchmark shapes, LSTM and GRU
    python -m experiments.bench_export --quick            # tiny, a smoke run
    python -m experiments.bench_export --cells lstm --rounds 10
    python -m experiments.bench_export --threads 1        # onnxruntime and torch on one thread

For each cell (``lstm``: ``rnn_jax.lstm(H, forget_bias=0.0)``, ``gru``: ``rnn_jax.gru(H)``,
PyTorch's equations) and shape (B, T, I, H) it times, side by side in one process and
interleaved round by round (:func:`experiments.benchmarking.time_interleaved`), the forward
pass over a whole float32 batch from a zero carry of:

* ``rnn_jax``: ``jax.jit`` of ``rnn_jax.rnn`` (:func:`experiments.benchmarking.build_rnn_jax`,
  time-major inputs, the default options);
* ``onnxruntime``: the same cell and parameters written by :func:`rnn_jax.export.to_onnx`
  (batch-major inputs, the model transposes them), in an ``onnxruntime.InferenceSession`` on the
  CPU execution provider, fetching ``outputs`` only;
* ``torch``: ``torch.nn.LSTM`` / ``GRU`` under ``no_grad`` (when torch is installed).

``--threads N`` sets onnxruntime's ``intra_op_num_threads`` and ``torch.set_num_threads`` (0,
the default: each library's own default, one thread per core); JAX keeps its own thread pool.
On a machine shared with other work, torch's OpenMP threads at its default wait on each other
(on the project's loaded 2-core VM, an LSTM forward took 3 to 10 times longer with 2 threads
than with 1), so compare at ``--threads 1`` there.

It checks once that onnxruntime's outputs equal rnn_jax's (to 1e-4), then prints the median ms
of each and its ratio to rnn_jax's as a Markdown table, and writes ``bench_export.json`` to
``--out``. The Deployment guide (docs/guides/deployment.md) shows the recorded run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import numpy as np

from rnn_jax.training import runtime

if __name__ == "__main__":
  runtime.use_fast_allocator()

from experiments import benchmarking  # pylint: disable=wrong-import-position
from rnn_jax import export  # pylint: disable=wrong-import-position
from rnn_jax.training.config import setting  # pylint: disable=wrong-import-position

CELLS = ("lstm", "gru")
QUICK_SHAPE = (4, 6, 3, 8)


def build_onnxruntime(cell_name: str, shape, directory: str, threads: int = 0):
  """``(forward, args, check)``: the rnn_jax cell of ``build_rnn_jax`` (same parameters)
  exported and served by onnxruntime; ``check()`` asserts it equals rnn_jax's forward."""
  import onnxruntime  # pylint: disable=import-outside-toplevel
  jax_forward, _, (params, xs) = benchmarking.build_rnn_jax(cell_name, shape)
  cell = benchmarking.rnn_jax_cell(cell_name, shape[3])
  path = os.path.join(directory, f"{cell_name}_{'x'.join(map(str, shape))}.onnx")
  export.to_onnx(cell, params, path)
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # Not the note on the overridable initial-carry inputs.
  options.intra_op_num_threads = threads
  session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  batch_major = np.ascontiguousarray(np.swapaxes(np.asarray(xs), 0, 1))

  def forward(xs):
    return session.run(["outputs"], {"xs": xs})[0]

  def check():
    np.testing.assert_allclose(np.swapaxes(forward(batch_major), 0, 1),
                               np.asarray(jax_forward(params, xs)), atol=1e-4, rtol=0)

  return forward, (batch_major,), check


def time_shape(cell_name: str, shape, rounds: int, directory: str, threads: int = 0) -> list:
  """One row per runtime: median and min ms, compile (first call) s, ratio to rnn_jax's median."""
  forward, _, args = benchmarking.build_rnn_jax(cell_name, shape)
  ort_forward, ort_args, check = build_onnxruntime(cell_name, shape, directory, threads)
  check()
  cases = {"rnn_jax": (forward, args), "onnxruntime": (ort_forward, ort_args)}
  if benchmarking.torch_available():
    torch_forward, _, torch_args = benchmarking.build_torch(cell_name, shape)
    cases["torch"] = (torch_forward, torch_args)
  results = benchmarking.time_interleaved(cases, rounds=rounds, warmup=2)
  reference_ms = results["rnn_jax"]["median_s"] * 1e3
  rows = []
  for name, result in results.items():
    ms = result["median_s"] * 1e3
    rows.append({"cell": cell_name, "shape": list(shape), "runtime": name, "median_ms": ms,
                 "min_ms": result["min_s"] * 1e3, "first_call_s": result["warmup_s"],
                 "repeats": result["repeats"], "vs_rnn_jax": ms / reference_ms})
    print(f"  {cell_name:4s} {shape!s:20} {name:12s} {ms:9.2f} ms  x{ms / reference_ms:5.2f}"
          f" of rnn_jax", flush=True)
  return rows


def format_table(rows) -> str:
  """Markdown: one line per cell and shape, each runtime's median ms and ratio to rnn_jax."""
  runtimes = list(dict.fromkeys(row["runtime"] for row in rows))
  keys = list(dict.fromkeys((row["cell"], tuple(row["shape"])) for row in rows))
  cell = {(row["cell"], tuple(row["shape"]), row["runtime"]): row for row in rows}
  lines = ["| cell | (B, T, I, H) | " + " | ".join(f"{r} ms (x rnn_jax)" for r in runtimes)
           + " |", "|---|---|" + "---|" * len(runtimes)]
  for name, shape in keys:
    entries = []
    for runtime_name in runtimes:
      row = cell.get((name, shape, runtime_name))
      entries.append("-" if row is None else f"{row['median_ms']:.2f} ({row['vs_rnn_jax']:.2f})")
    lines.append(f"| {name} | {shape} | " + " | ".join(entries) + " |")
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ExportBenchConfig(benchmarking.BenchConfig):
  """The benchmark's settings; each field is a flag."""

  cells: tuple[str, ...] = setting(CELLS, "Cells to time.", choices=CELLS)
  rounds: int = setting(10, "Timed calls per runtime.", lower=1)
  quick: bool = setting(False, f"One tiny shape {QUICK_SHAPE}, 2 rounds "
                        "(bench_export_quick*.json).")
  threads: int = setting(0, "onnxruntime's and torch's threads (0: their defaults).", lower=0)


def main(argv=None) -> None:
  config = benchmarking.parse(ExportBenchConfig, argv)
  shapes = [QUICK_SHAPE] if config.quick else list(benchmarking.DEFAULT_SHAPES)
  rounds = 2 if config.quick else config.rounds

  if config.threads and benchmarking.torch_available():
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(config.threads)
  machine = benchmarking.describe_machine(config.label)
  machine["threads"] = config.threads
  print(f"machine: {machine['device']} ({machine['backend']}, {machine['cpu_count']} cores, "
        f"{machine.get('cpu_model', '')}), allocator {machine['allocator']}, load average "
        f"{machine['load_average_start'][0]:.1f}, onnxruntime/torch threads "
        f"{config.threads or 'default'}", flush=True)
  rows = []
  with tempfile.TemporaryDirectory() as directory:
    for cell_name in config.cells:
      for shape in shapes:
        rows += time_shape(cell_name, shape, rounds, directory, config.threads)
  table = format_table(rows)
  print(table)
  machine["load_average_end"] = os.getloadavg()
  os.makedirs(config.out, exist_ok=True)
  name = "bench_export_quick" if config.quick else "bench_export"
  path = os.path.join(config.out, f"{name}_threads{config.threads}.json" if config.threads
                      else f"{name}.json")
  with open(path, "w") as f:
    json.dump({"machine": machine, "rows": rows, "table": table}, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
