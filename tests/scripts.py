"""Helpers shared by the tests that run an experiment script as a subprocess."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from rnn_jax.training import idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COMPILATION_CACHE = []


def compilation_cache_dir() -> str:
  """JAX's persistent compilation cache shared by this test process's script runs (made on
  first use, removed at exit): a script run whose programs an earlier run compiled (the same
  tiny model, flags and devices) loads them instead of compiling again."""
  if not _COMPILATION_CACHE:
    _COMPILATION_CACHE.append(tempfile.mkdtemp(prefix="rnn_jax_tests_jax_cache_"))
    atexit.register(shutil.rmtree, _COMPILATION_CACHE[0], ignore_errors=True)
  return _COMPILATION_CACHE[0]


def _command_and_env(module: str, args, devices: int | None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=compilation_cache_dir(),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
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


def write_tiny_mnist(folder) -> str:
  """64 training and 20 test 'digits' as IDX files in ``folder``: class c lights up row band
  2c..2c+4. Returns the folder (a ``--data_dir``)."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 64), ("t10k", 20)):
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
    for index, label in enumerate(labels):
      images[index, 2 * label:2 * label + 5] = 255
    idx.write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images)
    idx.write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), labels)
  return str(folder)
