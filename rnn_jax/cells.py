"""Recurrent cells as data plus pure functions: Elman RNN, LSTM and GRU.

A :class:`Cell` is an immutable NamedTuple of hyperparameters and pure
functions, built by a small factory (``simple_rnn``, ``lstm``, ``gru``), in the
style of an Optax ``GradientTransformation``. Nothing is stateful: parameters
are a plain dict of arrays returned by ``cell.init`` and threaded through
explicitly.

Every cell splits its step into two halves so that an unroller may hoist the
input half out of the time loop::

    px_t          = cell.project(params, x_t)          # [..., I] -> [..., G]
    carry, y_t    = cell.recur(params, carry, px_t)     # the recurrence only
    carry, y_t    = cell.step(params, carry, x_t)       # both, one time step

``project`` is affine in ``x`` and has no time dependence, so
``cell.project(params, xs)`` on a whole ``[..., T, I]`` sequence is one matmul.

Shapes: ``I`` input size, ``H`` hidden size, ``...`` any batch shape
(including none). With float32 or bfloat16 inputs and parameters the carry
math and the outputs are float32 (bfloat16 inputs are promoted); with float64
ones (under x64) they are float64.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

Params = dict
Carry = Any
Initializer = Callable[..., jax.Array]

glorot_uniform = jax.nn.initializers.glorot_uniform()
orthogonal = jax.nn.initializers.orthogonal()
zeros = jax.nn.initializers.zeros


class LSTMState(NamedTuple):
  """Carry of an LSTM: hidden state ``h`` and cell state ``c``, each ``[..., H]``."""

  h: jax.Array
  c: jax.Array


class Cell(NamedTuple):
  """A recurrent cell: hyperparameters plus pure functions.

  Attributes:
    name: ``"simple_rnn"``, ``"lstm"``, ``"gru"`` or another cell's name.
    hidden_size: ``H``, the size of the hidden state.
    output_size: size of ``y_t`` (``H`` for the built-in cells).
    init: ``(key, input_size) -> params``, a dict of arrays.
    initial_carry: ``(batch_shape=(), dtype=float32) -> carry`` of zeros.
    project: ``(params, x) -> px``: the input half, ``[..., I] -> [..., G]``.
    recur: ``(params, carry, px_t) -> (carry, y_t)``: the recurrent half.
    input_size: ``params -> I``, read off the parameter shapes.
    config: the hyperparameters as ``((name, value), ...)``; ``dict(cell.config)``
      reads them. A tuple, so that a cell is hashable and can be a static
      argument of ``jax.jit``.

  The factories are memoised: ``lstm(128) is lstm(128)``, so two models built
  from the same arguments share jit caches.
  """

  name: str
  hidden_size: int
  output_size: int
  init: Callable[[jax.Array, int], Params]
  initial_carry: Callable[..., Carry]
  project: Callable[[Params, jax.Array], jax.Array]
  recur: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]
  input_size: Callable[[Params], int]
  config: tuple

  def step(self, params: Params, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
    """One time step: ``(params, carry, x_t [..., I]) -> (carry, y_t [..., O])``."""
    return self.recur(params, carry, self.project(params, x))


def memoized_factory(factory):
  """Caches ``factory``'s results on its arguments in canonical form.

  Arguments are bound to the signature with defaults filled in, so
  ``lstm(8)``, ``lstm(8, 1.0)`` and ``lstm(hidden_size=8)`` return the same
  object and share jit caches. Every argument must be hashable; the cache
  grows by one entry per distinct set of arguments (pass initialisers defined
  once, not fresh lambdas in a loop).
  """
  signature = inspect.signature(factory)
  cached = functools.lru_cache(maxsize=None)(factory)

  @functools.wraps(factory)
  def wrapper(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return cached(**bound.arguments)

  wrapper.cache_clear = cached.cache_clear
  return wrapper


def _blockwise(init: Initializer, blocks: int) -> Initializer:
  """Applies ``init`` to each ``[rows, H]`` gate block of a ``[rows, blocks*H]`` matrix.

  The blocks are drawn in at least float32 and then cast to ``dtype``: the
  orthogonal initialiser's QR has no bfloat16/float16 kernel on CPU.
  """

  def init_fn(key, shape, dtype=jnp.float32):
    rows, cols = shape
    keys = jax.random.split(key, blocks)
    draw_dtype = jnp.promote_types(dtype, jnp.float32)
    parts = [init(k, (rows, cols // blocks), draw_dtype) for k in keys]
    return jnp.concatenate(parts, axis=1).astype(dtype)

  return init_fn


def _identity(key, shape, dtype=jnp.float32):
  """The IRNN recurrent initialiser (Le et al. 2015): the identity matrix."""
  del key
  rows, cols = shape
  return jnp.eye(rows, cols, dtype=dtype)


def _zeros_like_hidden(hidden_size: int, lstm_state: bool = False):
  def initial_carry(batch_shape: Sequence[int] = (), dtype=jnp.float32):
    zeros_h = jnp.zeros((*batch_shape, hidden_size), dtype)
    return LSTMState(zeros_h, zeros_h) if lstm_state else zeros_h

  return initial_carry


def _affine_input(params: Params, x: jax.Array, bias: str) -> jax.Array:
  """``x @ w_ih + params[bias]``; promotes bfloat16 inputs to the parameter dtype."""
  x = x.astype(jnp.promote_types(x.dtype, params["w_ih"].dtype))
  return x @ params["w_ih"] + params[bias]


def _input_size(params: Params) -> int:
  return params["w_ih"].shape[0]


ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


@memoized_factory
def simple_rnn(
    hidden_size: int,
    activation: str = "tanh",
    *,
    kernel_init: Initializer = glorot_uniform,
    recurrent_init: Initializer | str = orthogonal,
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> Cell:
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

  Params: ``w_ih [I, H]``, ``w_hh [H, H]``, ``b [H]``. Carry: ``h [..., H]``.
  """
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
  if recurrent_init == "identity":
    recurrent_init = _identity
  elif isinstance(recurrent_init, str):
    raise ValueError(f"recurrent_init must be an initialiser or 'identity', got {recurrent_init!r}")
  act = ACTIVATIONS[activation]

  def init(key, input_size):
    k_ih, k_hh, k_b = jax.random.split(key, 3)
    return {
        "w_ih": _blockwise(kernel_init, 1)(k_ih, (input_size, hidden_size), param_dtype),
        "w_hh": _blockwise(recurrent_init, 1)(k_hh, (hidden_size, hidden_size), param_dtype),
        "b": bias_init(k_b, (hidden_size,), param_dtype),
    }

  def project(params, x):
    return _affine_input(params, x, "b")

  def recur(params, h, px):
    h = act(px + h @ params["w_hh"])
    return h, h

  return Cell("simple_rnn", hidden_size, hidden_size, init, _zeros_like_hidden(hidden_size),
              project, recur, _input_size, (("activation", activation),))


