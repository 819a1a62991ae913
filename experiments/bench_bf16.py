"""What bfloat16 compute (``rnn(..., compute_dtype=jnp.bfloat16)``) costs or saves.

    python -m experiments.bench_bf16                   # LSTM and GRU at the benchmark shapes
    python -m experiments.bench_bf16 --quick           # tiny shapes, a smoke run
    XLA_FLAGS=--xla_cpu_use_onednn=true python -m experiments.bench_bf16   # another XLA:CPU path

For each cell (LSTM, GRU) and shape ``(B, T, I, H)`` of
``experiments.benchmarking.DEFAULT_SHAPES``, the gradient of ``sum(outputs)``
with respect to the parameters and the inputs (forward+backward, the cell's
default options) is timed with ``compute_dtype=None`` (float32) and
``jnp.bfloat16`` side by side in one process
(:func:`experiments.benchmarking.time_interleaved`, median of ``--rounds``
calls after warm-up, ``jax.block_until_ready``). Next to the times it reads
the optimized HLO of the bf16 gradient (:func:`dot_census`): how many of its
dots keep bf16 operands and how many XLA upcast to float32, and whether each
runs in a library fusion (YNNPACK, XNNPACK, oneDNN) or XLA's own dot
emitter, which says whether XLA:CPU turned them into bf16 kernels. It prints
one markdown table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re

import jax
import jax.numpy as jnp

from experiments import benchmarking

CELLS = ("lstm", "gru")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes and few rounds")
  parser.add_argument("--rounds", type=int, default=10, help="timed calls per case")
  parser.add_argument("--shape", action="append", default=None, metavar="B,T,I,H",
                      help="a shape to time instead of the benchmark's (repeatable)")
  args = parser.parse_args(argv)
  if args.rounds < 1:
    parser.error(f"--rounds must be a positive int, got {args.rounds}")
  args.shapes = benchmarking.QUICK_SHAPES if args.quick else benchmarking.DEFAULT_SHAPES
  if args.shape:
    try:
      args.shapes = [tuple(int(size) for size in shape.split(",")) for shape in args.shape]
    except ValueError:
      parser.error(f"--shape must be four ints B,T,I,H, got {args.shape}")
    if any(len(shape) != 4 or min(shape) < 1 for shape in args.shapes):
      parser.error(f"--shape must be four positive ints B,T,I,H, got {args.shape}")
  if args.quick:
    args.rounds = min(args.rounds, 3)
  return args


LIBRARY_FUSION = re.compile(r'calls=%([\w.-]+).*"kind":"(__\w+_fusion)"')
"""A fusion XLA:CPU hands to a library (``__ynn_fusion``: YNNPACK, ``__xnn_fusion``,
``__onednn_fusion``), and the computation it calls."""


def dot_census(optimized_hlo: str) -> dict:
  """What the compiled program does with its matrix products.

  Returns ``{"bf16_library": n, "bf16_xla": n, "f32_library": n, "f32_xla": n}``:
  the ``dot`` instructions by operand type (bf16, or float32: XLA upcast them)
  and by who runs them (inside a library fusion, e.g. YNNPACK's, or XLA's own
  dot emitter, Eigen).
  """
  library_computations = {name for name, _ in LIBRARY_FUSION.findall(optimized_hlo)}
  census = {"bf16_library": 0, "bf16_xla": 0, "f32_library": 0, "f32_xla": 0}
  for computation in re.split(r"\n(?=\S)", optimized_hlo):
    header = re.match(r"(?:ENTRY )?%([\w.-]+)", computation)
    where = "library" if header and header.group(1) in library_computations else "xla"
    types = dict(re.findall(r"%([\w.-]+) = (\w+)\[", computation))
    types.update(re.findall(r"%([\w.-]+): (\w+)\[", computation))  # Parameters.
    for lhs, rhs in re.findall(r" dot\(%([\w.-]+), %([\w.-]+)\)", computation):
      kind = {"bf16": "bf16", "f32": "f32"}.get(types.get(lhs))
      if kind and types.get(rhs) == types.get(lhs):
        census[f"{kind}_{where}"] += 1
  return census


def measure(args: argparse.Namespace) -> list[dict]:
  """One row per (cell, shape): median seconds in float32 and bfloat16, their ratio and the
  bf16 gradient's dot census."""
  rows = []
  for cell in CELLS:
    for shape in args.shapes:
      cases = {}
      for name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        _, forward_backward, inputs = benchmarking.build_rnn_jax(cell, shape, compute_dtype=dtype)
        cases[name] = (forward_backward, inputs)
      census = dot_census(cases["bfloat16"][0].lower(*cases["bfloat16"][1]).compile().as_text())
      times = benchmarking.time_interleaved(cases, rounds=args.rounds)
      float32, bfloat16 = times["float32"]["median_s"], times["bfloat16"]["median_s"]
      rows.append({"cell": cell, "shape": list(shape), "float32_ms": 1e3 * float32,
                   "bfloat16_ms": 1e3 * bfloat16, "ratio": bfloat16 / float32, **census})
  return rows


def table(rows: list[dict]) -> str:
  lines = ["| cell | (B, T, I, H) | float32 (ms) | bfloat16 (ms) | bf16 / f32 | bf16 program's "
           "dots: bf16 (library + XLA) / upcast to f32 (library + XLA) |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['cell']} | {tuple(row['shape'])} | {row['float32_ms']:.2f} | "
                 f"{row['bfloat16_ms']:.2f} | {row['ratio']:.2f}x | {row['bf16_library']} + "
                 f"{row['bf16_xla']} / {row['f32_library']} + {row['f32_xla']} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  args = parse_args(argv)
  machine = benchmarking.describe_machine("bench_bf16")
  rows = measure(args)
  print(f"forward+backward, median of {args.rounds} rounds, backend {jax.default_backend()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load {machine['load_average_start']}")
  print(table(rows))
  print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS", ""), "rounds": args.rounds,
                    "machine": machine, "rows": rows}))


if __name__ == "__main__":
  main()
