"""Interop with PyTorch: convert ``torch.nn`` recurrent modules to rnn_jax and back.

``from_torch(module)`` turns a ``torch.nn.RNN`` (tanh or relu), ``LSTM`` or
``GRU`` (any ``num_layers``, ``bidirectional``, ``bias``, ``batch_first``), or
one of the single-step ``RNNCell``/``LSTMCell``/``GRUCell``, into a
``(cell, params)`` pair such that::

    cell, params = rnn_jax.interop.from_torch(module)
    outputs, carry = rnn_jax.rnn(cell, params, x, lengths=lengths,
                                 time_major=not module.batch_first)
    h_n = rnn_jax.interop.to_torch_state(cell, carry)   # (h_n, c_n) for an LSTM

reproduces ``module(x)`` (or ``module(pack_padded_sequence(x, lengths, ...))``
followed by ``pad_packed_sequence``; torch pads with zeros, as ``rnn`` does).

The mapping (``G`` gates: 1 for RNN, 4 for LSTM, 3 for GRU):

* ``weight_ih_l{k}`` ``[G*H, I]`` -> ``w_ih [I, G*H]`` (transposed), likewise
  ``weight_hh_l{k}`` -> ``w_hh [H, G*H]``; torch's gate orders (i, f, g, o)
  and (r, z, n) are rnn_jax's.
* RNN and LSTM: ``bias_ih + bias_hh`` -> one ``b [G*H]``; the LSTM cell is
  ``rnn_jax.lstm(H, forget_bias=0.0)``. GRU: ``rnn_jax.gru(H, reset_after=True)``
  keeps ``b_ih`` and ``b_hh`` apart (``b_hn`` sits inside the reset product).
* ``bias=False`` -> zero biases.
* One layer, one direction -> the plain cell; ``bidirectional`` ->
  ``rnn_jax.bidirectional(cell, cell)`` (merge "concat", params
  ``{"forward", "backward"}``); ``num_layers > 1`` -> ``rnn_jax.stack`` of those.
* torch's inter-layer ``dropout`` acts only in training mode; it becomes the
  stack's ``dropout`` (same rate, a fresh mask per step, on every layer's
  output except the last), active only when ``rnn`` is given a ``dropout_rng``.
  Without one the two agree with the torch module in ``eval()`` mode (or with
  ``dropout=0``). For ``num_layers=1`` torch ignores ``dropout``, and so does
  the plain cell returned.
* ``proj_size = P > 0`` (LSTM with projections) -> ``rnn_jax.lstm(H, forget_bias=0.0,
  proj_size=P)``; ``weight_hr_l{k}`` ``[P, H]`` -> ``w_hr [H, P]``, ``weight_hh_l{k}``
  is then ``[4H, P]`` -> ``w_hh [P, 4H]``, and ``h_n`` is ``[L*D, ..., P]`` while
  ``c_n`` stays ``[L*D, ..., H]``.

Going back: ``to_torch_state`` / ``from_torch_state`` convert final or initial
carries to and from torch's ``h_n [L*D, ..., H]`` layout (layer-major,
direction-minor), and ``to_torch`` writes params into a torch module (a new one
by default). torch is imported only inside these functions; it is a test
extra, not a dependency of rnn_jax.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import GRU, LSTM, Cell, LSTMState, gru, lstm, simple_rnn
from rnn_jax.compose import Bidirectional, Stack, bidirectional, stack


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError("rnn_jax.interop needs PyTorch: pip install torch (CPU only: add "
                      "--index-url https://download.pytorch.org/whl/cpu)") from error
  return torch


def _numpy(value) -> np.ndarray:
  """A torch tensor (detached, on CPU) or any array-like as a NumPy array."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; widen exactly
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def _cell_of(module) -> tuple[Cell, int, int]:
  """The rnn_jax cell matching a torch module, with its number of layers and directions."""
  torch = _import_torch()
  nn = torch.nn
  if isinstance(module, nn.RNNBase):
    by_mode = {"RNN_TANH": lambda h: simple_rnn(h, "tanh"),
               "RNN_RELU": lambda h: simple_rnn(h, "relu"),
               "LSTM": lambda h: lstm(h, forget_bias=0.0,
                                      proj_size=getattr(module, "proj_size", 0)),
               "GRU": lambda h: gru(h, reset_after=True)}
    if module.mode not in by_mode:
      raise ValueError(f"from_torch: unsupported RNN mode {module.mode!r}")
    directions = 2 if module.bidirectional else 1
    return by_mode[module.mode](module.hidden_size), module.num_layers, directions
  if isinstance(module, nn.RNNCell):
    return simple_rnn(module.hidden_size, module.nonlinearity), 1, 1
  if isinstance(module, nn.LSTMCell):
    return lstm(module.hidden_size, forget_bias=0.0), 1, 1
  if isinstance(module, nn.GRUCell):
    return gru(module.hidden_size, reset_after=True), 1, 1
  raise TypeError(f"from_torch: expected torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, "
                  f"got {type(module).__name__}")


