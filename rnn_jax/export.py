"""ONNX export: any layer of the library as an ONNX model that onnxruntime (or any runtime) serves.

``to_onnx(layer, params, path)`` writes the layer's forward pass, with its parameters baked in as
initializers, straight into ONNX operators (built with ``onnx.helper``; no tracing, no
TensorFlow). It needs the ``export`` extra (``pip install -e '.[export]'`` in the checkout):
``onnx``, and ``onnxruntime`` to run the result; ``onnx`` is imported only inside the functions
here.

The model's interface:

    inputs   xs             [batch, time, I]  float32, batch and time dynamic
             lengths        [batch]           int32, only with lengths=True (clipped to [0, time])
             initial_<leaf> [batch, H]        float32, one per carry leaf; optional (zeros)
    outputs  outputs        [batch, time, O]  float32, zero past each sequence's length
             <leaf>         [batch, H]        the final carry, after each sequence's last valid step

Carry leaves are named after the carry's fields, joined by ``.`` with the position of the layer
that holds them (``carry_names``): ``h`` for a simple RNN, GRU, minGRU or minLSTM; ``h``
and ``c`` for an LSTM; ``h_re`` and ``h_im`` (the real and imaginary parts) for the LRU's complex
state; a stack prefixes its layer's index (``0.h``, ``1.h``, ``1.c``) and a bidirectional layer
the half's name (``forward.h``, ``backward.h``), at any depth (``0.backward.c``). The initial
carry inputs are these names prefixed with ``initial_`` (``initial_h``, ``initial_0.forward.c``).
They are graph inputs that are also initializers holding zeros ``[1, H]`` (ONNX's overridable
initializers, IR version 4 and later), broadcast to the batch: leave them out and the carry
starts at zeros, as in ``rnn_jax.rnn``; feed them (``[batch, H]``) to continue from a given
carry, as when streaming a sequence chunk by chunk. onnxruntime lists them under
``session.get_overridable_initializers()`` rather than ``get_inputs()``, and warns once per
session that an initializer is also an input (this is that choice, not a problem).

The graph has no ``resets`` input (``rnn(..., resets=...)``): an exported model runs whole
sequences. To start a sequence over at serving time, begin a new call with the initial carry
left out (zeros), which is what a reset means; nothing in the layer refuses export because
resets exist.

What maps to which operator (each time-major inside the graph, ``xs`` transposed once):

* ``simple_rnn`` -> ``RNN`` (activation ``Tanh`` or ``Relu``); ``lstm`` -> ``LSTM`` with the
  gate blocks reordered from (i, f, g, o) to ONNX's (i, o, f, c) and ``forget_bias`` added to the
  forget gate's bias; ``gru`` -> ``GRU`` with the blocks reordered from (r, z, n) to ONNX's
  (z, r, h), ``linear_before_reset=1`` for ``reset_after=True`` (``b_ih``, ``b_hh`` become
  ``Wb``, ``Rb``) and ``0`` for ``reset_after=False``. ONNX's GRU keeps the old state where
  ``z`` is near 1, as rnn_jax's does. ``lengths`` is the operators' ``sequence_lens``: their
  outputs past a length are zero and ``Y_h`` is the state after the last valid step, and the
  reverse direction reads each valid prefix backwards, as in ``rnn_jax.rnn``.
* ``mingru``, ``minlstm``, ``lru`` -> their input projections as ``MatMul`` over the whole
  sequence, then one ``Scan`` of ``h = a * h + b`` (a complex product on two real tensors for
  the LRU), then the readout; with lengths, ``a = 1`` and ``b = 0`` past a length (the carry is
  held) and the outputs there are zero. Reversed runs read each valid prefix backwards through
  ``ReverseSequence``.
* ``stack`` -> its layers one after the other (dropout is off, as at evaluation);
  ``bidirectional`` -> one operator with ``direction="bidirectional"`` where both halves are
  the same kind of cell with the same hidden size (and, for a GRU, the same ``reset_after``),
  else each half on its own (the backward one reversed), then ``Concat``, ``Add`` or the mean;
  ``remat`` -> the wrapped layer (remat changes only how gradients are computed).

Whole trained models, around the same graph code: ``classifier_to_onnx`` (a sequence classifier:
``xs`` -> core -> ``rnn_jax.summary`` -> dense -> ``logits [batch, C]``, from the zero carry) and
``char_lm_to_onnx`` (a character LM: ``ids [batch, time]`` int64 -> embedding -> core -> dense
-> ``logits [batch, time, V]``, with the carry inputs and outputs above, for serving step by step
or chunk by chunk); ``python -m experiments.export`` writes either from a run directory.
``describe(model)`` lists a model's inputs and outputs.

The graph computes in float32 (parameters are cast). A layer the exporter cannot write exactly
(a subclass or another kind of layer, a hyperparameter it does not know, parameters it does
not expect) is a ``ValueError`` naming it, never a silently different model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import numpy as np

import rnn_jax.cells as cells
import rnn_jax.compose as compose
import rnn_jax.linear_rnn as linear_rnn
from rnn_jax.layer import Layer, check_layer
from rnn_jax.unroll import rnn

DEFAULT_OPSET = 17
"""The ONNX opset written when ``to_onnx`` is given ``opset=None``."""
MIN_OPSET = 13
"""The oldest opset ``to_onnx`` writes (``Unsqueeze`` takes its axes as an input from 13)."""

# The hyperparameters each exported layer kind understands: any other dataclass field (one
# added to the layer later) must keep its default value, or the export is refused.
KNOWN_FIELDS = {
    cells.SimpleRNN: {"hidden_size", "activation", "kernel_init", "recurrent_init", "bias_init",
                      "param_dtype"},
    cells.LSTM: {"hidden_size", "forget_bias", "kernel_init", "recurrent_init", "bias_init",
                 "param_dtype"},
    cells.GRU: {"hidden_size", "reset_after", "kernel_init", "recurrent_init", "bias_init",
                "param_dtype"},
    linear_rnn.MinGRU: {"hidden_size", "candidate", "parallel", "max_timescale", "kernel_init",
                        "bias_init", "param_dtype"},
    linear_rnn.MinLSTM: {"hidden_size", "candidate", "parallel", "max_timescale", "kernel_init",
                         "bias_init", "param_dtype"},
    linear_rnn.LRU: {"state_size", "output_size", "r_min", "r_max", "max_phase", "skip",
                     "parallel", "param_dtype"},
    compose.Stack: {"layers", "dropout", "variational"},
    compose.Bidirectional: {"forward", "backward", "merge"},
    compose.Remat: {"layer", "every"},  # Rematerialisation changes the backward pass only.
}

# The ONNX operator of each cell, and the permutation of its gate blocks into ONNX's order.
CELL_OPERATORS = {
    cells.SimpleRNN: ("RNN", (0,)),
    cells.LSTM: ("LSTM", (0, 3, 1, 2)),  # (i, f, g, o) -> (i, o, f, c)
    cells.GRU: ("GRU", (1, 0, 2)),       # (r, z, n) -> (z, r, h)
}


def _import_onnx():
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError("rnn_jax.export needs the onnx package: install the export extra "
                      "(pip install -e '.[export]' in the checkout)") from error
  return onnx


def _unwrap(layer: Layer) -> Layer:
  """The layer a ``remat`` wraps (at any depth of wrapping); other layers as they are."""
  while isinstance(layer, compose.Remat):
    layer = layer.layer
  return layer


def check_exportable(layer: Layer) -> None:
  """Raises ``ValueError`` naming the first part of ``layer`` that ``to_onnx`` cannot write.

  Raises:
    TypeError: when ``layer`` is not an rnn_jax layer.
    ValueError: for a layer kind other than those of the module doc (subclasses included), or
      a hyperparameter the exporter does not know (one added to a layer after this module)
      set to anything but its default.
  """
  check_layer("layer", layer)
  kind = type(layer)
  if kind not in KNOWN_FIELDS:
    raise ValueError(f"to_onnx: cannot export {kind.__name__} {layer!r}: no ONNX mapping for "
                     f"this kind of layer (exportable: "
                     f"{', '.join(sorted(k.__name__ for k in KNOWN_FIELDS))})")
  for field in dataclasses.fields(layer):
    if field.name in KNOWN_FIELDS[kind]:
      continue
    default = (field.default if field.default is not dataclasses.MISSING
               else field.default_factory() if field.default_factory is not dataclasses.MISSING
               else dataclasses.MISSING)
    if getattr(layer, field.name) != default:
      raise ValueError(f"to_onnx: cannot export {kind.__name__} {layer!r}: its {field.name}="
                       f"{getattr(layer, field.name)!r} has no ONNX mapping yet")
  if isinstance(layer, compose.Bidirectional) and layer.merge not in ("concat", "sum", "mean"):
    raise ValueError(f"to_onnx: cannot export {kind.__name__} {layer!r}: its merge function "
                     "has no ONNX mapping (exportable merges: 'concat', 'sum', 'mean')")
  for sub in getattr(layer, "sublayers", ()):
    check_exportable(sub)


def _leaf_names(layer: Layer) -> list[str]:
  """The carry leaves of one leaf layer, in the carry's pytree order (LRU: two real parts)."""
  if isinstance(layer, cells.LSTM):
    return ["h", "c"]
  if isinstance(layer, linear_rnn.LRU):
    return ["h_re", "h_im"]
  return ["h"]


