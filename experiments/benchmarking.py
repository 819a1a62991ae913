"""Benchmark machinery shared by the ``experiments.bench_*`` scripts.

:class:`BenchConfig` is the base of each script's settings (a
:class:`~rnn_jax.training.config.Config`: the fields are its absl flags) and
:func:`describe_machine` what each records about the machine it ran on.

:func:`time_function` is the one timer every benchmark in the project uses: it
calls a function, waits for its (JAX or PyTorch) results, and reports the
median over repeats after a warm-up, so compile time never leaks into a figure.
The ``build_*`` functions build the compared models (rnn_jax, Flax Linen,
PyTorch, cuDNN through JAX) on the same inputs. Flax, PyTorch and Optax are
imported only by the builders that need them (the ``bench`` extra installs them).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import statistics
import sys
import time
from typing import Any, Callable, Sequence

try:
  import resource  # getrusage's page-fault counts (POSIX only).
except ImportError:  # pragma: no cover
  resource = None

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax
from rnn_jax.training import runtime
from rnn_jax.training.config import Config, setting
from rnn_jax.training.script import UsageError


@dataclasses.dataclass(frozen=True)
class BenchConfig(Config):
  """What every benchmark takes: where its results go and the machine's name; a script adds its
  own fields (and may give ``out`` another default)."""

  out: str = setting("experiments/results", "Folder the results are written to.")
  label: str = setting("", "A name for the machine, printed and saved with the results.")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table: one ``| a | b |`` line per header and row, each cell as written."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def parse(config_class: type[Config], argv: Sequence[str] | None = None) -> Config:
  """A benchmark's settings from command-line arguments (:meth:`Config.from_argv`; default
  ``sys.argv[1:]``); a refusal is one line on stderr and exit status 2."""
  try:
    return config_class.from_argv(argv)[0]
  except UsageError as error:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2) from None


def describe_machine(label: str) -> dict:
  """What a benchmark records about where it ran: ``label``, JAX's backend and device, the
  CPU, versions, the allocator, the load average at the start, the UTC time."""
  device = jax.devices()[0]
  info = {
      "label": label,
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
      "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "jax": jax.__version__,
      "python": platform.python_version(),
      "allocator": runtime.allocator_name(),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "load_average_start": os.getloadavg(),
      "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
  }
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    info["cpu_model"] = names[0] if names else ""
  except OSError:
    info["cpu_model"] = ""
  if torch_available():
    import torch  # pylint: disable=import-outside-toplevel
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["torch_allow_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                "cudnn": torch.backends.cudnn.allow_tf32}
  try:
    import flax  # pylint: disable=import-outside-toplevel
    info["flax"] = flax.__version__
  except ImportError:
    pass
  info["cpu_flags"] = cpu_flags()
  info["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
  return info


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")
"""The /proc/cpuinfo flags that decide a CPU's matmul speed (what :func:`cpu_flags` reports)."""


def cpu_flags(path: str = "/proc/cpuinfo") -> list[str]:
  """The :data:`SIMD_FLAGS` the first CPU of ``path`` lists, in that order; ``[]`` where
  ``path`` cannot be read (not Linux)."""
  try:
    with open(path) as f:
      line = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return []
  present = set(line.partition(":")[2].split())
  return [flag for flag in SIMD_FLAGS if flag in present]


def time_function(fn: Callable[..., Any], *args, repeats: int = 20, warmup: int = 3,
                  min_time_s: float = 0.0, **kwargs) -> dict:
  """Wall-clock time of ``fn(*args, **kwargs)``, results awaited with ``jax.block_until_ready``.

  The first ``warmup`` calls (compilation, first-touch page faults) are not
  counted. Then ``fn`` is called ``repeats`` times, or more until at least
  ``min_time_s`` seconds of measured calls have passed.

  Args:
    fn: the function to time; for JAX, usually a ``jax.jit``-ed function.
    *args: its positional arguments.
    repeats: number of measured calls (at least 1).
    warmup: number of unmeasured calls before them.
    min_time_s: keep measuring past ``repeats`` until this much time is spent.
    **kwargs: its keyword arguments.

  Returns:
    ``dict(median_s, min_s, mean_s, stdev_s, repeats, warmup_s, times_s)``;
    ``warmup_s`` is the time of the first warm-up call (mostly compilation).
  """
  repeats = max(1, int(repeats))
  warmup_s = 0.0
  for i in range(warmup):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args, **kwargs))
    if i == 0:
      warmup_s = time.perf_counter() - start
  times = []
  total = 0.0
  while len(times) < repeats or total < min_time_s:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args, **kwargs))
    elapsed = time.perf_counter() - start
    times.append(elapsed)
    total += elapsed
  return {
      "median_s": statistics.median(times),
      "min_s": min(times),
      "mean_s": statistics.fmean(times),
      "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
      "repeats": len(times),
      "warmup_s": warmup_s,
      "times_s": times,
  }


