"""Converts Flax's recurrent cells' parameters and carries to rnn_jax and back.

``from_flax(cell, params)`` turns a Flax Linen or NNX ``LSTMCell``,
``OptimizedLSTMCell``, ``GRUCell`` or ``SimpleCell`` (and its parameters)
into an rnn_jax ``(layer, params)`` pair computing the same function;
``to_flax(layer, params, cell)`` writes rnn_jax parameters into the layout of
a given Flax cell. ``to_flax_carry`` / ``from_flax_carry`` convert carries:
Flax's LSTM carry is ``(c, h)``, rnn_jax's ``LSTMState(h, c)``.

::

    import flax.linen as nn
    layer, params = rnn_jax.flax_convert.from_flax(nn.LSTMCell(64), variables["params"])
    outputs, final = rnn_jax.rnn(layer, params, xs)
    flax_carry = rnn_jax.flax_convert.to_flax_carry(layer, final)     # (c, h)

The mapping (``H`` the hidden size; rnn_jax's layouts are in the cells guide):

* LSTM: gates ``(i, f, g, o)`` in both. Linen's ``LSTMCell`` and
  ``OptimizedLSTMCell`` (same parameters) and NNX's ``LSTMCell`` keep one
  ``[I, H]`` kernel per gate (``ii, if, ig, io``; NNX names the second
  ``if_``) and one ``[H, H]`` kernel and ``[H]`` bias per gate (``hi..ho``);
  NNX's ``OptimizedLSTMCell`` keeps them fused, ``dense_i`` ``[I, 4H]`` and
  ``dense_h`` ``[H, 4H]`` + ``[4H]``. rnn_jax: ``w_ih [I, 4H]``, ``w_hh [H, 4H]``
  and ``b [4H]`` (the hidden biases), with ``forget_bias=0.0``; ``to_flax``
  folds a non-zero ``forget_bias`` into the ``f`` bias.
* GRU: Flax computes ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, the
  ``reset_after=True`` GRU of rnn_jax (and PyTorch), gates ``(r, z, n)``.
  Linen: ``ir, iz, in`` with biases, ``hr, hz`` without, ``hn`` with;
  NNX: ``dense_i`` ``[I, 3H]`` + ``[3H]``, ``dense_h`` ``[H, 3H]`` without a
  bias (so NNX has no ``b_hn``: ``to_flax`` refuses a non-zero one).
  rnn_jax: ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh``; the ``r`` and ``z``
  biases of ``b_hh`` are summed into Flax's input biases.
* SimpleCell: ``i`` (kernel and bias) and ``h`` (kernel) in Linen,
  ``dense_i``/``dense_h`` in NNX -> ``w_ih``, ``b``, ``w_hh`` of
  ``simple_rnn(H, activation)`` for ``tanh`` or ``relu``; ``residual=True``
  has no rnn_jax counterpart.

Cells with another ``gate_fn`` or ``activation_fn`` than Flax's defaults
are refused. Flax itself is imported only inside the functions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import GRU, LSTM, LSTMState, SimpleRNN, gru, lstm, simple_rnn
from rnn_jax.layer import Layer

_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")
_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def _flax_kind(cell) -> tuple[str, str]:
  """``(family, layout)`` of a Flax cell: family lstm/gru/simple, layout linen/nnx/nnx_fused."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  kinds = {nn.LSTMCell: ("lstm", "linen"), nn.OptimizedLSTMCell: ("lstm", "linen"),
           nn.GRUCell: ("gru", "linen"), nn.SimpleCell: ("simple", "linen"),
           nnx.LSTMCell: ("lstm", "nnx"), nnx.OptimizedLSTMCell: ("lstm", "nnx_fused"),
           nnx.GRUCell: ("gru", "nnx_fused"), nnx.SimpleCell: ("simple", "nnx_fused")}
  kind = kinds.get(type(cell))
  if kind is None:
    raise TypeError(f"cell: expected a flax.linen or flax.nnx LSTMCell, OptimizedLSTMCell, "
                    f"GRUCell or SimpleCell, got {type(cell).__module__}.{type(cell).__name__}")
  return kind


def _activation_name(cell, family: str) -> str:
  """``"tanh"`` or ``"relu"``: the cell's activation; ``ValueError`` for what rnn_jax lacks."""
  if family != "simple" and cell.gate_fn is not jax.nn.sigmoid:
    raise ValueError(f"cell: gate_fn {cell.gate_fn} has no rnn_jax counterpart (sigmoid only)")
  allowed = ("tanh", "relu") if family == "simple" else ("tanh",)
  for name in allowed:
    if cell.activation_fn is _ACTIVATIONS[name]:
      break
  else:
    raise ValueError(f"cell: activation_fn {cell.activation_fn} has no rnn_jax counterpart "
                     f"({' or '.join(allowed)} only)")
  if getattr(cell, "residual", False):
    raise ValueError("cell: SimpleCell(residual=True) has no rnn_jax counterpart")
  return name


