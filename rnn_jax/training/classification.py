"""Sequence classification: the model (core, its summary of the sequence, dense) and its task.

A model is a :class:`Classifier`, a frozen dataclass (hashable: a static
``jit`` argument) with pure methods::

    model = Classifier(build_core("lstm", hidden_size=128), num_classes=10)
    params = model.init(jax.random.key(0), input_size=28)
    logits = model.apply(params, xs)                    # [B, T, I] -> [B, C]
    loss = cross_entropy(logits, labels)                # mean over the batch

The core is any layer of the core library (``rnn_jax.lstm``,
``rnn_jax.stack``, ``rnn_jax.bidirectional``, ...); the cores the scripts
build by name come from :mod:`rnn_jax.training.cores`. How the core runs is one
``rnn_jax.RunOptions`` (``unroll``, ``vjp``, ...), passed on to ``rnn_jax.rnn``.

Dropout follows the TF1 tutorials' ``DropoutWrapper(output_keep_prob=keep)``:
a ``stack`` drops each layer's outputs except the last one's ("between"); the
classifier drops the last layer's output before the dense layer ("after").
Both are active only when ``apply`` gets a ``dropout_rng``; in training the
task's loss passes one whenever dropout is anywhere in the model
(:func:`uses_dropout`: the classifier's own, or ``rnn_jax.uses_dropout`` of the
core at any nesting depth).

The pieces of training, for :mod:`rnn_jax.training.loop`: :func:`loss_function`
(softmax cross-entropy, batch accuracy as a metric), :class:`IndexedBatch`
batches (on one device: the training set stays on the device and a step
gathers its rows, so only ``B`` indices cross from the host per step) or
:class:`Batch` batches (data-parallel: each process gathers on the host the
rows its devices hold and the batch is sharded over the ``data`` mesh axis,
see :mod:`rnn_jax.training.distributed`), :data:`METRIC_FORMATS`, evaluation
over a whole split (:func:`make_eval_step`, :func:`evaluate`), and
:func:`fit_classifier`, which wires them into :func:`~rnn_jax.training.loop.fit`.

:class:`ClassificationTask` is the whole task for
:func:`rnn_jax.training.task.train_and_evaluate`: an MNIST-family dataset read
as sequences, an optional validation split held out of the training file, the
optimizer and schedule, the figures (``curves.png``,
``prediction_by_step.png``) and the summary of ``experiments/train_mnist.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnn_jax
from rnn_jax.compose import dropout_outputs
from rnn_jax.training import distributed, loop
from rnn_jax.training.batching import BatchOrder
from rnn_jax.training.cores import CELLS, build_core, run_options  # pylint: disable=unused-import

METRIC_FORMATS = {"loss": "loss {:.4f}", "accuracy": "acc {:.2%}"}
"""The training metrics of :func:`loss_function` and how progress lines show them."""


@dataclasses.dataclass(frozen=True)
class Classifier:
  """Core -> its summary of the sequence (``rnn_jax.summary``) -> (dropout) -> dense -> logits.

  Attributes:
    core: the recurrent layer (any layer accepted by ``rnn_jax.rnn``).
    num_classes: ``C``.
    dropout: drop rate in ``[0, 1)`` on the core's last output in training
      (the "after" dropout of the two-layer tutorial).
    options: how the core runs (``rnn_jax.rnn(options=...)``: ``unroll``,
      ``vjp``, ...; ``None`` fields: the core's measured best per backend).
  """

  core: Any
  num_classes: int
  dropout: float = 0.0
  options: rnn_jax.RunOptions = rnn_jax.RunOptions()

  def __post_init__(self):
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

  def init(self, key: jax.Array, input_size: int) -> dict:
    """``{"core": core params, "dense": {"w": [O, C] Glorot-uniform, "b": [C] zeros}}`` with
    ``O = core.output_size``."""
    core_key, dense_key = jax.random.split(key)
    return {
        "core": self.core.init(core_key, input_size),
        "dense": {
            "w": jax.nn.initializers.glorot_uniform()(
                dense_key, (self.core.output_size, self.num_classes)),
            "b": jnp.zeros((self.num_classes,)),
        },
    }

  def _dense(self, params, features):
    return features @ params["dense"]["w"] + params["dense"]["b"]

  def apply(self, params, xs: jax.Array, lengths=None,
            dropout_rng: jax.Array | None = None) -> jax.Array:
    """``xs [B, T, I]`` (valid ``lengths [B]``, optional) -> ``logits [B, C]``."""
    core_rng = last_rng = None
    if dropout_rng is not None:
      core_rng, last_rng = jax.random.split(dropout_rng)
    outputs, _ = rnn_jax.rnn(self.core, params["core"], xs, lengths=lengths,
                             dropout_rng=core_rng, options=self.options)
    # Bidirectional: the backward half's summary is its output at step 0.
    features = rnn_jax.summary(self.core, outputs, lengths)
    if last_rng is not None and self.dropout > 0.0:
      features = dropout_outputs(last_rng, features, self.dropout, variational=False)
    return self._dense(params, features)

  def step_outputs(self, params, xs: jax.Array) -> jax.Array:
    """``xs [B, T, I]`` -> ``[B, T, O]``, the core's output at every step (no dropout)."""
    return rnn_jax.rnn(self.core, params["core"], xs, options=self.options)[0]

  def step_logits(self, params, xs: jax.Array) -> jax.Array:
    """``xs [B, T, I]`` -> ``[B, T, C]``: the dense layer applied to every step's output, the
    prediction after reading ``t + 1`` steps."""
    return self._dense(params, self.step_outputs(params, xs))


def classifier(core, num_classes: int, dropout: float = 0.0, *,
               options: rnn_jax.RunOptions | None = None, unroll: int | None = None,
               vjp: str | None = None) -> Classifier:
  """A :class:`Classifier`; ``unroll`` and ``vjp`` are sugar for the fields of ``options``
  (``rnn_jax.RunOptions.of``)."""
  return Classifier(core, num_classes, float(dropout),
                    rnn_jax.RunOptions.of(options, unroll=unroll, vjp=vjp))


def uses_dropout(model: Classifier) -> bool:
  """Whether a dropout key changes ``model``'s training outputs (its own dropout or the core's)."""
  return model.dropout > 0.0 or rnn_jax.uses_dropout(model.core)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of ``logits [B, C]`` against integer ``labels [B]``.

  Softmax is applied once, inside the loss, to the raw logits (the TF1
  tutorials applied it twice by feeding softmax outputs to
  ``softmax_cross_entropy_with_logits``).
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class IndexedBatch(NamedTuple):
  """A training batch as rows of a device-resident split: the step reads ``inputs[indices]``.

  Attributes:
    inputs: ``[N, T, F]``, the whole training split (on the device).
    labels: ``[N]`` int labels (on the device).
    indices: ``[B]``, the rows of this batch.
  """

  inputs: jax.Array
  labels: jax.Array
  indices: Any


class Batch(NamedTuple):
  """A training batch as its rows, e.g. a global batch sharded over the ``data`` mesh axis.

  Attributes:
    inputs: ``[B, T, F]``.
    labels: ``[B]`` int labels.
  """

  inputs: jax.Array
  labels: jax.Array


def batch_rows(batch: IndexedBatch | Batch) -> tuple[jax.Array, jax.Array]:
  """``(inputs [B, T, F], labels [B])`` of either kind of batch."""
  if isinstance(batch, IndexedBatch):
    return batch.inputs[batch.indices], batch.labels[batch.indices]
  return batch.inputs, batch.labels


def loss_function(model: Classifier) -> loop.LossFn:
  """The training loss of ``model`` on an :class:`IndexedBatch` or a :class:`Batch`.

  Returns:
    A :data:`~rnn_jax.training.loop.LossFn`,
    ``loss(params, batch, rng, aux) -> (cross-entropy, {"accuracy"}, aux)``;
    dropout uses ``rng`` when the model has any (:func:`uses_dropout`), and
    ``aux`` passes through unchanged.
  """
  dropout = uses_dropout(model)

  def batch_loss(params, batch: IndexedBatch | Batch, rng, aux):
    inputs, labels = batch_rows(batch)
    logits = model.apply(params, inputs, dropout_rng=rng if dropout else None)
    loss = cross_entropy(logits, labels)
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}, aux

  return batch_loss


