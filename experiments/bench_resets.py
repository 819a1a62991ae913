"""What resets inside sequences cost: forward+backward with 5% random resets vs without.

    python -m experiments.bench_resets                 # the default shapes
    python -m experiments.bench_resets --quick         # tiny shapes, a smoke run

For each layer (LSTM and GRU with their default options, minGRU and LRU in
the parallel mode), the gradient of ``sum(outputs)`` with respect to the
parameters and the inputs is timed with ``rnn(..., resets=...)`` (each step
flagged with probability ``--rate``, drawn once) and without resets, side by
side in one process (:func:`experiments.benchmarking.time_interleaved`,
median of ``--rounds`` calls after warm-up, ``jax.block_until_ready``). It
prints one markdown table (the ratio is with / without; the issue's targets
are <= 1.1x for LSTM/GRU and <= 1.2x for the parallel layers) and, last, one
JSON line.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax
from experiments import benchmarking

LAYERS = {
    "lstm": lambda hidden: rnn_jax.lstm(hidden),
    "gru": lambda hidden: rnn_jax.gru(hidden),
    "mingru (parallel)": lambda hidden: rnn_jax.mingru(hidden, parallel=True),
    "lru (parallel)": lambda hidden: rnn_jax.lru(hidden, hidden, skip="dense", parallel=True),
}
TARGETS = {"lstm": 1.1, "gru": 1.1, "mingru (parallel)": 1.2, "lru (parallel)": 1.2}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes and few rounds")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=128)
  parser.add_argument("--inputs", type=int, default=32)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--rate", type=float, default=0.05, help="fraction of steps flagged")
  parser.add_argument("--rounds", type=int, default=10, help="timed calls per case")
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.steps, args.inputs, args.hidden, args.rounds = 4, 16, 4, 8, 3
  for name in ("batch", "steps", "inputs", "hidden", "rounds"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be a positive int, got {getattr(args, name)}")
  if not 0.0 <= args.rate <= 1.0:
    parser.error(f"--rate must be in [0, 1], got {args.rate}")
  return args


def gradient_fn(layer, with_resets: bool):
  """``(params, xs, resets) -> grads`` of ``sum(outputs)`` w.r.t. params and inputs, jitted."""

  def loss(params, xs, resets):
    outputs, _ = rnn_jax.rnn(layer, params, xs, resets=resets if with_resets else None)
    return jnp.sum(outputs)

  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def measure(args: argparse.Namespace) -> list[dict]:
  """One row per layer: median seconds with and without resets, and their ratio."""
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((args.batch, args.steps, args.inputs)), jnp.float32)
  resets = jnp.asarray(rng.random((args.batch, args.steps)) < args.rate)
  rows = []
  for name, make in LAYERS.items():
    layer = make(args.hidden)
    params = layer.init(jax.random.key(0), args.inputs)
    times = benchmarking.time_interleaved(
        {"without": (gradient_fn(layer, False), (params, xs, resets)),
         "with": (gradient_fn(layer, True), (params, xs, resets))}, rounds=args.rounds)
    without, with_ = times["without"]["median_s"], times["with"]["median_s"]
    rows.append({"layer": name, "without_ms": 1e3 * without, "with_ms": 1e3 * with_,
                 "ratio": with_ / without, "target": TARGETS[name]})
  return rows


def table(rows: list[dict]) -> str:
  return benchmarking.markdown_table(
      ["layer (forward+backward)", "without resets (ms)", "with resets (ms)", "ratio", "target"],
      [[row["layer"], f"{row['without_ms']:.2f}", f"{row['with_ms']:.2f}",
        f"{row['ratio']:.2f}x", f"<= {row['target']}x"] for row in rows])


def main(argv=None) -> None:
  args = parse_args(argv)
  rows = measure(args)
  print(f"B={args.batch} T={args.steps} I={args.inputs} H={args.hidden}, "
        f"{100 * args.rate:g}% of steps reset, median of {args.rounds} rounds, "
        f"backend {jax.default_backend()}")
  print(table(rows))
  print(json.dumps({"shape": [args.batch, args.steps, args.inputs, args.hidden],
                    "rate": args.rate, "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
  main()
