"""Parallel-in-time recurrences: minGRU, minLSTM and the diagonal LRU.

These layers are recurrences that are *linear in the state*, with
coefficients that depend on the current input only::

    a_t, b_t, s_t = layer.project(params, x_t)     # elementwise, [..., H] each (s_t: skip)
    h_t           = a_t * h_{t-1} + b_t
    y_t           = layer.readout(params, h_t, s_t)

Because ``(a, b)`` pairs compose associatively,
``(a_1, b_1) then (a_2, b_2) = (a_2 a_1, a_2 b_1 + b_2)``, a whole sequence
can be computed with ``jax.lax.associative_scan`` in ``O(log T)`` depth
(Blelloch 1990; Martin & Cundy 2018) instead of ``T`` dependent steps. The
scan only multiplies and adds (no division, no logarithm), so unlike the
log-space scan of Feng et al. it needs no positive values and accepts a zero
initial state.

Each constructor returns a :class:`LinearRNN`, which ``rnn_jax.rnn``,
``rnn_jax.stack`` and ``rnn_jax.bidirectional`` accept like any cell. It runs
in one of two modes that give the same outputs (to float rounding):

* ``parallel=True``: all coefficients in one matmul, then one associative
  scan over time (:func:`linear_scan`, whose gradient is a hand-written
  reverse scan; forward-mode differentiation such as ``jax.jvp`` or
  ``jax.hessian`` needs the sequential mode);
* ``parallel=False`` (sequential): the core's ``jax.lax.scan``
  over :meth:`LinearRNN.step`, the mode for generation one step at a time;
* ``parallel=None`` (the default): the mode measured fastest on the backend
  the layer runs on, ``TUNED_PARALLEL`` (as ``unroll`` is chosen; see
  :meth:`LinearRNN.runs_parallel`).

``layer.with_parallel(False)`` switches a layer (its parameters stay valid)
and returns a layer equal to the one the factory builds with that mode.
Which mode is faster depends on the machine: the parallel mode needs parallel
width (a GPU) to pay for the associative scan's extra passes over memory and
its longer compilation (``python -m experiments.bench_parallel``; figures in
``experiments/results/README.md``).

Variable lengths follow the core: past a sequence's length the step is
replaced by the identity (``a_t = 1``, ``b_t = 0``), so the carry is held and
the final carry is the carry after the last valid step; outputs there are
zero. ``reverse=True`` with lengths reverses each valid prefix with
:func:`rnn_jax.reverse_padded`. A reset (``rnn(..., resets=...)``) is the
step ``a_t = 0``: the state starts over from ``b_t``, inside the same
associative scan (``rnn_jax._scan.reset_flags`` says where).

Shapes: ``I`` input size, ``H`` state size, ``O`` output size, ``T`` time,
``...`` any batch shape.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp

import rnn_jax._scan as _scan
from rnn_jax.cells import (Initializer, affine_input, blockwise, check_size, glorot_uniform,
                           zeros, zeros_carry)
from rnn_jax.layer import Layer, RunOptions, check_step_input, compiled_init, required_method


class LinearRNN(Layer, abstract=True):
  """A recurrence linear in its state, ``h_t = a_t * h_{t-1} + b_t``; see the module doc.

  Subclasses (frozen dataclasses) define ``name``, ``hidden_size`` (the state
  size ``H``), ``output_size``, ``parallel``, ``init``, ``input_size`` and:

  * ``project(params, x [..., I]) -> (a, b, skip)``: the recurrence
    coefficients ``a``, ``b`` (both ``[..., H]``) and whatever the readout
    needs from the input (``None`` if nothing). It has no time dependence, so
    ``project`` of a whole ``[T, ..., I]`` sequence gives ``[T, ..., H]``.
  * ``readout(params, h [..., H], skip) -> y [..., O]``.
  """

  name: ClassVar[str]
  TUNED_PARALLEL: ClassVar[Mapping[str, bool]] = {"gpu": True, "tpu": True}
  """Backend -> whether the parallel mode was measured faster there
  (``experiments/bench_parallel.py``); backends not listed run sequentially."""
  # The sequential mode on CPU: projecting all steps in one matmul before the
  # scan is faster for forward+backward with several input features; with a
  # single feature the per-gate projection inside the step
  # (rnn_jax.cells.affine_input) measured as fast or faster, so no hoist there
  # (experiments/bench_parallel.py; figures in the Performance guide).
  TUNED_HOIST: ClassVar[Mapping[str, bool]] = {"cpu": True}
  HOIST_MIN_INPUT_SIZE: ClassVar[int] = 2
  hidden_size: int
  parallel: bool | None

  def initial_carry(self, batch_shape=(), dtype=jnp.float32):
    """``h [*batch_shape, H]`` of zeros."""
    return zeros_carry(batch_shape, self.hidden_size, dtype)

  def with_parallel(self, parallel: bool | None) -> LinearRNN:
    """This layer in the given mode (``None``: the backend's tuned one); the same
    parameters work and give the same outputs up to rounding."""
    return dataclasses.replace(self, parallel=parallel)

  def runs_parallel(self, backend: str | None = None) -> bool:
    """Whether a run on ``backend`` (default: JAX's) with default options takes the
    parallel mode: ``parallel`` if set, else ``TUNED_PARALLEL`` for the backend
    (decided by :meth:`rnn_jax.RunOptions.resolve`)."""
    return RunOptions().resolve(self, backend).parallel

  @required_method
  def project(self, params, x):
    """``(a, b, skip)`` of ``h_t = a_t * h_{t-1} + b_t`` from ``x_t [..., I]`` alone."""
    raise NotImplementedError(f"{type(self).__name__}.project")

  def readout(self, params, h, skip):
    """``y_t`` from the state ``h_t`` and the skip term of ``project``: ``h_t`` itself here."""
    del params, skip
    return h

  def recur(self, params, h, coefficients):
    """``h = a * h + b`` and the readout: the sequential mode's recurrent half."""
    a, b, skip = coefficients
    h = a * h + b
    return h, self.readout(params, h, skip)

  def step(self, params, carry, x):
    """One time step: ``(params, h [..., H], x_t [..., I]) -> (h, y_t [..., O])``."""
    check_step_input(self, params, carry, x)
    return self.recur(params, carry, self.project(params, x))

  def scan(self, params, xs, carry, lengths, options: RunOptions, resets=None):
    """The ``"scan"`` kernel over ``xs [T, ..., I]`` (:mod:`rnn_jax.kernels`), in the mode
    ``options.parallel`` says: one associative scan, or the sequential ``jax.lax.scan``.

    ``unroll`` and ``hoist`` apply to the sequential mode only (the parallel
    mode always projects all steps at once); ``vjp`` does not apply: the
    parallel mode has its own backward scan and the sequential mode is
    differentiated by autodiff.
    """
    if options.parallel:
      return parallel_run(self, params, xs, carry, lengths, options.reverse, resets)
    return _scan.scan_layer(self, params, xs, carry, lengths, resets=resets,
                            reverse=options.reverse, unroll=options.unroll, hoist=options.hoist)


def check_parallel(parallel) -> None:
  """Raises ``ValueError`` unless ``parallel`` is ``True``, ``False`` or ``None``."""
  if parallel is not None and not isinstance(parallel, bool):
    raise ValueError(f"parallel must be True, False or None (the backend's tuned mode), "
                     f"got {parallel!r}")


def _compose(earlier, later):
  """Composes two affine maps ``h -> a h + b``, ``earlier`` applied first."""
  a_1, b_1 = earlier
  a_2, b_2 = later
  return a_2 * a_1, a_2 * b_1 + b_2


def _associative_scan(a: jax.Array, b: jax.Array, h0: jax.Array) -> jax.Array:
  a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
  b = b.at[0].add(a[0] * h0)
  _, h = jax.lax.associative_scan(_compose, (a, b), axis=0)
  return h


@jax.custom_vjp
def linear_scan(a: jax.Array, b: jax.Array, h0: jax.Array) -> jax.Array:
  """All states of ``h_t = a_t * h_{t-1} + b_t`` by ``jax.lax.associative_scan``.

  Gradients come from a hand-written rule rather than autodiff through the
  scan's tree of slices: the adjoint ``l_t = dL/dh_t + a_{t+1} l_{t+1}`` is
  itself a linear recurrence, run as one reverse associative scan, and then
  ``dL/db_t = l_t``, ``dL/da_t = l_t h_{t-1}``, ``dL/dh0 = a_0 l_0``
  (unconjugated: JAX's transpose convention, so complex ``a``, ``b`` work
  too). This saves only ``a``, ``h`` and ``h0``. Forward-mode differentiation
  (``jax.jvp``) of this function is not defined; use the sequential mode for
  that.

  Args:
    a: ``[T, ..., H]`` coefficients.
    b: ``[T, ..., H]`` inputs.
    h0: ``[..., H]`` state before the first step.

  Returns:
    ``h [T, ..., H]``, ``h[t]`` the state after step ``t``.
  """
  with jax.named_scope("linear_scan"):
    return _associative_scan(a, b, h0)


def _linear_scan_forward(a, b, h0):
  with jax.named_scope("linear_scan"):
    h = _associative_scan(a, b, h0)
  return h, (a, h, h0)


def _linear_scan_backward(residuals, h_cotangent):
  a, h, h0 = residuals
  with jax.named_scope("linear_scan_backward"):
    return _linear_scan_adjoint(a, h, h0, h_cotangent)


def _linear_scan_adjoint(a, h, h0, h_cotangent):
  """``(da, db, dh0)`` of :func:`linear_scan`: one reverse associative scan."""
  a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])
  adjoint = jnp.flip(_associative_scan(jnp.flip(a_next, 0), jnp.flip(h_cotangent, 0),
                                       jnp.zeros_like(h0)), 0)
  h_previous = jnp.concatenate([h0[None], h[:-1]])
  return adjoint * h_previous, adjoint, a[0] * adjoint[0]