def time_interleaved(cases: dict, rounds: int = 10, warmup: int = 2,
                     min_round_s: float = 0.0, rewarm: bool = False) -> dict:
  """Times several ``name -> (fn, args)`` side by side, one call of each per round.

  Interleaving puts every case under the same background load (the machine is
  shared), so their ratios are steadier than back-to-back :func:`time_function`
  runs. The order is shuffled every round (seeded), so that no case always
  follows the same one (PyTorch's OpenMP threads keep spinning for a while
  after a call and slow whatever runs next). Each case is warmed up first.

  ``rewarm=True`` calls each case once more, untimed, right before its timed
  call in every round, so the timed call runs as in a loop that calls it again
  and again (a training loop) rather than right after another library's call:
  on our 2-core VM a call that follows a tenth of a second or more in which
  the cores idled (a sleep, or one of PyTorch's long mostly one-threaded
  calls) ran slower whichever library made it, up to twice as slow for the
  C++ loop's short calls (``experiments.bench_cold_calls``;
  ``experiments/results/README.md``, ``cold_calls/``).

  Returns:
    ``name -> dict`` as :func:`time_function` returns, ``warmup_s`` included, and
    ``faults_per_call``: the median over the timed calls of the process's minor
    page faults during each (:func:`minor_faults`; ``None`` where unknown).
  """
  warmup_s = {name: 0.0 for name in cases}
  for name, (fn, args) in cases.items():
    for i in range(warmup):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      if i == 0:
        warmup_s[name] = time.perf_counter() - start
  times = {name: [] for name in cases}
  faults = {name: [] for name in cases}
  order = list(cases)
  shuffler = random.Random(0)
  elapsed_rounds = 0.0
  done = 0
  while done < rounds or elapsed_rounds < min_round_s:
    round_start = time.perf_counter()
    shuffler.shuffle(order)
    for name in order:
      fn, args = cases[name]
      if rewarm:
        jax.block_until_ready(fn(*args))
      faults_before = minor_faults()
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
      if faults_before is not None:
        faults[name].append(minor_faults() - faults_before)
    elapsed_rounds += time.perf_counter() - round_start
    done += 1
  return {name: {"median_s": statistics.median(t), "min_s": min(t), "mean_s": statistics.fmean(t),
                 "stdev_s": statistics.stdev(t) if len(t) > 1 else 0.0, "repeats": len(t),
                 "warmup_s": warmup_s[name], "times_s": t,
                 "faults_per_call": statistics.median(faults[name]) if faults[name] else None}
          for name, t in times.items()}


def minor_faults() -> int | None:
  """The process's minor page faults so far (``getrusage``), all threads; ``None`` off POSIX.

  A call that touches freshly mapped memory takes one per 4 KiB page it touches (fewer with
  huge pages): glibc's malloc maps blocks over 32 MiB anew on every allocation, tcmalloc and
  :func:`rnn_jax.training.runtime.keep_freed_memory` reuse them (the Performance guide's "memory
  allocator").
  """
  if resource is None:
    return None
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

# ---------------------------------------------------------------------------
# Models to compare. Every builder returns ``(forward, forward_backward, args)``:
# ``forward(*args)`` runs the layer over ``[T, B, I]`` time-major inputs (``[B, T, I]``
# batch-major ones, what a user's script passes, with ``time_major=False``) and
# ``forward_backward(*args)`` is ``value_and_grad`` of ``sum(outputs)`` with respect to the
# parameters and the inputs. All start from zero carries.

CELLS = ("simple_rnn", "lstm", "gru")
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
DEFAULT_SHAPES = ((128, 28, 28, 128), (64, 256, 128, 256), (16, 784, 1, 128))
QUICK_SHAPES = ((16, 12, 8, 32), (8, 40, 4, 16))


def split_shapes(shapes: Sequence[int]) -> list[tuple[int, int, int, int]]:
  """A ``--shapes`` flag's integers, ``B,T,I,H`` one shape after the other, as ``(B, T, I, H)``
  tuples.

  Raises:
    UsageError: their number is not a multiple of four.
  """
  if len(shapes) % 4:
    raise UsageError(f"flag --shapes={','.join(map(str, shapes))}: a shape is B,T,I,H; "
                     "give four integers per shape")
  return [tuple(shapes[at:at + 4]) for at in range(0, len(shapes), 4)]