def _suffix(module, layer: int, direction: int) -> str:
  """The torch parameter-name suffix of one layer and direction: ``"_l1_reverse"``, ``""``."""
  torch = _import_torch()
  if isinstance(module, torch.nn.RNNCellBase):
    return ""
  return f"_l{layer}" + ("_reverse" if direction else "")


def _layer_params(cell: Cell, module, suffix: str) -> dict:
  """rnn_jax params of one torch layer and direction (see the module docstring)."""
  w_ih = _numpy(getattr(module, "weight_ih" + suffix))
  w_hh = _numpy(getattr(module, "weight_hh" + suffix))
  if module.bias:
    b_ih = _numpy(getattr(module, "bias_ih" + suffix))
    b_hh = _numpy(getattr(module, "bias_hh" + suffix))
  else:
    b_ih = b_hh = np.zeros(w_ih.shape[0], w_ih.dtype)
  params = {"w_ih": jnp.asarray(w_ih.T), "w_hh": jnp.asarray(w_hh.T)}
  if getattr(cell, "proj_size", 0):
    params["w_hr"] = jnp.asarray(_numpy(getattr(module, "weight_hr" + suffix)).T)
  if isinstance(cell, GRU):
    params.update(b_ih=jnp.asarray(b_ih), b_hh=jnp.asarray(b_hh))
  else:
    params["b"] = jnp.asarray(b_ih + b_hh)
  return params


def from_torch(module) -> tuple[Any, Any]:
  """Converts a torch recurrent module into an rnn_jax ``(cell, params)`` pair.

  Args:
    module: a ``torch.nn.RNN``, ``LSTM`` or ``GRU`` (any ``num_layers``,
      ``bidirectional``, ``bias``; ``batch_first`` only decides the
      ``time_major`` flag to pass to ``rnn``), or an ``RNNCell``, ``LSTMCell``
      or ``GRUCell``.

  A torch cell (``LSTMCell``...) and a one-layer, one-direction sequence
  module (``LSTM``...) both become the plain rnn_jax cell: nothing in the
  result says which it was, so ``to_torch(cell, params)`` gives a one-layer
  sequence module back (``nn.LSTM``, which reads ``[B, I]`` as one unbatched
  sequence); ``to_torch(cell, params, as_cell=True)`` gives the torch cell.

  Returns:
    ``(cell, params)``, cell being a plain cell for one layer in one direction, a
    ``bidirectional(cell, cell)`` layer for ``bidirectional=True``, a
    ``stack`` of those (``dropout=module.dropout``) for ``num_layers > 1``;
    params are ``jax.Array`` pytrees as ``cell.init`` would return
    (``w_ih [I_k, G*H]``, ``w_hh [H, G*H]``, ``b [G*H]`` or ``b_ih``/``b_hh``,
    and ``w_hr [H, P]`` with ``w_hh [P, 4H]`` for ``proj_size=P``; ``I_k`` is ``I``
    for the first layer, ``D*H`` (``D*P``) after), in the module's
    dtype (float64 only with ``jax_enable_x64``; bfloat16 is widened to float32).

  Raises:
    TypeError: for any other module.
  """
  cell, num_layers, directions = _cell_of(module)
  layer_cells, layer_params = [], []
  for layer in range(num_layers):
    parts = [_layer_params(cell, module, _suffix(module, layer, d)) for d in range(directions)]
    if directions == 2:
      layer_cells.append(bidirectional(cell, cell, "concat"))
      layer_params.append({"forward": parts[0], "backward": parts[1]})
    else:
      layer_cells.append(cell)
      layer_params.append(parts[0])
  if num_layers == 1:
    return layer_cells[0], layer_params[0]
  return stack(layer_cells, dropout=module.dropout), tuple(layer_params)