def _carry_paths(layer: Layer, prefix: str = "") -> list[tuple[str, int]]:
  """``(name, size)`` of every carry leaf of ``layer``, in ``jax.tree.leaves(carry)`` order."""
  layer = _unwrap(layer)
  if isinstance(layer, compose.Stack):
    return [leaf for index, sub in enumerate(layer.layers)
            for leaf in _carry_paths(sub, f"{prefix}{index}.")]
  if isinstance(layer, compose.Bidirectional):
    return (_carry_paths(layer.forward, f"{prefix}forward.")
            + _carry_paths(layer.backward, f"{prefix}backward."))
  return [(prefix + name, layer.hidden_size) for name in _leaf_names(layer)]


def carry_names(layer: Layer) -> tuple[str, ...]:
  """The names of the exported model's final-carry outputs, in ``jax.tree.leaves`` order.

  The initial-carry inputs are the same names prefixed with ``initial_``. A complex LRU state
  is two leaves here (``h_re``, ``h_im``) for its one leaf in rnn_jax's carry.

  Example: ``carry_names(stack([gru(8), lstm(8)])) == ("0.h", "1.h", "1.c")``.
  """
  check_exportable(layer)
  return tuple(name for name, _ in _carry_paths(layer))


def carry_inputs(layer: Layer, carry: Any) -> dict[str, np.ndarray]:
  """An rnn_jax carry as the exported model's ``initial_*`` inputs (float32 arrays).

  Args:
    layer: the exported layer.
    carry: a carry of ``layer`` with one batch axis (leaves ``[batch, H]``), e.g. the final
      carry of ``rnn_jax.rnn`` or ``carry_from_outputs``.

  Returns:
    A dict of float32 arrays ``[batch, H]``, one per name of ``carry_names`` (keys
    ``initial_<name>``).
  """
  arrays = []
  for leaf in jax.tree.leaves(carry):
    leaf = np.asarray(leaf)
    arrays += [leaf.real, leaf.imag] if np.iscomplexobj(leaf) else [leaf]
  names = carry_names(layer)
  if len(arrays) != len(names):
    raise ValueError(f"carry: expected a carry of {layer!r} ({len(names)} exported leaves "
                     f"{names}), got {len(arrays)} arrays")
  return {f"initial_{name}": np.asarray(array, np.float32) for name, array in zip(names, arrays)}


