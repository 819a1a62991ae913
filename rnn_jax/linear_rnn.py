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

* ``parallel=True`` (the default, for training): all coefficients in one
  matmul, then one associative scan over time (:func:`linear_scan`, whose
  gradient is a hand-written reverse scan; forward-mode differentiation such
  as ``jax.jvp`` or ``jax.hessian`` needs the sequential mode);
* ``parallel=False`` (sequential): the core's ``jax.lax.scan``
  (:func:`rnn_jax.unroll.scan_cell`) over :meth:`LinearRNN.step`, the mode
  for generation one step at a time. ``layer._replace(parallel=False)``
  switches a layer (and its parameters stay valid).

Which is faster depends on the machine (``python -m experiments.bench_parallel``,
batch 16, H 128, T 784 and 4096): on an H100 the parallel mode's
forward+backward takes 1-2% of the LSTM's time and 1-3% of its own sequential
mode's; on our 2-core CPU, which has no parallel width to use, the
associative scan's extra passes over memory make it mostly slower than the
sequential mode (whose forward is fastest with ``rnn(..., hoist=True)``).

Variable lengths follow the core: past a sequence's length the step is
replaced by the identity (``a_t = 1``, ``b_t = 0``), so the carry is held and
the final carry is the carry after the last valid step; outputs there are
zero. ``reverse=True`` with lengths reverses each valid prefix with
:func:`rnn_jax.unroll.reverse_padded`.

Shapes: ``I`` input size, ``H`` state size, ``O`` output size, ``T`` time,
``...`` any batch shape.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cells import Cell, Initializer, _affine_input, _blockwise, _input_size, \
    _zeros_like_hidden, glorot_uniform, memoized_factory, zeros
from rnn_jax.unroll import reverse_padded, scan_cell


class LinearRNN(NamedTuple):
  """A recurrence linear in its state, ``h_t = a_t * h_{t-1} + b_t``; see the module doc.

  Attributes:
    name: ``"mingru"``, ``"minlstm"`` or ``"lru"``.
    hidden_size: ``H``, the size of the state ``h``.
    output_size: ``O``, the size of ``y_t``.
    init: ``(key, input_size) -> params``, a dict of arrays.
    initial_carry: ``(batch_shape=(), dtype=float32) -> h`` of zeros (complex
      for the LRU).
    project: ``(params, x [..., I]) -> (a, b, skip)``: the recurrence
      coefficients ``a``, ``b`` (both ``[..., H]``) and whatever the readout
      needs from the input (``None`` if nothing). It has no time dependence, so
      ``project`` of a whole ``[T, ..., I]`` sequence gives ``[T, ..., H]``.
    readout: ``(params, h [..., H], skip) -> y [..., O]``.
    input_size: ``params -> I``.
    config: the hyperparameters as ``((name, value), ...)``.
    parallel: run sequences with an associative scan (``True``) or with the
      core's sequential ``jax.lax.scan`` (``False``).
  """

  name: str
  hidden_size: int
  output_size: int
  init: Callable
  initial_carry: Callable
  project: Callable
  readout: Callable
  input_size: Callable
  config: tuple
  parallel: bool

  def step(self, params, carry, x):
    """One time step: ``(params, h [..., H], x_t [..., I]) -> (h, y_t [..., O])``."""
    return as_cell(self).step(params, carry, x)

  def run(self, params, xs, carry, lengths, reverse, unroll, dropout_rng, hoist,
          backward_mode=None):
    """The composite protocol of :func:`rnn_jax.unroll.run_time_major`; ``xs [T, ..., I]``.

    ``unroll`` and ``hoist`` apply to the sequential mode only (the parallel
    mode always projects all steps at once); ``dropout_rng`` is unused, and
    ``backward_mode`` too: the parallel mode has its own backward scan and the
    sequential mode is differentiated by autodiff.
    """
    del dropout_rng, backward_mode
    if not self.parallel:
      return scan_cell(as_cell(self), params, xs, carry, lengths, reverse, unroll, hoist)
    return parallel_run(self, params, xs, carry, lengths, reverse)


