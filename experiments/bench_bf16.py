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
emitter, which says whether XLA:CPU turned them into bf16 kernels. First, the
same for one matmul in each of the three layouts a layer's products take
(forward, input gradient, weight gradient; :func:`measure_dots`, minima of
``10 * --rounds`` calls). It prints two markdown tables and, last, one JSON line.
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
                   "bfloat16_ms": 1e3 * bfloat16, "ratio": bfloat16 / float32,
                   "ratio_of_minima": times["bfloat16"]["min_s"] / times["float32"]["min_s"],
                   **census})
  return rows


LAYOUTS = {"x @ w (forward)": ("mk,kn->mn", lambda m, k, n: ((m, k), (k, n))),
           "g @ w^T (input gradient)": ("mn,kn->mk", lambda m, k, n: ((m, n), (k, n))),
           "x^T g (weight gradient)": ("mk,mn->kn", lambda m, k, n: ((m, k), (m, n)))}
"""The three products of a layer's matmul and its backward pass, as einsum specs and shapes."""


def measure_dots(args: argparse.Namespace) -> list[dict]:
  """One matmul ``[M, K] x [K, N]`` (M = B, K = H, N = 4H: an LSTM step's recurrent product)
  in each layout, float32 against bf16 operands with float32 accumulation, side by side."""
  rows = []
  for shape in args.shapes:
    m, k, n = shape[0], shape[3], 4 * shape[3]
    for layout, (spec, shapes) in LAYOUTS.items():
      a_shape, b_shape = shapes(m, k, n)
      a = jax.random.normal(jax.random.key(0), a_shape)
      b = jax.random.normal(jax.random.key(1), b_shape)
      product = lambda dtype: jax.jit(lambda a, b: jnp.einsum(
          spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32))
      cases = {"float32": (product(jnp.float32), (a, b)),
               "bfloat16": (product(jnp.bfloat16), (a.astype(jnp.bfloat16),
                                                    b.astype(jnp.bfloat16)))}
      census = dot_census(cases["bfloat16"][0].lower(*cases["bfloat16"][1]).compile().as_text())
      times = benchmarking.time_interleaved(cases, rounds=10 * args.rounds)
      rows.append({"layout": layout, "mkn": [m, k, n],
                   "float32_us": 1e6 * times["float32"]["min_s"],
                   "bfloat16_us": 1e6 * times["bfloat16"]["min_s"],
                   "ratio_of_minima": times["bfloat16"]["min_s"] / times["float32"]["min_s"],
                   **census})
  return rows


def _dots(row: dict) -> str:
  """A row's dot census: ``bf16 (library + XLA) / float32 (library + XLA)``."""
  return (f"{row['bf16_library']} + {row['bf16_xla']} / {row['f32_library']} + "
          f"{row['f32_xla']}")


def table(rows: list[dict]) -> str:
  return benchmarking.markdown_table(
      ["cell", "(B, T, I, H)", "float32 (ms)", "bfloat16 (ms)", "bf16 / f32",
       "bf16 program's dots: bf16 (library + XLA) / upcast to f32 (library + XLA)"],
      [[row["cell"], tuple(row["shape"]), f"{row['float32_ms']:.2f}",
        f"{row['bfloat16_ms']:.2f}",
        f"{row['ratio']:.2f}x (minima {row['ratio_of_minima']:.2f}x)", _dots(row)]
       for row in rows])


def dots_table(rows: list[dict]) -> str:
  return benchmarking.markdown_table(
      ["one matmul", "(M, K, N)", "float32 (us, min)", "bf16 (us, min)", "bf16 / f32",
       "dot: bf16 (library + XLA) / f32 (library + XLA)"],
      [[row["layout"], tuple(row["mkn"]), f"{row['float32_us']:.1f}",
        f"{row['bfloat16_us']:.1f}", f"{row['ratio_of_minima']:.2f}x", _dots(row)]
       for row in rows])


def main(argv=None) -> None:
  args = parse_args(argv)
  machine = benchmarking.describe_machine("bench_bf16")
  dots = measure_dots(args)
  rows = measure(args)
  print(dots_table(dots))
  print(f"forward+backward, median of {args.rounds} rounds, backend {jax.default_backend()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load {machine['load_average_start']}")
  print(table(rows))
  print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS", ""), "rounds": args.rounds,
                    "machine": machine, "dots": dots, "rows": rows}))


if __name__ == "__main__":
  main()
