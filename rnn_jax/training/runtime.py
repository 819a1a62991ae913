"""Process set-up for scripts: the fast memory allocator, and a missing extra.

XLA:CPU allocates its scratch buffer, one block for all of a call's
temporaries (112 MiB for an LSTM's forward+backward at B=64, T=256, H=256), on
every call of a compiled function, and glibc's malloc returns blocks that large
to the OS on ``free``, so every call page-faults them in again and the kernel
zeroes every page; tcmalloc keeps freed memory. Scripts therefore re-execute
themselves once with tcmalloc preloaded when it is installed (Debian/Ubuntu
package ``libtcmalloc-minimal4``; this has to happen before the process starts,
hence a re-exec), and otherwise tell glibc to keep freed memory
(:func:`keep_freed_memory`, before JAX starts its threads). The measurements
are in the Performance guide.

Library users who ``import rnn_jax`` are not affected: only scripts that call
:func:`use_fast_allocator` (or :func:`keep_freed_memory`) at start-up are.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import NoReturn

_PRELOAD_ENV = "LD_PRELOAD"
_SKIP_ENV = "RNN_JAX_NO_TCMALLOC"
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


# mallopt(3) parameters (malloc.h) and the values keep_freed_memory sets.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_KEEP_FREED_MEMORY = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))
_kept = False


def keep_freed_memory() -> bool:
  """Tells glibc's malloc to keep freed memory for reuse, as tcmalloc does; returns whether it did.

  Three ``mallopt(3)`` settings of this process: no block is served by its own
  ``mmap`` (``M_MMAP_MAX=0``; glibc maps every block over 32 MiB afresh and
  unmaps it on ``free``), the heap is not trimmed back to the OS below 2 GiB of
  free space (``M_TRIM_THRESHOLD``), and every thread allocates from the main
  heap (``M_ARENA_MAX=1``: XLA's worker threads allocate the scratch block, and
  a thread's own arena maps any block over 64 MiB afresh). With them an LSTM's
  forward+backward at (B, T, I, H) = (64, 256, 128, 256) takes no page faults
  per call instead of about 29,000 and runs 1.26x faster (the Performance
  guide's tables); the process keeps its peak memory until it exits, as with
  tcmalloc.

  Call it before JAX runs anything (its threads keep the arena they started
  with). Returns ``False`` where the C library is not glibc (having done
  nothing) or ``mallopt`` refuses a setting (those before it stay made);
  calling it again after success returns ``True`` at once.
  """
  global _kept
  if _kept:
    return True
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
  except (OSError, AttributeError):
    return False
  for parameter, value in _KEEP_FREED_MEMORY:
    if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1:
      return False
  _kept = True
  return True


def fast_allocator_active() -> bool:
  """Whether this process runs with tcmalloc preloaded."""
  return "tcmalloc" in os.environ.get(_PRELOAD_ENV, "")


def allocator_name() -> str:
  """``"tcmalloc"``, ``"glibc_kept"`` (after :func:`keep_freed_memory`), ``"glibc
  (GLIBC_TUNABLES=...)"`` or ``"glibc"``, for benchmark records."""
  if fast_allocator_active():
    return "tcmalloc"
  if _kept:
    return "glibc_kept"
  tunables = os.environ.get("GLIBC_TUNABLES")
  return f"glibc (GLIBC_TUNABLES={tunables})" if tunables else "glibc"


def use_fast_allocator() -> None:
  """Re-executes this script with tcmalloc preloaded if installed, else keeps glibc's freed memory.

  Call it first thing in a script's ``main`` (before JAX runs anything). Where
  tcmalloc is not installed it calls :func:`keep_freed_memory` instead. It is a
  no-op when tcmalloc is already preloaded, off Linux, or when
  ``RNN_JAX_NO_TCMALLOC=1`` is set (the process keeps glibc's defaults).
  """
  if (fast_allocator_active() or os.environ.get(_SKIP_ENV) == "1"
      or not sys.platform.startswith("linux")):
    return
  library = find_tcmalloc()
  if library is None:
    keep_freed_memory()
    return
  env = dict(os.environ)
  env[_PRELOAD_ENV] = ":".join(filter(None, [library, env.get(_PRELOAD_ENV)]))
  env[_SKIP_ENV] = "1"  # Never loop, even if the preload silently fails.
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)


def exit_for_missing_extra(error: ImportError, module: str, needs: str) -> NoReturn:
  """What a script does when importing the ``train`` extra failed with ``error``.

  Imported as a module (``module``, the script's ``__name__``, is not
  ``"__main__"``) it re-raises; run as a script it prints one line naming the
  missing package and the install command, and exits with status 2. ``needs``
  names who needs it ("the training toolkit", "this experiment", ...). Call it
  from the ``except ImportError`` around the script's imports; this module
  imports nothing outside the standard library, so it works there.
  """
  if module != "__main__":
    raise error
  print(f"error: {needs} needs {error.name}, which is not installed; "
        "pip install -e '.[train]'", file=sys.stderr)
  sys.exit(2)
