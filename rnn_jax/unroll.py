"""``rnn``: checks its arguments, then runs any layer over time.

``rnn(layer, params, xs, ...)`` validates shapes and dtypes at trace time,
moves time to the front, builds the layer's carry and one static
:class:`~rnn_jax.layer.RunOptions`, and calls ``layer.run`` (the layer
protocol of :mod:`rnn_jax.layer`); composites pass the options on to their
parts, and each leaf resolves ``None`` options to its tuned values in
:meth:`~rnn_jax.layer.RunOptions.resolve`.

Variable lengths follow ``tf.nn.dynamic_rnn``: past a sequence's length its
carry is held and its outputs are zero; with ``reverse=True`` only each valid
prefix is reversed (``tf.reverse_sequence``), so a backward pass starts at the
true last step. Lengths outside ``[0, T]`` are clipped to it: a length of 0
gives zero outputs and returns the initial carry; a length above ``T`` acts as
``T``.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax.layer import Layer, RunOptions, check_layer

__all__ = ["rnn"]


def _leaves_by_path(tree) -> dict:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_param_paths(layer, params, input_size: int) -> dict:
  """Raises ``ValueError`` unless ``params`` has the keys ``layer.init`` gives; returns those."""
  expected = _leaves_by_path(jax.eval_shape(lambda key: layer.init(key, input_size),
                                            jax.random.key(0)))
  got = _leaves_by_path(params)
  if set(got) != set(expected):
    listed = lambda paths: ", ".join(f"params{path}" for path in sorted(paths)) or "none"
    raise ValueError(f"params: not the pytree {type(layer).__name__}.init returns (params of "
                     f"another layer?): missing {listed(set(expected) - set(got))}; unexpected "
                     f"{listed(set(got) - set(expected))}; build them with "
                     "layer.init(key, input_size)")
  return expected


def _check_param_shapes(layer, params, expected: dict) -> None:
  """Raises ``ValueError`` naming the first parameter whose shape ``layer`` does not expect."""
  for path, leaf in _leaves_by_path(params).items():
    if tuple(jnp.shape(leaf)) != tuple(expected[path].shape):
      raise ValueError(f"params{path}: expected shape {tuple(expected[path].shape)} for "
                       f"{layer!r}, got {tuple(jnp.shape(leaf))} (params of another size?)")


def _check_carry(layer, carry, batch_shape):
  expected = jax.eval_shape(lambda: layer.initial_carry(batch_shape))
  if jax.tree.structure(carry) != jax.tree.structure(expected):
    raise ValueError(f"initial_carry: expected a pytree like {jax.tree.structure(expected)}, "
                     f"got {jax.tree.structure(carry)}")
  for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(expected)):
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f"initial_carry: expected leaves of shape {tuple(want.shape)} "
                       f"(batch shape {tuple(batch_shape)} + hidden), got {tuple(got.shape)}")


def rnn(layer: Layer, params, xs: jax.Array, *, initial_carry: Any = None, lengths=None,
        options: RunOptions | None = None, reverse: bool | None = None, time_major: bool = False,
        unroll: int | None = None, dropout_rng: jax.Array | None = None,
        hoist: bool | None = None, vjp: str | None = None, kernel: str | None = None,
        backward: str | None = None):
  """Runs a layer (a cell, a linear recurrence, a ``stack``, ``bidirectional`` or ``remat``)
  over a sequence.

  Works under ``jax.jit``, ``jax.grad`` and ``jax.vmap``; every check below
  happens at trace time, on shapes.

  Args:
    layer: any layer of the library (:mod:`rnn_jax.layer`).
    params: the pytree returned by ``layer.init(key, input_size)``.
    xs: ``[..., T, I]`` (or ``[T, ..., I]`` with ``time_major=True``), float32
      or bfloat16; ``...`` is any batch shape, possibly empty.
    initial_carry: defaults to ``layer.initial_carry(batch_shape)`` (zeros).
    lengths: optional ``[...]`` integer valid lengths per sequence (see module doc).
    options: how to run the layer, one :class:`~rnn_jax.layer.RunOptions`
      record (``reverse``, ``unroll``, ``vjp``, ``hoist``, ``kernel``,
      ``parallel``); what the Linen and NNX layers and the training toolkit
      pass on. The keyword arguments below are sugar for its fields: each
      one given (not ``None``) replaces that field of ``options``.
    reverse: process each sequence from its last valid step to its first;
      outputs stay in the input's time order. ``None``: ``options.reverse``
      (default ``False``).
    time_major: whether time is the leading axis of ``xs`` and of the outputs.
    unroll: steps per scan iteration (``jax.lax.scan(unroll=...)``); ``None``
      (the default) uses the value measured fastest for each cell on the
      current backend (its ``TUNED_UNROLL``).
    dropout_rng: a PRNG key enabling the dropout of composites; ``None`` (the
      default, for evaluation) disables dropout.
    hoist: compute the input projection of all time steps as one matmul
      before the scan instead of once per step inside it; ``None`` (the
      default) does what was measured faster for each layer on the current
      backend (its ``TUNED_HOIST``: the sequential linear recurrences on
      CPU, given more than one input feature).
    vjp: how gradients of a cell's scan are computed: ``"autodiff"`` (JAX
      differentiates the scan) or ``"fused"`` (:mod:`rnn_jax.fused`'s custom
      VJP: one reverse scan, weight gradients batched over time; cells
      without one use autodiff, and a ``UserWarning`` says so when no cell of
      ``layer`` has one); ``None`` (the default) uses the one measured
      fastest for each cell on the current backend (its ``TUNED_VJP``).
      Composites pass it to every layer.
    kernel: what runs each leaf layer, a name registered in
      :mod:`rnn_jax.kernels`: ``"scan"`` (the scan above),
      ``"onednn"`` (oneDNN's RNN primitives over the whole sequence, from the
      optional extension ``pip install ./rnn_jax_onednn``; float32, no
      ``lengths``, CPU; ``unroll``, ``hoist`` and ``vjp`` then do nothing) or
      ``None`` (the default): the scan, unless the cell's ``TUNED_KERNEL``
      names oneDNN for the backend (none does: the scan measured faster for
      training on our CPU). See :mod:`rnn_jax.onednn`. Composites pass it to
      every layer.
    backward: the old name of ``vjp``; deprecated.

  Returns:
    ``(outputs, final_carry)``; outputs ``[..., T, O]`` (``[T, ..., O]`` if
    ``time_major``), float32 for float32 parameters; the final carry is the
    carry after each sequence's last valid step.

  Raises:
    TypeError: when ``layer`` is not an rnn_jax layer.
    ValueError: on a wrong rank, an input size that does not match ``params``,
      ``lengths`` of the wrong shape or dtype, a mismatched ``initial_carry``,
      an unknown ``vjp`` or ``kernel``, or ``kernel="onednn"`` where oneDNN
      cannot run a cell (the message says why).
  """
  if backward is not None:
    warnings.warn("rnn(backward=...) is deprecated; use vjp=... (backward is also the name "
                  "of a bidirectional layer's second half)", DeprecationWarning, stacklevel=2)
    if vjp is not None and vjp != backward:
      raise ValueError(f"rnn: backward={backward!r} and vjp={vjp!r} disagree; pass only vjp")
    vjp = backward
  check_layer("layer (the first argument)", layer)
  options = RunOptions.of(options, reverse=reverse, unroll=unroll, vjp=vjp, hoist=hoist,
                          kernel=kernel)
  if options.vjp == "fused" and not layer.runs_fused_vjp():
    warnings.warn(f"rnn: vjp='fused' does nothing for {layer!r}: none of its cells has a fused "
                  "backward, so its gradient is autodiff (vjp=None picks the measured best)",
                  UserWarning, stacklevel=2)
  xs = jnp.asarray(xs)
  if xs.ndim < 2:
    raise ValueError(f"xs: expected shape [..., T, I] (rank >= 2), got shape {xs.shape}")
  if not jnp.issubdtype(xs.dtype, jnp.floating):
    raise ValueError(f"xs: expected a floating dtype (float32 or bfloat16), got {xs.dtype}")
  expected_params = _check_param_paths(layer, params, xs.shape[-1])
  input_size = layer.input_size(params)
  if xs.shape[-1] != input_size:
    raise ValueError(f"xs: expected input size {input_size} in the last axis (from params), "
                     f"got shape {xs.shape}")
  _check_param_shapes(layer, params, expected_params)
  if not time_major:
    xs = jnp.moveaxis(xs, -2, 0)
  num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]

  if lengths is not None:
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
      raise ValueError(f"lengths: expected an integer dtype, got {lengths.dtype}")
    if lengths.shape != batch_shape:
      raise ValueError(f"lengths: expected shape {batch_shape} (the batch shape of xs), "
                       f"got {lengths.shape}")
    lengths = jnp.clip(lengths, 0, num_steps).astype(jnp.int32)

  # The carry is float32, or wider if the inputs or parameters are (float64
  # under x64), so that it keeps one dtype through the scan.
  carry_dtype = jnp.result_type(jnp.float32, xs.dtype, *(
      leaf.dtype for leaf in jax.tree.leaves(params) if jnp.issubdtype(leaf.dtype, jnp.floating)))
  if initial_carry is None:
    initial_carry = layer.initial_carry(batch_shape, carry_dtype)
  else:
    _check_carry(layer, initial_carry, batch_shape)
    initial_carry = jax.tree.map(
        lambda leaf: jnp.asarray(leaf).astype(jnp.promote_types(leaf.dtype, carry_dtype)),
        initial_carry)

  outputs, carry = layer.run(params, xs, initial_carry, lengths, options, dropout_rng)
  if not time_major:
    outputs = jnp.moveaxis(outputs, 0, -2)
  return outputs, carry
