"""rnn_jax.interop against real torch.nn modules (seeded, tiny: I=3, H=4, T=5, B=3)."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rnn_jax
from rnn_jax import interop

torch.set_num_threads(1)
INPUT, HIDDEN, STEPS, BATCH = 3, 4, 5, 3
LENGTHS = [2, 5, 3]  # unsorted, so pack_padded_sequence needs enforce_sorted=False
KINDS = {
    "rnn_tanh": lambda **kw: torch.nn.RNN(INPUT, HIDDEN, nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: torch.nn.RNN(INPUT, HIDDEN, nonlinearity="relu", **kw),
    "lstm": lambda **kw: torch.nn.LSTM(INPUT, HIDDEN, **kw),
    "gru": lambda **kw: torch.nn.GRU(INPUT, HIDDEN, **kw),
}
# (num_layers, bidirectional, bias, batch_first, packed, initial_state)
CONFIGS = [
    (1, False, True, True, False, False),
    (1, True, False, False, True, False),
    (2, False, True, False, True, True),
    (2, True, True, True, True, True),
    (2, True, False, False, False, False),
]


def _module(kind, seed, **kwargs):
  torch.manual_seed(seed)
  return KINDS[kind](**kwargs).eval()


def _numpy(state):
  if isinstance(state, tuple):
    return tuple(part.detach().numpy() for part in state)
  return state.detach().numpy()


def _run_torch(module, x, lengths=None, state=None):
  """Runs ``module`` on padded ``x``, packing it when ``lengths`` is given; zero-padded outputs."""
  batch_first = module.batch_first
  if lengths is not None:
    x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                                enforce_sorted=False)
  outputs, final = module(x, state)
  if lengths is not None:
    outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(outputs, batch_first=batch_first,
                                                        total_length=STEPS)
  return outputs, final


def _inputs(batch_first, seed):
  rng = np.random.default_rng(seed)
  shape = (BATCH, STEPS, INPUT) if batch_first else (STEPS, BATCH, INPUT)
  return rng.standard_normal(shape).astype(np.float32)


def _initial_state(kind, layers_directions, seed):
  rng = np.random.default_rng(seed)
  draw = lambda: torch.tensor(rng.standard_normal((layers_directions, BATCH, HIDDEN)),
                              dtype=torch.float32)
  return (draw(), draw()) if kind == "lstm" else draw()


def _assert_state_close(ours, theirs):
  if isinstance(theirs, tuple):
    assert isinstance(ours, tuple) and len(ours) == 2
    for got, want in zip(ours, theirs):
      np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  else:
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: "L{}_bi{:d}_bias{:d}_bf{:d}_packed{:d}_h0{:d}".format(*c))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_from_torch_matches_module(kind, config, rnn_jit):
  layers, bidir, bias, batch_first, packed, with_state = config
  module = _module(kind, 0, num_layers=layers, bidirectional=bidir, bias=bias,
                   batch_first=batch_first)
  x = _inputs(batch_first, 1)
  lengths = LENGTHS if packed else None
  state = _initial_state(kind, layers * (2 if bidir else 1), 2) if with_state else None
  with torch.no_grad():
    want_out, want_state = _run_torch(module, torch.from_numpy(x), lengths, state)

  cell, params = interop.from_torch(module)
  carry = interop.from_torch_state(cell, state) if with_state else None
  outputs, final = rnn_jit(cell, params, x, initial_carry=carry,
                           lengths=None if lengths is None else np.array(lengths, np.int32),
                           time_major=not batch_first)
  np.testing.assert_allclose(outputs, want_out.numpy(), atol=1e-5, rtol=0)
  _assert_state_close(interop.to_torch_state(cell, final), _numpy(want_state))
  if packed:  # torch pads with zeros; so must we
    padded = np.arange(STEPS)[:, None] >= np.array(LENGTHS)[None, :]  # [T, B]
    out_tb = np.asarray(outputs) if not batch_first else np.swapaxes(outputs, 0, 1)
    assert np.all(out_tb[padded] == 0.0)


def test_structure_of_converted_modules():
  cell, params = interop.from_torch(_module("lstm", 0, num_layers=2, bidirectional=True,
                                            dropout=0.25))
  assert isinstance(cell, rnn_jax.Stack) and cell.dropout == 0.25 and not cell.variational
  layer = cell.layers[0]
  assert isinstance(layer, rnn_jax.Bidirectional) and layer.merge == "concat"
  assert layer.forward == rnn_jax.lstm(HIDDEN, forget_bias=0.0)
  assert params[1]["backward"]["w_ih"].shape == (2 * HIDDEN, 4 * HIDDEN)
  module = _module("gru", 0)
  cell, params = interop.from_torch(module)
  assert cell == rnn_jax.gru(HIDDEN, reset_after=True)
  np.testing.assert_array_equal(params["w_ih"], module.weight_ih_l0.detach().numpy().T)
  np.testing.assert_array_equal(params["b_hh"], module.bias_hh_l0.detach().numpy())
  cell, params = interop.from_torch(_module("rnn_relu", 0, bias=False))
  assert cell == rnn_jax.simple_rnn(HIDDEN, "relu")
  np.testing.assert_array_equal(params["b"], np.zeros(HIDDEN))


def test_bfloat16_module_is_widened():
  module = _module("gru", 0).to(torch.bfloat16)
  _, params = interop.from_torch(module)
  assert params["w_hh"].dtype == jnp.float32
  np.testing.assert_array_equal(params["w_hh"], module.weight_hh_l0.float().detach().numpy().T)


@pytest.mark.parametrize("proj_size", [0, 2])
def test_torch_params_in_flax_linen_layer(proj_size):
  """from_torch's params are what rnn_jax.linen.RNN keeps under "layer" (projected LSTMs too)."""
  from rnn_jax import linen as rnn_linen  # pylint: disable=g-import-not-at-top
  module = _module("lstm", 14, num_layers=2, batch_first=True, proj_size=proj_size)
  cell, params = interop.from_torch(module)
  x = _inputs(True, 15)
  with torch.no_grad():
    want, _ = _run_torch(module, torch.from_numpy(x), LENGTHS)
  layer = rnn_linen.RNN(cell)
  got = jax.jit(layer.apply)({"params": {"layer": params}}, x, lengths=np.array(LENGTHS))
  np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def test_gradients_wrt_inputs_match_autograd():
  module = _module("gru", 3, num_layers=2, bidirectional=True, batch_first=True)
  x = _inputs(True, 4)
  rng = np.random.default_rng(5)
  out_weights = rng.standard_normal((BATCH, STEPS, 2 * HIDDEN)).astype(np.float32)
  state_weights = rng.standard_normal((4, BATCH, HIDDEN)).astype(np.float32)

  x_torch = torch.tensor(x, requires_grad=True)
  outputs, h_n = _run_torch(module, x_torch, LENGTHS)
  loss = ((outputs * torch.from_numpy(out_weights)).sum()
          + (h_n * torch.from_numpy(state_weights)).sum())
  loss.backward()

  cell, params = interop.from_torch(module)

  def ours(xs):
    out, final = rnn_jax.rnn(cell, params, xs, lengths=jnp.array(LENGTHS))
    return jnp.sum(out * out_weights) + jnp.sum(interop.to_torch_state(cell, final) * state_weights)

  value, grad = jax.jit(jax.value_and_grad(ours))(x)
  np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
  np.testing.assert_allclose(grad, x_torch.grad.numpy(), atol=1e-5, rtol=0)
  assert np.abs(x_torch.grad.numpy()).max() > 0.1  # a real gradient, zero only past the lengths
  assert np.all(grad[0, LENGTHS[0]:] == 0.0)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_single_step_torch_cells(kind):
  torch.manual_seed(6)
  module = {"rnn_tanh": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[kind](
      INPUT, HIDDEN)
  x = torch.randn(BATCH, INPUT)
  state = _initial_state(kind, 1, 7)
  state = tuple(part[0] for part in state) if kind == "lstm" else state[0]
  with torch.no_grad():
    want = module(x, state)
  cell, params = interop.from_torch(module)
  carry = interop.from_torch_state(cell, jax.tree.map(lambda s: s[None].numpy(), state))
  new_carry, y = cell.step(params, carry, x.numpy())
  got = interop.to_torch_state(cell, new_carry)
  got = tuple(part[0] for part in got) if kind == "lstm" else got[0]
  _assert_state_close(got, _numpy(want))
  np.testing.assert_allclose(y, (want[0] if kind == "lstm" else want).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["rnn_relu", "lstm", "gru"])
def test_to_torch_as_cell_gives_the_torch_cell_back(kind):
  """A converted torch cell comes back as a cell with as_cell=True, as a sequence module without."""
  cells = {"rnn_relu": lambda: torch.nn.RNNCell(INPUT, HIDDEN, nonlinearity="relu"),
           "lstm": lambda: torch.nn.LSTMCell(INPUT, HIDDEN),
           "gru": lambda: torch.nn.GRUCell(INPUT, HIDDEN)}
  torch.manual_seed(16)
  source = cells[kind]()
  cell, params = interop.from_torch(source)
  back = interop.to_torch(cell, params, as_cell=True)
  assert type(back) is type(source)
  assert (back.input_size, back.hidden_size) == (INPUT, HIDDEN)
  x = torch.randn(BATCH, INPUT)
  state = _initial_state(kind, 1, 17)
  state = tuple(part[0] for part in state) if kind == "lstm" else state[0]
  with torch.no_grad():
    want, got = source(x, state), back(x, state)
  carry = interop.from_torch_state(cell, jax.tree.map(lambda s: s[None].numpy(), state))
  _, y = cell.step(params, carry, x.numpy())
  for part_got, part_want in zip(jax.tree.leaves(_numpy(got)), jax.tree.leaves(_numpy(want))):
    np.testing.assert_allclose(part_got, part_want, atol=1e-6, rtol=0)
  np.testing.assert_allclose(y, _numpy(want[0] if kind == "lstm" else want), atol=1e-5, rtol=0)
  # Without as_cell the same cell becomes a one-layer sequence module.
  sequence = interop.to_torch(cell, params)
  assert type(sequence).__name__ == type(source).__name__.replace("Cell", "")
  assert sequence.num_layers == 1 and not sequence.bidirectional


@pytest.mark.parametrize("layer", [
    rnn_jax.gru(HIDDEN, reset_after=False),
    rnn_jax.stack([rnn_jax.lstm(HIDDEN)]),
    rnn_jax.bidirectional(rnn_jax.gru(HIDDEN), rnn_jax.gru(HIDDEN)),
    rnn_jax.mingru(HIDDEN),
], ids=["gru-reset-before", "stack", "bidirectional", "mingru"])
def test_to_torch_as_cell_refuses_what_is_not_a_torch_cell(layer):
  params = jax.eval_shape(lambda key: layer.init(key, INPUT), jax.random.key(0))
  with pytest.raises(ValueError, match=r"to_torch\(as_cell=True\): " + re.escape(repr(layer))):
    interop.to_torch(layer, params, as_cell=True)


def test_to_torch_as_cell_refuses_a_sequence_module():
  cell = rnn_jax.lstm(HIDDEN)
  with pytest.raises(ValueError, match=r"module must be a torch cell, got LSTM"):
    interop.to_torch(cell, cell.init(jax.random.key(0), INPUT), torch.nn.LSTM(INPUT, HIDDEN),
                     as_cell=True)


def test_unbatched_input(rnn_jit):
  module = _module("lstm", 8, num_layers=2, bidirectional=True)
  x = _inputs(False, 9)[:, 0]  # [T, I]
  with torch.no_grad():
    want_out, want_state = module(torch.from_numpy(x))
  cell, params = interop.from_torch(module)
  outputs, final = rnn_jit(cell, params, x)
  np.testing.assert_allclose(outputs, want_out.numpy(), atol=1e-5, rtol=0)
  _assert_state_close(interop.to_torch_state(cell, final), _numpy(want_state))


@pytest.mark.parametrize("cell", [
    rnn_jax.simple_rnn(HIDDEN, "relu"),
    rnn_jax.gru(HIDDEN),
    rnn_jax.stack([rnn_jax.bidirectional(rnn_jax.lstm(HIDDEN), rnn_jax.lstm(HIDDEN))] * 2),
], ids=["rnn_relu", "gru", "lstm_forget_bias1_2x_bidirectional"])
def test_to_torch_round_trip(cell, random_params, rnn_jit):
  params = random_params(cell, INPUT, 10)
  module = interop.to_torch(cell, params, batch_first=True)
  assert module.batch_first and module.input_size == INPUT and module.hidden_size == HIDDEN
  x = _inputs(True, 11)
  with torch.no_grad():
    want_out, want_state = _run_torch(module, torch.from_numpy(x), LENGTHS)
  outputs, final = rnn_jit(cell, params, x, lengths=np.array(LENGTHS, np.int32))
  np.testing.assert_allclose(outputs, want_out.numpy(), atol=1e-5, rtol=0)
  _assert_state_close(interop.to_torch_state(cell, final), _numpy(want_state))
  # And back: from_torch of the written module computes the same function.
  back_cell, back_params = interop.from_torch(module)
  back_out, _ = rnn_jit(back_cell, back_params, x, lengths=np.array(LENGTHS, np.int32))
  np.testing.assert_allclose(back_out, outputs, atol=1e-5, rtol=0)


def test_to_torch_into_existing_module_and_cell():
  source = _module("gru", 12, num_layers=2)
  cell, params = interop.from_torch(source)
  target = _module("gru", 13, num_layers=2)
  assert interop.to_torch(cell, params, target) is target
  for (name, want), (_, got) in zip(source.named_parameters(), target.named_parameters()):
    np.testing.assert_array_equal(got.detach().numpy(), want.detach().numpy(), err_msg=name)
  lstm_cell = torch.nn.LSTMCell(INPUT, HIDDEN)
  cell = rnn_jax.lstm(HIDDEN, forget_bias=1.0)
  params = cell.init(jax.random.key(0), INPUT)
  interop.to_torch(cell, params, lstm_cell)
  np.testing.assert_array_equal(lstm_cell.bias_ih.detach().numpy()[HIDDEN:2 * HIDDEN], 1.0)


PROJ = 2  # proj_size of the projected LSTMs below (< HIDDEN, as torch requires)


@pytest.mark.parametrize("layers, bidir, batch_first, packed, with_state", [
    (1, False, True, False, False), (1, True, False, True, True), (2, True, True, True, True),
    (2, False, False, True, False)], ids=["L1", "L1_bi_packed_h0", "L2_bi_packed_h0", "L2_packed"])
def test_projected_lstm_matches_torch_outputs_states_and_gradients(layers, bidir, batch_first,
                                                                   packed, with_state):
  torch.manual_seed(7)
  module = torch.nn.LSTM(INPUT, HIDDEN, num_layers=layers, bidirectional=bidir,
                         batch_first=batch_first, proj_size=PROJ).eval()
  x = _inputs(batch_first, 8)
  lengths = LENGTHS if packed else None
  directions = layers * (2 if bidir else 1)
  rng = np.random.default_rng(9)
  state = None
  if with_state:
    state = (torch.tensor(rng.standard_normal((directions, BATCH, PROJ)), dtype=torch.float32),
             torch.tensor(rng.standard_normal((directions, BATCH, HIDDEN)), dtype=torch.float32))
  out_weights = rng.standard_normal((BATCH, STEPS, PROJ * (2 if bidir else 1)))
  if not batch_first:
    out_weights = np.swapaxes(out_weights, 0, 1)
  out_weights = out_weights.astype(np.float32)
  h_weights = rng.standard_normal((directions, BATCH, PROJ)).astype(np.float32)
  c_weights = rng.standard_normal((directions, BATCH, HIDDEN)).astype(np.float32)

  x_torch = torch.tensor(x, requires_grad=True)
  want_out, (h_n, c_n) = _run_torch(module, x_torch, lengths, state)
  loss = ((want_out * torch.from_numpy(out_weights)).sum()
          + (h_n * torch.from_numpy(h_weights)).sum() + (c_n * torch.from_numpy(c_weights)).sum())
  loss.backward()

  cell, params = interop.from_torch(module)
  leaf = cell.layers[0] if layers > 1 else cell
  leaf = leaf.forward if bidir else leaf
  assert leaf == rnn_jax.lstm(HIDDEN, forget_bias=0.0, proj_size=PROJ)
  carry = interop.from_torch_state(cell, state) if with_state else None
  length_array = None if lengths is None else jnp.array(lengths)

  def ours(params, xs):
    out, final = rnn_jax.rnn(cell, params, xs, initial_carry=carry, lengths=length_array,
                             time_major=not batch_first)
    h, c = interop.to_torch_state(cell, final)
    value = jnp.sum(out * out_weights) + jnp.sum(h * h_weights) + jnp.sum(c * c_weights)
    return value, (out, h, c)

  (value, (out, h, c)), (d_params, d_x) = jax.jit(
      jax.value_and_grad(ours, argnums=(0, 1), has_aux=True))(params, x)
  np.testing.assert_allclose(out, want_out.detach().numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(h, h_n.detach().numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(c, c_n.detach().numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
  np.testing.assert_allclose(d_x, x_torch.grad.numpy(), atol=1e-4, rtol=0)
  # The parameter gradients, written back in torch's layout and compared name by name.
  grads_module = interop.to_torch(cell, d_params)
  torch_grads = dict(module.named_parameters())
  for name, ours_grad in grads_module.named_parameters():
    if name.startswith("bias_hh"):
      continue  # Our one b holds bias_ih + bias_hh; its gradient is bias_ih's (and bias_hh's).
    want = torch_grads[name].grad.numpy()
    np.testing.assert_allclose(ours_grad.detach().numpy(), want, atol=1e-4, rtol=0, err_msg=name)
  assert any(name.startswith("weight_hr") for name, _ in module.named_parameters())

  # And back: to_torch builds a projected torch.nn.LSTM that computes the same outputs.
  rebuilt = interop.to_torch(cell, params, batch_first=batch_first)
  assert rebuilt.proj_size == PROJ
  with torch.no_grad():
    again, _ = _run_torch(rebuilt, torch.from_numpy(x), lengths, state)
  np.testing.assert_allclose(again.numpy(), want_out.detach().numpy(), atol=1e-6, rtol=0)


def test_projected_lstm_fused_vjp_falls_back_to_autodiff():
  cell = rnn_jax.lstm(HIDDEN, proj_size=PROJ)
  params = cell.init(jax.random.key(1), INPUT)
  xs = jnp.asarray(_inputs(True, 3))
  assert not cell.runs_fused_vjp()
  loss = lambda p, vjp: jnp.sum(rnn_jax.rnn(cell, p, xs, vjp=vjp)[0] ** 2)
  with pytest.warns(UserWarning, match="does nothing"):
    fused = jax.grad(loss)(params, "fused")
  plain = jax.grad(loss)(params, "autodiff")
  for name in params:
    np.testing.assert_array_equal(fused[name], plain[name])


def test_errors():
  with pytest.raises(ValueError, match="without proj_size"):
    projected = rnn_jax.lstm(HIDDEN, proj_size=2)
    interop.to_torch(projected, projected.init(jax.random.key(0), INPUT), as_cell=True)
  with pytest.raises(ValueError, match="no torch counterpart"):
    layer_normed = rnn_jax.lstm(HIDDEN, layer_norm=True)
    interop.to_torch(layer_normed, layer_normed.init(jax.random.key(0), INPUT))
  with pytest.raises(TypeError, match="Linear"):
    interop.from_torch(torch.nn.Linear(INPUT, HIDDEN))
  with pytest.raises(ValueError, match="no torch counterpart"):
    interop.to_torch(rnn_jax.gru(HIDDEN, reset_after=False), None)
  lstm_cell = rnn_jax.lstm(HIDDEN)
  params = lstm_cell.init(jax.random.key(0), INPUT)
  with pytest.raises(ValueError, match="needs a torch.nn.LSTM"):
    interop.to_torch(lstm_cell, params, torch.nn.GRU(INPUT, HIDDEN))
  with pytest.raises(ValueError, match="weight_ih_l0: module has shape"):
    interop.to_torch(lstm_cell, params, torch.nn.LSTM(INPUT + 1, HIDDEN))
  with pytest.raises(ValueError, match="bias=False"):  # forget_bias=1.0 is a non-zero bias
    interop.to_torch(lstm_cell, params, torch.nn.LSTM(INPUT, HIDDEN, bias=False))
  nested = rnn_jax.bidirectional(rnn_jax.stack([lstm_cell] * 2), rnn_jax.stack([lstm_cell] * 2))
  with pytest.raises(ValueError, match="stack of those"):
    interop.to_torch_state(nested, nested.initial_carry((BATCH,)))
  mixed = rnn_jax.stack([lstm_cell, rnn_jax.gru(HIDDEN)])
  with pytest.raises(ValueError, match="LSTM and non-LSTM"):
    interop.to_torch_state(mixed, mixed.initial_carry((BATCH,)))
  with pytest.raises(ValueError, match="leading axis of 2"):
    interop.from_torch_state(rnn_jax.stack([rnn_jax.gru(HIDDEN)] * 2), np.zeros((1, BATCH, HIDDEN)))


def test_interop_imports_without_torch():
  """rnn_jax.interop imports without torch; only calling from_torch needs it."""
  source = ("import sys; sys.modules['torch'] = None; import rnn_jax\n"
            "try: rnn_jax.interop.from_torch(None)\n"
            "except ImportError as error: print(error)")
  result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          check=False)
  assert result.stdout.strip() == ("rnn_jax.interop needs PyTorch: pip install torch (CPU only: "
                                   "add --index-url https://download.pytorch.org/whl/cpu)"), \
      result.stderr