def carry_from_outputs(layer: Layer, outputs: dict[str, np.ndarray]) -> Any:
  """The final carry of ``layer`` as rnn_jax builds it, from the exported model's outputs.

  Args:
    layer: the exported layer.
    outputs: the model's outputs by name (``dict(zip(names, session.run(names, feeds)))``);
      entries other than carry leaves are ignored.

  Returns:
    A pytree like ``rnn_jax.rnn``'s final carry (``LSTMState``, tuples), NumPy leaves; the LRU's
    state complex again.
  """
  names = iter(carry_names(layer))
  structure = jax.eval_shape(lambda: layer.initial_carry(1))
  leaves = []
  for leaf in jax.tree.leaves(structure):
    if np.issubdtype(leaf.dtype, np.complexfloating):
      real, imag = outputs[next(names)], outputs[next(names)]
      leaves.append(real + 1j * imag)
    else:
      leaves.append(outputs[next(names)])
  return jax.tree.unflatten(jax.tree.structure(structure), leaves)


class _Graph:
  """Nodes, initializers and unique names of the graph being built.

  Args:
    onnx: the onnx module.
    lengths: whether the graph has the ``lengths`` input.
    reserved: the graph's input and output names, which no internal value may take.
    source: the graph input whose first two axes are ``[batch, time]`` (``xs``, or ``ids``).
    feed_carry: whether the initial carry is the ``initial_<leaf>`` inputs (default zeros) or
      fixed zeros (a model that always starts from zeros, as a classifier does).
  """

  def __init__(self, onnx, lengths: bool, reserved, *, source: str = "xs",
               feed_carry: bool = True):
    self.onnx = onnx
    self.helper = onnx.helper
    self.nodes, self.initializers, self.carry_inputs = [], [], []
    self.feed_carry = feed_carry
    self._used = set(reserved)
    shape = self.op("Shape", [source], f"{source}_shape")
    self.batch = self.op("Gather", [shape, self.const([0], "index0")], "batch", axis=0)
    self.time = self.op("Gather", [shape, self.const([1], "index1")], "time", axis=0)
    self.time_int32 = self.op("Cast", [self.op("Squeeze", [self.time], "time")], "time",
                              to=onnx.TensorProto.INT32)
    self.lengths = None
    self._mask = None
    self._sequence_lens = None
    if lengths:  # Clipped to [0, time] as rnn_jax.rnn clips them.
      self.lengths = self.op("Clip", ["lengths", self.const(np.int32(0), "zero_int32"),
                                      self.time_int32], "lengths_clipped")

  def name(self, hint: str) -> str:
    """``hint``, or ``hint_<n>`` with the first ``n`` that no value of the graph has yet."""
    name, count = hint, 0
    while name in self._used:
      count += 1
      name = f"{hint}_{count}"
    self._used.add(name)
    return name

  def const(self, array, hint: str) -> str:
    array = np.asarray(array)
    if array.dtype == np.float64:
      array = array.astype(np.float32)
    name = self.name(hint)
    self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
    return name

  def op(self, op_type: str, inputs: list[str], hint: str, outputs: int = 1, **attributes):
    names = [self.name(hint) if outputs == 1 else self.name(f"{hint}_{k}")
             for k in range(outputs)]
    self.nodes.append(self.helper.make_node(op_type, inputs, names, **attributes))
    return names[0] if outputs == 1 else names

  def unsqueeze(self, value: str, axis: int) -> str:
    return self.op("Unsqueeze", [value, self.const([axis], f"axis{axis}")], f"{value}_unsqueezed")

  def carry_input(self, path: str, size: int) -> str:
    """The ``initial_<path>`` input (default zeros) as a ``[batch, size]`` tensor; zeros
    without ``feed_carry``."""
    zeros = np.zeros((1, size), np.float32)
    if self.feed_carry:
      name = f"initial_{path}"
      self.carry_inputs.append((name, size))
      self.initializers.append(self.onnx.numpy_helper.from_array(zeros, name))
    else:
      name = self.const(zeros, f"zeros_{path}")
    shape = self.op("Concat", [self.batch, self.const([size], "size")], "carry_shape", axis=0)
    return self.op("Expand", [name, shape], f"{name}_expanded")

  def valid(self) -> str:
    """``t < lengths[b]``, ``[time, batch, 1]`` bool (built once)."""
    if self._mask is None:
      steps = self.op("Range", [self.const(np.int32(0), "zero_int32"), self.time_int32,
                                self.const(np.int32(1), "one_int32")], "steps")
      less = self.op("Less", [self.unsqueeze(steps, 1), self.unsqueeze(self.lengths, 0)], "valid")
      self._mask = self.unsqueeze(less, 2)
    return self._mask

  def started(self) -> str:
    """``lengths > 0``, ``[batch, 1]`` bool."""
    positive = self.op("Greater", [self.lengths, self.const(np.int32(0), "zero_int32")], "started")
    return self.unsqueeze(positive, 1)

  def reverse_valid(self, sequence: str) -> str:
    """``sequence [time, batch, F]``, each valid prefix (without lengths, the whole) reversed."""
    if self._sequence_lens is None:
      if self.lengths is None:
        self._sequence_lens = self.op("Expand", [self.time, self.batch], "sequence_lens")
      else:
        self._sequence_lens = self.op("Cast", [self.lengths], "sequence_lens",
                                      to=self.onnx.TensorProto.INT64)
    return self.op("ReverseSequence", [sequence, self._sequence_lens], f"{sequence}_reversed",
                   batch_axis=1, time_axis=0)


