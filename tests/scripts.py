"""Helpers shared by the tests that run an experiment script as a subprocess."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_experiment(module: str, *args: str, timeout: float = 120,
                   devices: int | None = None) -> subprocess.CompletedProcess:
  """``python -m experiments.<module> <args>`` from the repository root, on CPU;
  ``devices``: that many forced CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                        env=env, text=True, capture_output=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess, status: int) -> str:
  """The refusal's one stderr line, after asserting the exit ``status``, one line, no traceback."""
  assert result.returncode == status, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
  return lines[0]
