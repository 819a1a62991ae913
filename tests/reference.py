"""Independent NumPy re-implementations of the rnn_jax core, used only by tests.

Written from the equations in the docstrings and issue 2, not from the
library's code: float64 throughout, explicit Python loops over batch and time,
and every gate computed from its own slice of the fused weight matrices. A
test runs the library and these side by side and compares numbers.

A "sequence function" here is ``(xs [T, I], carry, length, reverse) ->
(outputs [T, O], carry)`` for ONE sequence; :func:`cell_layer`,
:func:`stack_layers` and :func:`bidirectional_layers` build them and
:func:`run_batch` loops one over a batch.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

import rnn_jax  # Only for the classes that key the registry below.


def sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def relu(v):
  return np.maximum(v, 0.0)


def as_float64(params: dict) -> dict:
  return {name: np.asarray(value, np.float64) for name, value in params.items()}


def _gate(params, x, h, k, hidden, bias="b"):
  """Pre-activation of gate block ``k``: ``x @ W_ih[:, k] + h @ W_hh[:, k] + b[k]``."""
  cols = slice(k * hidden, (k + 1) * hidden)
  return x @ params["w_ih"][:, cols] + h @ params["w_hh"][:, cols] + params[bias][cols]


def elman_step(params, h, x, activation="tanh"):
  """``h' = act(x W_ih + h W_hh + b)`` for one sequence: ``h [H]``, ``x [I]``."""
  act = {"tanh": np.tanh, "relu": relu}[activation]
  pre = np.array(params["b"], np.float64)
  for i in range(x.shape[0]):
    pre = pre + x[i] * params["w_ih"][i]
  for k in range(h.shape[0]):
    pre = pre + h[k] * params["w_hh"][k]
  h = act(pre)
  return h, h


def lstm_step(params, carry, x, forget_bias=1.0):
  """One LSTM step, gates (i, f, g, o); ``carry = (h [H], c [H])``; with ``w_hr`` in
  ``params`` the projected LSTM (``h [P]``) and with ``ln_ih_gain`` the layer-normalised one."""
  if "ln_ih_gain" in params:
    return layer_norm_lstm_step(params, carry, x, forget_bias)
  h, c = carry
  hidden = c.shape[0]
  i = sigmoid(_gate(params, x, h, 0, hidden))
  f = sigmoid(_gate(params, x, h, 1, hidden) + forget_bias)
  g = np.tanh(_gate(params, x, h, 2, hidden))
  o = sigmoid(_gate(params, x, h, 3, hidden))
  c = f * c + i * g
  h = o * np.tanh(c)
  if "w_hr" in params:
    h = h @ params["w_hr"]
  return (h, c), h


def layer_norm(v, gain, bias=0.0, epsilon=1e-5):
  """``gain * (v - mean(v)) / sqrt(var(v) + epsilon) + bias`` over the whole vector ``v``."""
  return gain * (v - v.mean()) / np.sqrt(v.var() + epsilon) + bias


def layer_norm_lstm_step(params, carry, x, forget_bias=1.0):
  """Ba, Kiros & Hinton (2016) eqs. 20-22, written out: the input and recurrent terms
  normalised apart over all ``4H`` pre-activations, then the cell state before its tanh."""
  h, c = carry
  hidden = c.shape[0]
  z = (layer_norm(x @ params["w_ih"], params["ln_ih_gain"])
       + layer_norm(h @ params["w_hh"], params["ln_hh_gain"]) + params["b"])
  block = lambda k: z[k * hidden:(k + 1) * hidden]
  i, f = sigmoid(block(0)), sigmoid(block(1) + forget_bias)
  g, o = np.tanh(block(2)), sigmoid(block(3))
  c = f * c + i * g
  h = o * np.tanh(layer_norm(c, params["ln_c_gain"], params["ln_c_bias"]))
  if "w_hr" in params:
    h = h @ params["w_hr"]
  return (h, c), h