def create_state(model: Classifier, optimizer: optax.GradientTransformation, key: jax.Array,
                 input_size: int) -> loop.TrainState:
  """A fresh train state with ``model.init(key, input_size)`` parameters."""
  return loop.init_state(model.init(key, input_size), optimizer)


def make_train_step(model: Classifier, optimizer: optax.GradientTransformation, seed: int,
                    ema_decay: float = 0.0):
  """:func:`~rnn_jax.training.loop.make_train_step` of :func:`loss_function`.

  Returns:
    ``train_step(state, IndexedBatch) -> (state, {"loss", "accuracy"})``;
    ``state`` is donated. Dropout keys are ``fold_in(key(seed), step)``.
  """
  return loop.make_train_step(loss_function(model), optimizer, seed=seed, ema_decay=ema_decay)


def fit_classifier(state: loop.TrainState, train_step, inputs, labels, *, seed: int,
                   batch_size: int, num_steps: int, mesh: jax.sharding.Mesh | None = None,
                   store=None, checkpoint_every: int = 1000,
                   reporter: loop.Reporter = loop.Reporter()) -> loop.TrainState:
  """:func:`~rnn_jax.training.loop.fit` on a training split, one device or data-parallel.

  Args:
    state: as for ``fit`` (donated); with a ``mesh``, replicated on it
      (:func:`rnn_jax.training.distributed.replicate`).
    train_step: from :func:`make_train_step`.
    inputs: ``[N, T, F]`` training inputs (host arrays).
    labels: ``[N]`` int labels.
    seed: the data-order seed: step ``s`` reads the rows
      ``batching.BatchOrder(seed, N, B)(s)``; each epoch has ``N // B`` steps
      (the remainder is dropped, a different remainder each epoch).
    batch_size: ``B``, the global batch.
    num_steps: the total number of steps of the run.
    mesh: ``None``: the split is put on the default device once and each step
      gathers its rows there (:class:`IndexedBatch`; only ``B`` indices cross
      from the host per step). A mesh from
      :func:`~rnn_jax.training.distributed.make_data_mesh`: each step's
      :class:`Batch` is sharded over its ``data`` axis and each process gathers
      on the host only the rows its devices hold
      (:func:`~rnn_jax.training.distributed.global_batch`). Same rows, same
      order, either way.
    store, checkpoint_every: as for ``fit``.
    reporter: as for ``fit``; its ``steps_per_epoch`` and ``metric_formats``
      are set here (``N // B``, :data:`METRIC_FORMATS`).

  Returns:
    The final state; raises what ``fit`` raises.
  """
  order = BatchOrder(seed, len(labels), batch_size)
  reporter = dataclasses.replace(reporter, steps_per_epoch=order.steps_per_epoch,
                                 metric_formats=METRIC_FORMATS)
  return loop.fit(state, train_step, batches(order, inputs, labels, mesh), num_steps=num_steps,
                  store=store, checkpoint_every=checkpoint_every, reporter=reporter)


