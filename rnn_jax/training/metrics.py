"""Training metrics on disk: JSON lines, plus TensorBoard events when tensorboard is installed.

Each call of :meth:`MetricsLog.write` appends one JSON object to
``<workdir>/metrics.jsonl`` (a resumed run appends to the same file) and, if
the ``tensorboard`` package is importable, the numeric fields as scalars to an
event file under ``<workdir>/tensorboard`` (written with tensorboard's own
event writer, so TensorFlow is not needed). A resumed run first drops the
records past its checkpoint (:meth:`MetricsLog.drop_after`), so each step's
records appear once however often the run was interrupted.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


class MetricsLog:
  """Appends metric records to ``<workdir>/metrics.jsonl`` (and TensorBoard if available).

  Args:
    workdir: the run's directory (created if missing).
    tensorboard: ``None`` to use TensorBoard when importable, ``False`` to never.
  """

  def __init__(self, workdir: str, tensorboard: bool | None = None):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._events = None
    if tensorboard is not False:
      try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
      except ImportError:
        pass
      else:
        self._protos = (event_pb2, summary_pb2)
        self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))

  @property
  def tensorboard(self) -> bool:
    """Whether TensorBoard events are being written."""
    return self._events is not None

  def write(self, kind: str, record: dict[str, Any]) -> None:
    """Appends ``{"kind": kind, **record}``; ``record`` must contain an integer ``step``."""
    with open(self.path, "a") as stream:
      stream.write(json.dumps({"kind": kind, **record}) + "\n")
    if self._events is not None:
      event_pb2, summary_pb2 = self._protos
      values = [summary_pb2.Summary.Value(tag=f"{kind}/{name}", simple_value=float(value))
                for name, value in record.items()
                if name != "step" and isinstance(value, (int, float))]
      self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(record["step"]),
                                             summary=summary_pb2.Summary(value=values)))
      self._events.flush()

  def drop_after(self, step: int) -> int:
    """Removes the records whose ``step`` is above ``step``; returns how many.

    A run that resumes from its checkpoint at step ``S`` is about to write the
    records of steps ``S+1, ...`` again (the interrupted process wrote some of
    them after its last checkpoint): :func:`rnn_jax.training.script.open_run`
    calls this with ``S``, or with ``-1`` for a run that starts afresh. The file
    is replaced atomically (written beside it, then renamed). TensorBoard keeps
    its events (it shows the newest value of a step).
    """
    records = self.read()
    kept = [record for record in records if record.get("step", 0) <= step]
    if len(kept) < len(records):
      partial = self.path + ".partial"
      with open(partial, "w") as stream:
        stream.writelines(json.dumps(record) + "\n" for record in kept)
      os.replace(partial, self.path)
    return len(records) - len(kept)

  def read(self) -> list[dict[str, Any]]:
    """All records written so far (by this run and the ones it resumed)."""
    if not os.path.exists(self.path):
      return []
    with open(self.path) as stream:
      return [json.loads(line) for line in stream if line.strip()]

  def close(self) -> None:
    """Closes the TensorBoard event writer, if any."""
    if self._events is not None:
      self._events.close()
