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