def batches(order: BatchOrder, inputs, labels, mesh: jax.sharding.Mesh | None = None
            ) -> Callable[[int], IndexedBatch | Batch]:
  """``batch_for_step`` of a training split in ``order`` (see :func:`fit_classifier`'s ``mesh``).

  Args:
    order: the rows of each step.
    inputs: ``[N, T, F]`` training inputs (host arrays).
    labels: ``[N]`` int labels.
    mesh: ``None``: one device, :class:`IndexedBatch` batches of the split put
      on the device once; a data mesh: :class:`Batch` batches sharded over it.
  """
  if mesh is None:
    inputs, labels = jax.device_put(inputs), jax.device_put(labels)
    return lambda step: IndexedBatch(inputs, labels, order(step))
  inputs, labels = np.asarray(inputs), np.asarray(labels)
  batch_size = order.batch_size

  def batch_for_step(step):
    indices = order(step)
    return distributed.global_batch(
        mesh, batch_size, lambda rows: Batch(inputs[indices[rows]], labels[indices[rows]]))

  return batch_for_step


def make_eval_step(model: Classifier):
  """``eval_step(params, inputs [B, T, F], labels [B], mask [B]) -> (loss_sum, correct)``."""

  def eval_step(params, inputs, labels, mask):
    logits = model.apply(params, inputs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels) & mask
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(correct)

  return jax.jit(eval_step)