linear_scan.defvjp(_linear_scan_forward, _linear_scan_backward)


def parallel_run(layer: LinearRNN, params, xs: jax.Array, carry: jax.Array, lengths=None,
                 reverse: bool = False, resets=None):
  """Runs ``layer`` over time-major ``xs [T, ..., I]`` with one associative scan.

  Args:
    layer: a :class:`LinearRNN`.
    params: ``layer.init(...)``'s pytree.
    xs: ``[T, ..., I]``.
    carry: ``h0 [..., H]``.
    lengths: ``None`` or ``[...]`` int32 already clipped to ``[0, T]``.
    reverse: run from the last (valid) step to the first.
    resets: ``None`` or ``[T, ...]`` bool in input time order: the state
      starts over at each flagged step (``a_t = 0`` in the scan's inputs).

  Returns:
    ``(outputs [T, ..., O], final h [..., H])``, outputs in input time order.
  """

  def run(inputs, reverse):
    if reverse:  # Whole sequences (lengths is None): read them flipped.
      outputs, final = run(jax.tree.map(lambda x: jnp.flip(x, 0), inputs), False)
      return jnp.flip(outputs, 0), final
    xs, flags = inputs
    a, b, skip = layer.project(params, xs)
    dtype = jnp.result_type(a, b, carry)
    a, b = a.astype(dtype), b.astype(dtype)
    a = _scan.zero_where(flags, a)  # A new segment: h_t = b_t, whatever came before.
    valid = None if lengths is None else _scan.valid_mask(xs.shape[0], lengths)
    if valid is not None:  # Past the length the step is the identity: h is held.
      a = jnp.where(valid, a, jnp.ones_like(a))
      b = _scan.zero_invalid(valid, b)
    h = linear_scan(a, b, carry.astype(dtype))
    return _scan.zero_invalid(valid, layer.readout(params, h, skip)), h[-1]

  return _scan.run_in_valid_order(run, (xs, _scan.reset_flags(resets, lengths, reverse)),
                                  lengths, reverse)


