"""Character-level language model: embedding -> any recurrent layer -> dense, its task and sampling.

    model = CharLM(build_core("lstm", 512, sequence_length=64), vocab_size=66, embed_size=64)
    params = model.init(jax.random.key(0))
    logits, carry = model.apply(params, ids)            # ids [B, T] -> logits [B, T, V]

The core is any steppable layer of the library (a cell, a linear recurrence,
a ``stack``, a ``remat`` of either; :func:`~rnn_jax.training.cores.build_core`
builds one by name); how it runs is one ``rnn_jax.RunOptions``. Dropout
(inverted, rate ``dropout``) is applied in
training to the embeddings and to the core's outputs before the dense layer;
a stacked core also drops between its layers (``stack(dropout=...)``). Its
masks are drawn afresh for every time step, or, with ``variational=True``
(variational or locked dropout, Gal & Ghahramani 2016), once per sequence and
shared by all its steps. The recurrent connections are dropped only by a
core built with ``rnn_jax.weight_drop`` or ``rnn_jax.zoneout``
(:func:`~rnn_jax.training.cores.build_core`'s ``weight_drop`` and ``zoneout``).

The task, for :mod:`rnn_jax.training.loop`:

* :func:`loss_function`: mean next-character cross-entropy over a
  :class:`~rnn_jax.training.text.TextBatch` window, with ``bpc`` (bits per
  character) as a metric. With ``tbptt=True`` the state's ``aux`` is the
  recurrent carry: a window starts from the carry the previous one ended with
  behind ``jax.lax.stop_gradient`` (so the state flows along each stream while
  gradients span ``K`` steps), or from zeros where the batch says ``reset``;
  the window's final carry becomes the new ``aux``, and is checkpointed with
  the rest of the state. With ``tbptt=False`` every window starts from zeros
  and ``aux`` stays ``None``.
* :func:`evaluate`: the loss over a whole split, each character predicted
  exactly once, the carry passed from window to window.
* :func:`generate`: primes the carry with one ``rnn`` call over the prompt,
  then samples inside one compiled ``jax.lax.scan`` over ``core.step``
  (:func:`sample_next`: temperature, top-k, top-p; temperature 0 is greedy).

:class:`CharLMTask` is the whole task for
:func:`rnn_jax.training.task.train_and_evaluate`: the text and its splits, the
windows of each step (one device, or sharded with the carry over a data mesh),
validation and test evaluation, ``sample.txt``, ``curves.png`` and the summary
of ``experiments/train_char_lm.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnn_jax
from rnn_jax.compose import dropout_outputs
from rnn_jax.training import cores, loop
from rnn_jax.training.text import TextBatch, Vocabulary

METRIC_FORMATS = {"loss": "loss {:.4f}", "bpc": "{:.3f} bits/char"}
"""The training metrics of :func:`loss_function` and how progress lines show them."""


@dataclasses.dataclass(frozen=True)
class CharLM:
  """Embedding -> ``core`` -> dense over the vocabulary (hashable: a static ``jit`` argument).

  Attributes:
    core: the recurrent layer (anything with ``step``, for generation).
    vocab_size: ``V``, the number of token ids.
    embed_size: ``E``, the embedding width (the core's input size).
    dropout: drop rate on the embeddings and the core's outputs in training.
    options: how the core runs (``rnn_jax.rnn(options=...)``: ``unroll``,
      ``vjp``, ...; ``None`` fields: the core's tuned choices per backend).
    variational: one ``dropout`` mask per sequence (window), shared by all its
      time steps (locked dropout), instead of one per step.
  """

  core: rnn_jax.Layer
  vocab_size: int
  embed_size: int
  dropout: float = 0.0
  options: rnn_jax.RunOptions = rnn_jax.RunOptions()
  variational: bool = False

  def __post_init__(self):
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

  def init(self, key: jax.Array) -> dict:
    """``{"embed": [V, E] ~ N(0, 1), "core": ..., "dense": {"w": [O, V] Glorot, "b": [V] zeros}}``."""
    embed_key, core_key, dense_key = jax.random.split(key, 3)
    return {
        "embed": jax.random.normal(embed_key, (self.vocab_size, self.embed_size)),
        "core": self.core.init(core_key, self.embed_size),
        "dense": {"w": jax.nn.initializers.glorot_uniform()(
                      dense_key, (self.core.output_size, self.vocab_size)),
                  "b": jnp.zeros((self.vocab_size,))},
    }

  def initial_carry(self, batch_size: int) -> Any:
    """The core's zero carry for ``batch_size`` streams."""
    return self.core.initial_carry((batch_size,))

  def uses_dropout(self) -> bool:
    """Whether a dropout key changes the training outputs (this model's or the core's dropout)."""
    return self.dropout > 0.0 or rnn_jax.uses_dropout(self.core)

  def _dense(self, params, features):
    return features @ params["dense"]["w"] + params["dense"]["b"]

  def _drop(self, key, features: jax.Array) -> jax.Array:
    """Inverted dropout of batch-major ``features [B, T, F]``: a mask per step, or with
    ``variational`` one per sequence (:func:`rnn_jax.compose.dropout_outputs`, time-major)."""
    time_major = jnp.swapaxes(features, 0, 1)
    return jnp.swapaxes(dropout_outputs(key, time_major, self.dropout, self.variational), 0, 1)

  def apply(self, params, ids: jax.Array, carry: Any = None,
            dropout_rng: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """``ids int [B, T]`` -> ``(logits [B, T, V], final carry)``, from ``carry`` (zeros if ``None``)."""
    embed_rng = core_rng = output_rng = None
    if dropout_rng is not None:
      embed_rng, core_rng, output_rng = jax.random.split(dropout_rng, 3)
    inputs = params["embed"][ids]
    if embed_rng is not None and self.dropout > 0.0:
      inputs = self._drop(embed_rng, inputs)
    outputs, carry = rnn_jax.rnn(self.core, params["core"], inputs, initial_carry=carry,
                                 dropout_rng=core_rng, options=self.options)
    if output_rng is not None and self.dropout > 0.0:
      outputs = self._drop(output_rng, outputs)
    return self._dense(params, outputs), carry

  def step(self, params, carry: Any, ids: jax.Array) -> tuple[Any, jax.Array]:
    """One character per stream: ``ids int [B]`` -> ``(carry, logits [B, V])``; no dropout."""
    carry, outputs = self.core.step(params["core"], carry, params["embed"][ids])
    return carry, self._dense(params, outputs)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token softmax cross-entropy in nats: ``logits [..., V]``, ``targets int [...]`` -> ``[...]``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def loss_function(model: CharLM, window: int, tbptt: bool = True) -> loop.LossFn:
  """The training loss on a :class:`~rnn_jax.training.text.TextBatch` of windows of ``window``.

  Returns:
    ``loss(params, batch, rng, aux) -> (mean cross-entropy, {"bpc"}, aux)``;
    see the module doc for ``aux`` (the carry) under ``tbptt``.
  """
  dropout = model.uses_dropout()

  def window_loss(params, batch: TextBatch, rng, carry):
    inputs, targets = batch.windows(window)
    if tbptt:
      carry = jax.tree.map(lambda leaf: jnp.where(batch.reset, jnp.zeros_like(leaf),
                                                  jax.lax.stop_gradient(leaf)), carry)
    logits, final_carry = model.apply(params, inputs, carry if tbptt else None,
                                      dropout_rng=rng if dropout else None)
    loss = jnp.mean(cross_entropy(logits, targets))
    return loss, {"bpc": loss / math.log(2.0)}, final_carry if tbptt else carry

  return window_loss


def create_state(model: CharLM, optimizer: optax.GradientTransformation, key: jax.Array,
                 batch_size: int, tbptt: bool = True) -> loop.TrainState:
  """A fresh train state; with ``tbptt`` its ``aux`` is the zero carry of ``batch_size`` streams."""
  # One buffer per leaf: an LSTM's zero (h, c) may share one, and the train step donates aux.
  carry = jax.tree.map(jnp.copy, model.initial_carry(batch_size)) if tbptt else None
  return loop.init_state(model.init(key), optimizer, aux=carry)


# ----------------------------------------------------------------------------- evaluation


def evaluation_streams(ids: np.ndarray, num_streams: int, window: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cuts a split into streams so that each of its ``N - 1`` targets is predicted exactly once.

  Target position ``p`` (``1 .. N-1``) is read from position ``p - 1``;
  stream ``b`` holds input positions ``b S .. (b + 1) S - 1`` with
  ``S = ceil((N - 1) / num_streams)`` rounded up to a multiple of ``window``;
  positions past the end are padding.

  Returns:
    ``(inputs, targets, mask)``, each ``[num_windows, num_streams, window]``
    (``mask`` bool: a real target).
  """
  count = len(ids) - 1
  if count < 1:
    raise ValueError("evaluation needs at least 2 characters")
  length = -(-count // num_streams)
  length = -(-length // window) * window
  positions = np.arange(num_streams)[:, None] * length + np.arange(length)
  mask = positions < count
  last = len(ids) - 1
  inputs = ids[np.minimum(positions, last)]
  targets = ids[np.minimum(positions + 1, last)]
  cut = lambda array: array.reshape(num_streams, -1, window).swapaxes(0, 1)
  return cut(inputs.astype(np.int32)), cut(targets.astype(np.int32)), cut(mask)


@functools.partial(jax.jit, static_argnums=0)
def _split_loss(model: CharLM, params, inputs, targets, mask):
  """Summed cross-entropy over windows ``[W, B, K]``, the carry passed from window to window."""

  def one_window(carry, window):
    window_inputs, window_targets, window_mask = window
    logits, carry = model.apply(params, window_inputs, carry)
    losses = cross_entropy(logits, window_targets)
    return carry, jnp.sum(jnp.where(window_mask, losses, 0.0))

  _, sums = jax.lax.scan(one_window, model.initial_carry(inputs.shape[1]),
                         (inputs, targets, mask))
  return jnp.sum(sums)


@functools.partial(jax.jit, static_argnums=0)
def _split_loss_streams_first(model: CharLM, params, inputs, targets, mask):
  """:func:`_split_loss` of ``[B, W, K]`` arrays (the streams, sharded over devices, first)."""
  swap = lambda array: jnp.swapaxes(array, 0, 1)
  return _split_loss(model, params, swap(inputs), swap(targets), swap(mask))


def evaluate(model: CharLM, params, ids: np.ndarray, num_streams: int = 32,
             window: int = 256, mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """The loss over a whole split (see :func:`evaluation_streams`), carry across windows.

  Args:
    model: the model.
    params: its parameters (replicated on ``mesh`` when there is one).
    ids: the split's token ids.
    num_streams: streams the split is cut into.
    window: characters per window.
    mesh: ``None``: one device. A data mesh
      (:func:`~rnn_jax.training.distributed.make_data_mesh`): the streams are
      sharded over its ``data`` axis, padded with masked-out streams up to a
      multiple of its device count (the cut, so the figures, are those of one
      device), each process loading only its own streams.

  Returns:
    The metrics,
    ``{"loss": nats/char, "bpc": bits/char, "count": N - 1}``.
  """
  inputs, targets, mask = evaluation_streams(np.asarray(ids), num_streams, window)
  if mesh is None:
    total = float(_split_loss(model, params, inputs, targets, mask))
  else:
    from rnn_jax.training import distributed  # pylint: disable=import-outside-toplevel
    padded = -(-num_streams // mesh.size) * mesh.size
    pad = lambda array: np.pad(array.swapaxes(0, 1),
                               ((0, padded - num_streams), (0, 0), (0, 0)))
    streams = tuple(pad(array) for array in (inputs, targets, mask))
    batch = distributed.global_batch(mesh, padded,
                                     lambda rows: tuple(array[rows] for array in streams))
    total_array = _split_loss_streams_first(model, params, *batch)
    total = float(np.asarray(total_array.addressable_data(0)))
  count = int(mask.sum())
  return {"loss": total / count, "bpc": total / count / math.log(2.0), "count": count}


# ----------------------------------------------------------------------------- generation


def sample_next(key: jax.Array, logits: jax.Array, temperature, top_k=0, top_p=1.0) -> jax.Array:
  """One token per row of ``logits [..., V]``.

  Args:
    key: PRNG key.
    logits: unnormalised log-probabilities (``-inf`` never drawn).
    temperature: divides the logits; ``0`` (or less) picks the argmax.
    top_k: draw only among the ``k`` largest logits (``0``: no limit).
    top_p: draw only from the smallest set of most likely tokens whose
      probability (after temperature and top-k) reaches ``top_p`` (``1``: no limit).

  Returns:
    ``int32 [...]``. All arguments may be traced.
  """
  greedy = jnp.argmax(logits, axis=-1)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  order = jnp.argsort(-scaled, axis=-1)
  ranked = jnp.take_along_axis(scaled, order, axis=-1)
  rank = jnp.arange(logits.shape[-1])
  keep = (top_k <= 0) | (rank < top_k)
  ranked = jnp.where(keep, ranked, -jnp.inf)
  probabilities = jax.nn.softmax(ranked, axis=-1)
  before = jnp.cumsum(probabilities, axis=-1) - probabilities  # Mass of the likelier tokens.
  keep = (top_p >= 1.0) | (before < top_p)
  ranked = jnp.where(keep, ranked, -jnp.inf)
  choice = jax.random.categorical(key, ranked, axis=-1)
  sampled = jnp.take_along_axis(order, choice[..., None], axis=-1)[..., 0]
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "length", "exclude"))
def generate(model: CharLM, params, prompt: jax.Array, key: jax.Array, *, length: int,
             temperature=1.0, top_k=0, top_p=1.0, exclude: int | None = None) -> jax.Array:
  """``length`` tokens continuing ``prompt``, in one compiled program.

  The prompt is read by one ``rnn`` call; each new token is drawn by
  :func:`sample_next` and fed back through ``model.step`` inside one
  ``jax.lax.scan`` (no host round-trip per token, the prefix never re-read).

  Args:
    model: the model.
    params: its parameters.
    prompt: ``int32 [P]``, ``P >= 1``.
    key: PRNG key; equal keys give equal samples.
    length: tokens to generate.
    temperature, top_k, top_p: see :func:`sample_next`.
    exclude: a token id never drawn (the vocabulary's ``<unk>``).

  Returns:
    ``int32 [length]``.
  """
  logits, carry = model.apply(params, prompt[None], model.initial_carry(1))
  logits = logits[:, -1]

  def one_token(state, step_key):
    carry, logits = state
    if exclude is not None:
      logits = logits.at[..., exclude].set(-jnp.inf)
    token = sample_next(step_key, logits, temperature, top_k, top_p)
    carry, logits = model.step(params, carry, token)
    return (carry, logits), token[0]

  _, tokens = jax.lax.scan(one_token, (carry, logits), jax.random.split(key, length))
  return tokens


# ----------------------------------------------------------------------------- the task


def sample_prompt(vocabulary: Vocabulary, path: str) -> str:
  """The final sample's prompt: the first line of the text (at most 40 characters)."""
  with open(path, encoding="utf-8") as stream:
    first_line = stream.readline(40).rstrip("\n")
  return first_line or vocabulary.chars[0]


def plot_loss_curves(records, path: str, title: str) -> None:
  """Training loss (interval means) and validation loss against the step, in nats/char."""
  from rnn_jax.training.plots import pyplot  # pylint: disable=import-outside-toplevel
  plt = pyplot()
  train = [r for r in records if r.get("kind") == "train"]
  # "eval": the kind of validation records before the kinds said what they are.
  evals = [r for r in records if r.get("kind") in ("validation", "eval")]
  figure, axis = plt.subplots(figsize=(7, 4))
  axis.plot([r["step"] for r in train], [r["loss"] for r in train], label="train (interval mean)")
  axis.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
  axis.set(xlabel="step", ylabel="cross-entropy (nats/char)", title=title)
  if train:
    axis.set_ylim(min([r["loss"] for r in train] + [r["val_loss"] for r in evals]) - 0.05,
                  min(max(r["loss"] for r in train), 3.0))
  axis.grid(alpha=0.3)
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)


_RUN_SETTINGS = ("options", "search_dirs", "eval_streams", "eval_window", "sample_length", "sample_temperature",
                 "plots", "data")
"""The fields of :class:`CharLMTask` that are not its config (how a run is carried out)."""


@dataclasses.dataclass(frozen=True)
class CharLMTask:
  """A character LM on a text, for :func:`~rnn_jax.training.task.train_and_evaluate` (see its
  :class:`~rnn_jax.training.task.Task`).

  The fields are those of ``experiments/train_char_lm.py``'s config (see its
  module doc) and options; :meth:`from_config` builds the task from a config's
  values (``config.json``'s). The core's cells are set up for sequences of
  ``window`` steps (:func:`rnn_jax.training.cores.build_core`'s
  ``sequence_length``). ``data`` is set by :meth:`load`.
  """

  text_file: str | None = None
  cell: str = "lstm"
  hidden_size: int = 512
  num_layers: int = 1
  embed_size: int = 64
  dropout: float = 0.1
  batch_size: int = 32
  window: int = 64
  steps: int = 4000
  learning_rate: float = 3e-3
  warmup_steps: int = 100
  clip_norm: float = 1.0
  tbptt: bool = True
  seed: int = 0
  remat_every: int = 0
  proj_size: int = 0
  layer_norm: bool = False
  zoneout: float = 0.0
  weight_drop: float = 0.0
  variational_dropout: bool = False
  options: rnn_jax.RunOptions = rnn_jax.RunOptions()
  search_dirs: tuple[str, ...] = ()
  eval_streams: int = 32
  eval_window: int = 256
  sample_length: int = 300
  sample_temperature: float = 0.8
  plots: bool = True
  data: Any = dataclasses.field(default=None, compare=False, repr=False)

  metric_formats = METRIC_FORMATS

  @classmethod
  def from_config(cls, config, **settings) -> CharLMTask:
    """The task of a config's values (``config.json``'s keys: ``backward`` is ``vjp``; the
    ``unroll``, ``vjp`` and ``compute_dtype`` go into ``options``,
    :func:`~rnn_jax.training.cores.run_options`) and the run's ``settings``.

    Raises:
      TypeError: a key that is not a setting of the task.
    """
    values = dict(config)
    options = cores.run_options(values)
    return cls(**values, options=options, **settings)

  def config_values(self) -> dict[str, Any]:
    """The config of the task (the keys of ``config.json``), as :meth:`from_config` takes it."""
    values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
              if field.name not in _RUN_SETTINGS}
    return {**values, "unroll": self.options.unroll, "backward": self.options.vjp or "auto",
            "compute_dtype": cores.compute_dtype_name(self.options)}

  @property
  def throughput(self) -> tuple[int, str]:
    return self.batch_size * self.window, "chars"

  def model(self, vocab_size: int) -> CharLM:
    """The model for ``vocab_size`` ids (training, and sampling from a trained run)."""
    core = cores.build_core(self.cell, self.hidden_size, self.num_layers, dropout=self.dropout,
                            variational=self.variational_dropout, sequence_length=self.window,
                            remat_every=self.remat_every, proj_size=self.proj_size,
                            layer_norm=self.layer_norm, zoneout=self.zoneout,
                            weight_drop=self.weight_drop)
    return CharLM(core, vocab_size, self.embed_size, self.dropout, self.options,
                  self.variational_dropout)

  def optimizer(self) -> optax.GradientTransformation:
    """Adam, warmup then cosine decay over ``steps``, clipped to ``clip_norm``."""
    from rnn_jax.training import optim  # pylint: disable=import-outside-toplevel
    schedule = optim.make_schedule(self.learning_rate, self.steps, self.warmup_steps,
                                   cosine=True)
    return optim.make_optimizer("adam", schedule, clip_norm=self.clip_norm or None)

  def initial_state(self, vocab_size: int) -> loop.TrainState:
    """The state of step 0 (also the template a checkpoint is restored into)."""
    return create_state(self.model(vocab_size), self.optimizer(), jax.random.key(self.seed),
                        self.batch_size, tbptt=self.tbptt)

  @functools.cached_property
  def _model(self) -> CharLM:
    return self.model(self.data["vocabulary"].size)

  @functools.cached_property
  def _optimizer(self) -> optax.GradientTransformation:
    return self.optimizer()

  # ---------------------------------------------------------------- the data

  def load(self, say) -> CharLMTask:
    """Reads and splits the text; refuses a batch of windows the training split cannot fill."""
    from rnn_jax.training import script, text  # pylint: disable=import-outside-toplevel
    del say  # The first line says where the text came from.
    path, vocabulary, splits = text.load_splits(self.text_file, self.search_dirs)
    try:
      windows = (text.StreamWindows(splits["train"], self.batch_size, self.window)
                 if self.tbptt else
                 text.RandomWindows(splits["train"], self.batch_size, self.window, self.seed))
    except ValueError as error:
      raise script.UsageError(str(error)) from error
    return dataclasses.replace(self, data={"path": path, "vocabulary": vocabulary,
                                           "splits": splits, "windows": windows})

  def num_steps(self) -> int:
    """``steps``."""
    return self.steps

  def steps_per_epoch(self) -> int:
    """Windows per pass over the training split."""
    return self.data["windows"].windows_per_pass

  def describe(self, num_params: int) -> str:
    """Cell, sizes, vocabulary, splits and windows, for the run's first line."""
    splits, vocabulary = self.data["splits"], self.data["vocabulary"]
    passes = self.steps * self.batch_size * self.window / len(splits["train"])
    return (f"{self.cell} x{self.num_layers} H={self.hidden_size} E={self.embed_size} "
            f"({num_params:,} parameters), vocabulary {len(vocabulary.chars)} + <unk>; "
            f"{self.data['path']}: {len(splits['train']):,} train / "
            f"{len(splits['validation']):,} validation / {len(splits['test']):,} test "
            f"characters; {'TBPTT over ' if self.tbptt else 'random windows, '}"
            f"{self.batch_size} {'streams' if self.tbptt else 'per batch'} x {self.window} "
            f"characters, {self.steps} steps ({passes:.1f} passes)")

  def check_workdir(self, workdir: str) -> None:
    """Saves the vocabulary in ``workdir``, or refuses one there that differs (another text)."""
    from rnn_jax.training import script, text  # pylint: disable=import-outside-toplevel
    vocabulary = self.data["vocabulary"]
    path = os.path.join(workdir, "vocabulary.json")
    if os.path.exists(path):
      saved = text.Vocabulary.load(path)
      if saved != vocabulary:
        raise script.UsageError(f"flag --workdir={workdir}: its vocabulary.json "
                                f"({len(saved.chars)} characters) is not this text's "
                                f"({len(vocabulary.chars)}); the text changed: use another "
                                "--workdir")
      return
    vocabulary.save(path)

  # ---------------------------------------------------------------- training

  def create_state(self) -> loop.TrainState:
    """The state of step 0; with ``tbptt`` its ``aux`` is the zero carry of the streams."""
    return create_state(self._model, self._optimizer, jax.random.key(self.seed),
                        self.batch_size, tbptt=self.tbptt)

  def make_train_step(self):
    """The jitted step of :func:`loss_function` over windows of ``window`` characters."""
    return loop.make_train_step(loss_function(self._model, self.window, self.tbptt),
                                self._optimizer, seed=self.seed)

  def batches(self, mesh):
    """The windows of each step; on a mesh, each process loads only its rows' windows (the
    batch depends on ``(seed, step)`` alone)."""
    windows = self.data["windows"]
    if mesh is None:
      return windows
    from rnn_jax.training import distributed  # pylint: disable=import-outside-toplevel

    def batch_for_step(step):
      tokens, rows, starts = distributed.global_batch(
          mesh, self.batch_size,
          lambda rows: (windows.window_tokens(step, rows), rows.astype(np.int32),
                        np.zeros(len(rows), np.int32)))
      return TextBatch(tokens, rows, starts,
                       distributed.replicate(np.bool_(windows.reset(step)), mesh))

    return batch_for_step

  # ---------------------------------------------------------------- evaluation

  def watched_split(self) -> str:
    """The validation split."""
    return "validation"

  def eval_every(self, requested: int) -> int:
    """``requested`` (0: only at the end)."""
    return requested

  def final_splits(self) -> tuple[str, ...]:
    """Validation, then test."""
    return ("validation", "test")

  def evaluate(self, split: str, state, mesh) -> dict:
    """Loss and bits per character over all of ``split`` (see :func:`evaluate`)."""
    return evaluate(self._model, state.params, self.data["splits"][split], self.eval_streams,
                    self.eval_window, mesh=mesh)

  def report(self, split: str, step: int, result: dict) -> tuple[dict, str]:
    """Validation: ``val_loss``/``val_bpc`` records (their names since the first runs)."""
    if split == "validation":
      return ({"step": step, "val_loss": result["loss"], "val_bpc": result["bpc"]},
              f"step {step}: validation loss {result['loss']:.4f} nats/char, "
              f"{result['bpc']:.4f} bits/char")
    return ({"step": step, f"{split}_loss": result["loss"], f"{split}_bpc": result["bpc"]},
            f"{split} loss {result['loss']:.4f} nats/char, {result['bpc']:.4f} bits/char "
            f"({result['count']:,} characters)")

  # ---------------------------------------------------------------- the end

  def finish(self, state, workdir: str, records: list, mesh, primary: bool, say) -> dict:
    """``sample.txt`` (``sample_length`` characters after the text's first line) and
    ``curves.png``, on process 0; the parameter count for the summary."""
    extras = {"parameters": loop.num_params(state.params)}
    if not primary:
      return extras
    vocabulary = self.data["vocabulary"]
    if self.sample_length:
      params = state.params
      if mesh is not None:  # A host copy: generation runs on this process's device alone.
        params = jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)), params)
      prompt = sample_prompt(vocabulary, self.data["path"])
      tokens = generate(self._model, params, vocabulary.encode(prompt, strict=True),
                        jax.random.key(self.seed), length=self.sample_length,
                        temperature=self.sample_temperature, exclude=vocabulary.unknown_id)
      sample = prompt + vocabulary.decode(np.asarray(tokens))
      with open(os.path.join(workdir, "sample.txt"), "w", encoding="utf-8") as stream:
        stream.write(sample)
      say(f"sample (temperature {self.sample_temperature:g}, {self.sample_length} "
          f"characters after the prompt):\n{sample}")
    if self.plots:
      plot_loss_curves(records, os.path.join(workdir, "curves.png"),
                       f"{self.cell} x{self.num_layers} H={self.hidden_size}, "
                       f"{'TBPTT' if self.tbptt else 'random windows'}")
    return extras

  def summary(self, results, steps_per_second: float) -> dict:
    """Validation and test figures, the character rate, the machine's load and allocator.

    ``last10_loss`` is the loss over the validation and test splits together,
    the mean of their losses weighted by their character counts: nanoGPT's
    "val" split, the last 10% of the text (for Tiny Shakespeare both splits
    hold 55,770 characters, so it is the plain mean of the two losses).
    """
    validation, test = results["validation"], results["test"]
    from rnn_jax.training import runtime  # pylint: disable=import-outside-toplevel
    return {
        "val_loss": validation["loss"], "val_bpc": validation["bpc"],
        "test_loss": test["loss"], "test_bpc": test["bpc"],
        "last10_loss": last10_loss(validation, test),
        "val_chars": validation["count"], "test_chars": test["count"],
        "chars_per_second": round(self.batch_size * self.window * steps_per_second),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "allocator": runtime.allocator_name(),
    }


