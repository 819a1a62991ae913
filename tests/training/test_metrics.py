"""Tests of rnn_jax.training.metrics: JSON lines, and TensorBoard events where tensorboard is installed."""

import json

import pytest

from rnn_jax.training.metrics import MetricsLog


def test_records_append_across_runs_as_json_lines(tmp_path):
  first = MetricsLog(str(tmp_path), tensorboard=False)
  first.write("train", {"step": 1, "loss": 2.5, "accuracy": 0.25})
  first.close()
  second = MetricsLog(str(tmp_path), tensorboard=False)  # A resumed run appends.
  second.write("eval", {"step": 2, "test_loss": 1.5, "test_accuracy": 0.5})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"kind": "train", "step": 1, "loss": 2.5, "accuracy": 0.25},
      {"kind": "eval", "step": 2, "test_loss": 1.5, "test_accuracy": 0.5}]
  assert second.read()[1]["test_accuracy"] == 0.5
  assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_scalars_when_installed(tmp_path):
  pytest.importorskip("tensorboard")
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  log = MetricsLog(str(tmp_path))
  assert log.tensorboard
  for step in (1, 2, 3):
    log.write("train", {"step": step, "loss": 1.0 / step})
  log.close()
  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [
      (1, 1.0), (2, 0.5), (3, 0.3333)]


def test_drop_after_keeps_the_records_up_to_the_checkpoint(tmp_path):
  log = MetricsLog(str(tmp_path), tensorboard=False)
  for step in (1, 2, 3, 4):
    log.write("train", {"step": step, "loss": float(step)})
  log.write("eval", {"step": 2, "val_loss": 0.5})
  assert log.drop_after(2) == 2  # The steps 3 and 4 of an interrupted process.
  assert [(r["kind"], r["step"]) for r in log.read()] == [
      ("train", 1), ("train", 2), ("eval", 2)]
  assert log.drop_after(2) == 0
  assert log.drop_after(-1) == 3  # A run that starts afresh keeps nothing.
  assert log.read() == [] and not (tmp_path / "metrics.jsonl.partial").exists()