def g(x: jax.Array) -> jax.Array:
  """The positive activation of Feng et al.'s log-space minGRU/minLSTM:
  ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below (continuous at 0)."""
  return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


CANDIDATES = {"linear": lambda x: x, "g": g}


@dataclasses.dataclass(frozen=True, repr=False)
class GatedLinearRNN(LinearRNN, abstract=True):
  """minGRU and minLSTM: gates and candidate from one matmul of ``x_t``; see :func:`mingru`.

  Params: ``w_ih [I, GATES*H]``, ``b [GATES*H]``. Carry: ``h [..., H]``.
  """

  GATES: ClassVar[int]
  CHRONO_SIGNS: ClassVar[tuple]  # The sign of log(u) in each chrono-initialised gate block.

  hidden_size: int
  candidate: str = "linear"
  parallel: bool | None = None
  max_timescale: float | None = None
  kernel_init: Initializer = dataclasses.field(default=glorot_uniform, repr=False)
  bias_init: Initializer = dataclasses.field(default=zeros, repr=False)
  param_dtype: Any = jnp.float32
  compute_dtype: Any = None

  def __post_init__(self):
    check_size("hidden_size", self.hidden_size)
    self._check_compute_dtype()
    if self.candidate not in CANDIDATES:
      raise ValueError(f"candidate must be one of {sorted(CANDIDATES)}, got {self.candidate!r}")
    if self.max_timescale is not None and not self.max_timescale > 2.0:
      raise ValueError(f"max_timescale must be > 2 (or None), got {self.max_timescale}")
    check_parallel(self.parallel)

  @property
  def output_size(self) -> int:
    return self.hidden_size

  def input_size(self, params) -> int:
    return params["w_ih"].shape[0]

  @compiled_init
  def init(self, key, input_size: int):
    """``w_ih`` (per gate block) and ``b``; with ``max_timescale``, the chrono
    initialisation (Tallec & Ollivier 2018) of the gate blocks in
    ``CHRONO_SIGNS``: ``b_k = sign_k * log(u)``, ``u ~ U[1, max_timescale - 1]`` per unit."""
    hidden, dtype = self.hidden_size, self.param_dtype
    k_w, k_b, k_chrono = jax.random.split(key, 3)
    bias = self.bias_init(k_b, (self.GATES * hidden,), dtype)
    if self.max_timescale is not None:
      log_u = jnp.log(jax.random.uniform(k_chrono, (hidden,), dtype, 1.0,
                                         self.max_timescale - 1.0))
      for k, sign in enumerate(self.CHRONO_SIGNS):
        bias = bias.at[k * hidden:(k + 1) * hidden].set(sign * log_u)
    return {
        "w_ih": blockwise(self.kernel_init, self.GATES)(k_w, (input_size, self.GATES * hidden),
                                                        dtype),
        "b": bias,
    }


