"""Benchmark machinery: timing compiled functions and building comparable models.

:func:`time_function` is the one timer every benchmark in the project uses: it
calls a function, waits for its (JAX or PyTorch) results, and reports the
median over repeats after a warm-up, so compile time never leaks into a figure.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def _block(result: Any) -> Any:
  """Waits until every JAX array in ``result`` is computed (other leaves pass through)."""
  return jax.block_until_ready(result)


def time_function(fn: Callable[..., Any], *args, repeats: int = 20, warmup: int = 3,
                  min_time_s: float = 0.0, **kwargs) -> dict:
  """Wall-clock time of ``fn(*args, **kwargs)``, results awaited with ``jax.block_until_ready``.

  The first ``warmup`` calls (compilation, first-touch page faults) are not
  counted. Then ``fn`` is called ``repeats`` times, or more until at least
  ``min_time_s`` seconds of measured calls have passed.

  Args:
    fn: the function to time; for JAX, usually a ``jax.jit``-ed function.
    *args: its positional arguments.
    repeats: number of measured calls (at least 1).
    warmup: number of unmeasured calls before them.
    min_time_s: keep measuring past ``repeats`` until this much time is spent.
    **kwargs: its keyword arguments.

  Returns:
    ``dict(median_s, min_s, mean_s, stdev_s, repeats, warmup_s, times_s)``;
    ``warmup_s`` is the time of the first warm-up call (mostly compilation).
  """
  repeats = max(1, int(repeats))
  warmup_s = 0.0
  for i in range(warmup):
    start = time.perf_counter()
    _block(fn(*args, **kwargs))
    if i == 0:
      warmup_s = time.perf_counter() - start
  times = []
  total = 0.0
  while len(times) < repeats or total < min_time_s:
    start = time.perf_counter()
    _block(fn(*args, **kwargs))
    elapsed = time.perf_counter() - start
    times.append(elapsed)
    total += elapsed
  return {
      "median_s": statistics.median(times),
      "min_s": min(times),
      "mean_s": statistics.fmean(times),
      "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
      "repeats": len(times),
      "warmup_s": warmup_s,
      "times_s": times,
  }
