"""Memory of the gradient against sequence length: default, fused, per-step remat, remat every k.

    python -m experiments.bench_memory                     # the published table and figure
    python -m experiments.bench_memory --quick             # a smoke run (small T, 1 round)

For an LSTM (hidden 128, batch 8, input size 1, float32) and a loss on the
final carry, it compiles the gradient with respect to the parameters and the
inputs for each backward mode:

* ``default``: plain autodiff of the scan (``vjp="autodiff"``: ``rnn``'s default before the
  LSTM took ``vjp="remat"`` on CPU for long sequences of a narrow batch);
* ``fused``: the hand-written backward (``vjp="fused"``);
* ``remat``: ``rnn_jax.remat(layer)``, each step under ``jax.checkpoint``;
* ``every_sqrt_t``: ``rnn_jax.remat(layer, every=round(sqrt(T)))``, the carry
  kept every ``sqrt(T)`` steps and each chunk recomputed;

and reads XLA's own figure for the temporaries it allocates
(``compiled.memory_analysis().temp_size_in_bytes``: not a timing, the same on
every run). For each mode it also finds, by bisection over compiled memory
(arguments, outputs and temporaries), the longest T that fits in
``--memory_gib`` (default: this machine's RAM), and times the four modes side
by side in one process at ``--time_steps`` (median of ``--rounds``
interleaved rounds after warm-up) as a ratio to the default.

It prints the table, and writes ``bench_memory.json`` and
``bench_memory.png`` (memory against T, log-log) to ``--out``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from rnn_jax.training import runtime

if __name__ == "__main__":
  runtime.use_fast_allocator()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

import rnn_jax  # pylint: disable=wrong-import-position
from experiments import benchmarking  # pylint: disable=wrong-import-position
from rnn_jax.training.config import Config, setting  # pylint: disable=wrong-import-position

MODES = ("default", "fused", "remat", "every_sqrt_t")
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class MemoryConfig(Config):
  """The benchmark's settings; each field is a flag."""

  steps: tuple[int, ...] = setting((1000, 4000, 16000, 64000, 256000, 1000000),
                                   "Sequence lengths T of the memory table.", lower=1)
  time_steps: int = setting(4000, "T at which the modes are timed.", lower=1)
  rounds: int = setting(5, "Interleaved timing rounds.", lower=1)
  memory_gib: float | None = setting(None, "Memory the longest trainable T must fit in "
                                     "(default: this machine's RAM).", lower=0.001)
  quick: bool = setting(False, "Small T and one round: a smoke run.")
  out: str = setting("experiments/results/memory", "Where to write the results.")


HIDDEN, BATCH, INPUT = 128, 8, 1


def model(mode: str, num_steps: int):
  """``(layer, rnn keyword arguments)`` of one backward mode at sequence length ``num_steps``."""
  layer = rnn_jax.lstm(HIDDEN)
  if mode == "fused":
    return layer, {"vjp": "fused"}
  if mode == "remat":
    return rnn_jax.remat(layer), {}
  if mode == "every_sqrt_t":
    return rnn_jax.remat(layer, every=max(1, round(math.sqrt(num_steps)))), {}
  return layer, {"vjp": "autodiff"}


def gradient(mode: str, num_steps: int):
  """The jitted gradient of a loss on the final carry, w.r.t. params and ``xs [B, T, 1]``."""
  layer, options = model(mode, num_steps)
  loss = lambda params, xs: jnp.sum(rnn_jax.rnn(layer, params, xs, **options)[1].h)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def compiled_memory(mode: str, num_steps: int) -> dict:
  """XLA's memory figures (bytes) of the compiled gradient at ``num_steps``."""
  params = jax.eval_shape(lambda key: rnn_jax.lstm(HIDDEN).init(key, INPUT), jax.random.key(0))
  xs = jax.ShapeDtypeStruct((BATCH, num_steps, INPUT), jnp.float32)
  analysis = gradient(mode, num_steps).lower(params, xs).compile().memory_analysis()
  return {"temp": analysis.temp_size_in_bytes, "arguments": analysis.argument_size_in_bytes,
          "outputs": analysis.output_size_in_bytes}