def _torch_layers(cell) -> list[tuple[Cell, ...]]:
  """The torch-shaped structure of ``cell``: per layer, its cell per direction.

  Accepts a cell, ``bidirectional(cell, cell)`` and a ``stack`` of those.

  Raises:
    ValueError: for any other composite (e.g. a bidirectional pair of stacks).
  """
  layers = cell.layers if isinstance(cell, Stack) else (cell,)
  structure = []
  for layer in layers:
    if isinstance(layer, Cell):
      structure.append((layer,))
    elif (isinstance(layer, Bidirectional) and isinstance(layer.forward, Cell)
          and isinstance(layer.backward, Cell)):
      structure.append((layer.forward, layer.backward))
    else:
      raise ValueError(f"expected a cell, bidirectional(cell, cell) or a stack of those (the "
                       f"layouts torch modules have), got a layer {type(layer).__name__}")
  if len({len(directions) for directions in structure}) != 1:
    raise ValueError("torch layout needs the same number of directions in every layer")
  return structure


def _flat_carries(cell, carry) -> list:
  """The carry of each (layer, direction) in torch's order: layer-major, direction-minor."""
  structure = _torch_layers(cell)
  layer_carries = carry if isinstance(cell, Stack) else (carry,)
  flat = []
  for directions, layer_carry in zip(structure, layer_carries):
    flat.extend(layer_carry if len(directions) == 2 else (layer_carry,))
  return flat


def to_torch_state(cell, carry):
  """Converts an rnn_jax carry into torch's ``h_n`` (``(h_n, c_n)`` for an LSTM) layout.

  Args:
    cell: a cell, ``bidirectional(cell, cell)`` or ``stack`` of those
      (e.g. from :func:`from_torch`), with ``L`` layers and ``D`` directions.
    carry: its carry, e.g. the final carry returned by ``rnn_jax.rnn``;
      leaves ``[..., H]``.

  Returns:
    ``h_n [L*D, ..., H]`` with index ``layer * D + direction`` (direction 1
    is the backward one), or ``(h_n, c_n)`` when the carries are
    ``LSTMState``s: JAX arrays in torch's layout, not torch tensors
    (``torch.from_numpy(np.asarray(h_n))`` makes one). For a single-step torch
    cell, drop the leading axis of size 1.

  Raises:
    ValueError: for a structure torch cannot hold, or LSTM and non-LSTM layers mixed.
  """
  flat = _flat_carries(cell, carry)
  is_lstm = [isinstance(layer_carry, LSTMState) for layer_carry in flat]
  if all(is_lstm):
    return (jnp.stack([layer_carry.h for layer_carry in flat]),
            jnp.stack([layer_carry.c for layer_carry in flat]))
  if any(is_lstm):
    raise ValueError("to_torch_state: torch cannot hold LSTM and non-LSTM layers together")
  return jnp.stack(flat)


def from_torch_state(cell, state):
  """Converts torch's ``h_0`` (or ``(h_0, c_0)``) into an rnn_jax carry for ``cell``.

  The inverse of :func:`to_torch_state`; use it to pass torch's initial state
  as ``rnn(..., initial_carry=from_torch_state(cell, h_0))``.

  Args:
    cell: a cell, ``bidirectional(cell, cell)`` or ``stack`` of those.
    state: ``h_0 [L*D, ..., H]``, or ``(h_0, c_0)`` for an LSTM; torch
      tensors or arrays.

  Returns:
    The carry pytree ``cell.initial_carry`` would build, filled from ``state``.
  """
  structure = _torch_layers(cell)
  is_lstm = isinstance(structure[0][0], LSTM)
  if is_lstm:
    h_all, c_all = (jnp.asarray(_numpy(part)) for part in state)
  else:
    h_all, c_all = jnp.asarray(_numpy(state)), None
  expected = sum(len(directions) for directions in structure)
  if h_all.shape[0] != expected:
    raise ValueError(f"state: expected a leading axis of {expected} (layers * directions), "
                     f"got shape {h_all.shape}")
  index, layer_carries = 0, []
  for directions in structure:
    parts = []
    for _ in directions:
      parts.append(LSTMState(h_all[index], c_all[index]) if is_lstm else h_all[index])
      index += 1
    layer_carries.append(tuple(parts) if len(parts) == 2 else parts[0])
  return tuple(layer_carries) if isinstance(cell, Stack) else layer_carries[0]


