"""Smoke tests of ``python -m experiments.gradient_flow``, run as a subprocess.

One tiny run on the real MNIST (marked slow: it loads MNIST and compiles
every cell on 784 steps), checked for its files, the shapes of its numbers
and two properties that hold whatever the seed: at initialisation the tanh
RNN's carry gradient norm never grows with the distance from the loss (its
recurrent matrix is orthogonal and tanh' <= 1) and ends far below its value
at distance 0 on the 784 pixel steps; and the LSTM with forget bias 0 decays
below 1e-50 there, a value the float64 measurement shows (float32 underflows
to 0). Bad settings are checked in-process (:class:`gradient_flow.GradientFlowConfig`);
a bad flag and missing data as a script, refused with one line and their exit
status.
"""

from __future__ import annotations

import json
import os

import numpy as np
import optax
import pytest

from experiments import gradient_flow
from rnn_jax.training import script
from scripts import one_line, run_experiment

TINY = ["--views=pixels,rows", "--cells=rnn,lstm_fb0", "--hidden_size=8", "--batch_size=8",
        "--train_steps=pixels:2,rows:3", "--norm_examples=8", "--eval_examples=16"]


def _norms(values):
  return np.array([np.nan if value is None else value for value in values])


@pytest.mark.slow
def test_tiny_run_writes_its_results_and_figures(tmp_path):
  result = run_experiment("gradient_flow", f"--workdir={tmp_path}", *TINY, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["workdir"] == str(tmp_path) and summary["wall_seconds"] > 0
  ratios = summary["norm_ratio_max_distance_to_0_init_trained"]
  assert set(ratios) == {"pixels", "rows"} and set(ratios["pixels"]) == {"rnn", "lstm_fb0"}
  assert sorted(os.listdir(tmp_path)) == ["carry_grad_norm_pixels.png", "carry_grad_norm_rows.png",
                                          "global_grad_norm.png", "results.json"]
  for name in os.listdir(tmp_path):
    if name.endswith(".png"):
      with open(tmp_path / name, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(tmp_path / "results.json", encoding="utf-8") as file:
    results = json.load(file)
  assert results["config"]["train_steps"] == {"pixels": 2, "rows": 3}
  for view, length, steps in (("pixels", 784, 2), ("rows", 28, 3)):
    view_results = results["views"][view]
    assert view_results["sequence_length"] == length
    for record in view_results["cells"].values():
      for stage in ("init", "trained"):
        norms = _norms(record[f"norms_{stage}"])
        assert norms.shape == (length,) and np.all(np.isfinite(norms)) and np.all(norms >= 0)
      assert len(record["global_grad_norm"]) == steps
    for run in view_results["clipping"].values():
      assert len(run["global_grad_norm"]) == steps
      assert np.all(np.isfinite(_norms(run["global_grad_norm"])))
  pixels = results["views"]["pixels"]["cells"]
  tanh_norms = _norms(pixels["rnn"]["norms_init"])
  assert np.all(tanh_norms[1:] <= tanh_norms[:-1] * 1.001)  # JSON keeps 4 significant digits.
  assert pixels["rnn"]["init"]["ratio_max_to_0"] < 1e-4
  assert 0 < pixels["lstm_fb0"]["init"]["at_max_distance"] < 1e-50


@pytest.mark.parametrize("changes, message", [
    ({"views": ["pixels", "columns"]}, "flag --views=pixels,columns: unknown columns; choose one "
     "of"),
    ({"views": []}, "flag --views=: give at least one value"),
    ({"cells": ["rnn", "transformer"]}, "flag --cells=rnn,transformer: unknown transformer; "
     "choose one of"),
    ({"cells": ["rnn", "rnn"]}, "flag --cells=rnn,rnn: lists a value twice"),
    ({"train_steps": ["pixels:10"]}, "flag --train_steps=pixels:10: gives no steps for the "
                                     "view(s) rows"),
    ({"train_steps": ["0"]}, "flag --train_steps=0: every number of steps must be >= 1"),
    ({"clip_norm": 0.0}, "flag --clip_norm=0.0: must be > 0"),
    ({"learning_rate": float("inf")}, "flag --learning_rate=inf: must be finite"),
    ({"norm_examples": 20_000}, "flag --norm_examples=20000: must be in [1, 10000]"),
    ({"hidden_size": 0}, "flag --hidden_size=0: must be >= 1"),
])
def test_bad_settings_are_one_line_naming_the_flag(changes, message):
  with pytest.raises(script.UsageError) as error:
    gradient_flow.GradientFlowConfig.resolve(changes)
  assert str(error.value).startswith(message)


def test_train_steps_are_per_view_or_one_number():
  assert gradient_flow.parse_train_steps(["pixels:20", "rows:50"]) == {"pixels": 20, "rows": 50}
  settings = gradient_flow.GradientFlowConfig.resolve({"views": ["rows", "pixels"],
                                                       "train_steps": ["7"]})
  assert settings.steps_per_view() == {"rows": 7, "pixels": 7}
  with pytest.raises(script.UsageError, match="expected view:steps pairs"):
    gradient_flow.parse_train_steps(["pixels=20"])


def test_describe_norms_reports_the_exact_zeros_far_from_the_loss():
  figures = gradient_flow.describe_norms(np.array([2.0, 1.0, 0.5, 0.0, 0.0]))
  assert figures == {"at_distance_0": 2.0, "at_max_distance": 0.0, "ratio_max_to_0": 0.0,
                     "zero_beyond_distance": 2}
  assert gradient_flow.describe_norms(np.array([2.0, 1.0]))["zero_beyond_distance"] is None
  assert gradient_flow.describe_norms(np.zeros(3))["zero_beyond_distance"] == -1


def test_record_global_norm_keeps_the_raw_norm_before_clipping():
  optimizer = optax.chain(gradient_flow.record_global_norm(2), optax.clip_by_global_norm(1.0))
  params = {"w": np.zeros(2, np.float32)}
  state = optimizer.init(params)
  updates, state = optimizer.update({"w": np.array([3.0, 4.0], np.float32)}, state, params)
  np.testing.assert_allclose(updates["w"], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(state[0].norms, [5.0, np.nan])


@pytest.mark.parametrize("args, status, start", [
    (["--cells=rnn,transformer"], 2, "error: flag --cells=rnn,transformer"),
    (["--data_dir=/nonexistent/mnist"], 1, "data error:"),
])
def test_refusals_are_one_line_with_their_exit_status(tmp_path, args, status, start):
  line = one_line(run_experiment("gradient_flow", f"--workdir={tmp_path}", *args), status)
  assert line.startswith(start), line