def _as_numpy(params) -> Any:
  return jax.tree.map(lambda leaf: np.asarray(jax.device_get(leaf), np.float32), params)


def _cell_weights(cell: cells.Cell, params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ONNX's ``W [G*H, I]``, ``R [G*H, H]`` and ``B [2*G*H]`` (``Wb``, ``Rb``) of one cell."""
  _, order = CELL_OPERATORS[type(cell)]
  hidden = cell.hidden_size

  def reorder(matrix):
    return np.concatenate([matrix[..., k * hidden:(k + 1) * hidden] for k in order], axis=-1)

  if isinstance(cell, cells.GRU) and cell.reset_after:
    input_bias, recurrent_bias = params["b_ih"], params["b_hh"]
  else:
    input_bias = params["b"].copy()
    recurrent_bias = np.zeros_like(input_bias)
  if isinstance(cell, cells.LSTM):
    input_bias[hidden:2 * hidden] += np.float32(cell.forget_bias)
  return (reorder(params["w_ih"]).T, reorder(params["w_hh"]).T,
          np.concatenate([reorder(input_bias), reorder(recurrent_bias)]))


def _emit_cells(graph: _Graph, runs: list, xs: str) -> list[tuple[str, list[str]]]:
  """One ONNX ``RNN``/``LSTM``/``GRU`` node running one or two cells of the same kind.

  Args:
    graph: the graph being built.
    runs: ``[(cell, numpy params, carry path prefix, reverse)]``: one run, or a forward and a
      reversed one of the same operator and hidden size (``direction="bidirectional"``).
    xs: ``[time, batch, I]``.

  Returns:
    Per run, ``(outputs [time, batch, H], final carry leaf tensors)``.
  """
  runs = sorted(runs, key=lambda run: run[3])  # ONNX's bidirectional: forward first.
  cell = runs[0][0]
  operator, _ = CELL_OPERATORS[type(cell)]
  hidden = cell.hidden_size
  weights = [_cell_weights(run[0], run[1]) for run in runs]
  stacked = [graph.const(np.stack([w[k] for w in weights]), f"{operator}_{part}")
             for k, part in enumerate("WRB")]
  direction = ("bidirectional" if len(runs) == 2 else "reverse" if runs[0][3] else "forward")
  carries = [[graph.carry_input(path + leaf, hidden) for leaf in _leaf_names(cell)]
             for _, _, path, _ in runs]
  initial = [graph.op("Concat", [graph.unsqueeze(carry[k], 0) for carry in carries],
                      f"{operator}_initial_{leaf}", axis=0)
             for k, leaf in enumerate(_leaf_names(cell))]
  attributes = {"hidden_size": hidden, "direction": direction}
  if isinstance(cell, cells.SimpleRNN):
    attributes["activations"] = [run[0].activation.capitalize() for run in runs]
  if isinstance(cell, cells.GRU):
    attributes["linear_before_reset"] = int(cell.reset_after)
  lengths = graph.lengths or ""
  inputs = [xs, *stacked, lengths, initial[0]]
  if isinstance(cell, cells.LSTM):
    inputs.append(initial[1])
  results = graph.op(operator, inputs, operator, outputs=1 + len(initial), **attributes)
  sequence, finals = results[0], results[1:]
  emitted = []
  for index in range(len(runs)):
    position = graph.const(np.int64(index), "direction")
    outputs = graph.op("Gather", [sequence, position], f"{operator}_Y", axis=1)
    leaves = [graph.op("Gather", [final, position], f"{operator}_final", axis=0)
              for final in finals]
    if graph.lengths is not None:  # onnxruntime's Y_h of a length-0 sequence is 0, not h_0.
      leaves = [graph.op("Where", [graph.started(), leaf, carry], f"{operator}_final")
                for leaf, carry in zip(leaves, carries[index])]
    emitted.append((outputs, leaves))
  return emitted


def _linear_coefficients(graph: _Graph, layer, params, xs: str):
  """``(a, b, skip)`` of ``h_t = a_t h_{t-1} + b_t`` over ``xs [time, batch, I]``: lists of
  tensors (one for minGRU/minLSTM, real and imaginary parts for the LRU) and the skip term."""
  hidden = layer.hidden_size

  def block(k: int, hint: str) -> str:  # x @ w_ih[:, k-th block] + b[k-th block]
    weights = params["w_ih"][:, k * hidden:(k + 1) * hidden]
    product = graph.op("MatMul", [xs, graph.const(weights, f"{layer.name}_w_{hint}")], hint)
    return graph.op("Add", [product, graph.const(params["b"][k * hidden:(k + 1) * hidden],
                                                 f"{layer.name}_b_{hint}")], hint)

  def candidate(k_h: str) -> str:
    if layer.candidate == "linear":
      return k_h
    positive = graph.op("GreaterOrEqual", [k_h, graph.const(np.float32(0), "zero")], "positive")
    shifted = graph.op("Add", [k_h, graph.const(np.float32(0.5), "half")], "shifted")
    return graph.op("Where", [positive, shifted, graph.op("Sigmoid", [k_h], "sigmoid")], "g")

  if isinstance(layer, linear_rnn.MinGRU):
    k_z, k_h = block(0, "k_z"), block(1, "k_h")
    a = graph.op("Sigmoid", [graph.op("Neg", [k_z], "minus_k_z")], "a")
    b = graph.op("Mul", [graph.op("Sigmoid", [k_z], "z"), candidate(k_h)], "b")
    return [a], [b], None
  if isinstance(layer, linear_rnn.MinLSTM):
    k_f, k_i, k_h = block(0, "k_f"), block(1, "k_i"), block(2, "k_h")
    softplus = lambda k: graph.op("Softplus", [graph.op("Neg", [k], "minus_k")], "softplus")
    log_ratio = graph.op("Sub", [softplus(k_i), softplus(k_f)], "log_ratio")
    a = graph.op("Sigmoid", [log_ratio], "a")
    b = graph.op("Mul", [graph.op("Sigmoid", [graph.op("Neg", [log_ratio], "minus_log_ratio")],
                                  "i"), candidate(k_h)], "b")
    return [a], [b], None
  # LRU: lambda from its parameters as rnn_jax computes it (float32), gamma folded into B.
  lam = np.asarray(jax.numpy.exp(jax.lax.complex(-jax.numpy.exp(params["nu_log"]),
                                                 jax.numpy.exp(params["theta_log"]))))
  gamma = np.exp(params["gamma_log"])
  b = [graph.op("Mul", [graph.op("MatMul", [xs, graph.const(params[part], f"lru_{part}")],
                                 f"x_{part}"), graph.const(gamma, "lru_gamma")], f"b_{part[-2:]}")
       for part in ("B_re", "B_im")]
  shape = graph.op("Shape", [b[0]], "b_shape")
  a = [graph.op("Expand", [graph.const(part, f"lambda_{name}"), shape], f"a_{name}")
       for part, name in ((lam.real, "re"), (lam.imag, "im"))]
  skip = None
  if layer.skip == "diagonal":
    skip = graph.op("Mul", [xs, graph.const(params["D"], "lru_D")], "skip")
  elif layer.skip == "dense":
    skip = graph.op("MatMul", [xs, graph.const(params["D"], "lru_D")], "skip")
  return a, b, skip


def _scan_body(graph: _Graph, complex_state: bool, size: int, hint: str):
  """The ``Scan`` body of ``h = a * h + b``: states ``h`` (re, im), scan inputs ``a``, ``b``.

  Its values are prefixed with the body's name, unique in the graph, so that none shadows a
  value of the outer graph (ONNX's names are unique across a graph and its subgraphs).
  """
  helper, float32 = graph.helper, graph.onnx.TensorProto.FLOAT
  body = graph.name(hint)
  value = lambda name: helper.make_tensor_value_info(name, float32, ["batch", size])
  if not complex_state:
    nodes = [helper.make_node("Mul", ["a", "h"], ["a_h"]),
             helper.make_node("Add", ["a_h", "b"], ["h_new"]),
             helper.make_node("Identity", ["h_new"], ["h_out"])]
    inputs, outputs = ["h", "a", "b"], ["h_new", "h_out"]
  else:  # (a_re + i a_im)(h_re + i h_im) + b, as two real tensors.
    nodes = [helper.make_node("Mul", ["a_re", "h_re"], ["rr"]),
             helper.make_node("Mul", ["a_im", "h_im"], ["ii"]),
             helper.make_node("Mul", ["a_re", "h_im"], ["ri"]),
             helper.make_node("Mul", ["a_im", "h_re"], ["ir"]),
             helper.make_node("Sub", ["rr", "ii"], ["real"]),
             helper.make_node("Add", ["ri", "ir"], ["imag"]),
             helper.make_node("Add", ["real", "b_re"], ["h_re_new"]),
             helper.make_node("Add", ["imag", "b_im"], ["h_im_new"]),
             helper.make_node("Identity", ["h_re_new"], ["h_re_out"]),
             helper.make_node("Identity", ["h_im_new"], ["h_im_out"])]
    inputs = ["h_re", "h_im", "a_re", "a_im", "b_re", "b_im"]
    outputs = ["h_re_new", "h_im_new", "h_re_out", "h_im_out"]
  prefix = lambda names: [f"{body}.{name}" for name in names]
  nodes = [helper.make_node(node.op_type, prefix(node.input), prefix(node.output))
           for node in nodes]
  return helper.make_graph(nodes, body, [value(n) for n in prefix(inputs)],
                           [value(n) for n in prefix(outputs)])


def _emit_linear(graph: _Graph, layer, params, xs: str, path: str, reverse: bool):
  """A minGRU, minLSTM or LRU over ``xs [time, batch, I]``: projections, one ``Scan``, readout."""
  if reverse:
    xs = graph.reverse_valid(xs)
  a, b, skip = _linear_coefficients(graph, layer, params, xs)
  if graph.lengths is not None:  # Past a length: a = 1, b = 0 (the carry is held).
    valid = graph.valid()
    ones = [graph.const(np.float32(1), "one"), graph.const(np.float32(0), "zero")]
    a = [graph.op("Where", [valid, part, ones[k]], "a_held") for k, part in enumerate(a)]
    b = [graph.op("Where", [valid, part, graph.const(np.float32(0), "zero")], "b_held")
         for part in b]
  initial = [graph.carry_input(path + leaf, layer.hidden_size) for leaf in _leaf_names(layer)]
  states = len(initial)
  results = graph.op("Scan", initial + a + b, f"{layer.name}_scan", outputs=2 * states,
                     body=_scan_body(graph, states == 2, layer.hidden_size,
                                     f"{layer.name}_step"),
                     num_scan_inputs=2 * states)
  finals, hs = results[:states], results[states:]
  if isinstance(layer, linear_rnn.LRU):  # y = Re(h C) + skip(x)
    real = graph.op("MatMul", [hs[0], graph.const(params["C_re"], "lru_C_re")], "y_re")
    imag = graph.op("MatMul", [hs[1], graph.const(params["C_im"], "lru_C_im")], "y_im")
    outputs = graph.op("Sub", [real, imag], "y")
    if skip is not None:
      outputs = graph.op("Add", [outputs, skip], "y")
  else:
    outputs = hs[0]
  if graph.lengths is not None:
    outputs = graph.op("Where", [graph.valid(), outputs, graph.const(np.float32(0), "zero")],
                       "y_valid")
  if reverse:
    outputs = graph.reverse_valid(outputs)
  return outputs, finals


def _fusable(forward: Layer, backward: Layer) -> bool:
  """Whether one ONNX operator with ``direction="bidirectional"`` can run both halves."""
  return (type(forward) is type(backward) and type(forward) in CELL_OPERATORS
          and forward.hidden_size == backward.hidden_size
          and getattr(forward, "reset_after", None) == getattr(backward, "reset_after", None))


def _emit(graph: _Graph, layer: Layer, params, xs: str, path: str, reverse: bool):
  """``layer`` over ``xs [time, batch, I]``: ``(outputs [time, batch, O], final carry leaves)``,
  as ``layer.run`` with ``RunOptions(reverse=reverse)``."""
  layer = _unwrap(layer)
  if isinstance(layer, compose.Stack):
    finals = []
    for index, sub in enumerate(layer.layers):
      xs, sub_finals = _emit(graph, sub, params[index], xs, f"{path}{index}.", reverse)
      finals += sub_finals
    return xs, finals
  if isinstance(layer, compose.Bidirectional):
    forward, backward = _unwrap(layer.forward), _unwrap(layer.backward)
    if _fusable(forward, backward):
      (out_f, final_f), (out_b, final_b) = _emit_cells(graph, [
          (forward, params["forward"], f"{path}forward.", reverse),
          (backward, params["backward"], f"{path}backward.", not reverse)], xs)
      if reverse:  # _emit_cells returned the forward-reading run (here: the backward half) first.
        (out_f, final_f), (out_b, final_b) = (out_b, final_b), (out_f, final_f)
    else:
      out_f, final_f = _emit(graph, forward, params["forward"], xs, f"{path}forward.", reverse)
      out_b, final_b = _emit(graph, backward, params["backward"], xs, f"{path}backward.",
                             not reverse)
    if layer.merge == "concat":
      outputs = graph.op("Concat", [out_f, out_b], "concat", axis=2)
    else:
      outputs = graph.op("Add", [out_f, out_b], "sum")
      if layer.merge == "mean":
        outputs = graph.op("Div", [outputs, graph.const(np.float32(2), "two")], "mean")
    return outputs, final_f + final_b
  if type(layer) in CELL_OPERATORS:
    return _emit_cells(graph, [(layer, params, path, reverse)], xs)[0]
  return _emit_linear(graph, layer, params, xs, path, reverse)


def _emit_summary(graph: _Graph, layer: Layer, outputs: str, reverse: bool) -> str:
  """``rnn_jax.summary(layer, ...)`` of ``outputs [time, batch, O]`` (no lengths): ``[batch, O]``.

  The last output of a forward recurrence, the first of a reversed one; a stack's last layer
  decides; a ``bidirectional`` (``merge="concat"``) concatenates its halves' summaries, the
  backward half read reversed, as ``Layer.summarize`` does (which the exporters call first, in
  ``jax.eval_shape`` of the model, so that a core without a summary is refused there).
  """
  layer = _unwrap(layer)
  if isinstance(layer, compose.Stack):
    return _emit_summary(graph, layer.layers[-1], outputs, reverse)
  if isinstance(layer, compose.Bidirectional):  # merge="concat" (summarize refuses the others).
    size = _unwrap(layer.forward).output_size
    halves = [graph.op("Slice", [outputs, graph.const([start], "start"), graph.const([end], "end"),
                                 graph.const([2], "axis2")], hint)
              for start, end, hint in ((0, size, "forward_outputs"),
                                       (size, np.iinfo(np.int64).max, "backward_outputs"))]
    return graph.op("Concat", [_emit_summary(graph, layer.forward, halves[0], reverse),
                               _emit_summary(graph, layer.backward, halves[1], not reverse)],
                    "summary", axis=1)
  step = graph.const(np.int64(0 if reverse else -1), "first" if reverse else "last")
  return graph.op("Gather", [outputs, step], "summary", axis=0)


def _emit_dense(graph: _Graph, dense, features: str, hint: str) -> str:
  """``features [..., O] @ w [O, C] + b [C]``: the heads' dense layer."""
  product = graph.op("MatMul", [features, graph.const(dense["w"], "dense_w")], f"{hint}_product")
  return graph.op("Add", [product, graph.const(dense["b"], "dense_b")], hint)


def _check_opset(onnx, opset: int | None) -> int:
  """``opset`` (``DEFAULT_OPSET`` for ``None``), checked against the installed onnx."""
  newest = onnx.defs.onnx_opset_version()
  opset = DEFAULT_OPSET if opset is None else opset
  if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
    raise ValueError(f"opset must be an int from {MIN_OPSET} to {newest} (the newest the "
                     f"installed onnx knows), got {opset!r}")
  return opset


def _carry_io_names(carry: list[tuple[str, int]]) -> list[str]:
  """The graph names the carry takes: its final leaves and their ``initial_`` inputs."""
  return [prefix + name for name, _ in carry for prefix in ("", "initial_")]


def _finish(onnx, graph: _Graph, inputs: list, outputs: list, name: str, opset: int, doc: str,
            path, metadata: dict[str, str] | None = None):
  """Checks and saves the model of ``graph``; returns its ``ModelProto``.

  Args:
    inputs: the value infos of the graph inputs before the initial carry's (added here).
    outputs: the value infos of the graph outputs.
  """
  value = onnx.helper.make_tensor_value_info
  inputs = inputs + [value(carry, onnx.TensorProto.FLOAT, ["batch", size])
                     for carry, size in graph.carry_inputs]
  onnx_graph = onnx.helper.make_graph(graph.nodes, name, inputs, outputs, graph.initializers)
  opsets = [onnx.helper.make_opsetid("", opset)]
  model = onnx.helper.make_model(
      onnx_graph, opset_imports=opsets, producer_name="rnn_jax",
      ir_version=max(4, onnx.helper.find_min_ir_version_for(opsets)), doc_string=doc)
  if metadata:
    onnx.helper.set_model_props(model, metadata)
  onnx.checker.check_model(model, full_check=True)
  onnx.save(model, os.fspath(path))
  return model


def _output_carry(onnx, graph: _Graph, carry: list[tuple[str, int]], finals: list[str]) -> list:
  """Names the final carry leaves as graph outputs; returns their value infos."""
  for (name, _), final in zip(carry, finals):
    graph.nodes.append(onnx.helper.make_node("Identity", [final], [name]))
  return [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", size])
          for name, size in carry]


def to_onnx(layer: Layer, params: Any, path: str | os.PathLike, *, lengths: bool = False,
            opset: int | None = None):
  """Writes ``layer`` with ``params`` as an ONNX model; see the module doc for its interface.

  The model computes what ``rnn_jax.rnn(layer, params, xs, lengths=lengths,
  initial_carry=...)`` computes (batch-major ``xs``, no dropout), in float32.

  Args:
    layer: a cell, linear recurrence, ``stack``, ``bidirectional`` or ``remat`` of those.
    params: ``layer.init(...)``'s pytree (trained values).
    path: the ``.onnx`` file to write.
    lengths: add the ``lengths [batch]`` int32 input (valid steps per sequence).
    opset: the ONNX opset to write, from ``MIN_OPSET`` (13) to the newest that the
      installed ``onnx`` knows; ``None``: ``DEFAULT_OPSET`` (17).

  Returns:
    The ``onnx.ModelProto`` written (checked with ``onnx.checker.check_model``).

  Raises:
    TypeError: when ``layer`` is not an rnn_jax layer.
    ValueError: for a layer the exporter cannot write exactly (the message names it; see
      ``check_exportable``), parameters that are not the layer's (``rnn_jax.rnn``'s own
      checks), or an opset out of range.
    ImportError: without the ``onnx`` package.
  """
  onnx = _import_onnx()
  check_exportable(layer)
  opset = _check_opset(onnx, opset)
  input_size = layer.input_size(params)
  # rnn's own checks of the parameters (tree and shapes), and the output size.
  output_size = jax.eval_shape(functools.partial(rnn, layer), params,
                               jax.ShapeDtypeStruct((1, 1, input_size), np.float32))[0].shape[-1]
  carry = _carry_paths(layer)
  graph = _Graph(onnx, lengths, ["xs", "lengths", "outputs", *_carry_io_names(carry)])
  time_major = graph.op("Transpose", ["xs"], "xs_time_major", perm=[1, 0, 2])
  outputs, finals = _emit(graph, layer, _as_numpy(params), time_major, "", False)
  graph.nodes.append(onnx.helper.make_node("Transpose", [outputs], ["outputs"], perm=[1, 0, 2]))
  float32 = onnx.TensorProto.FLOAT
  value = onnx.helper.make_tensor_value_info
  inputs = [value("xs", float32, ["batch", "time", input_size])]
  if lengths:
    inputs.append(value("lengths", onnx.TensorProto.INT32, ["batch"]))
  model_outputs = ([value("outputs", float32, ["batch", "time", output_size])]
                   + _output_carry(onnx, graph, carry, finals))
  return _finish(onnx, graph, inputs, model_outputs, f"rnn_jax_{type(_unwrap(layer)).__name__}",
                 opset, f"rnn_jax.export.to_onnx({layer!r}, lengths={lengths})", path)


# ----------------------------------------------------------------------------- trained models


def classifier_to_onnx(trained: Any, path: str | os.PathLike, *, opset: int | None = None):
  """Writes a trained sequence classifier (core -> summary -> dense) as an ONNX model.

  The model's interface (no carry inputs: every sequence starts from the zero carry, as in
  ``Classifier.apply``)::

      input   xs      [batch, time, I]  float32, the sequences as the run fed them
                                        (``datasets.as_sequences`` of the images)
      output  logits  [batch, C]        float32

  It computes ``trained.model.apply(trained.params, xs)`` with no dropout: the core as
  ``to_onnx`` writes it, then ``rnn_jax.summary`` (the last step's output of a forward core;
  for a bidirectional core the forward half's last and the backward half's first, concatenated),
  then the dense layer.

  Args:
    trained: a :class:`rnn_jax.training.classification.TrainedClassifier` (``load(workdir)``),
      or anything with its ``model`` (a ``Classifier``) and ``params``.
    path: the ``.onnx`` file to write.
    opset: as for ``to_onnx``.

  Returns:
    The ``onnx.ModelProto`` written.

  Raises:
    ValueError: a core ``to_onnx`` cannot write, a bidirectional core whose merge is not
      ``"concat"`` (no summary), parameters that are not the model's, or a bad opset.
    ImportError: without the ``onnx`` package.
  """
  onnx = _import_onnx()
  model, params = trained.model, trained.params
  check_exportable(model.core)
  opset = _check_opset(onnx, opset)
  input_size = model.core.input_size(params["core"])
  # The model's own checks of the parameters, and the logits' size.
  num_classes = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct(
      (1, 1, input_size), np.float32)).shape[-1]
  numpy_params = _as_numpy(params)
  graph = _Graph(onnx, False, ["xs", "logits"], feed_carry=False)
  time_major = graph.op("Transpose", ["xs"], "xs_time_major", perm=[1, 0, 2])
  outputs, _ = _emit(graph, model.core, numpy_params["core"], time_major, "",
                     bool(model.options.reverse))
  features = _emit_summary(graph, model.core, outputs, False)
  graph.nodes.append(onnx.helper.make_node("Identity", [_emit_dense(
      graph, numpy_params["dense"], features, "dense")], ["logits"]))
  float32, value = onnx.TensorProto.FLOAT, onnx.helper.make_tensor_value_info
  return _finish(onnx, graph, [value("xs", float32, ["batch", "time", input_size])],
                 [value("logits", float32, ["batch", num_classes])], "rnn_jax_classifier",
                 opset, f"rnn_jax.export.classifier_to_onnx: {model!r}", path)


