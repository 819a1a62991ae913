"""Process set-up for scripts: the fast memory allocator and the JAX platform.

XLA:CPU allocates its scratch buffer on every call of a compiled function.
glibc's malloc returns blocks over its mmap threshold (at most 32 MiB) to the
OS on ``free``, so every call page-faults them in again; on our 2-core CPU that
cost up to 2x on an LSTM training step. Measured with ``ru_minflt`` around a
jitted LSTM ``jax.grad`` (B=64, T=256, I=128, H=256, fused backward): 96,000
minor page faults per call (~376 MiB) with plain glibc, 212 with tcmalloc, 51
with :data:`GLIBC_KEEP_MEMORY`; with only ``mmap_threshold``/``trim_threshold``
(no ``arena_max=1``) still 96,000, because XLA's threads allocate from
per-thread arenas that keep unmapping.

So scripts re-execute themselves once, before JAX is imported (malloc reads
both settings at process start, hence a re-exec rather than a setting):

* with tcmalloc preloaded when it is installed (Debian/Ubuntu package
  ``libtcmalloc-minimal4``);
* otherwise with ``GLIBC_TUNABLES`` set to :data:`GLIBC_KEEP_MEMORY`, which
  makes glibc serve every block from one heap it never shrinks (freed memory
  is kept for reuse, not returned to the OS).

Library users who ``import rnn_jax`` are not affected: only scripts that call
:func:`use_fast_allocator` at start-up are.
"""

from __future__ import annotations

import glob
import os
import sys

_PRELOAD_ENV = "LD_PRELOAD"
_TUNABLES_ENV = "GLIBC_TUNABLES"
_SKIP_ENV = "RNN_JAX_NO_TCMALLOC"
# No mmap-ed blocks, one arena, never trim the heap, grow it 256 MiB at a time.
GLIBC_KEEP_MEMORY = ("glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:"
                     "glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456")
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4*",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4*",
    "/usr/lib64/libtcmalloc_minimal.so.4*",
    "/usr/lib/libtcmalloc_minimal.so.4*",
    "/usr/local/lib/libtcmalloc_minimal.so.4*",
)


def find_tcmalloc() -> str | None:
  """Path of an installed ``libtcmalloc_minimal.so.4``, or ``None``."""
  for pattern in _CANDIDATES:
    matches = sorted(glob.glob(pattern))
    if matches:
      return matches[0]
  return None


def allocator_name() -> str:
  """``"tcmalloc"``, ``"glibc (kept memory)"`` or ``"glibc"``: what this process runs with."""
  if "tcmalloc" in os.environ.get(_PRELOAD_ENV, ""):
    return "tcmalloc"
  if GLIBC_KEEP_MEMORY in os.environ.get(_TUNABLES_ENV, ""):
    return "glibc (kept memory)"
  return "glibc"


def fast_allocator_active() -> bool:
  """Whether this process runs with tcmalloc preloaded or glibc tuned to keep memory."""
  return allocator_name() != "glibc"


def use_fast_allocator() -> None:
  """Re-executes this script with tcmalloc preloaded, or else with glibc tuned to keep memory.

  Call it first thing in a script's ``main`` (before JAX allocates). It is a
  no-op when either is already active, off Linux, or when
  ``RNN_JAX_NO_TCMALLOC=1`` is set. Settings of your own in ``GLIBC_TUNABLES``
  are kept, and come after (so override) :data:`GLIBC_KEEP_MEMORY`.
  """
  if (fast_allocator_active() or os.environ.get(_SKIP_ENV) == "1"
      or not sys.platform.startswith("linux")):
    return
  env = dict(os.environ)
  library = find_tcmalloc()
  if library is not None:
    env[_PRELOAD_ENV] = ":".join(filter(None, [library, env.get(_PRELOAD_ENV)]))
  else:
    env[_TUNABLES_ENV] = ":".join(filter(None, [GLIBC_KEEP_MEMORY, env.get(_TUNABLES_ENV)]))
  env[_SKIP_ENV] = "1"  # Never loop, even if the preload silently fails.
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
