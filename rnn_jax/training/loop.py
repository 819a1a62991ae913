"""The generic training loop: a train state, one jitted step built from a task's loss, ``fit``.

A task (:mod:`rnn_jax.training.classification` is one) supplies:

* a loss function ``loss_fn(params, batch, rng, aux) -> (loss, metrics,
  aux)`` (:data:`LossFn`): the scalar loss to minimise, a dict of scalar
  metrics to report, and the new value of the state's ``aux`` slot;
* ``batch_for_step(step) -> batch``: the batch of global step ``step``, any
  pytree of arrays. It must depend only on the step (and the task's seed), so
  that a run resumed from a checkpoint sees the batches an uninterrupted run
  would have seen;
* how its metrics are shown and its evaluation (a :class:`Reporter`).

The pieces:

* :class:`TrainState`: ``step``, ``params``, ``opt_state``, ``bad_step``,
  ``ema_params`` and ``aux``, a plain NamedTuple pytree, which is what the
  checkpoints save. ``aux`` holds what a task carries from one step to the
  next (for truncated backpropagation through time over stateful streams, the
  recurrent carry at the end of the previous window), so it is checkpointed
  with the rest and a resumed run continues it exactly. ``None`` when unused.
* :func:`make_train_step`: ONE jitted step, compiled once per batch shape,
  whose state buffers are donated. The step's random key is ``fold_in(key(seed),
  step)``, so a step's randomness (dropout) depends only on ``(seed, step)``:
  it differs from step to step and is the same when a step is repeated.
* Optional parameter averaging (Polyak; TF's ``ExponentialMovingAverage``
  with ``num_updates``): ``ema_params`` follows ``params`` with decay
  ``min(ema_decay, (1 + step) / (10 + step))``, so the random initial values
  are forgotten within the first steps. It does not change training; evaluating
  the averaged parameters removes most of the step-to-step noise of a constant
  learning rate.
* Non-finite loss or gradients: the step leaves params, optimizer state and
  ``aux`` untouched and records the step in ``bad_step``; later steps are
  no-ops. The host reads ``bad_step`` only when it fetches metrics or saves, so
  no step waits for the host, and no non-finite state is ever checkpointed.
* :func:`fit`: the loop from ``state.step`` to ``num_steps``. It checkpoints
  periodically (see :mod:`rnn_jax.training.checkpoint`), on SIGINT/SIGTERM
  (then raises :class:`Interrupted`), and stops on a non-finite loss with
  :class:`NonFiniteLoss`.

Nothing here assumes one device or where the data lives: a batch may be host
arrays, device arrays, or arrays sharded over a ``data`` mesh axis (the
jitted step follows its inputs' shardings), or describe its rows of a
device-resident dataset, as the classification task does.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

LossFn = Callable[[Any, Any, jax.Array, Any], tuple[jax.Array, dict[str, jax.Array], Any]]
"""``loss_fn(params, batch, rng, aux) -> (loss, metrics, aux)``.

