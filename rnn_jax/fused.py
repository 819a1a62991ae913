"""A hand-written backward pass for a cell's scan (``vjp="fused"``).

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
and finite differences in float64) and users still call ``jax.grad``. A cell
with a ``compute_dtype`` (:mod:`rnn_jax.precision`) runs these matmuls in it too.

A cell opts in by deriving from :class:`FusedVJP` and writing its
derivative next to its equations (:mod:`rnn_jax.cells` does for the Elman
RNN, LSTM and GRU); the scans, masking and weight-gradient matmuls are here,
once. Any batch shape, ``lengths``, ``resets``, ``reverse`` and ``unroll`` work. With
resets the forward pass zeroes the carry where a segment starts
(``rnn_jax._scan.reset_flags``) and saves the zeroed previous hidden
state; the backward pass gives the carry before the reset no gradient.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax._scan as _scan
from rnn_jax.precision import matmul


class FusedVJP:
  """What a cell provides to be differentiated by :func:`fused_scan`.

  Shapes: ``N`` the flattened batch, ``G`` the fused gate width, ``H`` hidden.
  The cell's params hold ``w_ih [I, G]`` and the input bias named by
  :meth:`input_bias_name`; ``project(params, x)`` is ``x @ w_ih + bias``.
  """

  def recur_with_residuals(self, params, carry, px):
    """One step of ``recur`` that also returns what the derivative needs:
    ``(carry, y_t [N, H], residuals_t)``."""
    raise NotImplementedError

  def step_vjp(self, params, residuals, h_prev, y, dcarry, dy):
    """Gradients of one step: ``(dcarry_prev, dz_in [N, G], dz_rec)``.

    ``dcarry`` is the gradient of the step's carry from later steps, ``dy``
    that of its output; ``dz_in`` is the gradient of ``px_t``, ``dz_rec`` that
    of the recurrent matmul's result, or ``None`` when it equals ``dz_in``.
    """
    raise NotImplementedError

  def recurrent_grads(self, params, residuals, h_prevs, dz_rec) -> dict:
    """The recurrent parameters' gradients (``w_hh``, ``b_hh``), batched over time."""
    raise NotImplementedError

  def hidden(self, carry) -> jax.Array:
    """The part of the carry that is the output, ``[N, H]``."""
    return carry

  def input_bias_name(self, params) -> str:
    """The key of the bias added by ``project``."""
    return "b"


def time_batch_matmul(a: jax.Array, b: jax.Array, compute_dtype: Any = None) -> jax.Array:
  """``sum_{t,n} a[t,n,:]^T b[t,n,:]``: ``[T, N, P], [T, N, Q] -> [P, Q]`` as one matmul,
  in ``compute_dtype`` (:func:`rnn_jax.precision.matmul`; ``None``: the operands' dtype)."""
  if compute_dtype is None:
    return jnp.einsum("tnp,tnq->pq", a, b)
  return matmul(a.reshape((-1, a.shape[-1])).T, b.reshape((-1, b.shape[-1])), compute_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6, 7, 8))
def _fused(cell, params, xs, carry, lengths, flags, reverse, unroll, hoist):
  """The scan of ``xs [T, N, I]`` in reading order (``flags``: reset flags placed like ``xs``)
  whose gradient is :func:`_fused_backward`."""
  return _scan.scan_in_reading_order(cell, params, xs, carry, lengths, flags, reverse=reverse,
                                     unroll=unroll, hoist=hoist)


def _fused_forward(cell, params, xs, carry, lengths, flags, reverse, unroll, hoist):
  del hoist  # The differentiated forward always projects all steps at once.
  px = cell.project(params, xs)

  def body(carry, px_t, valid, reset):
    carry = _scan.zero_where(reset, carry)  # The saved previous state is the post-reset one.
    new_carry, y, residuals = cell.recur_with_residuals(params, carry, px_t)
    return _scan.hold(valid, new_carry, carry), (_scan.zero_invalid(valid, y),
                                                 cell.hidden(carry), residuals)

  final_carry, (ys, h_prevs, residuals) = _scan.scan_steps(body, carry, px, lengths,
                                                           resets=flags, reverse=reverse,
                                                           unroll=unroll)
  return (ys, final_carry), (params, xs, lengths, flags, ys, h_prevs, residuals)