def gru_step(params, h, x, reset_after=True):
  """One GRU step, gates (r, z, n), ``h' = (1 - z) n + z h``."""
  hidden = h.shape[0]
  block = [slice(k * hidden, (k + 1) * hidden) for k in range(3)]
  w_ir, w_iz, w_in = (params["w_ih"][:, s] for s in block)
  w_hr, w_hz, w_hn = (params["w_hh"][:, s] for s in block)
  if reset_after:
    b_ir, b_iz, b_in = (params["b_ih"][s] for s in block)
    b_hr, b_hz, b_hn = (params["b_hh"][s] for s in block)
    r = sigmoid(x @ w_ir + b_ir + h @ w_hr + b_hr)
    z = sigmoid(x @ w_iz + b_iz + h @ w_hz + b_hz)
    n = np.tanh(x @ w_in + b_in + r * (h @ w_hn + b_hn))
  else:
    b_r, b_z, b_n = (params["b"][s] for s in block)
    r = sigmoid(x @ w_ir + h @ w_hr + b_r)
    z = sigmoid(x @ w_iz + h @ w_hz + b_z)
    n = np.tanh(x @ w_in + (r * h) @ w_hn + b_n)
  h = (1.0 - z) * n + z * h
  return h, h


class Reference(NamedTuple):
  """What the tests know of one cell class, registered once with :func:`register`.

  Attributes:
    step: ``(cell, params float64) -> ((carry, x [I]) -> (carry, y [O]))``.
    zero_carry: ``cell -> `` the zero carry of one sequence (arrays or tuples of them).
    examples: test-case name -> ``hidden_size -> cell``: the instances every
      parametrised test of a cell runs (tests/test_cells.py and others).
    gates: how many ``[*, H]`` gate blocks its fused weights hold, from its equations.
  """

  step: Callable
  zero_carry: Callable
  examples: dict
  gates: int


REFERENCES: dict[type, Reference] = {}


def register(cell_class: type, step: Callable, zero_carry: Callable, examples: dict,
             gates: int) -> None:
  """Gives ``cell_class`` its reference step, zero carry, test cases and gate count: all a new
  cell needs to be run by every parametrised cell test."""
  REFERENCES[cell_class] = Reference(step, zero_carry, examples, gates)


def example_cells() -> dict:
  """Every registered test case, ``{name: hidden_size -> cell}``."""
  return {name: make for ref in REFERENCES.values() for name, make in ref.examples.items()}


def step_function(cell, params):
  """The reference step ``(carry, x [I]) -> (carry, y [H])`` for a registered cell value."""
  return REFERENCES[type(cell)].step(cell, as_float64(params))


def zero_carry(layer):
  """The zero carry of one sequence for a registered cell or a composite (by structure)."""
  if isinstance(layer, rnn_jax.Stack):
    return tuple(zero_carry(sub) for sub in layer.layers)
  if isinstance(layer, rnn_jax.Bidirectional):
    return (zero_carry(layer.forward), zero_carry(layer.backward))
  return REFERENCES[type(layer)].zero_carry(layer)


def clip_length(length, num_steps):
  return num_steps if length is None else min(max(int(length), 0), num_steps)


def cell_layer(cell, params):
  """Sequence function of one built-in cell; padded steps give zero outputs."""
  step = step_function(cell, params)

  def run(xs, carry, length, reverse):
    num_steps = xs.shape[0]
    valid = clip_length(length, num_steps)
    outputs = np.zeros((num_steps, cell.output_size))
    order = range(valid - 1, -1, -1) if reverse else range(valid)
    for t in order:
      carry, outputs[t] = step(carry, np.asarray(xs[t], np.float64))
    return outputs, carry

  return run


def stack_layers(layers):
  """Layers one after another, each reading the previous one's outputs (no dropout)."""

  def run(xs, carry, length, reverse):
    finals = []
    for layer, layer_carry in zip(layers, carry):
      xs, final = layer(xs, layer_carry, length, reverse)
      finals.append(final)
    return xs, tuple(finals)

  return run