def _inputs(shape, seed: int = 0, time_major: bool = True) -> np.ndarray:
  """Float32 inputs for a ``(B, T, I, H)`` shape: ``[T, B, I]``, or ``[B, T, I]`` (the same
  numbers, contiguous) unless ``time_major``."""
  batch, steps, inputs, _ = shape
  xs = np.random.default_rng(seed).standard_normal((steps, batch, inputs), np.float32)
  return xs if time_major else np.ascontiguousarray(np.swapaxes(xs, 0, 1))


def rnn_jax_cell(cell_name: str, hidden: int):
  """The rnn_jax cell matching PyTorch's (no LSTM forget bias, GRU reset after)."""
  return {"simple_rnn": lambda: rnn_jax.simple_rnn(hidden),
          "lstm": lambda: rnn_jax.lstm(hidden, forget_bias=0.0),
          "gru": lambda: rnn_jax.gru(hidden)}[cell_name]()


def build_rnn(cell, shape, *, time_major: bool = True, **options):
  """``(forward, forward_backward, args)`` of ``rnn_jax.rnn`` for any cell or layer.

  ``options`` go to ``rnn`` (``unroll``, ``hoist``, ``vjp``, ``kernel``; unset
  ones default); ``forward_backward`` is ``value_and_grad`` of ``sum(outputs)``
  with respect to the parameters and the inputs (``[T, B, I]``, or
  ``[B, T, I]`` unless ``time_major``).
  """
  params = cell.init(jax.random.key(0), shape[2])
  xs = jnp.asarray(_inputs(shape, time_major=time_major))

  def forward(params, xs):
    return rnn_jax.rnn(cell, params, xs, time_major=time_major, **options)[0]

  def loss(params, xs):
    return jnp.sum(forward(params, xs))

  return jax.jit(forward), jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (params, xs)


def build_rnn_jax(cell_name: str, shape, *, kernel: str | None = None, time_major: bool = True,
                  **options):
  """:func:`build_rnn` for the rnn_jax cell matching PyTorch's ``cell_name``.

  ``kernel``: ``"scan"``, ``"onednn"`` or ``None`` (``rnn``'s default), see
  ``rnn_jax.onednn``; ``options``: ``unroll``, ``hoist``, ``vjp``.
  """
  return build_rnn(rnn_jax_cell(cell_name, shape[3]), shape, kernel=kernel,
                   time_major=time_major, **options)


def build_flax(cell_name: str, shape, *, unroll: int = 1, time_major: bool = True):
  """Flax Linen ``nn.RNN`` over SimpleCell / OptimizedLSTMCell / GRUCell."""
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  hidden = shape[3]
  cell = {"simple_rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell,
          "gru": nn.GRUCell}[cell_name](features=hidden)
  model = nn.RNN(cell, time_major=time_major, unroll=unroll)
  xs = jnp.asarray(_inputs(shape, time_major=time_major))
  variables = model.init(jax.random.key(0), xs)

  def loss(variables, xs):
    return jnp.sum(model.apply(variables, xs))

  return (jax.jit(model.apply), jax.jit(jax.value_and_grad(loss, argnums=(0, 1))),
          (variables, xs))


def torch_available() -> bool:
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def build_torch(cell_name: str, shape, *, device: str = "cpu", time_major: bool = True):
  """PyTorch ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (oneDNN on CPU, cuDNN on CUDA);
  ``batch_first`` unless ``time_major``."""
  import torch  # pylint: disable=import-outside-toplevel
  batch, steps, inputs, hidden = shape
  module = {"simple_rnn": torch.nn.RNN, "lstm": torch.nn.LSTM,
            "gru": torch.nn.GRU}[cell_name](inputs, hidden,
                                            batch_first=not time_major).to(device)
  xs = torch.from_numpy(_inputs(shape, time_major=time_major)).to(device)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

  def forward(xs):
    with torch.no_grad():
      outputs = module(xs)[0]
    sync()
    return outputs

  def forward_backward(xs):
    module.zero_grad(set_to_none=True)
    xs = xs.detach().requires_grad_(True)
    module(xs)[0].sum().backward()
    sync()
    return xs.grad

  return forward, forward_backward, (xs,)


