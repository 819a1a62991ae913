"""Sequence classification: the model (core, its summary of the sequence, dense) and its task.

A model is a :class:`Classifier`, a NamedTuple of hyperparameters plus pure
``init``/``apply`` functions in the style of stax::

    model = classifier(build_core("lstm", hidden_size=128), num_classes=10)
    params = model.init(jax.random.key(0), input_size=28)
    logits = model.apply(params, xs)                    # [B, T, I] -> [B, C]
    loss = cross_entropy(logits, labels)                # mean over the batch

The core is any layer of the core library (``rnn_jax.lstm``,
``rnn_jax.stack``, ``rnn_jax.bidirectional``, ...); :data:`CELLS` maps the
names the training script accepts to cell constructors set up for MNIST read
as a sequence (up to 784 steps), and is a plain dict so that other modules can
register more (``classification.CELLS["mycell"] = lambda hidden_size: ...``).

Dropout follows the TF1 tutorials' ``DropoutWrapper(output_keep_prob=keep)``:
a ``stack`` drops each layer's outputs except the last one's ("between"); the
classifier drops the last layer's output before the dense layer ("after").
Both are active only when ``apply`` gets a ``dropout_rng``; in training the
task's loss passes one whenever dropout is anywhere in the model
(:func:`uses_dropout`: the classifier's own, or ``rnn_jax.uses_dropout`` of the
core at any nesting depth).

The task, for :mod:`rnn_jax.training.loop`: :func:`loss_function` (softmax
cross-entropy, batch accuracy as a metric), :class:`IndexedBatch` batches
(on one device: the training set stays on the device and a step gathers its
rows, so only ``B`` indices cross from the host per step) or :class:`Batch`
batches (data-parallel: each process gathers on the host the rows its devices
hold and the batch is sharded over the ``data`` mesh axis, see
:mod:`rnn_jax.training.distributed`), :data:`METRIC_FORMATS`, evaluation over
a whole split (:func:`make_eval_step`, :func:`evaluate`), and
:func:`fit_classifier`, which wires them into :func:`~rnn_jax.training.loop.fit`.

Rematerialisation (``remat=True`` in :func:`build_core`, ``rnn_jax.remat``)
puts each cell's whole time step under ``jax.checkpoint``: the backward pass
keeps only each step's carry and input and recomputes the step's gate
activations from them, so the saved residuals shrink from all gate
activations to the carry, at the price of running each step's forward once
more (up to ~1/3 more compute). Measured once for a pixel-MNIST training step
(LSTM 128, batch 256, T = 784, Adam) on our 2-core CPU: XLA scratch memory
1373 MiB -> 393 MiB, step time unchanged within the noise (median ratio 1.00
over 4 alternating steps, 2.6-4.5 s each on a loaded machine): there the
recomputation is paid for by the smaller memory traffic. Use it for long
sequences at large batch, where memory binds.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnn_jax
from rnn_jax.compose import dropout_outputs
from rnn_jax.training import distributed, loop
from rnn_jax.training.batching import BatchOrder

# The IRNN of Le, Jaitly & Hinton (2015): relu, identity recurrence, input
# weights from N(0, 0.001^2).
_irnn_input_init = jax.nn.initializers.normal(0.001)
# Pixel MNIST's sequence length: the minGRU/minLSTM gate biases are set up
# for memories up to this many steps.
_LONGEST_SEQUENCE = 784

CELLS: dict[str, Callable[[int], Any]] = {
    "lstm": lambda hidden_size: rnn_jax.lstm(hidden_size),
    "gru": lambda hidden_size: rnn_jax.gru(hidden_size),
    "rnn": lambda hidden_size: rnn_jax.simple_rnn(hidden_size, "tanh"),
    "irnn": lambda hidden_size: rnn_jax.simple_rnn(
        hidden_size, "relu", kernel_init=_irnn_input_init, recurrent_init="identity"),
    "mingru": lambda hidden_size: rnn_jax.mingru(hidden_size, max_timescale=_LONGEST_SEQUENCE),
    "minlstm": lambda hidden_size: rnn_jax.minlstm(hidden_size,
                                                   max_timescale=_LONGEST_SEQUENCE),
    # The LRU with the paper's long-sequence radii and a dense skip (any input size works).
    "lru": lambda hidden_size: rnn_jax.lru(hidden_size, hidden_size, r_min=0.9, r_max=0.999,
                                           skip="dense"),
}
"""Cell constructors by name, for MNIST read as a sequence: ``CELLS[name](hidden_size) -> cell``."""

METRIC_FORMATS = {"loss": "loss {:.4f}", "accuracy": "acc {:.2%}"}
"""The training metrics of :func:`loss_function` and how progress lines show them."""


def build_core(cell_name: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
               variational: bool = False, remat: bool = False):
  """The recurrent part of a classifier, by name.

  Args:
    cell_name: a key of :data:`CELLS`.
    hidden_size: ``H`` of every layer.
    num_layers: 1 gives a bare cell; more give ``rnn_jax.stack`` of that many.
    dropout: drop rate between stacked layers (see the module doc).
    variational: one dropout mask for all time steps.
    remat: rematerialise every cell's time step (``rnn_jax.remat``).

  Returns:
    A cell (``num_layers == 1``) or a ``rnn_jax.Stack``, possibly under ``rnn_jax.remat``.
  """
  if cell_name not in CELLS:
    raise ValueError(f"cell_name must be one of {sorted(CELLS)}, got {cell_name!r}")
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}")
  cells = [CELLS[cell_name](hidden_size) for _ in range(num_layers)]
  core = cells[0] if num_layers == 1 else rnn_jax.stack(cells, dropout=dropout,
                                                         variational=variational)
  return rnn_jax.remat(core) if remat else core


class Classifier(NamedTuple):
  """A sequence classifier; see :func:`classifier`.

  Attributes:
    core: the recurrent layer.
    num_classes: ``C``.
    dropout: drop rate applied to the core's last output before the dense layer.
    init: ``(key, input_size) -> params``, ``{"core": core params,
      "dense": {"w": [O, C], "b": [C]}}`` with ``O = core.output_size``.
    apply: ``(params, xs [B, T, I], lengths=None, dropout_rng=None) -> logits [B, C]``.
    step_outputs: ``(params, xs [B, T, I]) -> [B, T, O]``, the core's output
      at every step (no dropout).
    step_logits: ``(params, xs [B, T, I]) -> [B, T, C]``, the dense layer
      applied to every step's output: the prediction after reading ``t + 1``
      steps.
  """

  core: Any
  num_classes: int
  dropout: float
  init: Callable
  apply: Callable
  step_outputs: Callable
  step_logits: Callable


def classifier(core, num_classes: int, dropout: float = 0.0, *, unroll: int | None = None,
               vjp: str | None = None) -> Classifier:
  """Core -> its summary of the sequence (rnn_jax.summary) -> (dropout) -> dense -> logits.

  Args:
    core: any layer accepted by ``rnn_jax.rnn``.
    num_classes: ``C``.
    dropout: drop rate in ``[0, 1)`` on the core's last output in training
      (the "after" dropout of the two-layer tutorial).
    unroll: time steps per scan iteration (``rnn_jax.rnn(unroll=...)``);
      ``None``: the core's measured best per backend and cell.
    vjp: ``"autodiff"``, ``"fused"`` (``rnn_jax.rnn(vjp=...)``: the built-in
      cells' hand-written backward scan) or ``None``: the core's measured best
      per backend and cell.

  Returns:
    A :class:`Classifier`. The dense weights are Glorot-uniform, the bias zero.
  """
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must be in [0, 1), got {dropout}")
  output_size = core.output_size

  def init(key, input_size):
    core_key, dense_key = jax.random.split(key)
    return {
        "core": core.init(core_key, input_size),
        "dense": {
            "w": jax.nn.initializers.glorot_uniform()(dense_key, (output_size, num_classes)),
            "b": jnp.zeros((num_classes,)),
        },
    }

  def dense(params, features):
    return features @ params["dense"]["w"] + params["dense"]["b"]

  def apply(params, xs, lengths=None, dropout_rng=None):
    core_rng = last_rng = None
    if dropout_rng is not None:
      core_rng, last_rng = jax.random.split(dropout_rng)
    outputs, _ = rnn_jax.rnn(core, params["core"], xs, lengths=lengths, dropout_rng=core_rng,
                             unroll=unroll, vjp=vjp)
    features = rnn_jax.summary(core, outputs, lengths)  # Bidirectional: backward half at step 0.
    if last_rng is not None and dropout > 0.0:
      features = dropout_outputs(last_rng, features, dropout, variational=False)
    return dense(params, features)

  def step_outputs(params, xs):
    return rnn_jax.rnn(core, params["core"], xs, unroll=unroll)[0]

  def step_logits(params, xs):
    return dense(params, step_outputs(params, xs))

  return Classifier(core, num_classes, float(dropout), init, apply, step_outputs, step_logits)


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
                   **fit_options) -> loop.TrainState:
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
    **fit_options: the other arguments of ``fit`` (``store``,
      ``checkpoint_every``, ``log_every``, ``on_log``, ``on_eval``, ...).

  Returns:
    The final state; raises what ``fit`` raises.
  """
  order = BatchOrder(seed, len(labels), batch_size)
  if mesh is None:
    inputs, labels = jax.device_put(inputs), jax.device_put(labels)
    batch_for_step = lambda step: IndexedBatch(inputs, labels, order(step))
  else:
    inputs, labels = np.asarray(inputs), np.asarray(labels)

    def batch_for_step(step):
      indices = order(step)
      return distributed.global_batch(
          mesh, batch_size, lambda rows: Batch(inputs[indices[rows]], labels[indices[rows]]))

  return loop.fit(state, train_step, batch_for_step, num_steps=num_steps,
                  steps_per_epoch=order.steps_per_epoch, metric_formats=METRIC_FORMATS,
                  **fit_options)


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