def bidirectional_layers(forward, backward, merge="concat"):
  """Forward over the valid prefix, backward over it from its last step, then merged."""

  def run(xs, carry, length, reverse):
    out_f, carry_f = forward(xs, carry[0], length, reverse)
    out_b, carry_b = backward(xs, carry[1], length, not reverse)
    if callable(merge):
      merged = np.asarray(merge(out_f, out_b))
    elif merge == "concat":
      merged = np.concatenate([out_f, out_b], axis=-1)
    elif merge == "sum":
      merged = out_f + out_b
    else:
      merged = 0.5 * (out_f + out_b)
    return merged, (carry_f, carry_b)

  return run


def model_layer(model, params):
  """The sequence function of a cell or an rnn_jax composite, built from its structure."""
  if isinstance(model, rnn_jax.Stack):
    return stack_layers([model_layer(c, p) for c, p in zip(model.layers, params)])
  if isinstance(model, rnn_jax.Bidirectional):
    return bidirectional_layers(model_layer(model.forward, params["forward"]),
                                model_layer(model.backward, params["backward"]), model.merge)
  return cell_layer(model, params)


def run_batch(layer, xs, carries=None, lengths=None, reverse=False, zero=None):
  """Runs a sequence function over ``xs [B, T, I]``, one sequence at a time.

  Args:
    layer: a sequence function.
    xs: ``[B, T, I]``.
    carries: a list of ``B`` per-sequence carries, or ``None`` for ``zero``.
    lengths: ``[B]`` or ``None``.
    reverse: passed on.
    zero: the per-sequence zero carry (from :func:`zero_carry`).

  Returns:
    ``(outputs [B, T, O], [final carry of each sequence])``.
  """
  outputs, finals = [], []
  for b in range(xs.shape[0]):
    carry = zero if carries is None else carries[b]
    out, final = layer(np.asarray(xs[b], np.float64), carry, None if lengths is None
                       else lengths[b], reverse)
    outputs.append(out)
    finals.append(final)
  return np.stack(outputs), finals


def tree_map(fn, tree, *rest):
  """Maps ``fn`` over the arrays of nested tuples (NamedTuples become plain tuples)."""
  if isinstance(tree, (tuple, list)):
    return tuple(tree_map(fn, *parts) for parts in zip(tree, *rest))
  return fn(tree, *rest)


def leaves(tree) -> list:
  """The arrays of nested tuples, depth first (the order of ``jax.tree.leaves``)."""
  if isinstance(tree, (tuple, list)):
    return [leaf for part in tree for leaf in leaves(part)]
  return [np.asarray(tree)]


def run_model(model, params, xs, initial_carry=None, lengths=None, reverse=False):
  """The reference of ``rnn_jax.rnn`` (batch-major) for any batch shape.

  Args:
    model: a built-in cell or an rnn_jax ``stack``/``bidirectional`` (read for
      its structure only).
    params: its parameters.
    xs: ``[..., T, I]``.
    initial_carry: ``None`` (zeros) or a carry whose leaves are ``[..., H]``.
    lengths: ``None`` or ``[...]``.
    reverse: run each valid prefix backwards.

  Returns:
    ``(outputs [..., T, O], final_carry)``, the carry as nested tuples of
    float64 arrays ``[..., H]``.
  """
  xs = np.asarray(xs, np.float64)
  batch_shape = xs.shape[:-2]
  flat = xs.reshape((-1,) + xs.shape[-2:])
  count = flat.shape[0]
  carries = None
  if initial_carry is not None:
    carries = [tree_map(lambda leaf, b=b: np.asarray(leaf, np.float64).reshape(count, -1)[b],
                        initial_carry) for b in range(count)]
  flat_lengths = None if lengths is None else np.asarray(lengths).reshape(count)
  outputs, finals = run_batch(model_layer(model, params), flat, carries, flat_lengths, reverse,
                              zero_carry(model))
  final = tree_map(lambda *per_seq: np.stack(per_seq).reshape(batch_shape + (-1,)), *finals)
  return outputs.reshape(batch_shape + outputs.shape[-2:]), final


