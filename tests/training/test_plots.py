"""Tests of rnn_jax.training.plots: the PNGs are written, with one panel per time step."""

import matplotlib.figure
import matplotlib.image
import numpy as np

from rnn_jax.training import plots


def test_curves_png(tmp_path):
  records = [{"kind": "train", "step": s, "loss": 1.0 / s, "accuracy": 0.9} for s in (1, 2, 3)]
  # "eval": how metrics files written before the kinds said "test" name the test set.
  records.append({"kind": "eval", "step": 3, "test_loss": 0.4, "test_accuracy": 0.95})
  path = tmp_path / "curves.png"
  plots.plot_curves(records, str(path), title="t")
  assert matplotlib.image.imread(str(path)).shape[:2] == (400, 1100)


def test_curves_draw_validation_and_test_evaluations(tmp_path, monkeypatch):
  lines = {}
  original = matplotlib.figure.Figure.savefig

  def spy(figure, *args, **kwargs):
    for axis in figure.axes:
      for line in axis.get_lines():
        lines.setdefault(line.get_label(), []).append(line.get_ydata().tolist())
    return original(figure, *args, **kwargs)

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
  records = [{"kind": "train", "step": s, "loss": 1.0 / s, "accuracy": 0.9} for s in (1, 2, 3, 4)]
  records += [{"kind": "validation", "step": s, "validation_loss": 0.5 / s,
               "validation_accuracy": 0.9 + 0.01 * s} for s in (2, 4)]
  records.append({"kind": "test", "step": 4, "test_loss": 0.2, "test_accuracy": 0.93})
  plots.plot_curves(records, str(tmp_path / "curves.png"))
  assert lines["validation"] == [[0.25, 0.125], [92.0, 94.0]]  # Loss panel, accuracy panel.
  assert lines["test"] == [[0.2], [93.0]]


def test_prediction_by_step_has_one_bar_chart_per_step(tmp_path, monkeypatch):
  saved = {}
  original = matplotlib.figure.Figure.savefig

  def spy(figure, *args, **kwargs):
    saved["axes"] = figure.axes
    return original(figure, *args, **kwargs)

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
  probabilities = np.full((28, 10), 0.1)
  probabilities[:, 3] = 0.5
  path = tmp_path / "rows.png"
  plots.plot_prediction_by_step(np.zeros((28, 28)), probabilities, 3, str(path))
  assert path.stat().st_size > 0
  bar_axes = saved["axes"][1:]
  assert len(bar_axes) == 28
  heights = [patch.get_height() for patch in bar_axes[5].patches]
  np.testing.assert_allclose(heights, probabilities[5])
  assert bar_axes[5].get_title() == "step 6: 3"


def test_long_sequences_show_evenly_spaced_steps(tmp_path, monkeypatch):
  titles = []
  original = matplotlib.figure.Figure.savefig

  def spy(figure, *args, **kwargs):
    titles.extend(axis.get_title() for axis in figure.axes[1:])
    return original(figure, *args, **kwargs)

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
  probabilities = np.full((784, 10), 0.1)
  plots.plot_prediction_by_step(np.zeros((28, 28)), probabilities, 0, str(tmp_path / "p.png"))
  assert len(titles) == 28
  assert titles[0].startswith("step 28:") and titles[-1].startswith("step 784:")


def test_accuracy_axis_follows_the_data():
  assert plots.accuracy_limits([97.2, 99.1]) == (95.0, 100.5)
  assert plots.accuracy_limits([12.0, 60.0, 94.0]) == (10.0, 100.5)
  assert plots.accuracy_limits([0.3]) == (0.0, 100.5)
  assert plots.accuracy_limits([]) == (80.0, 100.5)
