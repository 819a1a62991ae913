"""Recurrent cells as values: the Elman RNN, LSTM and GRU.

A cell is a frozen dataclass of hyperparameters (so ``lstm(8) == lstm(8, 1.0)``
and equal cells hash equally and share ``jax.jit`` caches) with pure methods.
Nothing is stateful: parameters are a plain dict of arrays returned by
``cell.init`` and threaded through explicitly.

Every cell splits its step into two halves so that an unroller may hoist the
input half out of the time loop::

    px_t          = cell.project(params, x_t)          # [..., I] -> [..., G]
    carry, y_t    = cell.recur(params, carry, px_t)     # the recurrence only
    carry, y_t    = cell.step(params, carry, x_t)       # both, one time step

``project`` is affine in ``x`` and has no time dependence, so
``cell.project(params, xs)`` on a whole ``[..., T, I]`` sequence is one matmul.
Each cell also writes its derivative next to its equations
(:class:`rnn_jax.fused.FusedVJP`), for the fused backward pass.

Shapes: ``I`` input size, ``H`` hidden size, ``G`` fused gate width, ``...``
any batch shape (including none). With float32 or bfloat16 inputs and
parameters the carry math and the outputs are float32 (bfloat16 inputs are
promoted); with float64 ones (under x64) they are float64.

Every cell takes ``compute_dtype`` (default ``None``): with ``jnp.bfloat16`` each
of its matrix products, forward and backward (the fused one included), reads
bfloat16 operands and accumulates in float32 (:func:`rnn_jax.precision.matmul`);
the gate nonlinearities, the carry (an LSTM's cell state above all: it sums
over the whole sequence, and bfloat16's 8-bit mantissa would lose the small
increments) and the parameters stay float32. ``rnn(..., compute_dtype=...)``
sets it on every cell of a composite and returns the outputs in it.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp

import rnn_jax._scan as _scan
import rnn_jax.fused as fused
from rnn_jax.layer import (Layer, RunOptions, ShapeClass, required_method, check_step_input,
                           compiled_init)
from rnn_jax.precision import matmul

Params = dict
Initializer = Callable[..., jax.Array]

glorot_uniform = jax.nn.initializers.glorot_uniform()
orthogonal = jax.nn.initializers.orthogonal()
zeros = jax.nn.initializers.zeros


class LSTMState(NamedTuple):
  """Carry of an LSTM: hidden state ``h`` and cell state ``c``, each ``[..., H]``."""

  h: jax.Array
  c: jax.Array


def check_size(name: str, value: Any) -> None:
  """Raises ``ValueError`` unless ``value`` is a positive int (not a bool or a float)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")


def zeros_carry(batch_shape, size: int, dtype) -> jax.Array:
  """``zeros [*batch_shape, size]``; an int ``batch_shape`` means one batch axis."""
  if isinstance(batch_shape, numbers.Integral):
    batch_shape = (int(batch_shape),)
  return jnp.zeros((*batch_shape, size), dtype)