def _torch_biases(cell: Cell, params: dict, hidden: int) -> tuple[np.ndarray, np.ndarray]:
  """``(bias_ih, bias_hh)`` for torch; an LSTM's ``forget_bias`` is folded into ``bias_ih``."""
  if isinstance(cell, GRU):
    return _numpy(params["b_ih"]), _numpy(params["b_hh"])
  bias_ih = np.array(params["b"])
  if isinstance(cell, LSTM):
    bias_ih[hidden:2 * hidden] += cell.forget_bias
  return bias_ih, np.zeros_like(bias_ih)


def _torch_signature(cell: Cell) -> tuple:
  """What a torch module fixes for all its layers: type, size, activation (not forget_bias)."""
  return (type(cell), cell.hidden_size, getattr(cell, "activation", None),
          getattr(cell, "reset_after", None), getattr(cell, "proj_size", 0),
          getattr(cell, "layer_norm", False))


def _new_module(kind: str, structure, cell, params, batch_first: bool):
  """A fresh torch module with the shape of ``structure``."""
  torch = _import_torch()
  first = structure[0][0]
  kwargs = dict(input_size=cell.input_size(params), hidden_size=first.hidden_size,
                num_layers=len(structure), bidirectional=len(structure[0]) == 2,
                batch_first=batch_first,
                dropout=cell.dropout if isinstance(cell, Stack) else 0.0)
  if kind == "RNN":
    kwargs["nonlinearity"] = first.activation
  if getattr(first, "proj_size", 0):
    kwargs["proj_size"] = first.proj_size
  return getattr(torch.nn, kind)(**kwargs)


def _torch_kind(cell: Cell) -> str | None:
  """``"LSTM"``, ``"GRU"`` or ``"RNN"``: the torch module family of ``cell``; ``None`` if none
  computes it (a ``gru(reset_after=False)``, a linear recurrence)."""
  if getattr(cell, "reset_after", True) is False or getattr(cell, "layer_norm", False):
    return None
  return getattr(cell, "TORCH_MODULE", None)


def _new_cell_module(kind: str, cell: Cell, params):
  """A fresh torch ``LSTMCell``/``GRUCell``/``RNNCell`` of ``cell``'s sizes (with biases)."""
  torch = _import_torch()
  kwargs = dict(input_size=cell.input_size(params), hidden_size=cell.hidden_size)
  if kind == "RNN":
    kwargs["nonlinearity"] = cell.activation
  return getattr(torch.nn, kind + "Cell")(**kwargs)