@functools.lru_cache(maxsize=None)
def as_cell(layer: LinearRNN) -> Cell:
  """The sequential view of ``layer``: a :class:`~rnn_jax.cells.Cell` whose
  ``project`` returns ``(a, b, skip)`` and whose ``recur`` applies
  ``h = a * h + b`` and the readout. Memoised, so jit caches are shared."""

  def recur(params, h, coefficients):
    a, b, skip = coefficients
    h = a * h + b
    return h, layer.readout(params, h, skip)

  return Cell(layer.name, layer.hidden_size, layer.output_size, layer.init, layer.initial_carry,
              layer.project, recur, layer.input_size, layer.config)


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
  too). This saves only ``a``, ``h`` and ``h0`` and cut the forward+backward
  time by about a quarter on CPU. Forward-mode differentiation (``jax.jvp``)
  of this function is not defined; use the sequential mode for that.

  Args:
    a: ``[T, ..., H]`` coefficients.
    b: ``[T, ..., H]`` inputs.
    h0: ``[..., H]`` state before the first step.

  Returns:
    ``h [T, ..., H]``, ``h[t]`` the state after step ``t``.
  """
  return _associative_scan(a, b, h0)


def _linear_scan_forward(a, b, h0):
  h = _associative_scan(a, b, h0)
  return h, (a, h, h0)


def _linear_scan_backward(residuals, h_cotangent):
  a, h, h0 = residuals
  a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])
  adjoint = jnp.flip(_associative_scan(jnp.flip(a_next, 0), jnp.flip(h_cotangent, 0),
                                       jnp.zeros_like(h0)), 0)
  h_previous = jnp.concatenate([h0[None], h[:-1]])
  return adjoint * h_previous, adjoint, a[0] * adjoint[0]


linear_scan.defvjp(_linear_scan_forward, _linear_scan_backward)


def parallel_run(layer: LinearRNN, params, xs: jax.Array, carry: jax.Array, lengths=None,
                 reverse: bool = False):
  """Runs ``layer`` over time-major ``xs [T, ..., I]`` with one associative scan.

  Args:
    layer: a :class:`LinearRNN`.
    params: ``layer.init(...)``'s pytree.
    xs: ``[T, ..., I]``.
    carry: ``h0 [..., H]``.
    lengths: ``None`` or ``[...]`` int32 already clipped to ``[0, T]``.
    reverse: run from the last (valid) step to the first.

  Returns:
    ``(outputs [T, ..., O], final h [..., H])``, outputs in input time order.
  """
  if reverse:
    if lengths is None:
      flip = functools.partial(jnp.flip, axis=0)
    else:
      flip = functools.partial(reverse_padded, lengths=lengths)
    outputs, carry = parallel_run(layer, params, flip(xs), carry, lengths)
    return flip(outputs), carry

  a, b, skip = layer.project(params, xs)
  dtype = jnp.result_type(a, b, carry)
  a = a.astype(dtype)
  b = b.astype(dtype)
  if lengths is not None:
    steps = jnp.arange(xs.shape[0]).reshape((-1,) + (1,) * lengths.ndim)
    valid = (steps < lengths)[..., None]
    a = jnp.where(valid, a, jnp.ones_like(a))
    b = jnp.where(valid, b, jnp.zeros_like(b))
  h = linear_scan(a, b, carry.astype(dtype))
  outputs = layer.readout(params, h, skip)
  if lengths is not None:
    outputs = jnp.where(valid, outputs, jnp.zeros_like(outputs))
  return outputs, h[-1]


def g(x: jax.Array) -> jax.Array:
  """The positive activation of Feng et al.'s log-space minGRU/minLSTM:
  ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below (continuous at 0)."""
  return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


_CANDIDATES = {"linear": lambda x: x, "g": g}


def _check_candidate(candidate: str):
  if candidate not in _CANDIDATES:
    raise ValueError(f"candidate must be one of {sorted(_CANDIDATES)}, got {candidate!r}")
  return _CANDIDATES[candidate]


def _gated_init(hidden_size: int, blocks: int, kernel_init, bias_init, param_dtype,
                max_timescale=None, chrono_signs=()):
  """``w_ih [I, blocks*H]``, ``b [blocks*H]``; with ``max_timescale``, the chrono
  initialisation (Tallec & Ollivier 2018) of the first gate blocks:
  ``b_k = sign_k * log(u)``, ``u ~ U[1, max_timescale - 1]`` per unit."""

  def init(key, input_size):
    k_w, k_b, k_chrono = jax.random.split(key, 3)
    bias = bias_init(k_b, (blocks * hidden_size,), param_dtype)
    if max_timescale is not None:
      log_u = jnp.log(jax.random.uniform(k_chrono, (hidden_size,), param_dtype, 1.0,
                                         max_timescale - 1.0))
      for k, sign in enumerate(chrono_signs):
        bias = bias.at[k * hidden_size:(k + 1) * hidden_size].set(sign * log_u)
    return {
        "w_ih": _blockwise(kernel_init, blocks)(k_w, (input_size, blocks * hidden_size),
                                                param_dtype),
        "b": bias,
    }

  return init


def _check_timescale(max_timescale):
  if max_timescale is not None and not max_timescale > 2.0:
    raise ValueError(f"max_timescale must be > 2 (or None), got {max_timescale}")


def _identity_readout(params, h, skip):
  del params, skip
  return h


@memoized_factory
def mingru(
    hidden_size: int,
    candidate: str = "linear",
    *,
    parallel: bool = True,
    max_timescale: float | None = None,
    kernel_init: Initializer = glorot_uniform,
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> LinearRNN:
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
    parallel: associative scan (``True``) or sequential scan (``False``).
    max_timescale: if given, chrono initialisation (Tallec & Ollivier 2018)
      of the update gate: ``b_z = -log(u)``, ``u ~ U[1, max_timescale - 1]``,
      so that unit memories span 2 to ``max_timescale`` steps at the start
      (with zero biases ``z = 0.5`` halves the memory every step). Set it to
      about the sequence length for long sequences.
    kernel_init, bias_init: initialisers of ``w_ih`` (per gate block) and ``b``.
    param_dtype: dtype of the parameters.

  Params: ``w_ih [I, 2H]``, ``b [2H]``. Carry: ``h [..., H]``.
  """
  cand = _check_candidate(candidate)
  _check_timescale(max_timescale)

  def project(params, x):
    k_z, k_h = jnp.split(_affine_input(params, x, "b"), 2, axis=-1)
    return jax.nn.sigmoid(-k_z), jax.nn.sigmoid(k_z) * cand(k_h), None

  return LinearRNN("mingru", hidden_size, hidden_size,
                   _gated_init(hidden_size, 2, kernel_init, bias_init, param_dtype,
                               max_timescale, (-1.0,)),
                   _zeros_like_hidden(hidden_size), project, _identity_readout, _input_size,
                   (("candidate", candidate), ("max_timescale", max_timescale)), bool(parallel))


