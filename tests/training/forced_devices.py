"""Runs a test file's scenario in a subprocess with forced CPU devices.

JAX fixes its device count when it starts, so a check that needs several
devices runs its test file as a script, ``python <file> <scenario> <args>``,
with ``--xla_force_host_platform_device_count``; the scenario asserts what it
checks and returns a JSON-able dict, which :func:`main` prints as the last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def run_scenario(script: str, name: str, *args: str, devices: int = 4) -> dict:
  """``python <script> <name> <args>`` on ``devices`` forced CPU devices; its JSON result.

  The subprocess imports this checkout's ``rnn_jax`` (the one under test), as pytest does,
  even where another checkout is the installed one.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  result = subprocess.run([sys.executable, os.path.abspath(script), name, *args], cwd=HERE,
                          env=env, text=True, capture_output=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(scenarios: dict[str, Callable[..., dict]]) -> None:
  """The script side: runs ``scenarios[argv[1]](*argv[2:])`` and prints its result as JSON."""
  print(json.dumps(scenarios[sys.argv[1]](*sys.argv[2:])))