def char_lm_to_onnx(trained: Any, path: str | os.PathLike, *, opset: int | None = None):
  """Writes a trained character LM (embedding -> core -> dense) as an ONNX model.

  The model's interface, made to be served step by step or chunk by chunk (feed each call's
  final carry back as the next call's ``initial_*``)::

      inputs   ids             [batch, time]     int64, token ids (``vocabulary.encode``)
               initial_<leaf>  [batch, H]        float32, optional (zeros), as in ``to_onnx``
      outputs  logits          [batch, time, V]  float32, the next token's logits at each step
               <leaf>          [batch, H]        the final carry (``carry_names(core)``)

  It computes ``trained.model.apply(trained.params, ids, carry)`` with no dropout. The run's
  vocabulary, when ``trained`` has one, is the model's metadata ``vocabulary``: a JSON list of
  the characters in id order (the next id, ``len(list)``, is ``<unk>``).

  Args:
    trained: a :class:`rnn_jax.training.language_model.TrainedCharLM` (``load(workdir)``), or
      anything with its ``model`` (a ``CharLM``) and ``params``.
    path: the ``.onnx`` file to write.
    opset: as for ``to_onnx``.

  Returns:
    The ``onnx.ModelProto`` written.

  Raises:
    ValueError: a core ``to_onnx`` cannot write, parameters that are not the model's, or a
      bad opset.
    ImportError: without the ``onnx`` package.
  """
  onnx = _import_onnx()
  model, params = trained.model, trained.params
  check_exportable(model.core)
  opset = _check_opset(onnx, opset)
  # The model's own checks of the parameters, and the logits' size.
  vocab_size = jax.eval_shape(model.apply, params,
                              jax.ShapeDtypeStruct((1, 1), np.int32))[0].shape[-1]
  numpy_params = _as_numpy(params)
  carry = _carry_paths(model.core)
  graph = _Graph(onnx, False, ["ids", "logits", *_carry_io_names(carry)], source="ids")
  time_major = graph.op("Transpose", ["ids"], "ids_time_major", perm=[1, 0])
  embedded = graph.op("Gather", [graph.const(numpy_params["embed"], "embed"), time_major],
                      "embedded", axis=0)
  outputs, finals = _emit(graph, model.core, numpy_params["core"], embedded, "",
                          bool(model.options.reverse))
  logits = _emit_dense(graph, numpy_params["dense"], outputs, "dense")
  graph.nodes.append(onnx.helper.make_node("Transpose", [logits], ["logits"], perm=[1, 0, 2]))
  value = onnx.helper.make_tensor_value_info
  vocabulary = getattr(trained, "vocabulary", None)
  metadata = None if vocabulary is None else {"vocabulary": json.dumps(list(vocabulary.chars))}
  return _finish(onnx, graph, [value("ids", onnx.TensorProto.INT64, ["batch", "time"])],
                 [value("logits", onnx.TensorProto.FLOAT, ["batch", "time", vocab_size]),
                  *_output_carry(onnx, graph, carry, finals)], "rnn_jax_char_lm", opset,
                 f"rnn_jax.export.char_lm_to_onnx: {model!r}", path, metadata)


def describe(model) -> list[str]:
  """One line per input and output of an ONNX model: kind, name, element type and shape.

  Example: ``input xs float32 [batch, time, 28]``; the initial carry inputs (overridable
  initializers) end in ``(optional)``.
  """
  onnx = _import_onnx()
  initializers = {tensor.name for tensor in model.graph.initializer}

  def line(kind, value):
    tensor = value.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    shape = ", ".join(d.dim_param or str(d.dim_value) for d in tensor.shape.dim)
    optional = " (optional)" if value.name in initializers else ""
    return f"{kind} {value.name} {dtype} [{shape}]{optional}"

  return ([line("input", value) for value in model.graph.input]
          + [line("output", value) for value in model.graph.output])