def evaluate(eval_step, params, inputs: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000, mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """Loss and accuracy over all of ``inputs [N, T, F]`` / ``labels [N]``.

  Every batch has ``batch_size`` rows: the last one is padded with copies of
  example 0 and masked out, so there is one compile and each example counts
  exactly once. Sums stay on the device until the end.

  Args:
    eval_step: from :func:`make_eval_step`.
    params: the parameters (replicated on ``mesh`` when there is one).
    inputs: ``[N, T, F]`` host arrays.
    labels: ``[N]``.
    batch_size: rows per evaluation batch; with a ``mesh``, rounded up to a
      multiple of its device count.
    mesh: ``None``: one device. A data mesh: each batch is sharded over its
      ``data`` axis, each process loading only its own rows, and the sums are
      over the whole (global) batch.

  Returns:
    The metrics,
    ``{"loss": mean loss, "accuracy": correct / N, "correct": int, "count": N}``.
  """
  count = len(labels)
  if count == 0:
    raise ValueError("evaluate: no examples")
  if mesh is not None:
    batch_size = -(-batch_size // mesh.size) * mesh.size
  loss_sum, correct = jnp.zeros(()), jnp.zeros((), jnp.int32)
  for start in range(0, count, batch_size):
    index = np.arange(start, start + batch_size)
    mask = index < count
    index = np.where(mask, index, 0)
    if mesh is None:
      batch = inputs[index], labels[index], mask
    else:
      batch = distributed.global_batch(
          mesh, batch_size, lambda rows: (inputs[index[rows]], labels[index[rows]], mask[rows]))
    batch_loss, batch_correct = eval_step(params, *batch)
    loss_sum, correct = loss_sum + batch_loss, correct + batch_correct
  loss_sum, correct = jax.device_get((loss_sum, correct))
  return {"loss": float(loss_sum) / count, "accuracy": int(correct) / count,
          "correct": int(correct), "count": count}


# ----------------------------------------------------------------------------- the task

MNIST_SEQUENCE_LENGTH = 784
"""The sequence length the MNIST task's cores are set up for (the pixel views' 784 steps; the
rows view keeps it so that its published figures stay)."""


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """An MNIST-family dataset read as sequences, for
  :func:`~rnn_jax.training.task.train_and_evaluate` (see its :class:`~rnn_jax.training.task.Task`).

  The fields are those of ``experiments/train_mnist.py``'s config (see its
  module doc) and options; :meth:`from_config` builds the task from a config's
  values. ``data`` is set by :meth:`load`.
  """

  dataset: str = "mnist"
  view: str = "rows"
  permutation_seed: int = 0
  cell: str = "gru"
  hidden_size: int = 128
  num_layers: int = 1
  dropout: float = 0.0
  optimizer: str = "adam"
  learning_rate: float = 2e-3
  decay: float = 0.9
  momentum: float = 0.9
  schedule: str = "cosine"
  warmup_steps: int = 100
  clip_norm: float = 1.0
  batch_size: int = 128
  epochs: float = 5.0
  steps: int = 0
  seed: int = 0
  remat: bool = False
  remat_every: int = 0
  ema_decay: float = 0.0
  max_train_examples: int = 0
  validation_examples: int = 0
  options: rnn_jax.RunOptions = rnn_jax.RunOptions()
  data_dir: str | None = None
  search_dirs: tuple[str, ...] = ()
  max_test_examples: int = 0
  eval_batch_size: int = 1000
  plots: bool = True
  title: str = "default"
  data: Any = dataclasses.field(default=None, compare=False, repr=False)

  metric_formats = METRIC_FORMATS
  throughput = None

  @classmethod
  def from_config(cls, config, **settings) -> ClassificationTask:
    """The task of a config's values (``config.json``'s keys: ``backward`` is ``vjp``; the
    ``unroll``, ``vjp`` and ``compute_dtype`` go into ``options``,
    :func:`~rnn_jax.training.cores.run_options`) and the run's ``settings`` (``data_dir``,
    ``search_dirs``, ``max_test_examples``, ``eval_batch_size``, ``plots``, ``title``)."""
    values = dict(config)
    options = run_options(values)
    return cls(**values, options=options, **settings)

  # ---------------------------------------------------------------- the model

  @functools.cached_property
  def model(self) -> Classifier:
    """The classifier of the settings."""
    from rnn_jax.training import datasets  # pylint: disable=import-outside-toplevel
    core = build_core(self.cell, self.hidden_size, self.num_layers, dropout=self.dropout,
                      remat=self.remat, sequence_length=MNIST_SEQUENCE_LENGTH,
                      remat_every=self.remat_every)
    return Classifier(core, datasets.NUM_CLASSES, self.dropout, self.options)

  def make_optimizer(self, num_steps: int) -> optax.GradientTransformation:
    """The optimizer of the settings, its schedule spanning ``num_steps`` (the state's
    structure is the same whatever ``num_steps``)."""
    from rnn_jax.training import optim  # pylint: disable=import-outside-toplevel
    schedule = optim.make_schedule(self.learning_rate, num_steps, self.warmup_steps,
                                   cosine=self.schedule == "cosine")
    return optim.make_optimizer(self.optimizer, schedule, decay=self.decay,
                                momentum=self.momentum, clip_norm=self.clip_norm or None)

  @functools.cached_property
  def _optimizer(self) -> optax.GradientTransformation:
    return self.make_optimizer(self.num_steps())

  def initial_state(self, input_size: int, num_steps: int = 1) -> loop.TrainState:
    """The state of step 0 for sequences of ``input_size`` features: also the template a
    checkpoint is restored into (no data needed)."""
    return create_state(self.model, self.make_optimizer(num_steps), jax.random.key(self.seed),
                        input_size)

  @functools.cached_property
  def _eval_step(self):
    return make_eval_step(self.model)

  # ---------------------------------------------------------------- the data

  def load(self, say: Callable[[str], None]) -> ClassificationTask:
    """Loads the dataset, holds out the validation split, cuts the test set; see
    :class:`~rnn_jax.training.task.Task`."""
    from rnn_jax.training import datasets, script  # pylint: disable=import-outside-toplevel
    data_dir = datasets.find_data_dir(self.dataset, self.data_dir, self.search_dirs)
    say(f"{self.dataset} data from {data_dir}")
    train_images, train_labels = datasets.load(self.dataset, "train", data_dir)
    test_images, test_labels = datasets.load(self.dataset, "test", data_dir)
    (train_images, train_labels), (validation_images, validation_labels) = hold_out(
        train_images, train_labels, self.validation_examples)
    if self.max_train_examples:
      train_images = train_images[:self.max_train_examples]
      train_labels = train_labels[:self.max_train_examples]
    if self.max_test_examples:
      test_images = test_images[:self.max_test_examples]
      test_labels = test_labels[:self.max_test_examples]
    if self.batch_size > len(train_labels):
      raise script.UsageError(f"flag --batch_size={self.batch_size}: larger than the "
                              f"{len(train_labels)} training examples")
    as_sequences = functools.partial(datasets.as_sequences, view=self.view,
                                     permutation_seed=self.permutation_seed)
    splits = {"test": (as_sequences(test_images), test_labels)}
    if self.validation_examples:
      splits["validation"] = (as_sequences(validation_images), validation_labels)
    data = {"train": (as_sequences(train_images), train_labels), "splits": splits,
            "first_test_image": test_images[0]}
    return dataclasses.replace(self, data=data)

  def num_steps(self) -> int:
    """``--steps``, or ``--epochs`` passes over the training split."""
    from rnn_jax.training import optim  # pylint: disable=import-outside-toplevel
    return optim.steps_for(len(self.data["train"][1]), self.batch_size, self.epochs, self.steps)

  def steps_per_epoch(self) -> int:
    """Full batches per pass over the training split (the remainder is dropped)."""
    return len(self.data["train"][1]) // self.batch_size

  def describe(self, num_params: int) -> str:
    """Cell, sizes, data, steps and optimizer, for the run's first line."""
    inputs, labels = self.data["train"]
    splits = self.data["splits"]
    validation = (f"{len(splits['validation'][1])} validation (the training file's last) / "
                  if "validation" in splits else "")
    return (f"{self.cell} x{self.num_layers} H={self.hidden_size} ({num_params:,} parameters) "
            f"on {self.dataset} {self.view} {list(inputs.shape[1:])}, {len(labels)} train / "
            f"{validation}{len(splits['test'][1])} test examples, {self.num_steps()} steps of "
            f"batch {self.batch_size}, {self.optimizer} lr {self.learning_rate:g} "
            f"({self.schedule})")

  def check_workdir(self, workdir: str) -> None:
    """Nothing to keep beside ``config.json``."""
    del workdir  # Nothing besides config.json.

  # ---------------------------------------------------------------- training

  def create_state(self) -> loop.TrainState:
    """The state of step 0: ``model.init(key(seed), F)`` parameters, no ``aux``."""
    return create_state(self.model, self._optimizer, jax.random.key(self.seed),
                        self.data["train"][0].shape[-1])

  def eval_params(self, state):
    """The parameters evaluated and reported: the moving average when one is kept."""
    return state.ema_params if self.ema_decay > 0 else state.params

  def make_train_step(self):
    """The jitted step of :func:`loss_function`, with the parameter average when asked."""
    return make_train_step(self.model, self._optimizer, self.seed, self.ema_decay)

  def batches(self, mesh: jax.sharding.Mesh | None) -> Callable[[int], IndexedBatch | Batch]:
    """The training split in :class:`~rnn_jax.training.batching.BatchOrder` (:func:`batches`)."""
    inputs, labels = self.data["train"]
    return batches(BatchOrder(self.seed, len(labels), self.batch_size), inputs, labels, mesh)

  # ---------------------------------------------------------------- evaluation

  def watched_split(self) -> str:
    """With a validation split, training looks at it, never at the test set."""
    return "validation" if "validation" in self.data["splits"] else "test"

  def eval_every(self, requested: int) -> int:
    """``requested``; 0 with a validation split: every epoch (0 without: none)."""
    if self.watched_split() == "validation" and not requested:
      return self.steps_per_epoch()
    return requested

  def final_splits(self) -> tuple[str, ...]:
    """The validation split (when held out), then the test set."""
    return ("validation", "test") if "validation" in self.data["splits"] else ("test",)

  def evaluate(self, split: str, state, mesh) -> dict:
    """Loss and accuracy of the evaluated parameters (the average, when kept) on ``split``."""
    inputs, labels = self.data["splits"][split]
    return evaluate(self._eval_step, self.eval_params(state), inputs, labels,
                    self.eval_batch_size, mesh=mesh)

  def report(self, split: str, step: int, result: dict) -> tuple[dict, str]:
    """``{split}_loss``/``{split}_accuracy`` records and the accuracy line."""
    record = {"step": step, f"{split}_loss": result["loss"],
              f"{split}_accuracy": result["accuracy"]}
    line = (f"step {step}: {split} accuracy {100 * result['accuracy']:.2f}% "
            f"({result['correct']}/{result['count']}), {split} loss {result['loss']:.4f}")
    return record, line

  # ---------------------------------------------------------------- the end

  def finish(self, state, workdir: str, records: list, mesh, primary: bool,
             say: Callable[[str], None]) -> dict:
    """The test accuracy of the final parameters when an average was evaluated, the per-step
    outputs line, ``curves.png`` and ``prediction_by_step.png``."""
    extras = {"parameter_average": self.ema_decay > 0}
    test_inputs, test_labels = self.data["splits"]["test"]
    if self.ema_decay > 0:
      without = evaluate(self._eval_step, state.params, test_inputs, test_labels,
                         self.eval_batch_size, mesh=mesh)
      say(f"without the parameter average: test accuracy {100 * without['accuracy']:.2f}%, "
          f"test loss {without['loss']:.4f}")
      extras["test_accuracy_final_params"] = without["accuracy"]
    if not primary:
      return extras
    # On the host (the same values): process 0 alone computes these, on its own device.
    final_params = jax.device_get(self.eval_params(state))
    per_step = self.model.step_outputs(final_params, test_inputs[:5])
    say(f"per-step outputs for a batch of 5 test images: {list(per_step.shape)} "
        "(batch, steps, hidden)")
    if self.plots:
      from rnn_jax.training import plots  # pylint: disable=import-outside-toplevel
      plots.plot_curves(records, os.path.join(workdir, "curves.png"),
                        title=f"{self.title}: {self.cell} x{self.num_layers} "
                        f"H={self.hidden_size}")
      probabilities = np.asarray(jax.nn.softmax(
          self.model.step_logits(final_params, test_inputs[:1])[0]))
      plots.plot_prediction_by_step(self.data["first_test_image"], probabilities,
                                    int(test_labels[0]),
                                    os.path.join(workdir, "prediction_by_step.png"))
    return extras

  def summary(self, results, steps_per_second: float) -> dict:
    """``test_accuracy``, ``test_loss``, ``test_examples`` (and the validation's), the rate."""
    test = results["test"]
    validation = results.get("validation")
    return {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "test_examples": test["count"],
        **({"validation_accuracy": validation["accuracy"],
            "validation_loss": validation["loss"],
            "validation_examples": validation["count"]} if validation else {}),
        "parameter_average": self.ema_decay > 0,
        "test_accuracy_final_params": test["accuracy"],
        "steps_per_second": round(steps_per_second, 2),
    }


def hold_out(images: np.ndarray, labels: np.ndarray, validation_examples: int
             ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Splits a training file into ``(train, validation)``: validation is its last N examples.

  Args:
    images: the training file's ``[N_file, ...]`` images.
    labels: its ``[N_file]`` labels.
    validation_examples: ``N``, in ``0..N_file - 1``; 0 gives an empty validation split.

  Returns:
    Two ``(images, labels)`` pairs, the first ``len(labels) - N`` examples and the last
    ``N``, as views (no copies).

  Raises:
    UsageError: ``N`` negative or not below the file's example count.
  """
  from rnn_jax.training import script  # pylint: disable=import-outside-toplevel
  count = len(labels)
  if not 0 <= validation_examples < count:
    raise script.UsageError(f"flag --validation_examples={validation_examples}: must be in "
                            f"0..{count - 1} (the training file has {count} examples)")
  split = count - validation_examples
  return (images[:split], labels[:split]), (images[split:], labels[split:])


# ----------------------------------------------------------------------------- a trained run


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedClassifier:
  """A classifier trained by ``experiments.train_mnist``, as :func:`load` returns it.

  Attributes:
    model: the :class:`Classifier` of the run's config.
    params: the parameters its test accuracy was reported for (the moving
      average with ``--ema_decay``), from the newest checkpoint.
    view: how images are read as sequences (``rows``, ``pixels``, ``permuted_pixels``).
    permutation_seed: the pixel order of ``permuted_pixels``.
    step: the training step of that checkpoint.
    workdir: the run directory.
  """

  model: Classifier
  params: Any
  view: str
  permutation_seed: int
  step: int
  workdir: str

  @functools.cached_property
  def _logits(self):
    return jax.jit(self.model.apply)

  def logits(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """``float32 [N, C]`` for ``uint8`` images ``[N, H, W]`` (as ``datasets.load`` gives them),
    read as the run read them (:func:`~rnn_jax.training.datasets.as_sequences`)."""
    from rnn_jax.training import datasets  # pylint: disable=import-outside-toplevel
    sequences = datasets.as_sequences(images, self.view, self.permutation_seed)
    return np.concatenate([np.asarray(self._logits(self.params, sequences[start:start + batch_size]))
                           for start in range(0, len(sequences), batch_size)]
                          or [np.zeros((0, self.model.num_classes), np.float32)])

  def predict(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """``int [N]`` predicted classes of ``uint8`` images ``[N, H, W]``."""
    return np.argmax(self.logits(images, batch_size), axis=-1)


def load(workdir: str | os.PathLike) -> TrainedClassifier:
  """The model and parameters of a ``train_mnist`` run's newest checkpoint.

  Works while the run is still training (reading takes no lock), and for
  runs of earlier versions (settings added since take their defaults).

  Raises:
    rnn_jax.training.idx.DataError: no such directory, not a ``train_mnist``
      run, or no checkpoint yet.
  """
  from rnn_jax.training import datasets, runs  # pylint: disable=import-outside-toplevel
  config = runs.read_config(workdir, "train_mnist")
  try:
    task = ClassificationTask.from_config(config)
  except TypeError as error:  # Keys ClassificationTask does not have.
    raise runs.DataError(f"workdir {os.fspath(workdir)}: not a run of experiments.train_mnist "
                         f"({error})") from error
  input_size = datasets.as_sequences(np.zeros((1, *datasets.IMAGE_SHAPE), np.uint8), task.view,
                                     task.permutation_seed).shape[-1]
  step, state = runs.restore_newest(workdir, task.initial_state(input_size))
  return TrainedClassifier(task.model, task.eval_params(state), task.view,
                           task.permutation_seed, int(step), os.fspath(workdir))