``rng`` is the step's key (use it for dropout, or ignore it); ``aux`` the
state's ``aux`` slot, and the returned ``aux`` (same structure, shapes and
dtypes) replaces it; ``metrics`` maps names to scalars (``"loss"`` is added by
the step). Gradients are taken with respect to ``params`` only.
"""


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
    aux: state the task carries from step to step (a pytree of arrays), or
      ``None``.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  bad_step: jax.Array
  ema_params: Any
  aux: Any = None


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


def init_state(params, optimizer: optax.GradientTransformation, aux: Any = None) -> TrainState:
  """A fresh :class:`TrainState` at step 0 for ``params`` (and the initial ``aux``)."""
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                    jnp.full((), -1, jnp.int32), jax.tree.map(jnp.copy, params), aux)


def num_params(params) -> int:
  """Total number of scalars in a parameter pytree."""
  return sum(leaf.size for leaf in jax.tree.leaves(params))


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, seed: int,
                    ema_decay: float = 0.0):
  """The jitted training step.

  Args:
    loss_fn: the task's loss, see :data:`LossFn`.
    optimizer: from :func:`~rnn_jax.training.optim.make_optimizer` (or any
      Optax transformation).
    seed: the step's key is ``fold_in(key(seed), step)``.
    ema_decay: decay of the parameter average ``ema_params`` (0: no average).

  Returns:
    ``train_step(state, batch) -> (state, {"loss", **metrics})``, one
    optimizer update on ``batch``. ``state`` is donated: do not use the
    argument after the call.
  """
  step_key = jax.random.key(seed)

  def loss_with_outputs(params, batch, rng, aux):
    loss, metrics, aux = loss_fn(params, batch, rng, aux)
    return loss, (metrics, aux)

  grad_fn = jax.value_and_grad(loss_with_outputs, has_aux=True)

  def train_step(state, batch):
    rng = jax.random.fold_in(step_key, state.step)
    (loss, (metrics, aux)), grads = grad_fn(state.params, batch, rng, state.aux)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    average = None
    if ema_decay > 0.0:
      step = state.step.astype(jnp.float32)
      decay = jnp.where(finite & (state.bad_step < 0),
                        jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step)), 1.0)
      average = lambda kept: jax.tree.map(lambda avg, new: decay * avg + (1.0 - decay) * new,
                                          state.ema_params, kept)
    new_state = commit_step(state, finite, params=params, opt_state=opt_state, aux=aux,
                            average=average)
    return new_state, {"loss": loss, **metrics}

  return jax.jit(train_step, donate_argnums=0)


def commit_step(state: TrainState, finite, *, params, opt_state, aux,
                average: Callable[[Any], Any] | None = None) -> TrainState:
  """The state after a step that computed ``params``, ``opt_state`` and ``aux``: taken where
  ``finite`` (a scalar bool) is true and no earlier step failed (``state.bad_step < 0``), else
  ``state`` unchanged with the failing step recorded in ``bad_step``.

  ``average`` maps the kept params to the new ``ema_params`` (``None``: the kept params).
  What every train step of the toolkit ends with (:func:`make_train_step`, and steps written
  for a task, e.g. PPO's several optimizer updates per step).
  """
  ok = finite & (state.bad_step < 0)
  keep = lambda new, old: jnp.where(ok, new, old)
  params = jax.tree.map(keep, params, state.params)
  return TrainState(
      step=jnp.where(ok, state.step + 1, state.step),
      params=params,
      opt_state=jax.tree.map(keep, opt_state, state.opt_state),
      bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, state.step),
      ema_params=params if average is None else average(params),
      aux=jax.tree.map(keep, aux, state.aux))


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


@dataclasses.dataclass(frozen=True)
class Reporter:
  """How :func:`fit` reports: progress lines, metric records and evaluations during training.

  Attributes:
    log_every: steps between metric fetches; each fetch calls ``on_log`` with
      ``{"step", <each metric>, "steps_per_second", "eta_seconds",
      "wall_seconds"}`` (metrics are means over the interval) and ``log``
      with a line.
    metric_formats: the metrics the progress line shows, in order, each with a
      ``str.format`` template of one field (``{"loss": "loss {:.4f}"}``);
      ``None``: every metric as ``"<name> {:.4g}"``.
    steps_per_epoch: if given, the progress line shows the epoch.
    throughput: ``(items per step, item name)``, e.g. ``(2048, "chars")``:
      the progress line shows ``<rate> chars/s`` instead of steps/s, and the
      records get ``"chars_per_second"``.
    on_log: optional metrics sink.
    on_eval: called as ``on_eval(step, state)`` every ``eval_every`` steps
      (not at the last step: evaluating the final state is the caller's).
    eval_every: 0 for never.
    log: where progress lines go.
  """

  log_every: int = 100
  metric_formats: Mapping[str, str] | None = None
  steps_per_epoch: int | None = None
  throughput: tuple[int, str] | None = None
  on_log: Callable[[dict], None] | None = None
  on_eval: Callable[[int, TrainState], None] | None = None
  eval_every: int = 0
  log: Callable[[str], None] = print


def fit(state: TrainState, train_step, batch_for_step: Callable[[int], Any], *, num_steps: int,
        store=None, checkpoint_every: int = 1000,
        reporter: Reporter = Reporter()) -> TrainState:
  """Runs ``train_step`` from ``state.step`` up to ``num_steps``.

  Args:
    state: the initial or restored state; its buffers are donated to the
      first step, so do not use it afterwards (copy what you need first).
    train_step: from :func:`make_train_step`.
    batch_for_step: ``step -> batch``, the batch of each global step (see the
      module doc).
    num_steps: the total number of steps of the run.
    store: a :class:`~rnn_jax.training.checkpoint.CheckpointStore` or ``None``.
    checkpoint_every: steps between checkpoints (and one at the end).
    reporter: progress lines, metric records, evaluations (:class:`Reporter`).

  Returns:
    The final state.

  Raises:
    NonFiniteLoss: a step's loss or gradients were not finite; the last
      checkpoint (before that step) is kept, nothing later is saved.
    Interrupted: SIGINT/SIGTERM; the state of the last completed step was saved.
  """
  log_every, metric_formats, steps_per_epoch, throughput, on_log, on_eval, eval_every, log = (
      reporter.log_every, reporter.metric_formats, reporter.steps_per_epoch, reporter.throughput,
      reporter.on_log, reporter.on_eval, reporter.eval_every, reporter.log)
  step = int(state.step)
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

  def progress_line(record, metric_names):
    formats = metric_formats or {name: f"{name} {{:.4g}}" for name in metric_names}
    shown = "  ".join(template.format(record[name]) for name, template in formats.items())
    epoch = f"  epoch {step / steps_per_epoch:.2f}" if steps_per_epoch else ""
    rate = f"{record['steps_per_second']:.1f} steps/s"
    if throughput is not None:
      rate = f"{record[f'{throughput[1]}_per_second']:,.0f} {throughput[1]}/s"
    return (f"step {step}/{num_steps}{epoch}  {shown}  {rate}  "
            f"ETA {format_duration(record['eta_seconds'])}")

  with _SignalCatcher() as signals:
    while step < num_steps:
      state, metrics = train_step(state, batch_for_step(step))
      step += 1
      pending.append(metrics)
      if step % log_every == 0 or step == num_steps:
        fetched = jax.device_get(pending)
        check_finite(state)
        now = time.perf_counter()
        rate = (step - interval_step) / max(now - interval_start, 1e-9)
        metric_names = ["loss"] + [name for name in fetched[0] if name != "loss"]
        record = {
            "step": step,
            **{name: float(np.mean([m[name] for m in fetched])) for name in metric_names},
            "steps_per_second": rate,
            **({f"{throughput[1]}_per_second": rate * throughput[0]} if throughput else {}),
            "eta_seconds": (num_steps - step) / rate,
            "wall_seconds": now - start_time,
        }
        log(progress_line(record, metric_names))
        pending, interval_start, interval_step = [], now, step
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
