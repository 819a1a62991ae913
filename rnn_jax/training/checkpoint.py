"""Training checkpoints with Orbax: periodic, atomic, the last few kept, corruption-tolerant.

:class:`CheckpointStore` is a thin layer over ``orbax.checkpoint.CheckpointManager``
(one item, ``StandardSave``/``StandardRestore``), saving synchronously so that
a checkpoint is complete on disk when :meth:`CheckpointStore.save` returns.
Orbax writes each step into a temporary directory and renames it into place,
so a crash mid-save never leaves a half-written step that looks finished.

On several processes (``jax.distributed``), every process calls the same
methods in the same order; Orbax writes each array once (replicated ones by
one process) and process 0 finalises the step directory. Restoring puts the
arrays where the template's shardings say, so a run saved on 4 devices
resumes on 2.

Restoring walks the steps newest first: a step that fails to restore (files
truncated, garbled or missing) is reported, moved aside to
``<directory>/../corrupt_checkpoints/<step>`` (never deleted, and out of the
manager's way so that the run can save that step again) and the previous step
is tried.

A NamedTuple state (:class:`~rnn_jax.training.loop.TrainState`) is saved as
the dict of its fields that are not ``None``, and rebuilt from the template
on restore. So an optional field added later (``TrainState.aux``, ``None``
unless a task carries state between steps) leaves the checkpoints written
before it readable.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp


def _saved_fields(state: Any) -> Any:
  """What is written for ``state``: a NamedTuple's non-``None`` fields as a dict, else ``state``."""
  if isinstance(state, tuple) and hasattr(state, "_asdict"):
    return {name: value for name, value in state._asdict().items() if value is not None}
  return state


def _rebuild(template: Any, saved: Any) -> Any:
  """The restored state, in the template's type (its ``None`` fields stay ``None``)."""
  if isinstance(template, tuple) and hasattr(template, "_asdict"):
    return template._replace(**saved)
  return saved


class CheckpointStore:
  """Saves and restores one pytree (a training state) per step under ``directory``.

  Args:
    directory: where the step directories live (created if missing).
    max_to_keep: how many of the newest checkpoints to keep; older ones are
      deleted only after a newer one is complete.
    log: called with one-line messages (corrupt checkpoints, fallbacks).
  """

  def __init__(self, directory: str, max_to_keep: int = 3, log: Callable[[str], None] = print):
    self.directory = os.path.abspath(directory)
    self.log = log
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False))

  def steps(self) -> list[int]:
    """The saved steps, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Writes ``state`` as step ``step`` (overwriting nothing) and waits until it is on disk."""
    if step in self.steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(_saved_fields(state)), force=True)
    self._manager.wait_until_finished()

  def restore_latest(self, template: Any) -> tuple[int, Any] | None:
    """The newest readable checkpoint as ``(step, state)``, or ``None`` if there is none.

    Args:
      template: a pytree with the structure, shapes and dtypes of the state
        (concrete arrays or ``jax.ShapeDtypeStruct``\\ s). Its leaves'
        shardings, where they have one, are where the restored arrays go: a
        state replicated over a mesh of 2 devices restores onto those 2,
        whatever mesh the checkpoint was written from.
    """
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                          sharding=getattr(leaf, "sharding", None)),
        _saved_fields(template))
    for step in reversed(self.steps()):
      try:
        state = _rebuild(template,
                         self._manager.restore(step, args=ocp.args.StandardRestore(abstract)))
      except Exception as error:  # Orbax/TensorStore raise many types on bad files.
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        moved = self._move_aside(step)
        self.log(f"checkpoint at step {step} is unreadable ({type(error).__name__}: {reason}); "
                 f"moved it to {moved} and falling back to the previous one")
        continue
      return step, state
    return None

  def _move_aside(self, step: int) -> str:
    aside = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints")
    target = os.path.join(aside, f"{step}-{int(time.time())}")
    if jax.process_index() == 0:  # The other processes wait below; the files are shared.
      os.makedirs(aside, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    ocp.multihost.sync_global_processes(f"checkpoint_move_aside_{step}")
    self._manager.reload()
    return target

  def close(self) -> None:
    """Waits for pending saves and closes the Orbax checkpoint manager."""
    self._manager.close()