def lstm_recurrence(params: Params, state: LSTMState, px: jax.Array, forget_bias: float):
  """The LSTM's recurrent half, also returning the values its derivative needs.

  Returns:
    ``(LSTMState(h, c), (gates, c_prev, tanh_c))`` with ``gates [..., 4H]``
    the activated ``(i, f, g, o)`` and ``tanh_c = tanh(c)``; shared by
    :func:`lstm` and :mod:`rnn_jax.backward` so the equations exist once.
  """
  z = px + state.h @ params["w_hh"]
  i, f, g, o = jnp.split(z, 4, axis=-1)
  i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f + forget_bias), jnp.tanh(g), jax.nn.sigmoid(o)
  c = f * state.c + i * g
  tanh_c = jnp.tanh(c)
  return LSTMState(o * tanh_c, c), (jnp.concatenate([i, f, g, o], axis=-1), state.c, tanh_c)


@memoized_factory
def lstm(
    hidden_size: int,
    forget_bias: float = 1.0,
    *,
    kernel_init: Initializer = glorot_uniform,
    recurrent_init: Initializer = orthogonal,
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> Cell:
  """Long short-term memory, gates fused in the order (i, f, g, o) of PyTorch/cuDNN.

  With ``z = x_t @ w_ih + h_{t-1} @ w_hh + b`` split into four ``[..., H]`` blocks::

      i = sigmoid(z_i)   f = sigmoid(z_f + forget_bias)   g = tanh(z_g)   o = sigmoid(z_o)
      c_t = f * c_{t-1} + i * g        h_t = o * tanh(c_t)        y_t = h_t

  ``forget_bias`` is a constant added at run time, as in TF1's BasicLSTMCell
  (it is not a parameter; use 0.0 to match PyTorch).

  Params: ``w_ih [I, 4H]``, ``w_hh [H, 4H]`` (each gate block initialised
  separately), ``b [4H]``. Carry: ``LSTMState(h [..., H], c [..., H])``.
  """
  hidden = hidden_size

  def init(key, input_size):
    k_ih, k_hh, k_b = jax.random.split(key, 3)
    return {
        "w_ih": _blockwise(kernel_init, 4)(k_ih, (input_size, 4 * hidden), param_dtype),
        "w_hh": _blockwise(recurrent_init, 4)(k_hh, (hidden, 4 * hidden), param_dtype),
        "b": bias_init(k_b, (4 * hidden,), param_dtype),
    }

  def project(params, x):
    return _affine_input(params, x, "b")

  def recur(params, state, px):
    state, _ = lstm_recurrence(params, state, px, forget_bias)
    return state, state.h

  return Cell("lstm", hidden, hidden, init, _zeros_like_hidden(hidden, lstm_state=True),
              project, recur, _input_size, (("forget_bias", forget_bias),))


def gru_recurrence(params: Params, h: jax.Array, px: jax.Array, reset_after: bool):
  """The GRU's recurrent half, also returning the values its derivative needs.

  Returns:
    ``(h_new [..., H], residuals)`` with residuals the activated ``(r, z, n)``
    concatenated ``[..., 3H]``, plus ``h @ w_hn + b_hn`` (``[..., 4H]`` in all)
    when ``reset_after``; shared by :func:`gru` and :mod:`rnn_jax.backward`.
  """
  hidden = h.shape[-1]
  a_r, a_z, a_n = jnp.split(px, 3, axis=-1)
  w_hh = params["w_hh"]
  if reset_after:
    u_r, u_z, u_n = jnp.split(h @ w_hh + params["b_hh"], 3, axis=-1)
    r = jax.nn.sigmoid(a_r + u_r)
    z = jax.nn.sigmoid(a_z + u_z)
    n = jnp.tanh(a_n + r * u_n)
    residuals = jnp.concatenate([r, z, n, u_n], axis=-1)
  else:
    u_r, u_z = jnp.split(h @ w_hh[:, :2 * hidden], 2, axis=-1)
    r = jax.nn.sigmoid(a_r + u_r)
    z = jax.nn.sigmoid(a_z + u_z)
    n = jnp.tanh(a_n + (r * h) @ w_hh[:, 2 * hidden:])
    residuals = jnp.concatenate([r, z, n], axis=-1)
  return (1.0 - z) * n + z * h, residuals


@memoized_factory
def gru(
    hidden_size: int,
    reset_after: bool = True,
    *,
    kernel_init: Initializer = glorot_uniform,
    recurrent_init: Initializer = orthogonal,
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> Cell:
  """Gated recurrent unit, gates in the order (r, z, n) of PyTorch/cuDNN.

  With ``a = x_t @ w_ih`` and ``u = h_{t-1} @ w_hh`` split into (r, z, n) blocks::

      r = sigmoid(a_r + u_r + b_r)     z = sigmoid(a_z + u_z + b_z)
      reset_after=True  (cuDNN, PyTorch, Keras 2+):
          n = tanh(a_n + b_in + r * (h_{t-1} @ w_hn + b_hn))
      reset_after=False (Cho et al. 2014, TF1 GRUCell):
          n = tanh(a_n + (r * h_{t-1}) @ w_hn + b_n)
      h_t = (1 - z) * n + z * h_{t-1}          y_t = h_t

  so ``z`` near 1 keeps the old state (the PyTorch/Keras/Flax convention).

  Params with ``reset_after=True``: ``w_ih [I, 3H]``, ``w_hh [H, 3H]``,
  ``b_ih [3H]``, ``b_hh [3H]`` (two biases, because ``b_hn`` sits inside the
  reset product). With ``reset_after=False``: ``w_ih``, ``w_hh`` and one
  ``b [3H]``. Carry: ``h [..., H]``.
  """
  hidden = hidden_size

  def init(key, input_size):
    k_ih, k_hh, k_b, k_b2 = jax.random.split(key, 4)
    params = {
        "w_ih": _blockwise(kernel_init, 3)(k_ih, (input_size, 3 * hidden), param_dtype),
        "w_hh": _blockwise(recurrent_init, 3)(k_hh, (hidden, 3 * hidden), param_dtype),
    }
    if reset_after:
      params["b_ih"] = bias_init(k_b, (3 * hidden,), param_dtype)
      params["b_hh"] = bias_init(k_b2, (3 * hidden,), param_dtype)
    else:
      params["b"] = bias_init(k_b, (3 * hidden,), param_dtype)
    return params

  def project(params, x):
    return _affine_input(params, x, "b_ih" if reset_after else "b")

  def recur(params, h, px):
    h, _ = gru_recurrence(params, h, px, reset_after)
    return h, h

  return Cell("gru", hidden, hidden, init, _zeros_like_hidden(hidden), project, recur,
              _input_size, (("reset_after", reset_after),))
