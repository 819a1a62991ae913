"""Reading a run directory back: its ``config.json`` and its newest checkpoint.

What the loaders of trained runs share
(:func:`rnn_jax.training.language_model.load`,
:func:`rnn_jax.training.classification.load`): a run directory written by
:func:`~rnn_jax.training.task.train_and_evaluate` holds ``config.json`` (the
run's identity) and Orbax checkpoints under ``checkpoints/``. Reading takes
no lock, so a run can be loaded while it is still training (the newest
complete checkpoint is read).
"""

from __future__ import annotations

import json
import os
from typing import Any

from rnn_jax.training.idx import DataError


def naming_the_flag(error: DataError, workdir: str | os.PathLike) -> DataError:
  """``error`` (raised by this module or a loader, which say ``workdir W: ...``) as a script
  says it: ``--workdir=W: ...``, the flag the user typed."""
  workdir = os.fspath(workdir)
  return DataError(str(error).replace(f"workdir {workdir}:", f"--workdir={workdir}:", 1))


def read_config(workdir: str | os.PathLike, script: str) -> dict[str, Any]:
  """The ``config.json`` of a run of ``script`` (named in the errors, e.g. ``"train_mnist"``).

  Raises:
    DataError: no such directory, or no readable ``config.json`` in it.
  """
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise DataError(f"workdir {workdir}: no such directory")
  try:
    with open(os.path.join(workdir, "config.json")) as stream:
      config = json.load(stream)
  except (OSError, ValueError) as error:
    raise DataError(f"workdir {workdir}: no readable config.json; is it a run of "
                    f"experiments.{script}?") from error
  if not isinstance(config, dict):
    raise DataError(f"workdir {workdir}: config.json is not a run's config")
  return config


def restore_newest(workdir: str | os.PathLike, template: Any, log=None) -> tuple[int, Any]:
  """``(step, state)`` of the newest readable checkpoint of ``workdir``.

  Args:
    workdir: the run directory.
    template: the state of step 0 (its structure, shapes and dtypes).
    log: where notes go (a skipped unreadable checkpoint); default: nowhere.

  Raises:
    DataError: the run has no readable checkpoint.
  """
  from rnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel  # Orbax.
  directory = os.path.join(os.fspath(workdir), "checkpoints")
  restored = None
  if os.path.isdir(directory):  # Reading creates nothing (Orbax's manager would create it).
    store = checkpoint.CheckpointStore(directory, log=log or (lambda line: None))
    try:
      restored = store.restore_latest(template)
    finally:
      store.close()
  if restored is None:
    raise DataError(f"workdir {os.fspath(workdir)}: no checkpoint to load")
  return restored
