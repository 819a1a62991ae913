"""Process set-up for scripts: the fast memory allocator, and a missing extra.

XLA:CPU allocates its scratch buffer on every call of a compiled function, and
glibc's malloc returns large blocks to the OS on ``free``, so every call
page-faults them in again; tcmalloc keeps freed memory. Scripts therefore
re-execute themselves once with tcmalloc preloaded when it is installed
(Debian/Ubuntu package ``libtcmalloc-minimal4``). This has to happen before JAX
is imported, hence a re-exec rather than a setting. The measurements (page
faults, step times, and a glibc-only alternative that was not adopted) are in
the Performance guide.

Library users who ``import rnn_jax`` are not affected: only scripts that call
:func:`use_fast_allocator` at start-up are.
"""

from __future__ import annotations

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


def fast_allocator_active() -> bool:
  """Whether this process runs with tcmalloc preloaded."""
  return "tcmalloc" in os.environ.get(_PRELOAD_ENV, "")


def allocator_name() -> str:
  """``"tcmalloc"``, ``"glibc (GLIBC_TUNABLES=...)"`` or ``"glibc"``, for benchmark records."""
  if fast_allocator_active():
    return "tcmalloc"
  tunables = os.environ.get("GLIBC_TUNABLES")
  return f"glibc (GLIBC_TUNABLES={tunables})" if tunables else "glibc"


def use_fast_allocator() -> None:
  """Re-executes this script with tcmalloc preloaded, if installed and not yet active.

  Call it first thing in a script's ``main`` (before JAX allocates). It is a
  no-op when tcmalloc is already preloaded, when it is not installed, off
  Linux, or when ``RNN_JAX_NO_TCMALLOC=1`` is set.
  """
  if (fast_allocator_active() or os.environ.get(_SKIP_ENV) == "1"
      or not sys.platform.startswith("linux")):
    return
  library = find_tcmalloc()
  if library is None:
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