@dataclasses.dataclass(frozen=True, repr=False)
class MinGRU(GatedLinearRNN):
  """minGRU; built by :func:`mingru`, which gives the equations."""

  FACTORY: ClassVar[str] = "mingru"

  name: ClassVar[str] = "mingru"
  GATES: ClassVar[int] = 2
  CHRONO_SIGNS: ClassVar[tuple] = (-1.0,)

  def project(self, params, x):
    """``(a_t, b_t, None)`` of ``h_t = a_t * h_{t-1} + b_t`` from ``x_t [..., I]`` alone."""
    k_z, k_h = jnp.split(affine_input(params, x, "b", self.GATES, self.compute_dtype), 2,
                         axis=-1)
    return jax.nn.sigmoid(-k_z), jax.nn.sigmoid(k_z) * CANDIDATES[self.candidate](k_h), None


@dataclasses.dataclass(frozen=True, repr=False)
class MinLSTM(GatedLinearRNN):
  """minLSTM; built by :func:`minlstm`, which gives the equations."""

  FACTORY: ClassVar[str] = "minlstm"

  name: ClassVar[str] = "minlstm"
  GATES: ClassVar[int] = 3
  CHRONO_SIGNS: ClassVar[tuple] = (1.0, -1.0)

  def project(self, params, x):
    """``(a_t, b_t, None)`` of ``h_t = a_t * h_{t-1} + b_t`` from ``x_t [..., I]`` alone."""
    k_f, k_i, k_h = jnp.split(affine_input(params, x, "b", self.GATES, self.compute_dtype), 3,
                              axis=-1)
    log_ratio = jax.nn.softplus(-k_i) - jax.nn.softplus(-k_f)  # log f - log i
    return (jax.nn.sigmoid(log_ratio),
            jax.nn.sigmoid(-log_ratio) * CANDIDATES[self.candidate](k_h), None)


