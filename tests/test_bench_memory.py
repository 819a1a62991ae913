"""Tests of experiments.bench_memory: XLA's memory figures behave as the modes promise (not timed)."""

import json
import subprocess
import sys

from experiments import bench_memory


def test_memory_grows_linearly_by_default_and_as_sqrt_t_with_every():
  small, large = ({mode: bench_memory.compiled_memory(mode, t)["temp"]
                   for mode in bench_memory.MODES} for t in (400, 6400))
  # 16x the steps: the stored residuals of the default and fused paths grow about 16x ...
  assert 12 < large["default"] / small["default"] < 20
  assert 12 < large["fused"] / small["fused"] < 20
  # ... per-step remat keeps only carries and inputs (still linear, much smaller) ...
  assert large["remat"] < large["default"] / 3
  # ... and every=sqrt(T) about 4x (sqrt 16).
  assert large["every_sqrt_t"] / small["every_sqrt_t"] < 8
  assert large["every_sqrt_t"] * 20 < large["default"]


def test_longest_trainable_t_fits_the_budget_and_the_next_does_not():
  budget = 16 * 2**20
  longest = bench_memory.longest_trainable("default", budget)
  assert sum(bench_memory.compiled_memory("default", longest).values()) <= budget
  assert sum(bench_memory.compiled_memory("default", int(longest * 1.05)).values()) > budget


def test_script_prints_the_table_and_writes_json_and_png(tmp_path):
  result = subprocess.run([sys.executable, "-m", "experiments.bench_memory", "--quick",
                           f"--out={tmp_path}"], capture_output=True, text=True, check=True,
                          timeout=600)
  assert "every_sqrt_t" in result.stdout and "longest T within" in result.stdout
  record = json.loads((tmp_path / "bench_memory.json").read_text())
  assert set(record["longest_trainable_t"]) == set(bench_memory.MODES)
  assert record["timing"]["default"]["ratio_to_default"] == 1.0
  assert (tmp_path / "bench_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
