"""The training toolkit: a generic training loop, and the tasks built on it (MNIST, char LM).

Needs the ``train`` extra (``pip install -e '.[train]'`` in the checkout: optax,
orbax-checkpoint, absl-py, matplotlib); the core library does not import it.

One module per idea:

* :mod:`~rnn_jax.training.loop`: :class:`TrainState` (with an ``aux`` slot for
  state carried from step to step), :func:`make_train_step` from a task's loss
  function, :func:`fit` over "the batch for step i", signals, the non-finite
  guard;
* :mod:`~rnn_jax.training.optim`: optimizers and learning-rate schedules by name;
* :mod:`~rnn_jax.training.checkpoint`: Orbax checkpoints of the train state;
* :mod:`~rnn_jax.training.metrics` and :mod:`~rnn_jax.training.plots`: what a
  run writes besides checkpoints;
* :mod:`~rnn_jax.training.idx`, :mod:`~rnn_jax.training.datasets`,
  :mod:`~rnn_jax.training.batching`: the IDX file format, finding and loading
  MNIST-family data, seeded batch orders;
* :mod:`~rnn_jax.training.task`: the :class:`~rnn_jax.training.task.Task`
  protocol and :func:`~rnn_jax.training.task.train_and_evaluate`, the one
  experiment runner;
* :mod:`~rnn_jax.training.cores`: the cell builders by name, given the task's
  sequence length;
* :mod:`~rnn_jax.training.classification`: the sequence classifier and its
  task (loss, evaluation, metric formats,
  :class:`~rnn_jax.training.classification.ClassificationTask`);
* :mod:`~rnn_jax.training.text` and :mod:`~rnn_jax.training.language_model`:
  text data, the character language model (truncated BPTT through ``aux``),
  sampling and its task;
* :mod:`~rnn_jax.training.distributed`: data-parallel runs over a ``data``
  mesh axis, on one host or several;
* :mod:`~rnn_jax.training.config`: a script's settings as one frozen dataclass
  (flags, checks, presets, the run identity that names its workdir);
* :mod:`~rnn_jax.training.script` and :mod:`~rnn_jax.training.runtime`: what
  the training scripts share (refusals, exit statuses, workdirs) and process
  set-up (tcmalloc).

The loop's names are re-exported here, imported on first use so that
``import rnn_jax.training.runtime`` stays light.
"""

from __future__ import annotations

import importlib

_LOOP_NAMES = ("Interrupted", "LossFn", "NonFiniteLoss", "TrainState", "fit", "init_state",
               "make_train_step")

__all__ = list(_LOOP_NAMES)


def __getattr__(name):
  """The loop's names, imported from :mod:`rnn_jax.training.loop` on first use."""
  if name in _LOOP_NAMES:
    return getattr(importlib.import_module("rnn_jax.training.loop"), name)
  raise AttributeError(f"module 'rnn_jax.training' has no attribute {name!r}")
