"""A hand-written backward pass for the scan of the built-in cells (``backward="fused"``).

Autodiff of ``jax.lax.scan`` differentiates each time step on its own: every
reverse step multiplies for the input, recurrent and weight gradients and the
forward pass saves about a dozen intermediate arrays per step. Here the
gradient is a ``jax.custom_vjp`` of the whole scan:

* forward: the input projection ``xs @ w_ih + b`` of all steps as one matmul,
  then one scan saving, per step, the previous hidden state and the few gate
  values the derivative needs;
* backward: one reverse scan whose only matmul is ``dz_t @ w_hh^T`` (the
  gradient flowing into ``h_{t-1}``), collecting the pre-activation gradients
  ``dz [T, N, G]``; then ``dw_hh = h_prev^T dz``, ``dw_ih = xs^T dz``,
  ``db = sum dz`` and ``dxs = dz @ w_ih^T``, each one large matmul or
  reduction over all steps at once.

The result equals autodiff of the same scan (the tests check 1e-5 in float32
and finite differences in float64) and users still call ``jax.grad``.
Supported: :func:`~rnn_jax.cells.simple_rnn` (tanh, relu),
:func:`~rnn_jax.cells.lstm`, :func:`~rnn_jax.cells.gru` (both ``reset_after``),
any batch shape, ``lengths``, ``reverse`` and ``unroll``; other cells fall back
to autodiff of :func:`~rnn_jax.unroll.scan_cell`. Each cell's forward
equations live once, in ``rnn_jax.cells`` (``lstm_recurrence``,
``gru_recurrence`` return the intermediate values the derivatives need); the
shared scans, masking and weight-gradient matmuls are written once here.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import Cell, LSTMState, gru_recurrence, lstm_recurrence
from rnn_jax.unroll import reverse_padded, scan_cell


class Rule(NamedTuple):
  """The derivative of one cell's recurrence, split into its per-step and batched parts.

  Attributes:
    forward: ``(params, carry, px_t) -> (carry, y_t, residuals_t)``: one step
      of ``cell.recur`` that also returns what ``backward`` needs.
    backward: ``(params, residuals_t, h_prev_t, y_t, dcarry) -> (dcarry_prev,
      dz_in_t, dz_rec_t)``: gradients of the step, given the carry's gradient
      (the output's already added to its hidden part); ``dz_in_t [N, G]`` is
      the gradient of ``px_t``, ``dz_rec_t`` that of the recurrent matmul's
      result, or ``None`` when it equals ``dz_in_t``.
    recurrent_grads: ``(params, residuals, h_prevs, dz_rec) -> dict`` of the
      recurrent parameters' gradients (``w_hh``, ``b_hh``), batched over time.
    hidden: ``carry -> h``, the part of the carry that is the output.
  """

  forward: Callable
  backward: Callable
  recurrent_grads: Callable
  hidden: Callable


def _time_batch_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """``sum_{t,n} a[t,n,:]^T b[t,n,:]``: ``[T, N, P], [T, N, Q] -> [P, Q]`` as one matmul."""
  return jnp.einsum("tnp,tnq->pq", a, b)


def _dense_grads(h_prevs, dz_rec):
  return {"w_hh": _time_batch_matmul(h_prevs, dz_rec)}


def _simple_rnn_rule(cell: Cell) -> Rule:
  activation = dict(cell.config)["activation"]

  def forward(params, h, px):
    h = cell.recur(params, h, px)[0]
    return h, h, ()

  def backward(params, residuals, h_prev, y, dh):
    del residuals, h_prev
    slope = 1.0 - y * y if activation == "tanh" else (y > 0).astype(y.dtype)
    dz = dh * slope
    return dz @ params["w_hh"].T, dz, None

  def recurrent_grads(params, residuals, h_prevs, dz_rec):
    del params, residuals
    return _dense_grads(h_prevs, dz_rec)

  return Rule(forward, backward, recurrent_grads, lambda h: h)


def _lstm_rule(cell: Cell) -> Rule:
  forget_bias = dict(cell.config)["forget_bias"]

  def forward(params, state, px):
    state, residuals = lstm_recurrence(params, state, px, forget_bias)
    return state, state.h, residuals

  def backward(params, residuals, h_prev, y, dstate):
    del h_prev, y
    gates, c_prev, tanh_c = residuals
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    dh, dc = dstate
    do = dh * tanh_c
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    dz = jnp.concatenate([
        dc * g * i * (1.0 - i),
        dc * c_prev * f * (1.0 - f),
        dc * i * (1.0 - g * g),
        do * o * (1.0 - o),
    ], axis=-1)
    return LSTMState(dz @ params["w_hh"].T, dc * f), dz, None

  def recurrent_grads(params, residuals, h_prevs, dz_rec):
    del params, residuals
    return _dense_grads(h_prevs, dz_rec)

  return Rule(forward, backward, recurrent_grads, lambda state: state.h)


def _gru_rule(cell: Cell) -> Rule:
  reset_after = dict(cell.config)["reset_after"]
  hidden = cell.hidden_size

  def forward(params, h, px):
    h, residuals = gru_recurrence(params, h, px, reset_after)
    return h, h, residuals

  def backward(params, residuals, h_prev, y, dh):
    del y
    w_hh = params["w_hh"]
    r, z, n = (residuals[..., k * hidden:(k + 1) * hidden] for k in range(3))
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    if reset_after:
      u_n = residuals[..., 3 * hidden:]
      dr = dn * u_n * r * (1.0 - r)
      dz_in = jnp.concatenate([dr, dz, dn], axis=-1)
      dz_rec = jnp.concatenate([dr, dz, dn * r], axis=-1)
      dh_prev = dh * z + dz_rec @ w_hh.T
    else:
      d_reset_h = dn @ w_hh[:, 2 * hidden:].T
      dr = d_reset_h * h_prev * r * (1.0 - r)
      dz_in = jnp.concatenate([dr, dz, dn], axis=-1)
      dz_rec = None
      dh_prev = dh * z + d_reset_h * r + dz_in[..., :2 * hidden] @ w_hh[:, :2 * hidden].T
    return dh_prev, dz_in, dz_rec

  def recurrent_grads(params, residuals, h_prevs, dz_rec):
    del params
    if reset_after:
      return {"w_hh": _time_batch_matmul(h_prevs, dz_rec), "b_hh": dz_rec.sum((0, 1))}
    reset_h = residuals[..., :hidden] * h_prevs  # dz_rec is dz_in here.
    return {"w_hh": jnp.concatenate([
        _time_batch_matmul(h_prevs, dz_rec[..., :2 * hidden]),
        _time_batch_matmul(reset_h, dz_rec[..., 2 * hidden:])], axis=1)}

  return Rule(forward, backward, recurrent_grads, lambda h: h)


_RULES = {"simple_rnn": _simple_rnn_rule, "lstm": _lstm_rule, "gru": _gru_rule}
_INPUT_BIAS = {"simple_rnn": "b", "lstm": "b", "gru": None}


def rule_for(cell: Any) -> Rule | None:
  """The :class:`Rule` of a built-in cell, or ``None`` (then ``fused_scan`` uses autodiff)."""
  if not isinstance(cell, Cell) or cell.name not in _RULES:
    return None
  return _RULES[cell.name](cell)


def _input_bias_name(cell: Cell, params) -> str:
  if cell.name == "gru":
    return "b_ih" if "b_ih" in params else "b"
  return _INPUT_BIAS[cell.name]


@functools.lru_cache(maxsize=None)
def _fused_scan_fn(cell: Cell, reverse: bool, unroll: int, hoist: bool):
  """The ``custom_vjp`` scan ``(params, xs [T,N,I], carry, lengths [N] | None) -> (ys, carry)``."""
  rule = rule_for(cell)

  @jax.custom_vjp
  def run(params, xs, carry, lengths):
    return scan_cell(cell, params, xs, carry, lengths, reverse, unroll, hoist)

  def run_forward(params, xs, carry, lengths):
    px = cell.project(params, xs)
    masked = lengths is not None

    def body(carry, step_input):
      t, px_t = step_input
      new_carry, y, residuals = rule.forward(params, carry, px_t)
      if masked:
        valid = (t < lengths)[..., None]
        new_carry = jax.tree.map(lambda new, old: jnp.where(valid, new, old), new_carry, carry)
        y = jnp.where(valid, y, jnp.zeros_like(y))
      return new_carry, (y, rule.hidden(carry), residuals)

    steps = jnp.arange(xs.shape[0], dtype=jnp.int32)
    final_carry, (ys, h_prevs, residuals) = jax.lax.scan(
        body, carry, (steps, px), reverse=reverse, unroll=unroll)
    return (ys, final_carry), (params, xs, lengths, ys, h_prevs, residuals)

  def run_backward(saved, cotangents):
    params, xs, lengths, ys, h_prevs, residuals = saved
    d_ys, d_final_carry = cotangents
    masked = lengths is not None

    def body(dcarry, step_input):
      t, dy, y, h_prev, residuals_t = step_input
      if masked:
        valid = (t < lengths)[..., None]
        dy = jnp.where(valid, dy, jnp.zeros_like(dy))
      if isinstance(dcarry, LSTMState):
        dcarry_in = dcarry._replace(h=dcarry.h + dy)
      else:
        dcarry_in = dcarry + dy
      dcarry_prev, dz_in, dz_rec = rule.backward(params, residuals_t, h_prev, y, dcarry_in)
      if masked:
        dcarry_prev = jax.tree.map(lambda new, old: jnp.where(valid, new, old), dcarry_prev,
                                   dcarry)
        dz_in, dz_rec = jax.tree.map(lambda dz: jnp.where(valid, dz, jnp.zeros_like(dz)),
                                     (dz_in, dz_rec))
      return dcarry_prev, (dz_in, dz_rec)

    steps = jnp.arange(xs.shape[0], dtype=jnp.int32)
    d_carry, (dz_in, dz_rec) = jax.lax.scan(
        body, d_final_carry, (steps, d_ys, ys, h_prevs, residuals), reverse=not reverse,
        unroll=unroll)

    w_ih = params["w_ih"]
    xs_promoted = xs.astype(jnp.promote_types(xs.dtype, w_ih.dtype))
    d_params = {"w_ih": _time_batch_matmul(xs_promoted, dz_in),
                _input_bias_name(cell, params): dz_in.sum((0, 1))}
    d_params.update(rule.recurrent_grads(params, residuals, h_prevs,
                                         dz_in if dz_rec is None else dz_rec))
    d_params = {name: d_params[name].astype(value.dtype) for name, value in params.items()}
    d_xs = (dz_in @ w_ih.T).astype(xs.dtype)
    d_lengths = None if lengths is None else np.zeros(lengths.shape, jax.dtypes.float0)
    return d_params, d_xs, d_carry, d_lengths

  run.defvjp(run_forward, run_backward)
  return run


def fused_scan(cell, params, xs: jax.Array, carry, lengths=None, reverse: bool = False,
               unroll: int = 1, hoist: bool = False):
  """``scan_cell`` with the fused backward pass; same arguments and results.

  Args:
    cell: a :class:`~rnn_jax.cells.Cell`; cells without a :class:`Rule` run
      :func:`~rnn_jax.unroll.scan_cell` (autodiff).
    params: ``cell.init(...)``'s pytree.
    xs: ``[T, ..., I]`` time-major inputs, any batch shape ``...``.
    carry: initial carry, leaves ``[..., H]``.
    lengths: ``None`` or ``[...]`` int32 in ``[0, T]``.
    reverse: run from the last (valid) step to the first.
    unroll: ``jax.lax.scan``'s unroll, for both the forward and backward scans.
    hoist: whether the forward pass alone (no gradient taken) hoists the input
      projection; the differentiated forward always does.

  Returns:
    ``(outputs [T, ..., O], final_carry)``.
  """
  if rule_for(cell) is None:
    return scan_cell(cell, params, xs, carry, lengths, reverse, unroll, hoist)
  if reverse and lengths is not None:
    outputs, carry = fused_scan(cell, params, reverse_padded(xs, lengths), carry, lengths,
                                False, unroll, hoist)
    return reverse_padded(outputs, lengths), carry
  num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
  size = math.prod(batch_shape)
  flat = lambda a: a.reshape((size, a.shape[-1]))
  run = _fused_scan_fn(cell, bool(reverse), int(unroll), bool(hoist))
  outputs, carry = run(params, xs.reshape((num_steps, size, xs.shape[-1])),
                       jax.tree.map(flat, carry),
                       None if lengths is None else lengths.reshape((size,)))
  outputs = outputs.reshape((num_steps, *batch_shape, outputs.shape[-1]))
  carry = jax.tree.map(lambda a: a.reshape((*batch_shape, a.shape[-1])), carry)
  return outputs, carry