def blockwise(init: Initializer, blocks: int) -> Initializer:
  """Applies ``init`` to each ``[rows, H]`` gate block of a ``[rows, blocks*H]`` matrix.

  The blocks are drawn in at least float32 and then cast to ``dtype``: the
  orthogonal initialiser's QR has no bfloat16/float16 kernel on CPU.
  """

  def init_fn(key, shape, dtype=jnp.float32):
    rows, cols = shape
    keys = jax.random.split(key, blocks)
    draw_dtype = jnp.promote_types(dtype, jnp.float32)
    # One batched draw (a smaller program to compile than one per block); the
    # same values as drawing block by block with the same keys.
    parts = jax.vmap(lambda k: init(k, (rows, cols // blocks), draw_dtype))(keys)
    return jnp.moveaxis(parts, 0, 1).reshape(rows, cols).astype(dtype)

  return init_fn


def identity(key, shape, dtype=jnp.float32):
  """The IRNN recurrent initialiser (Le et al. 2015): the identity matrix."""
  del key
  rows, cols = shape
  return jnp.eye(rows, cols, dtype=dtype)


LONG_AND_NARROW = ShapeClass(min_steps=512, max_batch_width=4096)
"""Long sequences of a small batch of narrow states (pixel MNIST: T = 784, N = 16, H = 128):
where, on CPU, the LSTM's and GRU's ``vjp="remat"`` was measured faster than autodiff.

Autodiff's saved gates (80 MiB for the LSTM at pixel MNIST) are a fresh allocation every call,
which glibc's malloc maps and page-faults anew (20,000 faults a call); recomputing each step
instead keeps 18.5 MiB and no faults: 0.72x the LSTM's CPU time per forward+backward call,
0.73x the GRU's, with glibc; 1.02x and 1.07x with tcmalloc, which keeps freed memory. At
(64, 256, 128, 256) the recomputed recurrent product costs more than the faults save (0.97x
and 1.00x with glibc, 1.25x for the LSTM with tcmalloc), and at (128, 28, 28, 128) autodiff's
24 MiB are under glibc's mapping threshold (1.04x): there autodiff stays. Single-threaded CPU
time per call on the 2-core AMD EPYC VM, interleaved (the Performance guide)."""

def affine_input(params: Params, x: jax.Array, bias: str, blocks: int = 1,
                 compute_dtype: Any = None) -> jax.Array:
  """``x @ w_ih + params[bias]``, ``[..., I] -> [..., blocks*H]``; promotes bfloat16 inputs
  to the parameter dtype; the product in ``compute_dtype`` (:func:`rnn_jax.precision.matmul`).

  With a single input feature (``I = 1``, pixel MNIST) and several gate blocks,
  each block's product is taken separately and concatenated: the same numbers
  (one multiplication per element either way), but XLA:CPU then computes the
  blocks apart inside a scan step instead of slicing one product, which ran
  the forward pass of a GRU or LSTM at half speed (pixel MNIST; figures in
  the Performance guide).
  """
  weights = params["w_ih"]
  x = x.astype(jnp.promote_types(x.dtype, weights.dtype))
  if x.shape[-1] == 1 and blocks > 1:
    width = weights.shape[-1] // blocks
    product = jnp.concatenate([matmul(x, weights[:, k * width:(k + 1) * width], compute_dtype)
                               for k in range(blocks)], axis=-1)
  else:
    product = matmul(x, weights, compute_dtype)
  return product + params[bias]


LAYER_NORM_EPSILON = 1e-5
"""Added to the variance inside the square root of :func:`normalized` (PyTorch's default)."""


def normalized(v: jax.Array, gain: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """Layer normalisation over the last axis: ``gain * (v - mean) / sqrt(var + 1e-5) + bias``.

  Args:
    v: ``[..., F]``.
    gain: ``[F]``.
    bias: ``[F]`` or ``None`` (no bias).

  Returns:
    ``[..., F]``; the mean and (biased) variance are taken over ``F``.
  """
  mean = v.mean(axis=-1, keepdims=True)
  centred = v - mean
  variance = (centred * centred).mean(axis=-1, keepdims=True)
  out = gain * centred * jax.lax.rsqrt(variance + LAYER_NORM_EPSILON)
  return out if bias is None else out + bias


class Cell(Layer, abstract=True):
  """Base of the steppable cells: their ``scan`` is one ``jax.lax.scan`` of ``step``.

  Subclasses define ``name``, ``GATES`` (gate blocks of ``w_ih``), ``init``,
  ``project`` and ``recur``; cells with a hand-written derivative also derive
  from :class:`~rnn_jax.fused.FusedVJP` and are then run with the fused
  backward when the options say ``vjp="fused"``. Which kernel runs a cell
  (this scan, or e.g. oneDNN's) is decided outside it
  (:mod:`rnn_jax.kernels`).
  """

  name: ClassVar[str]
  GATES: ClassVar[int] = 1
  hidden_size: int

  @property
  def output_size(self) -> int:
    """``O``, the size of ``y_t`` (``H`` for the built-in cells)."""
    return self.hidden_size

  def initial_carry(self, batch_shape=(), dtype=jnp.float32):
    """Zeros, leaves ``[*batch_shape, H]`` (an int ``batch_shape`` is one batch axis)."""
    return zeros_carry(batch_shape, self.hidden_size, dtype)

  def input_size(self, params: Params) -> int:
    """``I``, read off the parameter shapes."""
    return params["w_ih"].shape[0]

  @required_method
  def project(self, params: Params, x: jax.Array) -> jax.Array:
    """The input half of a step, ``[..., I] -> [..., G]``; affine, no time dependence."""
    raise NotImplementedError(f"{type(self).__name__}.project")

  @required_method
  def recur(self, params: Params, carry, px: jax.Array):
    """The recurrent half of a step: ``(params, carry, px_t) -> (carry, y_t)``."""
    raise NotImplementedError(f"{type(self).__name__}.recur")

  def step(self, params: Params, carry, x: jax.Array):
    """One time step: ``(params, carry, x_t [..., I]) -> (carry, y_t [..., O])``."""
    check_step_input(self, params, carry, x)
    return self.recur(params, carry, self.project(params, x))

  def scan(self, params, xs, carry, lengths, options: RunOptions, resets=None):
    """One ``jax.lax.scan`` over ``xs [T, ..., I]``, differentiated by autodiff (with
    ``options.vjp == "remat"``, of each step under ``jax.checkpoint``) or, with
    ``options.vjp == "fused"`` for a :class:`~rnn_jax.fused.FusedVJP` cell, by the fused
    backward: the ``"scan"`` kernel (:mod:`rnn_jax.kernels`). ``resets``: ``None`` or
    ``[T, ...]`` bool, where the carry starts over (``rnn_jax._scan.reset_flags``)."""
    run = dict(resets=resets, reverse=options.reverse, unroll=options.unroll,
               hoist=options.hoist)
    if options.vjp == "fused" and self.runs_fused_vjp():
      return fused.fused_scan(self, params, xs, carry, lengths, **run)
    return _scan.scan_layer(self, params, xs, carry, lengths, **run,
                            checkpoint_steps=options.vjp == "remat")

  def _weights(self, k_ih, k_hh, input_size: int, recurrent_init: Initializer) -> Params:
    """``w_ih [I, G*H]`` and ``w_hh [H, G*H]``, each gate block initialised separately."""
    width = self.GATES * self.hidden_size
    return {
        "w_ih": blockwise(self.kernel_init, self.GATES)(k_ih, (input_size, width),
                                                        self.param_dtype),
        "w_hh": blockwise(recurrent_init, self.GATES)(k_hh, (self.hidden_size, width),
                                                      self.param_dtype),
    }


ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True, repr=False)
class SimpleRNN(Cell, fused.FusedVJP):
  """The Elman network: ``h_t = act(x_t @ w_ih + h_{t-1} @ w_hh + b)``; ``y_t = h_t``.

  Params: ``w_ih [I, H]``, ``w_hh [H, H]``, ``b [H]``. Carry: ``h [..., H]``.
  Built by :func:`simple_rnn`.
  """

  FACTORY: ClassVar[str] = "simple_rnn"

  name: ClassVar[str] = "simple_rnn"
  TUNED_UNROLL: ClassVar[Mapping[str, int]] = {"cpu": 1, "gpu": 8}
  TUNED_VJP: ClassVar[Mapping[str, str]] = {"cpu": "fused", "gpu": "fused"}
  TORCH_MODULE: ClassVar[str] = "RNN"

  hidden_size: int
  activation: str = "tanh"
  kernel_init: Initializer = dataclasses.field(default=glorot_uniform, repr=False)
  recurrent_init: Initializer | str = dataclasses.field(default=orthogonal, repr=False)
  bias_init: Initializer = dataclasses.field(default=zeros, repr=False)
  param_dtype: Any = jnp.float32
  compute_dtype: Any = None

  def __post_init__(self):
    check_size("hidden_size", self.hidden_size)
    self._check_compute_dtype()
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                       f"got {self.activation!r}")
    if isinstance(self.recurrent_init, str) and self.recurrent_init != "identity":
      raise ValueError(f"recurrent_init must be an initialiser or 'identity', "
                       f"got {self.recurrent_init!r}")

  @compiled_init
  def init(self, key, input_size: int) -> Params:
    k_ih, k_hh, k_b = jax.random.split(key, 3)
    recurrent_init = identity if self.recurrent_init == "identity" else self.recurrent_init
    params = self._weights(k_ih, k_hh, input_size, recurrent_init)
    params["b"] = self.bias_init(k_b, (self.hidden_size,), self.param_dtype)
    return params

  def project(self, params, x):
    return affine_input(params, x, "b", self.GATES, self.compute_dtype)

  def recur(self, params, h, px):
    h = ACTIVATIONS[self.activation](px + self._matmul(h, params["w_hh"]))
    return h, h

  def recur_with_residuals(self, params, h, px):
    h = self.recur(params, h, px)[0]
    return h, h, ()

  def step_vjp(self, params, residuals, h_prev, y, dh, dy):
    del residuals, h_prev
    slope = 1.0 - y * y if self.activation == "tanh" else (y > 0).astype(y.dtype)
    dz = (dh + dy) * slope
    return self._matmul(dz, params["w_hh"].T), dz, None

  def recurrent_grads(self, params, residuals, h_prevs, dz_rec):
    return {"w_hh": fused.time_batch_matmul(h_prevs, dz_rec, self.compute_dtype)}


@dataclasses.dataclass(frozen=True, repr=False)
class LSTM(Cell, fused.FusedVJP):
  """Long short-term memory, gates fused in the order (i, f, g, o) of PyTorch/cuDNN.

  With ``z = x_t @ w_ih + h_{t-1} @ w_hh + b`` split into four ``[..., H]`` blocks::

      i = sigmoid(z_i)   f = sigmoid(z_f + forget_bias)   g = tanh(z_g)   o = sigmoid(z_o)
      c_t = f * c_{t-1} + i * g        h_t = o * tanh(c_t)        y_t = h_t

  Params: ``w_ih [I, 4H]``, ``w_hh [H, 4H]``, ``b [4H]``. Carry:
  ``LSTMState(h [..., H], c [..., H])``. Built by :func:`lstm`.

  With ``proj_size=P > 0`` (PyTorch's projected LSTM, Sak et al. 2014) the
  hidden state is projected, ``h_t = (o * tanh(c_t)) @ w_hr`` with
  ``w_hr [H, P]``; ``h_t`` is the output and the recurrent input, so
  ``w_hh`` is ``[P, 4H]`` and the carry is ``LSTMState(h [..., P], c [..., H])``.

  With ``layer_norm=True`` (Ba, Kiros & Hinton 2016, "Layer Normalization",
  eqs. 20-22), writing ``LN(v; gain, bias) = gain * (v - mean(v)) /
  sqrt(var(v) + 1e-5) + bias`` over the last axis of ``v``::

      z   = LN(x_t @ w_ih; ln_ih_gain, 0) + LN(h_{t-1} @ w_hh; ln_hh_gain, 0) + b
      c_t = f * c_{t-1} + i * g          (gates from z as above, forget_bias included)
      h_t = o * tanh(LN(c_t; ln_c_gain, ln_c_bias))

  The two ``[4H]`` pre-activation terms are normalised each over all four
  gate blocks together (as in the paper); their biases are the one ``b [4H]``
  (the paper's two LN biases and ``b`` are one parameter). Extra params:
  ``ln_ih_gain [4H]``, ``ln_hh_gain [4H]``, ``ln_c_gain [H]`` (ones) and
  ``ln_c_bias [H]`` (zeros). Both options may be combined (the projection
  follows ``o * tanh(LN(c_t))``); either one turns the fused backward off
  (:meth:`runs_fused_vjp`; ``vjp="fused"`` then differentiates by autodiff).

  With ``compute_dtype=jnp.bfloat16`` only the matrix products read bfloat16
  operands; the cell state ``c_t`` must stay float32 (its dtype is the
  carry's): it accumulates ``i * g`` over the whole sequence, and in bfloat16
  (8 significant bits) an increment below 1/256 of ``c`` would vanish.
  """

  FACTORY: ClassVar[str] = "lstm"

  name: ClassVar[str] = "lstm"
  GATES: ClassVar[int] = 4
  TUNED_UNROLL: ClassVar[Mapping[str, int]] = {"cpu": 1, "gpu": 8}
  # CPU: autodiff, 1.1x faster than the fused backward with tcmalloc and 1.7x
  # with glibc's malloc, whose page faults the fused backward's extra buffers
  # pay for (experiments/bench_rnn.py, both allocators).
  TUNED_VJP: ClassVar[Mapping[str, str]] = {"cpu": "autodiff", "gpu": "fused"}
  # CPU, with rnn_jax_onednn installed: the C++ loop, its forward and backward where a call is
  # differentiated and its forward without residuals where it is not (faster than the scan
  # and than oneDNN's primitives at the three benchmark shapes; rnn_jax.cpu_loop, the
  # Performance guide). Without the extension: the scan, with vjp="remat" for
  # LONG_AND_NARROW inputs.
  TUNED_KERNEL: ClassVar[Mapping[str, str]] = {"cpu": "cpu_loop"}
  TUNED_BY_SHAPE: ClassVar[Mapping] = {"cpu": ((LONG_AND_NARROW, {"vjp": "remat"}),)}
  TORCH_MODULE: ClassVar[str] = "LSTM"

  hidden_size: int
  forget_bias: float = 1.0
  kernel_init: Initializer = dataclasses.field(default=glorot_uniform, repr=False)
  recurrent_init: Initializer = dataclasses.field(default=orthogonal, repr=False)
  bias_init: Initializer = dataclasses.field(default=zeros, repr=False)
  param_dtype: Any = jnp.float32
  proj_size: int = 0
  layer_norm: bool = False
  compute_dtype: Any = None

  def __post_init__(self):
    check_size("hidden_size", self.hidden_size)
    self._check_compute_dtype()
    if not isinstance(self.forget_bias, numbers.Real) or isinstance(self.forget_bias, bool):
      raise ValueError(f"forget_bias must be a number, got {self.forget_bias!r}")
    if self.proj_size != 0:
      check_size("proj_size (0: no projection)", self.proj_size)
    if not isinstance(self.layer_norm, bool):
      raise ValueError(f"layer_norm must be a bool, got {self.layer_norm!r}")

  @property
  def output_size(self) -> int:
    """``P`` with a projection, else ``H``."""
    return self.proj_size or self.hidden_size

  def runs_fused_vjp(self) -> bool:
    """Whether ``vjp="fused"`` applies: the hand-written backward covers the plain LSTM only
    (no ``proj_size``, no ``layer_norm``); for those, autodiff differentiates the scan."""
    return not (self.proj_size or self.layer_norm)

  def initial_carry(self, batch_shape=(), dtype=jnp.float32):
    zeros_c = super().initial_carry(batch_shape, dtype)
    zeros_h = zeros_carry(batch_shape, self.proj_size, dtype) if self.proj_size else zeros_c
    return LSTMState(zeros_h, zeros_c)

  @compiled_init
  def init(self, key, input_size: int) -> Params:
    k_ih, k_hh, k_b, k_hr = jax.random.split(key, 4)
    width = 4 * self.hidden_size
    params = {
        "w_ih": blockwise(self.kernel_init, 4)(k_ih, (input_size, width), self.param_dtype),
        "w_hh": blockwise(self.recurrent_init, 4)(k_hh, (self.output_size, width),
                                                  self.param_dtype),
        "b": self.bias_init(k_b, (width,), self.param_dtype),
    }
    if self.proj_size:
      params["w_hr"] = self.kernel_init(k_hr, (self.hidden_size, self.proj_size),
                                        self.param_dtype)
    if self.layer_norm:
      ones = lambda size: jnp.ones((size,), self.param_dtype)
      params.update(ln_ih_gain=ones(width), ln_hh_gain=ones(width),
                    ln_c_gain=ones(self.hidden_size),
                    ln_c_bias=jnp.zeros((self.hidden_size,), self.param_dtype))
    return params

  def project(self, params, x):
    """``x @ w_ih + b``; with ``layer_norm``, ``LN(x @ w_ih; ln_ih_gain) + b`` (per step, so
    it still hoists out of the time loop)."""
    if not self.layer_norm:
      return affine_input(params, x, "b", self.GATES, self.compute_dtype)
    weights = params["w_ih"]
    x = x.astype(jnp.promote_types(x.dtype, weights.dtype))
    return normalized(self._matmul(x, weights), params["ln_ih_gain"]) + params["b"]

  def recur(self, params, state, px):
    if self.proj_size or self.layer_norm:
      return self._recur_extended(params, state, px)
    state, _, _ = self.recur_with_residuals(params, state, px)
    return state, state.h

  def _recur_extended(self, params, state, px):
    """``recur`` with the projection and/or layer normalisation (see the class doc)."""
    recurrent = self._matmul(state.h, params["w_hh"])
    if self.layer_norm:
      recurrent = normalized(recurrent, params["ln_hh_gain"])
    i, f, g, o = jnp.split(px + recurrent, 4, axis=-1)
    i, f = jax.nn.sigmoid(i), jax.nn.sigmoid(f + self.forget_bias)
    g, o = jnp.tanh(g), jax.nn.sigmoid(o)
    c = f * state.c + i * g
    shown = normalized(c, params["ln_c_gain"], params["ln_c_bias"]) if self.layer_norm else c
    h = o * jnp.tanh(shown)
    if self.proj_size:
      h = self._matmul(h, params["w_hr"])
    return LSTMState(h, c), h

  def recur_with_residuals(self, params, state, px):
    """Also returns ``(gates [..., 4H] activated (i, f, g, o), c_{t-1}, tanh(c_t))``."""
    z = px + self._matmul(state.h, params["w_hh"])
    i, f, g, o = jnp.split(z, 4, axis=-1)
    i, f = jax.nn.sigmoid(i), jax.nn.sigmoid(f + self.forget_bias)
    g, o = jnp.tanh(g), jax.nn.sigmoid(o)
    c = f * state.c + i * g
    tanh_c = jnp.tanh(c)
    h = o * tanh_c
    return LSTMState(h, c), h, (jnp.concatenate([i, f, g, o], axis=-1), state.c, tanh_c)

  def step_vjp(self, params, residuals, h_prev, y, dstate, dy):
    del h_prev, y
    gates, c_prev, tanh_c = residuals
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    dh = dstate.h + dy
    do = dh * tanh_c
    dc = dstate.c + dh * o * (1.0 - tanh_c * tanh_c)
    dz = jnp.concatenate([
        dc * g * i * (1.0 - i),
        dc * c_prev * f * (1.0 - f),
        dc * i * (1.0 - g * g),
        do * o * (1.0 - o),
    ], axis=-1)
    return LSTMState(self._matmul(dz, params["w_hh"].T), dc * f), dz, None

  def recurrent_grads(self, params, residuals, h_prevs, dz_rec):
    return {"w_hh": fused.time_batch_matmul(h_prevs, dz_rec, self.compute_dtype)}

  def hidden(self, state):
    return state.h

  def folded_bias(self, params) -> jax.Array:
    """``b [4H]`` with ``forget_bias`` added to the forget gate's block: the one bias that
    kernels taking a plain LSTM's parameters (oneDNN, the C++ loop) use."""
    bias = jnp.asarray(params["b"])
    if not self.forget_bias:
      return bias
    hidden = self.hidden_size
    return bias.at[hidden:2 * hidden].add(jnp.asarray(self.forget_bias, bias.dtype))


@dataclasses.dataclass(frozen=True, repr=False)
class GRU(Cell, fused.FusedVJP):
  """Gated recurrent unit, gates in the order (r, z, n) of PyTorch/cuDNN.

  With ``a = x_t @ w_ih`` and ``u = h_{t-1} @ w_hh`` split into (r, z, n) blocks::

      r = sigmoid(a_r + u_r + b_r)     z = sigmoid(a_z + u_z + b_z)
      reset_after=True  (cuDNN, PyTorch, Keras 2+):
          n = tanh(a_n + b_in + r * (h_{t-1} @ w_hn + b_hn))
      reset_after=False (Cho et al. 2014, TF1 GRUCell):
          n = tanh(a_n + (r * h_{t-1}) @ w_hn + b_n)
      h_t = (1 - z) * n + z * h_{t-1}          y_t = h_t

  Params with ``reset_after=True``: ``w_ih [I, 3H]``, ``w_hh [H, 3H]``,
  ``b_ih [3H]``, ``b_hh [3H]``; with ``reset_after=False``: ``w_ih``,
  ``w_hh`` and one ``b [3H]``. Carry: ``h [..., H]``. Built by :func:`gru`.
  """

  FACTORY: ClassVar[str] = "gru"

  name: ClassVar[str] = "gru"
  GATES: ClassVar[int] = 3
  TUNED_UNROLL: ClassVar[Mapping[str, int]] = {"cpu": 2, "gpu": 8}
  TUNED_VJP: ClassVar[Mapping[str, str]] = {"cpu": "autodiff", "gpu": "fused"}
  # CPU, with rnn_jax_onednn installed: the C++ loop where a call is differentiated (1.4-2.5x
  # the scan's forward+backward at the three benchmark shapes; reset_after=True only), the
  # scan where it is not (rnn_jax.cpu_loop). Without it: the scan, with vjp="remat" for
  # LONG_AND_NARROW inputs.
  TUNED_KERNEL: ClassVar[Mapping[str, str]] = {"cpu": "cpu_loop"}
  TUNED_BY_SHAPE: ClassVar[Mapping] = {"cpu": ((LONG_AND_NARROW, {"vjp": "remat"}),)}
  TORCH_MODULE: ClassVar[str] = "GRU"

  hidden_size: int
  reset_after: bool = True
  kernel_init: Initializer = dataclasses.field(default=glorot_uniform, repr=False)
  recurrent_init: Initializer = dataclasses.field(default=orthogonal, repr=False)
  bias_init: Initializer = dataclasses.field(default=zeros, repr=False)
  param_dtype: Any = jnp.float32
  compute_dtype: Any = None

  def __post_init__(self):
    check_size("hidden_size", self.hidden_size)
    self._check_compute_dtype()
    if not isinstance(self.reset_after, bool):
      raise ValueError(f"reset_after must be a bool, got {self.reset_after!r}")

  @compiled_init
  def init(self, key, input_size: int) -> Params:
    k_ih, k_hh, k_b, k_b2 = jax.random.split(key, 4)
    params = self._weights(k_ih, k_hh, input_size, self.recurrent_init)
    width = 3 * self.hidden_size
    if self.reset_after:
      params["b_ih"] = self.bias_init(k_b, (width,), self.param_dtype)
      params["b_hh"] = self.bias_init(k_b2, (width,), self.param_dtype)
    else:
      params["b"] = self.bias_init(k_b, (width,), self.param_dtype)
    return params

  def input_bias_name(self, params) -> str:
    return "b_ih" if self.reset_after else "b"

  def project(self, params, x):
    return affine_input(params, x, self.input_bias_name(params), self.GATES, self.compute_dtype)

  def recur(self, params, h, px):
    h, _, _ = self.recur_with_residuals(params, h, px)
    return h, h

  def recur_with_residuals(self, params, h, px):
    """Also returns the activated ``(r, z, n)`` ``[..., 3H]``, plus ``h @ w_hn + b_hn``
    (``[..., 4H]`` in all) when ``reset_after``."""
    hidden = self.hidden_size
    a_r, a_z, a_n = jnp.split(px, 3, axis=-1)
    w_hh = params["w_hh"]
    if self.reset_after:
      u_r, u_z, u_n = jnp.split(self._matmul(h, w_hh) + params["b_hh"], 3, axis=-1)
      r = jax.nn.sigmoid(a_r + u_r)
      z = jax.nn.sigmoid(a_z + u_z)
      n = jnp.tanh(a_n + r * u_n)
      residuals = jnp.concatenate([r, z, n, u_n], axis=-1)
    else:
      u_r, u_z = jnp.split(self._matmul(h, w_hh[:, :2 * hidden]), 2, axis=-1)
      r = jax.nn.sigmoid(a_r + u_r)
      z = jax.nn.sigmoid(a_z + u_z)
      n = jnp.tanh(a_n + self._matmul(r * h, w_hh[:, 2 * hidden:]))
      residuals = jnp.concatenate([r, z, n], axis=-1)
    h = (1.0 - z) * n + z * h
    return h, h, residuals

  def step_vjp(self, params, residuals, h_prev, y, dh, dy):
    del y
    hidden = self.hidden_size
    w_hh = params["w_hh"]
    dh = dh + dy
    r, z, n = (residuals[..., k * hidden:(k + 1) * hidden] for k in range(3))
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    if self.reset_after:
      u_n = residuals[..., 3 * hidden:]
      dr = dn * u_n * r * (1.0 - r)
      dz_in = jnp.concatenate([dr, dz, dn], axis=-1)
      dz_rec = jnp.concatenate([dr, dz, dn * r], axis=-1)
      return dh * z + self._matmul(dz_rec, w_hh.T), dz_in, dz_rec
    d_reset_h = self._matmul(dn, w_hh[:, 2 * hidden:].T)
    dr = d_reset_h * h_prev * r * (1.0 - r)
    dz_in = jnp.concatenate([dr, dz, dn], axis=-1)
    dh_prev = dh * z + d_reset_h * r + self._matmul(dz_in[..., :2 * hidden],
                                                    w_hh[:, :2 * hidden].T)
    return dh_prev, dz_in, None

  def recurrent_grads(self, params, residuals, h_prevs, dz_rec):
    hidden = self.hidden_size
    compute_dtype = self.compute_dtype
    if self.reset_after:
      return {"w_hh": fused.time_batch_matmul(h_prevs, dz_rec, compute_dtype),
              "b_hh": dz_rec.sum((0, 1))}
    reset_h = residuals[..., :hidden] * h_prevs  # dz_rec is dz_in here.
    return {"w_hh": jnp.concatenate([
        fused.time_batch_matmul(h_prevs, dz_rec[..., :2 * hidden], compute_dtype),
        fused.time_batch_matmul(reset_h, dz_rec[..., 2 * hidden:], compute_dtype)], axis=1)}


def simple_rnn(hidden_size: int, activation: str = "tanh", *,
               kernel_init: Initializer = glorot_uniform,
               recurrent_init: Initializer | str = orthogonal, bias_init: Initializer = zeros,
               param_dtype=jnp.float32, compute_dtype=None) -> SimpleRNN:
  """The Elman network: ``h_t = act(x_t @ w_ih + h_{t-1} @ w_hh + b)``; ``y_t = h_t``.

  Args:
    hidden_size: ``H``.
    activation: ``"tanh"`` or ``"relu"``.
    kernel_init: initialiser of ``w_ih``.
    recurrent_init: initialiser of ``w_hh``, or ``"identity"`` for the IRNN of
      Le, Jaitly & Hinton (2015) (use with ``activation="relu"``; the paper
      draws ``w_ih`` from N(0, 0.001^2), pass ``kernel_init`` for that).
    bias_init: initialiser of ``b``.
    param_dtype: dtype of the parameters.
    compute_dtype: ``None`` or a dtype (``jnp.bfloat16``) for the operands of the matrix
      products, accumulated in float32 (see the module doc).

  Params: ``w_ih [I, H]``, ``w_hh [H, H]``, ``b [H]``. Carry: ``h [..., H]``.
  """
  return SimpleRNN(hidden_size, activation, kernel_init, recurrent_init, bias_init, param_dtype,
                   compute_dtype)


def lstm(hidden_size: int, forget_bias: float = 1.0, *,
         kernel_init: Initializer = glorot_uniform, recurrent_init: Initializer = orthogonal,
         bias_init: Initializer = zeros, param_dtype=jnp.float32, proj_size: int = 0,
         layer_norm: bool = False, compute_dtype=None) -> LSTM:
  """Long short-term memory, gates fused in the order (i, f, g, o) of PyTorch/cuDNN.

  See :class:`LSTM` for the equations. ``forget_bias`` is a constant added to
  the forget gate's pre-activation at run time, as in TF1's BasicLSTMCell (it
  is not a parameter; use 0.0 to match PyTorch).

  Args:
    proj_size: ``P > 0``: PyTorch's projected LSTM (``torch.nn.LSTM(proj_size=P)``):
      ``h_t = (o * tanh(c_t)) @ w_hr``, ``w_hr [H, P]`` (initialised by
      ``kernel_init``), output and recurrent input of size ``P``. 0: none.
    layer_norm: the layer-normalised LSTM of Ba et al. (2016); equations and
      extra params in :class:`LSTM`.
    compute_dtype: ``None`` or a dtype (``jnp.bfloat16``) for the operands of the matrix
      products, accumulated in float32; the cell state ``c`` and the gates stay float32
      (see the module doc).

  Params: ``w_ih [I, 4H]``, ``w_hh [H, 4H]`` (``[P, 4H]`` with a projection;
  each gate block initialised separately), ``b [4H]``, plus ``w_hr`` and the
  layer-norm gains and bias when asked. Carry: ``LSTMState(h [..., H], c [..., H])``
  (``h [..., P]`` with a projection).
  """
  return LSTM(hidden_size, forget_bias, kernel_init, recurrent_init, bias_init, param_dtype,
              proj_size, layer_norm, compute_dtype)


def gru(hidden_size: int, reset_after: bool = True, *,
        kernel_init: Initializer = glorot_uniform, recurrent_init: Initializer = orthogonal,
        bias_init: Initializer = zeros, param_dtype=jnp.float32, compute_dtype=None) -> GRU:
  """Gated recurrent unit, gates in the order (r, z, n) of PyTorch/cuDNN.

  See :class:`GRU` for the equations: ``z`` near 1 keeps the old state (the
  PyTorch/Keras/Flax convention); ``reset_after=True`` is cuDNN's and
  PyTorch's variant, ``False`` the original (Cho et al. 2014, TF1).

  Params with ``reset_after=True``: ``w_ih [I, 3H]``, ``w_hh [H, 3H]``,
  ``b_ih [3H]``, ``b_hh [3H]`` (two biases, because ``b_hn`` sits inside the
  reset product). With ``reset_after=False``: ``w_ih``, ``w_hh`` and one
  ``b [3H]``. Carry: ``h [..., H]``. ``compute_dtype``: as :func:`lstm`'s.
  """
  return GRU(hidden_size, reset_after, kernel_init, recurrent_init, bias_init, param_dtype,
             compute_dtype)
