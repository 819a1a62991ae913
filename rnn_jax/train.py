"""Training a :class:`~rnn_jax.models.Classifier`: optimizers, one jitted step, evaluation, a loop.

* :func:`make_optimizer`: Adam, RMSProp (the TF1 tutorials' variant) or SGD
  with momentum from Optax, optional ``clip_by_global_norm`` and an optional
  linear-warmup + cosine-decay schedule.
* :class:`TrainState`: ``step``, ``params``, ``opt_state``, ``bad_step`` and
  ``ema_params``, a plain NamedTuple pytree (what Orbax saves).
* Optional parameter averaging (Polyak; TF's ``ExponentialMovingAverage``
  with ``num_updates``): ``ema_params`` follows ``params`` with decay
  ``min(ema_decay, (1 + step) / (10 + step))``, so the random initial values
  are forgotten within the first steps. It does not change training; evaluating
  the averaged parameters removes most of the step-to-step noise of a constant
  learning rate.
* :func:`make_train_step`: ONE jitted step, compiled once per shape, whose
  state buffers are donated. The whole training set lives on the device; the
  step takes the ``[B]`` example indices of its batch and gathers them, so a
  step moves only ``B`` integers from the host. Dropout keys are
  ``fold_in(key(seed), step)``, so a step's randomness depends only on
  ``(seed, step)``.
* Non-finite loss or gradients: the step leaves params and optimizer state
  untouched and records the step in ``bad_step``; later steps are no-ops. The
  host reads ``bad_step`` only when it fetches metrics or saves, so no step
  waits for the host, and no non-finite state is ever checkpointed.
* :func:`evaluate`: the whole split in fixed-size batches; the last partial
  batch is padded and masked, so every example counts exactly once and there
  is a single compile.
* :func:`fit`: the loop. Batches come from ``rnn_jax.data.batch_indices(seed,
  epoch, ...)``, a function of ``(seed, epoch, step)`` only, so a run resumed
  from a checkpoint sees the same batches and ends bitwise-equal to an
  uninterrupted one. It checkpoints periodically (Orbax, see
  :mod:`rnn_jax.checkpoint`), on SIGINT/SIGTERM (then raises
  :class:`Interrupted`), and stops on a non-finite loss with
  :class:`NonFiniteLoss`.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax import data as data_lib
from rnn_jax.models import Classifier, cross_entropy

OPTIMIZERS = ("adam", "rmsprop", "sgd")


class TrainState(NamedTuple):
  """Everything a run needs to continue.

  Attributes:
    step: int32 scalar, the number of updates applied.
    params: the model's parameter pytree.
    opt_state: the optimizer's state.
    bad_step: int32 scalar, the first step whose loss or gradients were not
      finite, or -1.
    ema_params: the moving average of ``params`` (equal to ``params`` when
      the train step has ``ema_decay=0``).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  bad_step: jax.Array
  ema_params: Any


class NonFiniteLoss(RuntimeError):
  """The loss or the gradients became NaN or infinite at ``step``."""

  def __init__(self, step: int, message: str):
    super().__init__(message)
    self.step = step