def mingru(hidden_size: int, candidate: str = "linear", *, parallel: bool | None = None,
           max_timescale: float | None = None, kernel_init: Initializer = glorot_uniform,
           bias_init: Initializer = zeros, param_dtype=jnp.float32,
           compute_dtype=None) -> MinGRU:
  """minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): a GRU whose gates see only ``x_t``.

  With ``k = x_t @ w_ih + b`` split into (z, h~) blocks::

      z_t  = sigmoid(k_z)                 h~_t = cand(k_h)
      h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t        y_t = h_t

  i.e. ``a_t = 1 - z_t``, ``b_t = z_t * h~_t``. Note the paper's convention:
  ``z`` near 1 takes the *new* candidate (the opposite of :func:`rnn_jax.gru`).

  Args:
    hidden_size: ``H``.
    candidate: ``"linear"`` (``cand(k) = k``, the paper's equations) or
      ``"g"`` (``cand = g``, the positive activation of the paper's log-space
      version).
    parallel: associative scan (``True``), sequential scan (``False``) or
      ``None``: the mode measured faster on the backend (``TUNED_PARALLEL``).
    max_timescale: if given, chrono initialisation (Tallec & Ollivier 2018)
      of the update gate: ``b_z = -log(u)``, ``u ~ U[1, max_timescale - 1]``,
      so that unit memories span 2 to ``max_timescale`` steps at the start
      (with zero biases ``z = 0.5`` halves the memory every step). Set it to
      about the sequence length for long sequences.
    kernel_init, bias_init: initialisers of ``w_ih`` (per gate block) and ``b``.
    param_dtype: dtype of the parameters.
    compute_dtype: ``None`` or a dtype (``jnp.bfloat16``) for the operands of the input
      matmul, accumulated in float32 (:mod:`rnn_jax.precision`). The gates and the
      recurrence ``h_t = a_t h_{t-1} + b_t``, sequential or one associative scan, stay
      float32: ``a_t`` is multiplied over up to ``T`` steps, where bfloat16's relative
      error (2^-8) per factor would compound.

  Params: ``w_ih [I, 2H]``, ``b [2H]``. Carry: ``h [..., H]``.
  """
  return MinGRU(hidden_size, candidate, parallel, max_timescale, kernel_init, bias_init,
                param_dtype, compute_dtype)


def minlstm(hidden_size: int, candidate: str = "linear", *, parallel: bool | None = None,
            max_timescale: float | None = None, kernel_init: Initializer = glorot_uniform,
            bias_init: Initializer = zeros, param_dtype=jnp.float32,
            compute_dtype=None) -> MinLSTM:
  """minLSTM (Feng et al. 2024): forget and input gates from ``x_t`` only, normalised to sum to 1.

  With ``k = x_t @ w_ih + b`` split into (f, i, h~) blocks::

      f_t = sigmoid(k_f)    i_t = sigmoid(k_i)    h~_t = cand(k_h)
      f'_t = f_t / (f_t + i_t)                   i'_t = i_t / (f_t + i_t)
      h_t = f'_t * h_{t-1} + i'_t * h~_t         y_t = h_t

  computed stably as ``f'_t = sigmoid(log f_t - log i_t)``,
  ``log sigmoid(k) = -softplus(-k)``. (The paper's minLSTM has no output gate
  and no separate cell state: ``h`` is both.)

  Args:
    hidden_size: ``H``.
    candidate: ``"linear"`` or ``"g"``, as in :func:`mingru`.
    parallel: associative scan (``True``), sequential scan (``False``) or
      ``None``: the mode measured faster on the backend (``TUNED_PARALLEL``).
    max_timescale: if given, chrono initialisation of the gates:
      ``b_f = log(u)``, ``b_i = -log(u)``, ``u ~ U[1, max_timescale - 1]``
      (as :func:`mingru`'s).
    kernel_init, bias_init: initialisers of ``w_ih`` (per gate block) and ``b``.
    param_dtype: dtype of the parameters.
    compute_dtype: as :func:`mingru`'s (the recurrence stays float32).

  Params: ``w_ih [I, 3H]``, ``b [3H]``. Carry: ``h [..., H]``.
  """
  return MinLSTM(hidden_size, candidate, parallel, max_timescale, kernel_init, bias_init,
                 param_dtype, compute_dtype)


