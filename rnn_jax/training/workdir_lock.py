"""One writer per run directory: an exclusive OS lock on ``<workdir>/.lock``.

The process that writes a run (process 0 of a multi-process run) calls
:func:`hold` before it writes anything: it takes ``fcntl.flock(LOCK_EX |
LOCK_NB)`` on ``<workdir>/.lock``, writes ``pid <pid> on <host>`` into it for
the message others get, and keeps the file open until the process ends. The
kernel drops the lock when the process dies, however it dies (``kill -9``
included), so a stale lock never blocks a rerun; the file itself stays and
means nothing on its own. A second process that calls :func:`hold` on the
same directory gets :class:`WorkdirLocked` at once, naming the holder.

The lock is advisory: readers of a run (loading a checkpoint, ``generate``)
do not take it and are not blocked by it. Within one process :func:`hold` is
re-entrant (a run resumed in the same Python process holds the lock it has),
and :func:`release` gives the lock back early.
"""

from __future__ import annotations

import fcntl
import os
import socket
from typing import IO

LOCK_FILE = ".lock"
"""The file in the workdir that the writer locks."""

_held: dict[str, IO[str]] = {}  # Lock file's real path -> its open file, for this process.


class WorkdirLocked(RuntimeError):
  """Another process holds the run directory's lock.

  Attributes:
    workdir: the directory.
    holder: what the holder wrote into the lock file (``"pid 123 on host"``),
      or ``"an unknown process"`` if it had not written it yet.
  """

  def __init__(self, workdir: str, holder: str):
    super().__init__(f"{workdir} is being written by another run ({holder})")
    self.workdir = workdir
    self.holder = holder


def _lock_path(workdir: str | os.PathLike) -> str:
  return os.path.realpath(os.path.join(workdir, LOCK_FILE))


def hold(workdir: str | os.PathLike) -> None:
  """Makes this process the writer of ``workdir`` (created if missing) until it ends.

  Raises:
    WorkdirLocked: another process holds it; nothing was changed.
    OSError: the directory or its lock file cannot be created.
  """
  path = _lock_path(workdir)
  if path in _held:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  stream = open(path, "a+", encoding="utf-8")  # "a+": the holder's line is not truncated yet.
  try:
    fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    stream.seek(0)
    holder = stream.read().strip() or "an unknown process"
    stream.close()
    raise WorkdirLocked(os.fspath(workdir), holder) from None
  stream.seek(0)
  stream.truncate()
  stream.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
  stream.flush()
  _held[path] = stream


def release(workdir: str | os.PathLike) -> None:
  """Gives back this process's lock on ``workdir``, if it holds it."""
  stream = _held.pop(_lock_path(workdir), None)
  if stream is not None:
    stream.close()  # Closing the file drops the flock.