class Interrupted(RuntimeError):
  """SIGINT or SIGTERM arrived; a checkpoint of ``step`` was saved."""

  def __init__(self, signum: int, step: int, message: str):
    super().__init__(message)
    self.signum = signum
    self.step = step


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
      or ``"sgd"`` with (heavy-ball) momentum.
    learning_rate: a float or an Optax schedule.
    decay: RMSProp's decay of the mean square (the tutorials' 0.9).
    momentum: SGD momentum.
    clip_norm: if set, gradients are first clipped to this global norm.
  """
  if name == "adam":
    optimizer = optax.adam(learning_rate)
  elif name == "rmsprop":
    optimizer = optax.rmsprop(learning_rate, decay=decay, eps=1e-10, initial_scale=1.0)
  elif name == "sgd":
    optimizer = optax.sgd(learning_rate, momentum=momentum)
  else:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
  if clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)
  return optimizer


def create_state(model: Classifier, optimizer: optax.GradientTransformation, key: jax.Array,
                 input_size: int) -> TrainState:
  """A fresh :class:`TrainState` with ``model.init(key, input_size)`` parameters."""
  params = model.init(key, input_size)
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                    jnp.full((), -1, jnp.int32), jax.tree.map(jnp.copy, params))


def _batch_loss(model, params, inputs, labels, dropout_rng):
  logits = model.apply(params, inputs, dropout_rng=dropout_rng)
  loss = cross_entropy(logits, labels)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, accuracy


def make_train_step(model: Classifier, optimizer: optax.GradientTransformation, seed: int,
                    ema_decay: float = 0.0):
  """The jitted training step.

  Args:
    model: the classifier.
    optimizer: from :func:`make_optimizer` (or any Optax transformation).
    seed: the dropout keys are ``fold_in(key(seed), step)``.
    ema_decay: decay of the parameter average ``ema_params`` (0: no average).

  Returns:
    ``train_step(state, inputs [N, T, F], labels [N], indices [B]) -> (state,
    {"loss", "accuracy"})``: one optimizer update on the examples
    ``indices`` of the device-resident ``inputs``/``labels``. ``state`` is
    donated: do not use the argument after the call.
  """
  dropout_key = jax.random.key(seed)
  use_dropout = model.dropout > 0.0 or getattr(model.core, "dropout", 0.0) > 0.0
  grad_fn = jax.value_and_grad(lambda *args: _batch_loss(model, *args), has_aux=True)

  def train_step(state, inputs, labels, indices):
    rng = jax.random.fold_in(dropout_key, state.step) if use_dropout else None
    (loss, accuracy), grads = grad_fn(state.params, inputs[indices], labels[indices], rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads)) & (state.bad_step < 0)
    keep = lambda new, old: jnp.where(ok, new, old)
    params = jax.tree.map(keep, params, state.params)
    if ema_decay > 0.0:
      step = state.step.astype(jnp.float32)
      decay = jnp.where(ok, jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step)), 1.0)
      ema_params = jax.tree.map(lambda avg, new: decay * avg + (1.0 - decay) * new,
                                state.ema_params, params)
    else:
      ema_params = params
    new_state = TrainState(
        step=jnp.where(ok, state.step + 1, state.step),
        params=params,
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, state.step),
        ema_params=ema_params)
    return new_state, {"loss": loss, "accuracy": accuracy}

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(model: Classifier):
  """``eval_step(params, inputs [B, T, F], labels [B], mask [B]) -> (loss_sum, correct)``."""

  def eval_step(params, inputs, labels, mask):
    logits = model.apply(params, inputs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels) & mask
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(correct)

  return jax.jit(eval_step)


def evaluate(eval_step, params, inputs: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000) -> dict[str, float]:
  """Loss and accuracy over all of ``inputs [N, T, F]`` / ``labels [N]``.

  Every batch has ``batch_size`` rows: the last one is padded with copies of
  example 0 and masked out, so there is one compile and each example counts
  exactly once. Sums stay on the device until the end.

  Returns:
    ``{"loss": mean loss, "accuracy": correct / N, "correct": int, "count": N}``.
  """
  count = len(labels)
  if count == 0:
    raise ValueError("evaluate: no examples")
  loss_sum, correct = jnp.zeros(()), jnp.zeros((), jnp.int32)
  for start in range(0, count, batch_size):
    index = np.arange(start, start + batch_size)
    mask = index < count
    index = np.where(mask, index, 0)
    batch_loss, batch_correct = eval_step(params, inputs[index], labels[index], mask)
    loss_sum, correct = loss_sum + batch_loss, correct + batch_correct
  loss_sum, correct = jax.device_get((loss_sum, correct))
  return {"loss": float(loss_sum) / count, "accuracy": int(correct) / count,
          "correct": int(correct), "count": count}


def format_duration(seconds: float) -> str:
  """``3725 -> '1h02m05s'``, ``65 -> '1m05s'``, ``4.2 -> '4s'``."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m{secs:02d}s"
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _SignalCatcher:
  """Records SIGINT/SIGTERM instead of dying, while the loop runs (main thread only)."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def fit(state: TrainState, train_step, inputs, labels, *, seed: int, batch_size: int,
        num_steps: int, store=None, checkpoint_every: int = 1000, log_every: int = 100,
        on_log: Callable[[dict], None] | None = None,
        on_eval: Callable[[int, TrainState], None] | None = None, eval_every: int = 0,
        log: Callable[[str], None] = print) -> TrainState:
  """Runs ``train_step`` from ``state.step`` up to ``num_steps``.

  Args:
    state: the initial or restored state; its buffers are donated to the
      first step, so do not use it afterwards (copy what you need first).
    train_step: from :func:`make_train_step`.
    inputs: ``[N, T, F]`` training inputs (put on the device once here).
    labels: ``[N]`` int labels.
    seed: the data-order seed (``data.batch_indices(seed, epoch, N, B)``).
    batch_size: ``B``; each epoch has ``N // B`` steps (the remainder is
      dropped, a different remainder each epoch).
    num_steps: the total number of steps of the run.
    store: a :class:`~rnn_jax.checkpoint.CheckpointStore` or ``None``.
    checkpoint_every: steps between checkpoints (and one at the end).
    log_every: steps between metric fetches; each fetch calls ``on_log`` with
      ``{"step", "loss", "accuracy", "steps_per_second", "eta_seconds",
      "wall_seconds"}`` (means over the interval) and ``log`` with a line.
    on_log: optional metrics sink.
    on_eval: called as ``on_eval(step, state)`` every ``eval_every`` steps.
    eval_every: 0 for never.
    log: where progress lines go.

  Returns:
    The final state.

  Raises:
    NonFiniteLoss: a step's loss or gradients were not finite; the last
      checkpoint (before that step) is kept, nothing later is saved.
    Interrupted: SIGINT/SIGTERM; the state of the last completed step was saved.
  """
  num_examples = len(labels)
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")
  inputs, labels = jax.device_put(inputs), jax.device_put(labels)
  step = int(state.step)
  epoch_order, epoch_of_order = None, None
  pending, interval_start, interval_step = [], time.perf_counter(), step
  start_time = time.perf_counter()

  def check_finite(current):
    bad_step = int(current.bad_step)
    if bad_step >= 0:
      saved = store.steps() if store is not None else []
      kept = saved[-1] if saved else None
      where = (f"the last good checkpoint (step {kept}) is kept in {store.directory}"
               if kept is not None else "no checkpoint had been saved")
      raise NonFiniteLoss(bad_step, f"loss or gradients became NaN/inf at step {bad_step}; "
                          f"training stopped, {where}")

  def save(current):
    if store is not None:
      check_finite(current)
      store.save(int(current.step), current)

  with _SignalCatcher() as signals:
    while step < num_steps:
      epoch, row = divmod(step, steps_per_epoch)
      if epoch != epoch_of_order:
        epoch_order = data_lib.batch_indices(seed, epoch, num_examples, batch_size)
        epoch_of_order = epoch
      state, metrics = train_step(state, inputs, labels, epoch_order[row])
      step += 1
      pending.append(metrics)
      if step % log_every == 0 or step == num_steps:
        fetched = jax.device_get(pending)
        check_finite(state)
        now = time.perf_counter()
        rate = (step - interval_step) / max(now - interval_start, 1e-9)
        record = {
            "step": step,
            "loss": float(np.mean([m["loss"] for m in fetched])),
            "accuracy": float(np.mean([m["accuracy"] for m in fetched])),
            "steps_per_second": rate,
            "eta_seconds": (num_steps - step) / rate,
            "wall_seconds": now - start_time,
        }
        pending, interval_start, interval_step = [], now, step
        log(f"step {step}/{num_steps}  epoch {step / steps_per_epoch:.2f}  "
            f"loss {record['loss']:.4f}  acc {100 * record['accuracy']:.2f}%  "
            f"{rate:.1f} steps/s  ETA {format_duration(record['eta_seconds'])}")
        if on_log is not None:
          on_log(record)
      if on_eval is not None and eval_every and step % eval_every == 0 and step < num_steps:
        check_finite(state)
        on_eval(step, state)
      if step % checkpoint_every == 0 or step == num_steps:
        save(state)
      if signals.signum is not None:
        save(state)
        name = signal.Signals(signals.signum).name
        where = f"checkpoint saved in {store.directory}" if store is not None else "no workdir"
        raise Interrupted(signals.signum, step,
                          f"{name} received: stopped at step {step}/{num_steps}, {where}; "
                          "rerun the same command to resume")
  check_finite(state)
  return state


def steps_for(num_examples: int, batch_size: int, epochs: float | None,
              steps: int | None) -> int:
  """The run length: ``steps`` if given, else ``ceil(epochs * (N // B))``."""
  if steps:
    return steps
  return int(math.ceil(epochs * (num_examples // batch_size)))
