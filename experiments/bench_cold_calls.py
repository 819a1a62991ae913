"""What a call costs right after the cores idled: back to back against after a pause.

    python -m experiments.bench_cold_calls                   # LSTM and GRU, pixel-MNIST shape
    python -m experiments.bench_cold_calls --idle 0.35 --shapes 64,256,128,256

A training loop calls its compiled step again and again. A benchmark that
interleaves libraries calls each one right after another library's call, and
some of those (PyTorch's LSTM and GRU at small batches) run for a third of a
second mostly on one core. On our 2-core VM a call that follows such a pause
can run slower; this script measures by how much. For each cell and shape it
times, for rnn_jax's defaults (the C++ loop where ``rnn_jax_onednn`` is
installed), rnn_jax's ``kernel="scan"`` and Flax Linen ``nn.RNN``, forward and
forward+backward (``value_and_grad`` of ``sum(outputs)`` with respect to the
parameters and batch-major inputs, as ``experiments.bench_rnn`` does):

* ``back to back``: the median of ``--calls`` calls made one after another;
* ``after <s> s idle``: the median of ``--calls`` calls, each after ``s``
  seconds of ``time.sleep``, for each ``s`` of ``--idle``.

It runs with tcmalloc (or glibc keeping freed memory) like the training
scripts (:func:`rnn_jax.training.runtime.use_fast_allocator`), so that page
faults do not blur the picture, prints one Markdown table (ms) and writes
``bench_cold_calls.json`` to ``--out``. ``experiments.bench_rnn`` makes an
untimed call of each case before its timed one for this reason
(:func:`experiments.benchmarking.time_interleaved`'s ``rewarm``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

from rnn_jax.training import runtime

if __name__ == "__main__":
  runtime.use_fast_allocator()  # Re-executes with tcmalloc before JAX starts its threads.

import jax  # pylint: disable=wrong-import-position

from experiments import benchmarking  # pylint: disable=wrong-import-position
from rnn_jax.training.config import setting  # pylint: disable=wrong-import-position


@dataclasses.dataclass(frozen=True)
class ColdCallsConfig(benchmarking.BenchConfig):
  """The script's settings; each field is a flag."""

  cells: tuple[str, ...] = setting(("lstm", "gru"), "Cells to time.", choices=("lstm", "gru"))
  shapes: tuple[int, ...] = setting((16, 784, 1, 128), "Shapes B,T,I,H, four integers each, one "
                                    "after the other.", lower=1)
  idle: tuple[float, ...] = setting((0.01, 0.1, 0.35), "Seconds of sleep before each timed "
                                    "call, one column each.", lower=0.0)
  calls: int = setting(10, "Timed calls per case and way.", lower=1)
  no_flax: bool = setting(False, "Leave Flax Linen out.", aliases=("no-flax",))

  def check(self) -> None:
    benchmarking.split_shapes(self.shapes)


def timed_call(fn, args) -> float:
  """Milliseconds of one call, until its result is ready."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return 1e3 * (time.perf_counter() - start)


def measure(fn, args, calls: int, idle) -> dict:
  """``{"back_to_back_ms": ms, "after_idle_ms": {seconds: ms}}``: the medians of ``calls``
  calls made one after another, and of ``calls`` calls each after ``seconds`` of sleep, for
  each of ``idle``."""
  back_to_back = benchmarking.time_function(fn, *args, repeats=calls, warmup=2)["median_s"]
  after_idle = {}
  for seconds in idle:
    times = []
    for _ in range(calls):
      time.sleep(seconds)
      times.append(timed_call(fn, args))
    after_idle[seconds] = statistics.median(times)
  return {"back_to_back_ms": 1e3 * back_to_back, "after_idle_ms": after_idle}


def main(argv=None) -> None:
  config = benchmarking.parse(ColdCallsConfig, argv)
  machine = benchmarking.describe_machine(config.label)
  rows = []
  for cell in config.cells:
    for shape in benchmarking.split_shapes(config.shapes):
      builds = {"rnn_jax": benchmarking.build_rnn_jax(cell, shape, time_major=False),
                "rnn_jax scan": benchmarking.build_rnn_jax(cell, shape, time_major=False,
                                                           kernel="scan")}
      if not config.no_flax:
        builds["flax"] = benchmarking.build_flax(cell, shape, time_major=False)
      for library, (forward, forward_backward, args) in builds.items():
        for mode, fn in (("fwd", forward), ("fwd+bwd", forward_backward)):
          row = {"cell": cell, "shape": list(shape), "library": library, "mode": mode}
          row.update(measure(fn, args, config.calls, config.idle))
          rows.append(row)
  print(f"# {machine['label'] or machine['device']} | {machine['cpu_model']} "
        f"x{machine['cpu_count']} | allocator {machine['allocator']} | "
        f"load {machine['load_average_start']} | medians of {config.calls} calls, ms")
  print(benchmarking.markdown_table(
      ["cell", "B, T, I, H", "library", "pass", "back to back"]
      + [f"after {seconds:g} s idle" for seconds in config.idle],
      [[r["cell"], ", ".join(map(str, r["shape"])), r["library"], r["mode"],
        f"{r['back_to_back_ms']:.2f}"]
       + [f"{r['after_idle_ms'][seconds]:.2f}" for seconds in config.idle] for r in rows]))
  os.makedirs(config.out, exist_ok=True)
  path = os.path.join(config.out, "bench_cold_calls.json")
  with open(path, "w") as f:
    json.dump({"machine": machine, "idle_s": list(config.idle), "calls": config.calls,
               "rows": rows}, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
