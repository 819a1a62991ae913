"""Tests of rnn_jax.training.runtime: the allocator's name and a script's missing extra."""

import subprocess
import sys
from pathlib import Path

import pytest

from rnn_jax.training import runtime

ROOT = Path(__file__).resolve().parents[2]


def test_allocator_name_follows_the_preload(monkeypatch):
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4")
  assert runtime.fast_allocator_active() and runtime.allocator_name() == "tcmalloc"
  monkeypatch.setenv("LD_PRELOAD", "")
  assert runtime.allocator_name() == "glibc"
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
  assert runtime.allocator_name() == "glibc (GLIBC_TUNABLES=glibc.malloc.arena_max=1)"


def test_a_missing_extra_reraises_on_import_and_exits_with_one_line_as_a_script(capsys):
  error = ModuleNotFoundError("No module named 'optax'", name="optax")
  with pytest.raises(ModuleNotFoundError, match="optax"):
    runtime.exit_for_missing_extra(error, "experiments.train_mnist", "the training toolkit")
  with pytest.raises(SystemExit) as exited:
    runtime.exit_for_missing_extra(error, "__main__", "the training toolkit")
  assert exited.value.code == 2
  assert capsys.readouterr().err == ("error: the training toolkit needs optax, which is not "
                                     "installed; pip install -e '.[train]'\n")


def test_a_script_without_the_train_extra_says_so_in_one_line():
  """optax blocked: ``python -m experiments.train_mnist`` prints one line and exits 2."""
  code = ("import runpy, sys; sys.modules['optax'] = None; sys.argv = ['train_mnist'];"
          "runpy.run_module('experiments.train_mnist', run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False, cwd=ROOT, env={"RNN_JAX_NO_TCMALLOC": "1",
                                                          "PATH": "/usr/bin:/bin"})
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr == ("error: the training toolkit needs optax, which is not installed; "
                           "pip install -e '.[train]'\n")