SKIPS = ("diagonal", "dense", "none")


@dataclasses.dataclass(frozen=True, repr=False)
class LRU(LinearRNN):
  """The Linear Recurrent Unit; built by :func:`lru`, which gives the equations and params."""

  FACTORY: ClassVar[str] = "lru"
  REPR_POSITIONAL: ClassVar[int] = 2

  name: ClassVar[str] = "lru"

  state_size: int
  output_size: int
  r_min: float = 0.0
  r_max: float = 1.0
  max_phase: float = 2 * math.pi
  skip: str = "diagonal"
  parallel: bool | None = None
  param_dtype: Any = jnp.float32
  compute_dtype: Any = None

  def __post_init__(self):
    check_size("state_size", self.state_size)
    self._check_compute_dtype()
    check_size("output_size", self.output_size)
    if self.skip not in SKIPS:
      raise ValueError(f"skip must be one of {SKIPS}, got {self.skip!r}")
    if not 0.0 <= self.r_min < self.r_max <= 1.0:
      raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={self.r_min}, "
                       f"r_max={self.r_max}")
    check_parallel(self.parallel)

  @property
  def hidden_size(self) -> int:
    """The state size ``H``."""
    return self.state_size

  def initial_carry(self, batch_shape=(), dtype=jnp.float32):
    """Complex zeros ``[*batch_shape, H]`` (complex64 for float32)."""
    complex_dtype = jnp.promote_types(self.param_dtype, jnp.complex64)
    return zeros_carry(batch_shape, self.state_size, jnp.promote_types(dtype, complex_dtype))

  def input_size(self, params) -> int:
    return params["B_re"].shape[0]

  @compiled_init
  def init(self, key, input_size: int):
    state, output_size, dtype = self.state_size, self.output_size, self.param_dtype
    if self.skip == "diagonal" and input_size != output_size:
      raise ValueError(f"lru(skip='diagonal') needs input size == output size ({output_size}), "
                       f"got input size {input_size}; use skip='dense' or 'none'")
    k_r, k_phase, k_b_re, k_b_im, k_c_re, k_c_im, k_d = jax.random.split(key, 7)
    u_1 = jax.random.uniform(k_r, (state,), dtype)
    u_2 = jax.random.uniform(k_phase, (state,), dtype)
    nu_log = jnp.log(-0.5 * jnp.log(u_1 * (self.r_max**2 - self.r_min**2) + self.r_min**2))
    theta_log = jnp.log(self.max_phase * u_2)
    normal = functools.partial(jax.random.normal, dtype=dtype)
    params = {
        "nu_log": nu_log,
        "theta_log": theta_log,
        # |lambda|^2 = exp(-2 exp(nu_log)), so 1 - |lambda|^2 = -expm1(-2 exp(nu_log)).
        "gamma_log": 0.5 * jnp.log(-jnp.expm1(-2.0 * jnp.exp(nu_log))),
        "B_re": normal(k_b_re, (input_size, state)) / math.sqrt(2 * input_size),
        "B_im": normal(k_b_im, (input_size, state)) / math.sqrt(2 * input_size),
        "C_re": normal(k_c_re, (state, output_size)) / math.sqrt(state),
        "C_im": normal(k_c_im, (state, output_size)) / math.sqrt(state),
    }
    if self.skip == "diagonal":
      params["D"] = normal(k_d, (output_size,))
    elif self.skip == "dense":
      params["D"] = glorot_uniform(k_d, (input_size, output_size), dtype)
    return params

  def project(self, params, x):
    """``(lambda, gamma * (x_t B), skip term)``: ``a_t`` (the same at every step), ``b_t``
    and ``x_t D`` (or ``None``) from ``x_t [..., I]``."""
    x = x.astype(jnp.promote_types(x.dtype, params["B_re"].dtype))
    gamma = jnp.exp(params["gamma_log"])
    b = jax.lax.complex(self._matmul(x, params["B_re"]) * gamma,
                        self._matmul(x, params["B_im"]) * gamma)
    lam = jnp.exp(jax.lax.complex(-jnp.exp(params["nu_log"]), jnp.exp(params["theta_log"])))
    skip_x = {"diagonal": lambda: x * params["D"], "dense": lambda: self._matmul(x, params["D"]),
              "none": lambda: None}[self.skip]()
    return jnp.broadcast_to(lam, b.shape), b, skip_x

  def readout(self, params, h, skip_x):
    """``y_t = Re(h_t C)`` plus the skip term."""
    y = self._matmul(jnp.real(h), params["C_re"]) - self._matmul(jnp.imag(h), params["C_im"])
    return y if skip_x is None else y + skip_x