def longest_trainable(mode: str, budget_bytes: float, cap: int = 2**31,
                      precision: float = 0.01) -> int:
  """The largest T (to ``precision``, relative) whose compiled gradient's arguments, outputs
  and temporaries fit in ``budget_bytes``; 0 if not even T = 1 does; ``cap`` if it does."""
  fits = lambda t: sum(compiled_memory(mode, t).values()) <= budget_bytes
  low, high = 0, 64
  while fits(high):
    low, high = high, high * 2
    if high > cap:
      return cap
  while high - low > max(1, int(low * precision)):
    middle = (low + high) // 2
    low, high = (middle, high) if fits(middle) else (low, middle)
  return low


def time_ratios(num_steps: int, rounds: int) -> dict:
  """Median seconds and the ratio to the default of each mode's gradient, side by side."""
  key_params, key_xs = jax.random.split(jax.random.key(0))
  params = rnn_jax.lstm(HIDDEN).init(key_params, INPUT)
  xs = jax.random.normal(key_xs, (BATCH, num_steps, INPUT))
  cases = {mode: (gradient(mode, num_steps), (params, xs)) for mode in MODES}
  timings = benchmarking.time_interleaved(cases, rounds=rounds)
  default = timings["default"]["median_s"]
  return {mode: {"median_s": t["median_s"], "ratio_to_default": t["median_s"] / default,
                 "times_s": t["times_s"]} for mode, t in timings.items()}


def machine_memory_bytes() -> float:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def plot(table: dict, path: str) -> None:
  """Temporary memory against T, one line per mode, log-log."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axes = plt.subplots(figsize=(6.4, 4.2))
  for mode in MODES:
    steps = sorted(int(t) for t in table)
    axes.plot(steps, [table[str(t)][mode]["temp"] / MIB for t in steps], marker="o", label=mode)
  axes.set(xscale="log", yscale="log", xlabel="sequence length T",
           ylabel="temporary memory of the gradient (MiB)",
           title=f"LSTM {HIDDEN}, batch {BATCH}: memory of the backward pass")
  axes.grid(True, which="both", alpha=0.3)
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main(argv=None) -> None:
  config = benchmarking.parse(MemoryConfig, argv)
  steps, time_steps, rounds = list(config.steps), config.time_steps, config.rounds
  budget = (config.memory_gib * 2**30 if config.memory_gib is not None
            else machine_memory_bytes())
  search = {}
  if config.quick:
    steps, time_steps, rounds = [100, 400], 50, 1
    budget = min(budget, 4 * MIB)
    search = {"cap": 1024, "precision": 0.25}  # A coarse search that stops early.
  table = {str(t): {mode: compiled_memory(mode, t) for mode in MODES} for t in steps}
  longest = {mode: longest_trainable(mode, budget, **search) for mode in MODES}
  timing = time_ratios(time_steps, rounds)

  print(f"LSTM {HIDDEN}, batch {BATCH}, input {INPUT}, loss on the final carry; temporary "
        f"memory of the compiled gradient (MiB)")
  print(f"{'T':>9}" + "".join(f"{mode:>14}" for mode in MODES))
  for t in steps:
    print(f"{t:>9}" + "".join(f"{table[str(t)][mode]['temp'] / MIB:>14.1f}" for mode in MODES))
  print(f"longest T within {budget / 2**30:.1f} GiB" + "".join(
      f"{longest[mode]:>14}" for mode in MODES))
  print(f"time / default at T={time_steps}" + "".join(
      f"{timing[mode]['ratio_to_default']:>14.2f}" for mode in MODES))

  os.makedirs(config.out, exist_ok=True)
  with open(os.path.join(config.out, "bench_memory.json"), "w") as f:
    json.dump({"machine": {"cpu_count": os.cpu_count(), "jax": jax.__version__,
                           "backend": jax.default_backend(),
                           "allocator": runtime.allocator_name()},
               "shape": {"hidden": HIDDEN, "batch": BATCH, "input": INPUT},
               "temporary_bytes": {t: {m: v["temp"] for m, v in row.items()}
                                   for t, row in table.items()},
               "compiled_bytes": table, "budget_bytes": budget, "longest_trainable_t": longest,
               "time_steps": time_steps, "timing": timing}, f, indent=1)
  plot(table, os.path.join(config.out, "bench_memory.png"))
  print(f"wrote {config.out}/bench_memory.json and bench_memory.png")


if __name__ == "__main__":
  main()
