"""A tiny learnable classification task and its jitted train steps, shared by the training tests.

Test modules that train import these, so each jitted function compiles once
per process: one train step without dropout and one with dropout after the
core.
"""

import functools

import jax
import numpy as np

from rnn_jax.training import classification, loop, optim

SEED = 3
NUM_EXAMPLES, STEPS, FEATURES, CLASSES, BATCH = 40, 5, 3, 4, 8
EMA_DECAY = 0.6


def synthetic(num_examples=NUM_EXAMPLES):
  """Sequences whose class is the sign pattern of the first features (learnable)."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, CLASSES, num_examples).astype(np.int32)
  inputs = rng.normal(size=(num_examples, STEPS, FEATURES)).astype(np.float32) * 0.3
  inputs[:, :, 0] += (labels[:, None] % 2) * 1.0
  inputs[:, :, 1] += (labels[:, None] // 2) * 1.0
  return inputs, labels


@functools.lru_cache(maxsize=None)
def setup(dropout=0.0):
  """``(model, optimizer, train_step)``: a GRU-8 classifier, Adam 1e-2 clipped at 5, EMA."""
  model = classification.classifier(classification.build_core("gru", 8), CLASSES,
                                    dropout=dropout)
  optimizer = optim.make_optimizer("adam", 1e-2, clip_norm=5.0)
  return model, optimizer, classification.make_train_step(model, optimizer, SEED,
                                                          ema_decay=EMA_DECAY)


def fresh_state(dropout=0.0):
  model, optimizer, _ = setup(dropout)
  return classification.create_state(model, optimizer, jax.random.key(0), FEATURES)


def fit(state, num_steps, store=None, dropout=0.0, data=None, mesh=None, checkpoint_every=1000,
        **reporting):
  """``fit_classifier`` on :func:`synthetic` (or ``data=(inputs, labels)``), silently unless
  ``log=`` is given; ``reporting``: the fields of :class:`rnn_jax.training.loop.Reporter`."""
  inputs, labels = data if data is not None else synthetic()
  reporting.setdefault("log", lambda line: None)
  return classification.fit_classifier(state, setup(dropout)[2], inputs, labels, seed=SEED,
                                       batch_size=BATCH, num_steps=num_steps, mesh=mesh,
                                       store=store, checkpoint_every=checkpoint_every,
                                       reporter=loop.Reporter(**reporting))


def as_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def assert_trees_equal(got, want):
  """Bitwise equality, leaf by leaf."""
  jax.tree.map(np.testing.assert_array_equal, as_numpy(got), as_numpy(want))
