"""Forward-only (inference) time of LSTM and GRU on CPU: the scan, oneDNN's inference
primitive (``kernel="onednn_inference"``), the default (``kernel=None``) and PyTorch.

``python -m experiments.bench_inference`` prints, per cell and benchmark shape
``(B, T, I, H)``, the median ms of each over interleaved rounds in one process
(:func:`experiments.benchmarking.time_interleaved`, after warm-up,
``block_until_ready``) and the fastest call, batch-major inputs ``[B, T, I]``
as a user's script passes them, and each one's speed relative to the scan
(``scan time / its time``; the minimum is steadier on a loaded machine). PyTorch runs
``nn.LSTM`` / ``nn.GRU`` with ``batch_first=True`` under ``torch.no_grad()`` on
``--torch_threads`` threads. With the extension installed the default is the C++
loop's forward (``kernel="cpu_loop"`` without residuals), which replaced
``"onednn_inference"`` as the LSTM's forward-only default (the Performance guide has
the figures).
Needs the ``rnn_jax_onednn`` extension (``pip install ./rnn_jax_onednn``).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax
from experiments import benchmarking
from rnn_jax import onednn


def build_cases(cell_name: str, shape, torch_threads: int, torch: bool = True) -> dict:
  """``name -> (forward, args)`` for one cell and shape, batch-major inputs."""
  batch, steps, inputs, hidden = shape
  cell = benchmarking.rnn_jax_cell(cell_name, hidden)
  params = cell.init(jax.random.key(0), inputs)
  xs_np = np.random.default_rng(0).standard_normal((batch, steps, inputs), np.float32)
  xs = jnp.asarray(xs_np)
  cases = {}
  for name, kernel in (("scan", "scan"), ("onednn_inference", "onednn_inference"),
                       ("default", None)):
    forward = jax.jit(lambda p, x, kernel=kernel: rnn_jax.rnn(cell, p, x, kernel=kernel)[0])
    cases[name] = (forward, (params, xs))
  if torch and benchmarking.torch_available():
    import torch  # pylint: disable=import-outside-toplevel,redefined-outer-name
    torch.set_num_threads(torch_threads)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell_name](inputs, hidden,
                                                                     batch_first=True)

    def torch_forward(x):
      with torch.no_grad():
        return module(x)[0]

    cases["torch"] = (torch_forward, (torch.from_numpy(xs_np),))
  return cases


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--cells", default="lstm,gru")
  parser.add_argument("--shapes", default="",
                      help="';'-separated B,T,I,H shapes (default: the three benchmark shapes)")
  parser.add_argument("--no_torch", action="store_true", help="leave PyTorch out")
  args = parser.parse_args(argv)
  if not onednn.available():
    raise SystemExit(onednn.INSTALL_HINT)
  shapes = (tuple(tuple(int(n) for n in shape.split(",")) for shape in args.shapes.split(";"))
            if args.shapes else benchmarking.DEFAULT_SHAPES)
  print(f"# load average before: {os.getloadavg()}; {jax.default_backend()}, "
        f"{benchmarking.describe_machine('cpu')['cpu_model']}")
  for cell_name in args.cells.split(","):
    for shape in shapes:
      cases = build_cases(cell_name, shape, args.torch_threads, torch=not args.no_torch)
      times = benchmarking.time_interleaved(cases, rounds=args.rounds)
      scan, scan_min = times["scan"]["median_s"], times["scan"]["min_s"]
      row = "  ".join(f"{name} {t['median_s'] * 1e3:.2f} ms ({scan / t['median_s']:.2f}x; min "
                      f"{t['min_s'] * 1e3:.2f}, {scan_min / t['min_s']:.2f}x)"
                      for name, t in times.items())
      print(f"{cell_name} {shape}: {row}", flush=True)
  print(f"# load average after: {os.getloadavg()}")


if __name__ == "__main__":
  main()