def build_cudnn_lstm(shape):
  """``jax.experimental.rnn.lstm`` (cuDNN; GPU only), batch-major as that API wants."""
  from jax.experimental import rnn as jrnn  # pylint: disable=import-outside-toplevel
  batch, steps, inputs, hidden = shape
  xs = jnp.asarray(_inputs(shape, time_major=False))
  weights = jrnn.init_lstm_weight(jax.random.key(0), inputs, hidden, 1, False)
  zeros = jnp.zeros((1, batch, hidden), jnp.float32)
  lengths = jnp.full((batch,), steps, jnp.int32)

  def run(weights, xs):
    return jrnn.lstm(xs, zeros, zeros, weights, lengths, input_size=inputs, hidden_size=hidden,
                     num_layers=1, dropout=0.0, bidirectional=False)[0]

  loss = lambda weights, xs: jnp.sum(run(weights, xs))
  return jax.jit(run), jax.jit(jax.grad(loss, argnums=(0, 1))), (weights, xs)


def model_flops(cell_name: str, shape, mode: str) -> float:
  """Matmul flops of a layer over ``(B, T, I, H)``: ``2 B T (I + H) G H`` forward (the input
  and recurrent products, ``G`` gate blocks); ``"fwd+bwd"`` three times that, as the backward
  runs two products of the same size per weight matrix (``dz @ w^T`` for the input and
  recurrent gradients, ``x^T dz`` and ``h^T dz`` for the weight gradients). Elementwise work
  is not counted."""
  batch, steps, inputs, hidden = shape
  forward = 2.0 * steps * batch * (inputs + hidden) * GATES[cell_name] * hidden
  return forward if mode == "fwd" else 3.0 * forward


def achieved_gflops(cell_name: str, shape, mode: str, seconds: float) -> float:
  """GFLOP/s of one pass of :func:`model_flops` flops taking ``seconds``."""
  return model_flops(cell_name, shape, mode) / seconds / 1e9


def peak_fraction(gflops: float, peak_gflops: float) -> float | None:
  """``gflops / peak_gflops``, or ``None`` above 1 (a peak measured low, not a real figure)."""
  fraction = gflops / peak_gflops
  return fraction if fraction <= 1.0 else None


GEMM_PEAK_SIZE = 2048
"""Side of the square float32 matmul whose speed :func:`gemm_peak` measures."""


def gemm_peak(size: int = GEMM_PEAK_SIZE, repeats: int = 10) -> float:
  """Measured GFLOP/s of one float32 ``[size, size] @ [size, size]`` matmul under ``jax.jit``
  (as many threads as JAX uses): the ceiling the layers' GFLOP/s are compared with; median of
  ``repeats`` calls after warm-up."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((size, size), np.float32)) for _ in range(2))
  timing = time_function(jax.jit(jnp.matmul), a, b, repeats=repeats, warmup=2)
  return 2.0 * size ** 3 / timing["median_s"] / 1e9


# ---------------------------------------------------------------------------
# Training step: MNIST rows (28 steps of 28 pixels), LSTM, dense head, Adam.


def build_train_step_rnn_jax(batch: int = 128, hidden: int = 128, **options):
  """One rnn_jax + Optax Adam step on synthetic MNIST-row batches; returns ``(step, args)``.

  ``options`` go to ``rnn_jax.rnn`` (e.g. ``vjp="autodiff"``); unset ones default.
  """
  import optax  # pylint: disable=import-outside-toplevel
  cell = rnn_jax.lstm(hidden, forget_bias=0.0)
  key_cell, key_head = jax.random.split(jax.random.key(0))
  params = {"rnn": cell.init(key_cell, 28),
            "head": {"w": jax.random.normal(key_head, (hidden, 10)) / np.sqrt(hidden),
                     "b": jnp.zeros((10,))}}
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((batch, 28, 28), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, batch))

  def loss(params, images, labels):
    outputs, _ = rnn_jax.rnn(cell, params["rnn"], images, **options)
    logits = outputs[:, -1] @ params["head"]["w"] + params["head"]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, opt_state, images, labels):
    value, grads = jax.value_and_grad(loss)(params, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return step, (params, opt_state, images, labels)


def build_train_step_torch(batch: int = 128, hidden: int = 128, *, device: str = "cpu"):
  """The same step in PyTorch (``nn.LSTM(batch_first=True)`` + ``nn.Linear``, Adam)."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  lstm = torch.nn.LSTM(28, hidden, batch_first=True).to(device)
  head = torch.nn.Linear(hidden, 10).to(device)
  optimizer = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.random((batch, 28, 28), np.float32)).to(device)
  labels = torch.from_numpy(rng.integers(0, 10, batch)).to(device)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    logits = head(lstm(images)[0][:, -1])
    value = torch.nn.functional.cross_entropy(logits, labels)
    value.backward()
    optimizer.step()
    sync()
    return None

  return step, (images, labels)