def _fused_backward(cell, reverse, unroll, hoist, saved, cotangents):
  del hoist
  params, xs, lengths, flags, ys, h_prevs, residuals = saved
  d_ys, d_final_carry = cotangents

  def body(dcarry, step_input, valid, reset):
    dy, y, h_prev, residuals_t = step_input
    dcarry_prev, dz_in, dz_rec = cell.step_vjp(params, residuals_t, h_prev, y, dcarry,
                                               _scan.zero_invalid(valid, dy))
    dcarry_prev = _scan.hold(valid, dcarry_prev, dcarry)
    # The carry before a reset was replaced by zeros: it gets no gradient.
    return _scan.zero_where(reset, dcarry_prev), _scan.zero_invalid(valid, (dz_in, dz_rec))

  d_carry, (dz_in, dz_rec) = _scan.scan_steps(body, d_final_carry, (d_ys, ys, h_prevs, residuals),
                                              lengths, resets=flags, reverse=not reverse,
                                              unroll=unroll)
  w_ih = params["w_ih"]
  compute_dtype = getattr(cell, "compute_dtype", None)
  xs_promoted = xs.astype(jnp.promote_types(xs.dtype, w_ih.dtype))
  d_params = {"w_ih": time_batch_matmul(xs_promoted, dz_in, compute_dtype),
              cell.input_bias_name(params): dz_in.sum((0, 1))}
  d_params.update(cell.recurrent_grads(params, residuals, h_prevs,
                                       dz_in if dz_rec is None else dz_rec))
  d_params = {name: d_params[name].astype(value.dtype) for name, value in params.items()}
  d_xs = matmul(dz_in, w_ih.T, compute_dtype).astype(xs.dtype)
  no_gradient = lambda a: None if a is None else np.zeros(a.shape, jax.dtypes.float0)
  return d_params, d_xs, d_carry, no_gradient(lengths), no_gradient(flags)


_fused.defvjp(_fused_forward, _fused_backward)


def fused_scan(cell: FusedVJP, params, xs: jax.Array, carry: Any, lengths=None, *,
               resets=None, reverse: bool = False, unroll: int = 1, hoist: bool = False):
  """The cell's scan (:func:`rnn_jax._scan.scan_layer`) with the fused backward pass.

  Args:
    cell: a cell deriving from :class:`FusedVJP`.
    params: ``cell.init(...)``'s pytree.
    xs: ``[T, ..., I]`` time-major inputs, any batch shape ``...``.
    carry: initial carry, leaves ``[..., H]``.
    lengths: ``None`` or ``[...]`` int32 in ``[0, T]``.
    resets: ``None`` or ``[T, ...]`` bool in input time order, as
      :func:`rnn_jax._scan.scan_layer`'s.
    reverse: run from the last (valid) step to the first.
    unroll: ``jax.lax.scan``'s unroll, for both the forward and backward scans.
    hoist: whether the forward pass alone (no gradient taken) hoists the input
      projection; the differentiated forward always does.

  Returns:
    ``(outputs [T, ..., O], final_carry)``.
  """
  num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
  size = math.prod(batch_shape)
  flat = lambda a: a.reshape((size, a.shape[-1]))

  def run(inputs, reverse):
    xs, flags = inputs
    with jax.named_scope(f"fused_{cell.name}"):
      outputs, final = _fused(cell, params, xs.reshape((num_steps, size, xs.shape[-1])),
                              jax.tree.map(flat, carry),
                              None if lengths is None else lengths.reshape((size,)),
                              None if flags is None else flags.reshape((num_steps, size, 1)),
                              bool(reverse), int(unroll), bool(hoist))
    return (outputs.reshape((num_steps, *batch_shape, outputs.shape[-1])),
            jax.tree.map(lambda a: a.reshape((*batch_shape, a.shape[-1])), final))

  return _scan.run_in_valid_order(run, (xs, _scan.reset_flags(resets, lengths, reverse)),
                                  lengths, reverse)