@memoized_factory
def minlstm(
    hidden_size: int,
    candidate: str = "linear",
    *,
    parallel: bool = True,
    max_timescale: float | None = None,
    kernel_init: Initializer = glorot_uniform,
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> LinearRNN:
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
    parallel: associative scan (``True``) or sequential scan (``False``).
    max_timescale: if given, chrono initialisation of the gates:
      ``b_f = log(u)``, ``b_i = -log(u)``, ``u ~ U[1, max_timescale - 1]``
      (as :func:`mingru`'s).
    kernel_init, bias_init: initialisers of ``w_ih`` (per gate block) and ``b``.
    param_dtype: dtype of the parameters.

  Params: ``w_ih [I, 3H]``, ``b [3H]``. Carry: ``h [..., H]``.
  """
  cand = _check_candidate(candidate)
  _check_timescale(max_timescale)

  def project(params, x):
    k_f, k_i, k_h = jnp.split(_affine_input(params, x, "b"), 3, axis=-1)
    log_ratio = jax.nn.softplus(-k_i) - jax.nn.softplus(-k_f)  # log f - log i
    return jax.nn.sigmoid(log_ratio), jax.nn.sigmoid(-log_ratio) * cand(k_h), None

  return LinearRNN("minlstm", hidden_size, hidden_size,
                   _gated_init(hidden_size, 3, kernel_init, bias_init, param_dtype,
                               max_timescale, (1.0, -1.0)),
                   _zeros_like_hidden(hidden_size), project, _identity_readout, _input_size,
                   (("candidate", candidate), ("max_timescale", max_timescale)), bool(parallel))


_SKIPS = ("diagonal", "dense", "none")


@memoized_factory
def lru(
    state_size: int,
    output_size: int,
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
    skip: str = "diagonal",
    parallel: bool = True,
    param_dtype=jnp.float32,
) -> LinearRNN:
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

  Raises:
    ValueError: for ``skip="diagonal"`` when ``init`` is given an input size
      other than ``output_size``; for radii outside ``0 <= r_min < r_max <= 1``.
  """
  if skip not in _SKIPS:
    raise ValueError(f"skip must be one of {_SKIPS}, got {skip!r}")
  if not 0.0 <= r_min < r_max <= 1.0:
    raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
  state = state_size
  complex_dtype = jnp.promote_types(param_dtype, jnp.complex64)

  def init(key, input_size):
    if skip == "diagonal" and input_size != output_size:
      raise ValueError(f"lru(skip='diagonal') needs input size == output size ({output_size}), "
                       f"got input size {input_size}; use skip='dense' or 'none'")
    k_r, k_phase, k_b_re, k_b_im, k_c_re, k_c_im, k_d = jax.random.split(key, 7)
    u_1 = jax.random.uniform(k_r, (state,), param_dtype)
    u_2 = jax.random.uniform(k_phase, (state,), param_dtype)
    nu_log = jnp.log(-0.5 * jnp.log(u_1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u_2)
    normal = functools.partial(jax.random.normal, dtype=param_dtype)
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
    if skip == "diagonal":
      params["D"] = normal(k_d, (output_size,))
    elif skip == "dense":
      params["D"] = glorot_uniform(k_d, (input_size, output_size), param_dtype)
    return params

  def initial_carry(batch_shape=(), dtype=jnp.float32):
    return jnp.zeros((*batch_shape, state), jnp.promote_types(dtype, complex_dtype))

  def project(params, x):
    x = x.astype(jnp.promote_types(x.dtype, params["B_re"].dtype))
    gamma = jnp.exp(params["gamma_log"])
    b = jax.lax.complex(x @ params["B_re"] * gamma, x @ params["B_im"] * gamma)
    lam = jnp.exp(jax.lax.complex(-jnp.exp(params["nu_log"]), jnp.exp(params["theta_log"])))
    if skip == "diagonal":
      skip_x = x * params["D"]
    elif skip == "dense":
      skip_x = x @ params["D"]
    else:
      skip_x = None
    return jnp.broadcast_to(lam, b.shape), b, skip_x

  def readout(params, h, skip_x):
    y = jnp.real(h) @ params["C_re"] - jnp.imag(h) @ params["C_im"]
    return y if skip_x is None else y + skip_x

  def input_size(params):
    return params["B_re"].shape[0]

  config = (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase), ("skip", skip))
  return LinearRNN("lru", state, output_size, init, initial_carry, project, readout, input_size,
                   config, bool(parallel))


CELLS = {
    "mingru": lambda hidden_size: mingru(hidden_size, max_timescale=784),
    "minlstm": lambda hidden_size: minlstm(hidden_size, max_timescale=784),
    "lru": lambda hidden_size: lru(hidden_size, hidden_size, r_min=0.9, r_max=0.999,
                                   skip="dense"),
}
"""Names for the training toolkit (merged into :data:`rnn_jax.models.CELLS`):
``CELLS[name](hidden_size) -> layer``, set up for sequences up to pixel MNIST's
784 steps: minGRU/minLSTM with chrono gate biases up to 784 steps, the LRU with
the paper's long-sequence radii and a dense skip (so any input size works)."""