def lru(state_size: int, output_size: int, *, r_min: float = 0.0, r_max: float = 1.0,
        max_phase: float = 2 * math.pi, skip: str = "diagonal", parallel: bool | None = None,
        param_dtype=jnp.float32, compute_dtype=None) -> LRU:
  """The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks").

  A complex diagonal linear recurrence with an exponential parametrisation of
  its eigenvalues and a normalised input::

      lambda = exp(-exp(nu_log) + i exp(theta_log))              [H] complex, |lambda| < 1
      gamma  = exp(gamma_log)                                    [H], init sqrt(1 - |lambda|^2)
      h_t = lambda * h_{t-1} + gamma * (x_t @ (B_re + i B_im))   [..., H] complex
      y_t = Re(h_t @ (C_re + i C_im)) + skip(x_t)                [..., O] real

  with ``skip(x) = D * x`` (``"diagonal"``, the paper's, needs ``I == O``),
  ``x @ D`` (``"dense"``) or ``0`` (``"none"``). Initialisation (the paper's
  "ring" init): ``|lambda| = sqrt(u_1 (r_max^2 - r_min^2) + r_min^2)``,
  ``arg lambda = max_phase * u_2`` with ``u_1, u_2 ~ U[0, 1]``;
  ``B_re, B_im ~ N(0, 1 / (2 I))``, ``C_re, C_im ~ N(0, 1 / H)``,
  diagonal ``D ~ N(0, 1)``, dense ``D`` Glorot-uniform. The paper uses
  ``r_min = 0.9``, ``r_max = 0.999`` and ``max_phase = pi / 10`` for long
  sequences.

  The state is the hidden size here, so ``hidden_size`` of the result is
  ``state_size``. Row-vector convention as in the core (``B [I, H]``, the
  paper's ``B [H, I]`` transposed).

  Params: ``nu_log [H]``, ``theta_log [H]``, ``gamma_log [H]``,
  ``B_re [I, H]``, ``B_im [I, H]``, ``C_re [H, O]``, ``C_im [H, O]``, and
  ``D [O]`` (diagonal) or ``D [I, O]`` (dense). Carry: ``h [..., H]`` complex
  (complex64 for float32 parameters).

  ``compute_dtype`` (``None`` or e.g. ``jnp.bfloat16``): the operands of the products with
  ``B``, ``C`` and a dense ``D`` (:mod:`rnn_jax.precision`). The complex recurrence must stay
  complex64 (float32 parts), sequential or parallel: ``|lambda|`` is often within 1e-3 of 1
  (``r_max = 0.999``), closer than bfloat16 resolves near 1 (2^-8), so a bfloat16
  ``lambda`` would forget at the wrong rate or not at all.

  Raises:
    ValueError: for ``skip="diagonal"`` when ``init`` is given an input size
      other than ``output_size``; for radii outside ``0 <= r_min < r_max <= 1``.
  """
  return LRU(state_size, output_size, r_min, r_max, max_phase, skip, parallel, param_dtype,
             compute_dtype)
