"""PNG figures of a training run (matplotlib, Agg backend, imported lazily).

* :func:`plot_curves`: training loss and accuracy against the step, with the
  validation and test-set evaluations as markers.
* :func:`plot_prediction_by_step`: the seed tutorials' picture of how a
  prediction forms: for one input sequence, the softmax over the classes after
  each time step, one small bar chart per step, next to the image.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def accuracy_limits(percentages: Sequence[float]) -> tuple[float, float]:
  """The accuracy axis of :func:`plot_curves`: from the lowest value (rounded down to a
  multiple of 5 %) to 100.5 %, so short runs stay on the plot and long ones keep detail."""
  if not percentages:
    return 80.0, 100.5
  return max(0.0, 5.0 * ((min(percentages) - 0.5) // 5.0)), 100.5


def plot_curves(records: Sequence[dict[str, Any]], path: str, title: str = "") -> None:
  """Writes loss and accuracy curves to ``path``.

  Args:
    records: :class:`~rnn_jax.training.metrics.MetricsLog` records; ``kind == "train"``
      ones need ``step``, ``loss``, ``accuracy``; ``kind == "validation"`` ones
      ``step``, ``validation_loss``, ``validation_accuracy``; ``kind == "test"``
      ones (``"eval"`` in metrics files written before the kinds said what
      they are) ``step``, ``test_loss``, ``test_accuracy``.
    path: the PNG file.
    title: figure title.
  """
  plt = pyplot()
  train = [r for r in records if r.get("kind") == "train"]
  figure, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  plotted = []
  if train:
    steps = [r["step"] for r in train]
    plotted += [100 * r["accuracy"] for r in train]
    ax_loss.plot(steps, [r["loss"] for r in train], label="train (batch mean)")
    ax_acc.plot(steps, [100 * r["accuracy"] for r in train], label="train (batch mean)")
  for kinds, split in ((("validation",), "validation"), (("test", "eval"), "test")):
    evals = [r for r in records if r.get("kind") in kinds]
    if evals:
      steps = [r["step"] for r in evals]
      plotted += [100 * r[f"{split}_accuracy"] for r in evals]
      ax_loss.plot(steps, [r[f"{split}_loss"] for r in evals], "o-", label=split)
      ax_acc.plot(steps, [100 * r[f"{split}_accuracy"] for r in evals], "o-", label=split)
  ax_loss.set(xlabel="step", ylabel="cross-entropy", yscale="log")
  ax_acc.set(xlabel="step", ylabel="accuracy (%)", ylim=accuracy_limits(plotted))
  save_panels(figure, (ax_loss, ax_acc), title, path)


def save_panels(figure, axes, title: str, path: str) -> None:
  """Finishes a figure of curve panels the way every training plot looks: a light grid and
  a legend on each of ``axes``, ``title`` above them all, saved as a PNG at ``path`` (100
  dpi) and closed."""
  plt = pyplot()
  for axis in axes:
    axis.grid(alpha=0.3)
    axis.legend()
  figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def plot_prediction_by_step(image: np.ndarray, probabilities: np.ndarray, label: int,
                            path: str, columns: int = 7, max_panels: int = 28) -> None:
  """One bar chart per time step of the class probabilities, beside the input image.

  Args:
    image: ``[28, 28]`` (or any 2-D) input, shown on the left.
    probabilities: ``[T, C]``, the softmax after each of the ``T`` steps.
    label: the true class, drawn in a different colour.
    path: the PNG file.
    columns: bar charts per row.
    max_panels: for longer sequences (pixel views, T = 784), only this many
      evenly spaced steps are drawn, the last step always among them.
  """
  plt = pyplot()
  total_steps, num_classes = probabilities.shape
  shown = np.arange(total_steps)
  if total_steps > max_panels:
    shown = np.round(np.linspace(total_steps / max_panels, total_steps, max_panels)).astype(int) - 1
  num_steps = len(shown)
  rows = math.ceil(num_steps / columns)
  figure = plt.figure(figsize=(2 + 1.6 * columns, 1.3 * rows + 0.6))
  grid = figure.add_gridspec(rows, columns + 2)
  image_axis = figure.add_subplot(grid[:, :2])
  image_axis.imshow(image, cmap="gray_r")
  image_axis.set(title=f"label {label}", xticks=[], yticks=[])
  colours = ["tab:green" if c == label else "tab:blue" for c in range(num_classes)]
  for panel, t in enumerate(shown):
    axis = figure.add_subplot(grid[panel // columns, 2 + panel % columns])
    axis.bar(range(num_classes), probabilities[t], color=colours)
    axis.set_ylim(0, 1)
    axis.set_xticks(range(num_classes))
    axis.tick_params(labelsize=5, length=1, pad=1)
    axis.set_yticks([])
    axis.set_title(f"step {t + 1}: {int(np.argmax(probabilities[t]))}", fontsize=7, pad=2)
  figure.suptitle("softmax over the classes after each step is read", fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