def elman_bptt(params, xs, h0, output_grads, final_grad, activation="tanh", lengths=None):
  """Backpropagation through time for the Elman RNN, by hand.

  The loss is ``sum_t <output_grads[b, t], y[b, t]> + <final_grad[b], h_final[b]>``
  summed over the batch, with ``y`` zero and ``h`` held past each length.

  Args:
    params: ``{"w_ih" [I, H], "w_hh" [H, H], "b" [H]}``.
    xs: ``[B, T, I]``.
    h0: ``[B, H]``.
    output_grads: ``[B, T, H]``.
    final_grad: ``[B, H]``.
    activation: ``"tanh"`` or ``"relu"``.
    lengths: ``[B]`` or ``None``.

  Returns:
    ``(param_grads dict, d_xs [B, T, I], d_h0 [B, H])``.
  """
  params = as_float64(params)
  w_ih, w_hh = params["w_ih"], params["w_hh"]
  grads = {name: np.zeros_like(value) for name, value in params.items()}
  d_xs = np.zeros(xs.shape)
  d_h0 = np.zeros(h0.shape)
  for b in range(xs.shape[0]):
    valid = clip_length(None if lengths is None else lengths[b], xs.shape[1])
    states = [np.asarray(h0[b], np.float64)]
    for t in range(valid):
      pre = xs[b, t] @ w_ih + states[-1] @ w_hh + params["b"]
      states.append(np.tanh(pre) if activation == "tanh" else relu(pre))
    d_state = np.asarray(final_grad[b], np.float64)
    for t in range(valid - 1, -1, -1):
      d_state = d_state + output_grads[b, t]
      h_t = states[t + 1]
      d_pre = d_state * (1.0 - h_t**2 if activation == "tanh" else (h_t > 0))
      grads["w_ih"] += np.outer(xs[b, t], d_pre)
      grads["w_hh"] += np.outer(states[t], d_pre)
      grads["b"] += d_pre
      d_xs[b, t] = w_ih @ d_pre
      d_state = w_hh @ d_pre
    d_h0[b] = d_state
  return grads, d_xs, d_h0


def central_differences(loss, theta, eps=1e-6):
  """``d loss / d theta[i]`` for every ``i`` by ``(loss(+eps) - loss(-eps)) / (2 eps)``.

  Args:
    loss: a function of a batch of float64 vectors ``[M, N]`` returning the
      ``[M]`` losses (e.g. ``jax.vmap`` of a scalar loss: one call for all
      ``2N`` perturbed points).
    theta: ``[N]`` float64.
    eps: the step.

  Returns:
    ``[N]``.
  """
  theta = np.asarray(theta, np.float64)
  basis = np.eye(theta.shape[0]) * eps
  values = np.asarray(loss(np.concatenate([theta + basis, theta - basis])), np.float64)
  plus, minus = np.split(values, 2)
  return (plus - minus) / (2 * eps)


# ---------------------------------------------------------------------------
# The registered cells: a new cell gets every parametrised cell test from one call.

_zeros = lambda cell: np.zeros(cell.hidden_size)
register(rnn_jax.SimpleRNN, lambda cell, p: (lambda h, x: elman_step(p, h, x, cell.activation)),
         _zeros, {
             "tanh": lambda h: rnn_jax.simple_rnn(h, "tanh"),
             "relu": lambda h: rnn_jax.simple_rnn(h, "relu"),
             "irnn": lambda h: rnn_jax.simple_rnn(h, "relu", recurrent_init="identity"),
         }, gates=1)
register(rnn_jax.LSTM, lambda cell, p: (lambda carry, x: lstm_step(p, carry, x, cell.forget_bias)),
         lambda cell: (np.zeros(cell.output_size), _zeros(cell)), {
             "lstm_fb0": lambda h: rnn_jax.lstm(h, forget_bias=0.0),
             "lstm_fb1": lambda h: rnn_jax.lstm(h, forget_bias=1.0),
         }, gates=4)
register(rnn_jax.GRU, lambda cell, p: (lambda h, x: gru_step(p, h, x, cell.reset_after)), _zeros, {
    "gru_after": lambda h: rnn_jax.gru(h, reset_after=True),
    "gru_before": lambda h: rnn_jax.gru(h, reset_after=False),
}, gates=3)
