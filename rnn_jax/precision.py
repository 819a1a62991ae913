"""Compute dtypes: the one matrix product every layer's matmuls go through.

A layer's ``compute_dtype`` (a static hyperparameter; ``rnn(...,
compute_dtype=...)`` sets it on every leaf of a composite) says in which
number format its matrix products read their operands:

* ``None`` (the default): as before it existed, ``x @ w`` in the operands'
  own promoted dtype (bitwise today's results);
* a dtype such as ``jnp.bfloat16``: both operands are cast to it and the
  product is accumulated in float32 (``preferred_element_type``), the
  mixed-precision recipe of Micikevicius et al. (2018) and of bf16 hardware.

Only the matrix products change. Everything elementwise (gate
nonlinearities, the LSTM cell state, the linear recurrences' scans), the
carry, the parameters and their gradients stay in their own dtype (float32).
The backward pass of :func:`matmul` is hand-written (``jax.custom_vjp``) so
that its two products, ``dx = g @ w^T`` and ``dw = x^T g``, also read
``compute_dtype`` operands with float32 accumulation (JAX's own transpose
would run them in float32) and return gradients in ``x``'s and ``w``'s dtypes.
Forward-mode differentiation (``jax.jvp``) of a layer with a ``compute_dtype``
is therefore not defined; use ``compute_dtype=None`` for that.

Weights are cast where they are used, inside the time loop: the cast only
depends on the parameters, so XLA hoists it out of the loop (the optimized
HLO of an LSTM's bf16 gradient carries the bf16 weights through its loops and
converts them once), and the weight gradient summed over the steps stays
float32, as it would not if the weights were cast to bf16 before the scan.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["check_compute_dtype", "matmul"]


def check_compute_dtype(name: str, value: Any) -> jnp.dtype | None:
  """``value`` as a NumPy dtype (``None`` stays ``None``), so that ``jnp.bfloat16``,
  ``"bfloat16"`` and ``jnp.dtype("bfloat16")`` give equal, equally hashed layers.

  Raises ``ValueError`` naming ``name`` unless ``value`` is ``None`` or a floating dtype.
  """
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} must be None or a floating dtype (jnp.bfloat16, jnp.float32, "
                     f"...), got {value!r}")
  return dtype


def matmul(x: jax.Array, w: jax.Array, compute_dtype: Any = None) -> jax.Array:
  """``x @ w`` with ``w [K, N]`` a matrix and ``x [..., K]``, in ``compute_dtype``.

  Args:
    x: ``[..., K]``.
    w: ``[K, N]``.
    compute_dtype: ``None``: exactly ``x @ w`` (JAX's promotion rules). A dtype:
      both operands cast to it, products accumulated in float32 (or wider
      when ``x`` or ``w`` is), also in the backward pass (see the module doc).

  Returns:
    The product, ``[..., N]``; for a ``compute_dtype``, in the accumulation
    dtype (float32 for float32 or bfloat16 operands).
  """
  if compute_dtype is None:
    return x @ w
  return _cast_matmul(x, w, jnp.dtype(compute_dtype))


def _accumulation_dtype(x: jax.Array, w: jax.Array) -> jnp.dtype:
  return jnp.result_type(jnp.float32, x.dtype, w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cast_matmul(x, w, compute_dtype):
  return _cast_matmul_forward(x, w, compute_dtype)[0]


def _cast_matmul_forward(x, w, compute_dtype):
  cast_x, cast_w = x.astype(compute_dtype), w.astype(compute_dtype)
  product = jnp.matmul(cast_x, cast_w, preferred_element_type=_accumulation_dtype(x, w))
  # Saves the cast operands (half the bytes of float32 ones) and the dtypes to return.
  return product, (cast_x, cast_w, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _cast_matmul_backward(compute_dtype, saved, g):
  cast_x, cast_w, x_dtype, w_dtype = saved
  accumulate = g.dtype
  g = g.astype(compute_dtype)
  d_x = jnp.matmul(g, cast_w.T, preferred_element_type=accumulate)
  flat_x = cast_x.reshape((-1, cast_x.shape[-1]))
  d_w = jnp.matmul(flat_x.T, g.reshape((-1, g.shape[-1])), preferred_element_type=accumulate)
  return d_x.astype(x_dtype.dtype), d_w.astype(w_dtype.dtype)


_cast_matmul.defvjp(_cast_matmul_forward, _cast_matmul_backward)
