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


_FAULTS_PER_BLOCK = """
import ctypes, resource, sys
from rnn_jax.training import runtime
if sys.argv[1] == "kept":
  assert runtime.keep_freed_memory() and runtime.keep_freed_memory()
  assert runtime.allocator_name() == "glibc_kept"
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 96 << 20  # Over glibc's largest mmap threshold (32 MiB), as XLA's scratch blocks are.
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[-1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_glibc_faulting_a_large_block_in_on_every_use():
  """A 96 MiB block malloc'ed, written and freed three times: with glibc's defaults the third
  use page-faults it in again (about 24,600 pages of 4 KiB, or 48 of 2 MiB where transparent
  huge pages are always on); after keep_freed_memory it reuses the freed memory."""
  def faults(mode):
    result = subprocess.run([sys.executable, "-c", _FAULTS_PER_BLOCK, mode], capture_output=True,
                            text=True, timeout=120, check=True, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    return int(result.stdout)
  assert faults("plain") >= 48
  assert faults("kept") < 16


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