def last10_loss(validation: dict, test: dict) -> float:
  """The loss over the validation and test splits together (nanoGPT's "val", the last 10%
  of the text): their ``loss`` values weighted by their ``count`` of characters."""
  total = validation["count"] + test["count"]
  return (validation["loss"] * validation["count"] + test["loss"] * test["count"]) / total


# ----------------------------------------------------------------------------- a trained run


def check_generation(prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> None:
  """Raises ``ValueError`` naming the first bad argument of :meth:`TrainedCharLM.generate`."""
  if not isinstance(length, int) or length < 0:
    raise ValueError(f"length={length}: must be >= 0")
  if temperature < 0:
    raise ValueError(f"temperature={temperature}: must be >= 0")
  if top_k is not None and top_k < 0:
    raise ValueError(f"top_k={top_k}: must be >= 0")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p}: must be in (0, 1]")
  if not prompt:
    raise ValueError("prompt is empty: give at least one character to start from")


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedCharLM:
  """A character LM trained by ``experiments.train_char_lm``, as :func:`load` returns it.

  Attributes:
    model: the :class:`CharLM` of the run's config.
    params: the parameters of the newest checkpoint.
    vocabulary: the run's vocabulary (``vocabulary.json``).
    step: the training step of that checkpoint.
    workdir: the run directory.
  """

  model: CharLM
  params: Any
  vocabulary: Vocabulary
  step: int
  workdir: str

  def generate(self, prompt: str, length: int, *, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> str:
    """``prompt`` followed by ``length`` sampled characters: exactly what
    ``python -m experiments.generate`` prints for the same arguments.

    Args:
      prompt: the text to continue (at least one character, all in the vocabulary).
      length: characters to generate.
      temperature: sampling temperature; 0 is greedy.
      top_k: sample among the ``k`` most likely characters (``None`` or 0: all).
      top_p: nucleus sampling (``None`` or 1: all); see :func:`sample_next`.
      seed: equal seeds give equal text.

    Raises:
      ValueError: a bad argument, or characters of the prompt outside the vocabulary
        (named).
    """
    check_generation(prompt, length, temperature, top_k, top_p)
    try:
      ids = self.vocabulary.encode(prompt, strict=True)
    except ValueError as error:
      raise ValueError(f"prompt: {error}") from error
    if length == 0:
      return prompt
    tokens = generate(self.model, self.params, ids, jax.random.key(seed), length=length,
                      temperature=temperature, top_k=top_k or 0,
                      top_p=1.0 if top_p is None else top_p, exclude=self.vocabulary.unknown_id)
    return prompt + self.vocabulary.decode(np.asarray(tokens))


def load(workdir: str | os.PathLike) -> TrainedCharLM:
  """The model, parameters and vocabulary of a ``train_char_lm`` run's newest checkpoint.

  Works while the run is still training (reading takes no lock), and for
  runs of earlier versions (settings added since take their defaults).

  Raises:
    rnn_jax.training.idx.DataError: no such directory, not a character LM's
      run, or no checkpoint yet.
  """
  from rnn_jax.training import runs, text  # pylint: disable=import-outside-toplevel
  config = runs.read_config(workdir, "train_char_lm")
  unknown = set(config) - set(CharLMTask().config_values())
  if unknown:
    raise runs.DataError(f"workdir {os.fspath(workdir)}: not a run of "
                         f"experiments.train_char_lm (its config.json has {sorted(unknown)})")
  task = CharLMTask.from_config(config)
  vocabulary = text.Vocabulary.load(os.path.join(os.fspath(workdir), "vocabulary.json"))
  step, state = runs.restore_newest(workdir, task.initial_state(vocabulary.size))
  return TrainedCharLM(task.model(vocabulary.size), state.params, vocabulary, int(step),
                       os.fspath(workdir))
