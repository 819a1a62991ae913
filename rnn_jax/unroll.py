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

Resets (``resets=``) start the carry over inside a sequence: episodes of a
reinforcement-learning rollout, several documents packed into one row. The
semantics, forwards and backwards, are written once in
``rnn_jax._scan.reset_flags``; :func:`reset_carry` is what a loop that
steps a layer calls instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp

import rnn_jax._scan as _scan
from rnn_jax.layer import Layer, RunOptions, check_layer, with_compute_dtype, with_resets

__all__ = ["reset_carry", "rnn"]


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


def _check_carry(layer, carry, batch_shape, name: str = "initial_carry"):
  expected = jax.eval_shape(lambda: layer.initial_carry(batch_shape))
  if jax.tree.structure(carry) != jax.tree.structure(expected):
    raise ValueError(f"{name}: expected a pytree like {jax.tree.structure(expected)}, "
                     f"got {jax.tree.structure(carry)}")
  for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(expected)):
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f"{name}: expected leaves of shape {tuple(want.shape)} "
                       f"(batch shape {tuple(batch_shape)} + hidden), got {tuple(got.shape)}")


def rnn(layer: Layer, params, xs: jax.Array, *, initial_carry: Any = None, lengths=None,
        options: RunOptions | None = None, reverse: bool | None = None, time_major: bool = False,
        unroll: int | None = None, dropout_rng: jax.Array | None = None,
        hoist: bool | None = None, vjp: str | None = None, kernel: str | None = None,
        backward: str | None = None, resets=None, compute_dtype=None):
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
      ``parallel``, ``compute_dtype``); what the Linen and NNX layers and the training toolkit
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
      differentiates the scan), ``"fused"`` (:mod:`rnn_jax.fused`'s custom
      VJP: one reverse scan, weight gradients batched over time; cells
      without one use autodiff, and a ``UserWarning`` says so when no cell of
      ``layer`` has one) or ``"remat"`` (autodiff of each step under
      ``jax.checkpoint``, as :func:`rnn_jax.remat`: the backward pass keeps
      only the carries and inputs and recomputes each step, the same
      gradients in a fraction of the memory); ``None`` (the default) uses the
      one measured fastest for each cell on the current backend (its
      ``TUNED_VJP``). Composites pass it to every layer.
    kernel: what runs each leaf layer, a name registered in
      :mod:`rnn_jax.kernels`: ``"scan"`` (the scan above),
      ``"onednn"`` (oneDNN's RNN primitives over the whole sequence, from the
      optional extension ``pip install ./rnn_jax_onednn``; float32, no
      ``lengths``, CPU; ``unroll``, ``hoist`` and ``vjp`` then do nothing),
      ``"onednn_inference"`` (oneDNN's inference forward where the call is
      not differentiated, the scan where it is), ``"cpu_loop"`` (an LSTM's
      forward and backward as one C++ loop over oneDNN's GEMM where the call
      is differentiated, the fastest forward where it is not; same
      extension, :mod:`rnn_jax.cpu_loop`; no forward-mode ``jax.jvp``) or
      ``None`` (the default): the scan, unless the cell's tables name a
      kernel for the backend and these inputs' shape that can run them (the
      LSTM on CPU: ``"cpu_loop"``, when the extension is installed and no
      ``vjp`` is named). Composites pass it to every layer.
    backward: the old name of ``vjp``; deprecated.
    resets: optional bool ``[..., T]`` (``[T, ...]`` with ``time_major``):
      ``resets[..., t]`` starts a new segment at step ``t``, so the carry
      entering step ``t`` is the layer's zero initial carry, whatever came
      before; ``initial_carry`` enters the first segment (only where step 0
      is not flagged). Segments are in input time order: with ``reverse``,
      and in a bidirectional layer's backward half, each is read from its
      last step to its first (the carry is zeroed before the last step of
      every segment but the final one, which the initial carry enters), so
      no output mixes two segments. Flags at or past a sequence's length
      change nothing. A run with no flag set equals a run without resets,
      bitwise. Every layer and mode takes them (the linear recurrences'
      parallel mode as ``a_t = 0`` inside its associative scan) except the
      oneDNN kernels (``ValueError``). :func:`reset_carry` is the stepping
      counterpart.
    compute_dtype: ``None`` (default: each layer's own, by default the
      parameters' dtype, bitwise the computation without this option) or a
      dtype such as ``jnp.bfloat16``: every matrix product of every leaf
      layer, forward and backward, reads operands in it and accumulates in
      float32 (:mod:`rnn_jax.precision`); carries, gate nonlinearities,
      parameters and their gradients stay float32, and the outputs are
      returned in ``compute_dtype``. The oneDNN kernel computes in float32
      only, so ``kernel=None`` runs the scan then.

  Returns:
    ``(outputs, final_carry)``; outputs ``[..., T, O]`` (``[T, ..., O]`` if
    ``time_major``), float32 for float32 parameters (``compute_dtype`` when
    one is given); the final carry is the
    carry after each sequence's last valid step.

  Raises:
    TypeError: when ``layer`` is not an rnn_jax layer.
    ValueError: on a wrong rank, an input size that does not match ``params``,
      ``lengths`` of the wrong shape or dtype, ``resets`` that are not bool or
      not shaped like ``xs`` without its feature axis, a mismatched ``initial_carry``,
      an unknown ``vjp`` or ``kernel``, ``kernel="onednn"`` where oneDNN
      cannot run a cell (the message says why), or a ``compute_dtype`` that is
      not a floating dtype or a layer of your own without that field.
  """
  if backward is not None:
    warnings.warn("rnn(backward=...) is deprecated; use vjp=... (backward is also the name "
                  "of a bidirectional layer's second half)", DeprecationWarning, stacklevel=2)
    if vjp is not None and vjp != backward:
      raise ValueError(f"rnn: backward={backward!r} and vjp={vjp!r} disagree; pass only vjp")
    vjp = backward
  check_layer("layer (the first argument)", layer)
  options = RunOptions.of(options, reverse=reverse, unroll=unroll, vjp=vjp, hoist=hoist,
                          kernel=kernel, compute_dtype=compute_dtype)
  if options.compute_dtype is not None:
    layer = with_compute_dtype(layer, options.compute_dtype)
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
  if resets is not None:
    resets = _scan.check_resets(resets, xs.shape[:-1], "[T, ...] with time_major=True, xs "
                                "without its feature axis" if time_major else "[..., T], xs "
                                "without its feature axis")
  if not time_major:
    xs = jnp.moveaxis(xs, -2, 0)
    resets = None if resets is None else jnp.moveaxis(resets, -1, 0)
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

  outputs, carry = layer.run(params, xs, initial_carry, lengths, options, dropout_rng,
                             **with_resets(resets))
  if not time_major:
    outputs = jnp.moveaxis(outputs, 0, -2)
  return outputs, carry


def reset_carry(layer: Layer, carry: Any, reset) -> Any:
  """``carry`` with the batch entries where ``reset`` is true replaced by the initial carry.

  What a loop that steps a layer (an acting loop over environments whose
  episodes end at different times) calls before ``layer.step``: stepping
  ``carry = reset_carry(layer, carry, resets[:, t])`` then
  ``carry, y = layer.step(params, carry, xs[:, t])`` gives the outputs and
  carries of ``rnn(layer, params, xs, resets=resets)``. Works for any layer,
  composites included (every leaf of the carry pytree); the initial carry is
  ``layer.initial_carry`` (zeros), in each leaf's dtype.

  Args:
    layer: any layer.
    carry: its carry, leaves ``[..., F]``.
    reset: bool ``[...]``, the carry's batch shape.

  Returns:
    A carry of the same structure, shapes and dtypes.

  Raises:
    TypeError: when ``layer`` is not an rnn_jax layer.
    ValueError: when ``reset`` is not bool of the carry's batch shape, or
      ``carry`` is not a carry of ``layer``.
  """
  check_layer("layer (the first argument)", layer)
  batch_shape = tuple(jax.tree.leaves(carry)[0].shape[:-1])
  reset = _scan.check_resets(reset, batch_shape, "the carry's batch shape, one flag per sequence",
                             "reset")
  _check_carry(layer, carry, batch_shape, "carry")
  dtype = jax.tree.leaves(carry)[0].dtype
  initial = layer.initial_carry(batch_shape, dtype if jnp.issubdtype(dtype, jnp.floating)
                                else jnp.float32)
  return jax.tree.map(lambda start, leaf: jnp.where(reset[..., None], start.astype(leaf.dtype),
                                                    leaf), initial, carry)
