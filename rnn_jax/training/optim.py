"""Optimizers and learning-rate schedules by name, and the length of a run.

* :func:`make_optimizer`: Adam, RMSProp (the TF1 tutorials' variant) or SGD
  (with momentum, or plain gradient descent at momentum 0) from Optax,
  optionally after ``clip_by_global_norm``;
* :func:`make_schedule`: a constant rate, or linear warmup then cosine decay;
* :func:`steps_for`: a run's number of steps from epochs or steps.

:data:`OPTIMIZERS` and :data:`SCHEDULES` are the names these accept (the
training script's flag choices come from them).
"""

from __future__ import annotations

import math

import optax

OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine")


def make_schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0,
                  cosine: bool = False) -> optax.Schedule | float:
  """A constant rate, or linear warmup from 0 then cosine decay to 0 at ``total_steps``."""
  if not cosine and warmup_steps == 0:
    return learning_rate
  if not cosine:
    return optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                            max(total_steps, warmup_steps + 1))


def make_optimizer(name: str, learning_rate: float | optax.Schedule, *, decay: float = 0.9,
                   momentum: float = 0.9, clip_norm: float | None = None
                   ) -> optax.GradientTransformation:
  """An Optax optimizer by name.

  Args:
    name: ``"adam"``; ``"rmsprop"``, TF1's ``RMSPropOptimizer`` (mean square
      initialised to 1, ``eps=1e-10`` inside the square root, no momentum);
      or ``"sgd"``: with (heavy-ball) momentum, or at ``momentum=0`` plain
      gradient descent, ``w -= learning_rate * g`` (``optax.sgd`` without a
      momentum trace: no optimizer state at all).
    learning_rate: a float or an Optax schedule.
    decay: RMSProp's decay of the mean square (the tutorials' 0.9).
    momentum: SGD momentum; 0 for none.
    clip_norm: if set, gradients are first clipped to this global norm.
  """
  if name == "adam":
    optimizer = optax.adam(learning_rate)
  elif name == "rmsprop":
    optimizer = optax.rmsprop(learning_rate, decay=decay, eps=1e-10, initial_scale=1.0)
  elif name == "sgd":
    # optax.sgd(momentum=0.0) would keep a trace g + 0 * m in its state; None has none.
    optimizer = optax.sgd(learning_rate, momentum=momentum or None)
  else:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
  if clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)
  return optimizer


def steps_for(num_examples: int, batch_size: int, epochs: float | None,
              steps: int | None) -> int:
  """The run length: ``steps`` if given, else ``ceil(epochs * (N // B))``."""
  if steps:
    return steps
  return int(math.ceil(epochs * (num_examples // batch_size)))
