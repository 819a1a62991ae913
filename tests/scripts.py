"""Helpers shared by the tests that run an experiment script as a subprocess."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command_and_env(module: str, args, devices: int | None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return [sys.executable, "-m", f"experiments.{module}", *args], env


def run_experiment(module: str, *args: str, timeout: float = 120,
                   devices: int | None = None) -> subprocess.CompletedProcess:
  """``python -m experiments.<module> <args>`` from the repository root, on CPU;
  ``devices``: that many forced CPU devices."""
  command, env = _command_and_env(module, args, devices)
  return subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True,
                        timeout=timeout)


def start_experiment(module: str, *args: str, devices: int | None = None) -> subprocess.Popen:
  """:func:`run_experiment` started in the background, stdout and stderr piped (text)."""
  command, env = _command_and_env(module, args, devices)
  return subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)


def one_line(result: subprocess.CompletedProcess, status: int) -> str:
  """The refusal's one stderr line, after asserting the exit ``status``, one line, no traceback."""
  assert result.returncode == status, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
  return lines[0]