def _hidden_size(cell) -> int:
  return cell.features if hasattr(cell, "features") else cell.hidden_features


def _nnx_params(cell) -> dict:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return nnx.to_pure_dict(nnx.state(cell, nnx.Param))


def _lstm_names(layout: str) -> tuple[list[str], list[str]]:
  """The per-gate input and hidden parameter names of Flax's un-fused LSTM cells."""
  inputs = [f"i{gate}" for gate in _LSTM_GATES]
  if layout == "nnx":
    inputs[1] = "if_"
  return inputs, [f"h{gate}" for gate in _LSTM_GATES]


def _concat(blocks) -> jax.Array:
  return jnp.concatenate([jnp.asarray(block) for block in blocks], axis=-1)


def from_flax(cell, params: Any = None) -> tuple[Layer, Any]:
  """Converts a Flax cell and its parameters into an rnn_jax ``(layer, params)`` pair.

  Args:
    cell: a ``flax.linen`` or ``flax.nnx`` ``LSTMCell``, ``OptimizedLSTMCell``,
      ``GRUCell`` or ``SimpleCell`` with Flax's default gate and activation
      functions (``SimpleCell``: ``tanh`` or ``relu``).
    params: for a Linen cell, its parameters (``variables["params"]``); for an
      NNX cell, ``None``: they are read from the cell.

  Returns:
    The pair of a layer (``lstm(H, forget_bias=0.0)``, ``gru(H)`` or
    ``simple_rnn(H, activation)``) and params as its ``init`` returns them,
    such that ``layer.step(params, from_flax_carry(layer, carry), x)``
    equals ``cell(carry, x)`` (carries converted) and ``rnn_jax.rnn`` equals
    ``flax.linen.RNN(cell)``.

  Raises:
    TypeError: for another kind of cell.
    ValueError: for a gate or activation function rnn_jax does not have, or
      params given for an NNX cell / missing for a Linen one.
  """
  family, layout = _flax_kind(cell)
  activation = _activation_name(cell, family)
  if layout == "linen":
    if params is None:
      raise ValueError("params: a flax.linen cell holds no parameters; pass variables['params']")
    params = params["params"] if "params" in params else params   # variables or their params
  else:
    if params is not None:
      raise ValueError("params: an NNX cell holds its own parameters; pass only the cell")
    params = _nnx_params(cell)
  hidden = _hidden_size(cell)
  if family == "lstm":
    if layout == "nnx_fused":
      ours = {"w_ih": params["dense_i"]["kernel"], "w_hh": params["dense_h"]["kernel"],
              "b": params["dense_h"]["bias"]}
    else:
      inputs, hiddens = _lstm_names(layout)
      ours = {"w_ih": _concat(params[name]["kernel"] for name in inputs),
              "w_hh": _concat(params[name]["kernel"] for name in hiddens),
              "b": _concat(params[name]["bias"] for name in hiddens)}
    layer = lstm(hidden, forget_bias=0.0)
  elif family == "gru":
    if layout == "nnx_fused":
      ours = {"w_ih": params["dense_i"]["kernel"], "b_ih": params["dense_i"]["bias"],
              "w_hh": params["dense_h"]["kernel"],
              "b_hh": jnp.zeros_like(params["dense_i"]["bias"])}
    else:
      zeros = jnp.zeros_like(params["hn"]["bias"])
      ours = {"w_ih": _concat(params[f"i{gate}"]["kernel"] for gate in _GRU_GATES),
              "b_ih": _concat(params[f"i{gate}"]["bias"] for gate in _GRU_GATES),
              "w_hh": _concat(params[f"h{gate}"]["kernel"] for gate in _GRU_GATES),
              "b_hh": _concat([zeros, zeros, params["hn"]["bias"]])}
    layer = gru(hidden)
  else:
    names = ("i", "h") if layout == "linen" else ("dense_i", "dense_h")
    ours = {"w_ih": params[names[0]]["kernel"], "b": params[names[0]]["bias"],
            "w_hh": params[names[1]]["kernel"]}
    layer = simple_rnn(hidden, activation)
  return layer, {key: jnp.asarray(value) for key, value in ours.items()}