def to_torch(cell, params, module=None, *, batch_first: bool = False, as_cell: bool = False):
  """Writes rnn_jax params into a torch module (the inverse of :func:`from_torch`).

  A plain cell becomes a one-layer sequence module (``nn.LSTM``, ``nn.GRU``,
  ``nn.RNN``) unless ``as_cell=True`` or ``module`` is a torch cell, also when
  it came from a torch cell: called on ``[B, I]``, a sequence module reads one
  unbatched sequence of ``B`` steps, not ``B`` single steps.

  Args:
    cell: a ``simple_rnn``, ``lstm`` (any ``forget_bias``: it is folded into
      torch's ``bias_ih``) or ``gru(reset_after=True)`` cell, a
      ``bidirectional(cell, cell)`` of one, or a ``stack`` of those; all layers
      of one cell type and hidden size.
    params: its params pytree.
    module: the torch module to overwrite in place (an ``RNN``/``LSTM``/``GRU``
      of matching shape, or a torch cell for a plain rnn_jax cell). ``None``
      builds a new one with ``bias=True`` and the stack's dropout.
    batch_first: ``batch_first`` of the new module (ignored if ``module`` is given).
    as_cell: build the single-step torch cell, ``nn.LSTMCell``, ``nn.GRUCell``
      or ``nn.RNNCell`` (``cell`` must be a plain ``lstm``, ``gru`` or
      ``simple_rnn``; ``module``, if given, a torch cell).

  Returns:
    The torch module. Our single bias ``b`` goes to ``bias_ih`` and
    ``bias_hh`` is set to zero, which computes the same function.

  Raises:
    ValueError: if the cell has no torch counterpart (e.g. ``gru(reset_after=False)``,
      mixed cell types), or does not match ``module``'s type or shapes, or has
      non-zero biases for a module with ``bias=False``; with ``as_cell``, for
      anything but a plain LSTM, GRU or simple RNN cell (the message names it).
  """
  torch = _import_torch()
  if as_cell:
    if (not isinstance(cell, Cell) or _torch_kind(cell) is None
        or getattr(cell, "proj_size", 0)):
      raise ValueError(f"to_torch(as_cell=True): {cell!r} is not an lstm (without proj_size), "
                       "gru or simple_rnn cell; torch's single-step cells (nn.LSTMCell, "
                       "nn.GRUCell, nn.RNNCell) hold one of those")
    if module is not None and not isinstance(module, torch.nn.RNNCellBase):
      raise ValueError(f"to_torch(as_cell=True): module must be a torch cell, got "
                       f"{type(module).__name__}")
  structure = _torch_layers(cell)
  first = structure[0][0]
  if len({_torch_signature(part) for directions in structure for part in directions}) != 1:
    raise ValueError("to_torch: every layer and direction must use the same cell type and size")
  kind = _torch_kind(first)
  if kind is None:
    raise ValueError(f"to_torch: {first!r} has no torch counterpart")
  if module is None:
    module = (_new_cell_module(kind, cell, params) if as_cell
              else _new_module(kind, structure, cell, params, batch_first))
  expected_cls = (getattr(torch.nn, kind + "Cell"), getattr(torch.nn, kind))
  if not isinstance(module, expected_cls):
    raise ValueError(f"to_torch: a {first.name} cell needs a torch.nn.{kind} or {kind}Cell, "
                     f"got {type(module).__name__}")
  if isinstance(module, torch.nn.RNNCellBase) and (len(structure), len(structure[0])) != (1, 1):
    raise ValueError(f"to_torch: a torch {type(module).__name__} holds one layer in one "
                     f"direction, the cell has {len(structure)} layer(s) x {len(structure[0])}")
  if kind == "RNN" and module.nonlinearity != first.activation:
    raise ValueError(f"to_torch: activation {first.activation!r} vs module "
                     f"nonlinearity {module.nonlinearity!r}")

  layer_params = params if isinstance(cell, Stack) else (params,)
  values = {}
  for layer, (directions, layer_param) in enumerate(zip(structure, layer_params)):
    parts = ((layer_param["forward"], layer_param["backward"]) if len(directions) == 2
             else (layer_param,))
    for direction, (part_cell, part) in enumerate(zip(directions, parts)):
      suffix = _suffix(module, layer, direction)
      bias_ih, bias_hh = _torch_biases(part_cell, part, part_cell.hidden_size)
      values["weight_ih" + suffix] = _numpy(part["w_ih"]).T
      values["weight_hh" + suffix] = _numpy(part["w_hh"]).T
      if getattr(part_cell, "proj_size", 0):
        values["weight_hr" + suffix] = _numpy(part["w_hr"]).T
      if module.bias:
        values["bias_ih" + suffix], values["bias_hh" + suffix] = bias_ih, bias_hh
      elif np.any(bias_ih) or np.any(bias_hh):
        raise ValueError("to_torch: the module has bias=False but the params have non-zero "
                         "biases (an LSTM's forget_bias counts)")

  torch_params = dict(module.named_parameters())
  if set(values) != set(torch_params):
    raise ValueError(f"to_torch: params give torch parameters {sorted(values)}, the module has "
                     f"{sorted(torch_params)}")
  for name, value in values.items():
    if tuple(value.shape) != tuple(torch_params[name].shape):
      raise ValueError(f"to_torch: {name}: module has shape {tuple(torch_params[name].shape)}, "
                       f"params give {tuple(value.shape)}")
  with torch.no_grad():
    for name, value in values.items():
      target = torch_params[name]
      # Through float64, which holds float32 and bfloat16 values exactly.
      target.copy_(torch.tensor(np.asarray(value, np.float64), dtype=target.dtype))
  return module