def to_flax(layer: Layer, params: Any, cell) -> Any:
  """Writes rnn_jax cell parameters into the layout of the Flax cell ``cell``.

  Args:
    layer: an ``lstm`` (any ``forget_bias``, folded into the ``f`` bias),
      ``gru(reset_after=True)`` or ``simple_rnn``.
    params: its parameters.
    cell: the Flax cell to fill, of the matching kind and hidden size (see
      :func:`from_flax`); a ``SimpleCell`` needs the layer's activation.

  Returns:
    For a Linen cell, its parameters: use ``cell.apply({"params": result},
    carry, x)``. For an NNX cell, the cell itself, its parameters replaced.

  Raises:
    ValueError: when the layer and the cell do not match (kind, size,
      activation), for ``gru(reset_after=False)``, and for a non-zero
      ``b_hh`` of the ``n`` gate going into NNX's ``GRUCell`` (which has no such bias).
  """
  family, layout = _flax_kind(cell)
  activation = _activation_name(cell, family)
  wanted = {"lstm": LSTM, "gru": GRU, "simple": SimpleRNN}[family]
  if (not isinstance(layer, wanted) or getattr(layer, "reset_after", True) is False
      or getattr(layer, "proj_size", 0) or getattr(layer, "layer_norm", False)):
    raise ValueError(f"to_flax: {layer!r} does not compute a Flax {type(cell).__name__}")
  if layer.hidden_size != _hidden_size(cell):
    raise ValueError(f"to_flax: {layer!r} has hidden size {layer.hidden_size}, the cell "
                     f"{_hidden_size(cell)}")
  if family == "simple" and layer.activation != activation:
    raise ValueError(f"to_flax: {layer!r} uses {layer.activation}, the cell {activation}")
  hidden = layer.hidden_size
  split = lambda value: jnp.split(jnp.asarray(value), value.shape[-1] // hidden, axis=-1)
  if family == "lstm":
    bias = jnp.asarray(params["b"]).at[hidden:2 * hidden].add(layer.forget_bias)
    if layout == "nnx_fused":
      flax_params = {"dense_i": {"kernel": params["w_ih"]},
                     "dense_h": {"kernel": params["w_hh"], "bias": bias}}
    else:
      inputs, hiddens = _lstm_names(layout)
      flax_params = {name: {"kernel": kernel}
                     for name, kernel in zip(inputs, split(params["w_ih"]))}
      flax_params.update({name: {"kernel": kernel, "bias": b} for name, kernel, b in
                          zip(hiddens, split(params["w_hh"]), split(bias))})
  elif family == "gru":
    b_ih, b_hh = split(params["b_ih"]), split(params["b_hh"])
    input_bias = [b_ih[0] + b_hh[0], b_ih[1] + b_hh[1], b_ih[2]]
    if layout == "nnx_fused":
      if np.any(np.asarray(b_hh[2])):
        raise ValueError("to_flax: flax.nnx.GRUCell has no bias inside the reset product "
                         "(b_hh of the n gate); these params have a non-zero one")
      flax_params = {"dense_i": {"kernel": params["w_ih"], "bias": _concat(input_bias)},
                     "dense_h": {"kernel": params["w_hh"]}}
    else:
      flax_params = {f"i{gate}": {"kernel": kernel, "bias": b} for gate, kernel, b in
                     zip(_GRU_GATES, split(params["w_ih"]), input_bias)}
      flax_params.update({f"h{gate}": {"kernel": kernel} for gate, kernel in
                          zip(_GRU_GATES, split(params["w_hh"]))})
      flax_params["hn"]["bias"] = b_hh[2]
  else:
    names = ("i", "h") if layout == "linen" else ("dense_i", "dense_h")
    flax_params = {names[0]: {"kernel": params["w_ih"], "bias": params["b"]},
                   names[1]: {"kernel": params["w_hh"]}}
  flax_params = jax.tree.map(jnp.asarray, flax_params)
  if layout == "linen":
    return flax_params
  from flax import nnx  # pylint: disable=g-import-not-at-top
  state = nnx.state(cell, nnx.Param)
  nnx.replace_by_pure_dict(state, flax_params)
  nnx.update(cell, state)
  return cell


def _check_cell(function: str, layer: Layer) -> None:
  if not isinstance(layer, (LSTM, GRU, SimpleRNN)):
    raise ValueError(f"{function}: {layer!r} is not an lstm, gru or simple_rnn cell (the cells "
                     "Flax has)")


def to_flax_carry(layer: Layer, carry: Any) -> Any:
  """An rnn_jax carry of ``layer`` as Flax's cells hold it: ``LSTMState(h, c) -> (c, h)``;
  a GRU's or simple RNN's ``h`` as it is.

  Raises:
    ValueError: when ``layer`` is not an ``lstm``, ``gru`` or ``simple_rnn`` cell.
  """
  _check_cell("to_flax_carry", layer)
  if isinstance(layer, LSTM):
    return (carry.c, carry.h)
  return carry


def from_flax_carry(layer: Layer, carry: Any) -> Any:
  """A Flax cell's carry as ``layer``'s: ``(c, h) -> LSTMState(h, c)``; ``h`` as it is otherwise.

  (``LSTMState(*flax_carry)`` would swap ``h`` and ``c`` silently.)

  Raises:
    ValueError: when ``layer`` is not an ``lstm``, ``gru`` or ``simple_rnn`` cell.
  """
  _check_cell("from_flax_carry", layer)
  if isinstance(layer, LSTM):
    c, h = carry
    return LSTMState(h, c)
  return carry
