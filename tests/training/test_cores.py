"""Tests of rnn_jax.training.cores: the table of cell builders, stacking and remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax.training import classification, cores, language_model


@pytest.mark.parametrize("name", ["lstm", "gru", "mingru", "minlstm", "lru"])
def test_remat_cell_same_outputs_and_gradients(name):
  plain = cores.build_core(name, 6)
  remat = cores.build_core(name, 6, remat=True)
  params = plain.init(jax.random.key(0), 2)
  xs = jnp.asarray(np.random.default_rng(1).normal(size=(3, 7, 2)), jnp.float32)

  def loss(core, params):
    return jnp.sum(rnn_jax.rnn(core, params, xs)[0] ** 2)

  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  expected_value, expected = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  np.testing.assert_allclose(value, expected_value, rtol=1e-6)
  for key in expected:
    np.testing.assert_allclose(grads[key], expected[key], rtol=1e-5, atol=1e-6)


def test_registry_names_and_irnn_initialisation():
  assert {"lstm", "gru", "rnn", "irnn"} <= set(cores.CELLS)
  irnn = cores.CELLS["irnn"](4)
  params = irnn.init(jax.random.key(0), 3)
  np.testing.assert_array_equal(params["w_hh"], np.eye(4))
  assert float(jnp.std(params["w_ih"])) < 0.01
  assert irnn.activation == "relu"
  assert cores.CELLS["rnn"](4) == rnn_jax.simple_rnn(4, "tanh")
  assert cores.CELLS["irnn"](4) == irnn  # Hashable and equal: one compile for equal cores.
  with pytest.raises(ValueError, match="cell_name"):
    cores.build_core("nope", 4)


def test_registry_cells_take_the_tasks_sequence_length():
  assert set(cores.CELLS) == {"lstm", "gru", "rnn", "irnn", "mingru", "minlstm", "lru"}
  assert cores.CELLS["mingru"](4, 784) == rnn_jax.mingru(4, max_timescale=784)
  assert cores.CELLS["minlstm"](4, 64) == rnn_jax.minlstm(4, max_timescale=64)
  assert cores.CELLS["mingru"](4) == rnn_jax.mingru(4)  # None: the cell's own default.
  assert cores.CELLS["lru"](4, 784) == rnn_jax.lru(4, 4, r_min=0.9, r_max=0.999, skip="dense")
  assert cores.build_core("mingru", 4, 2, sequence_length=32).layers[1] == rnn_jax.mingru(
      4, max_timescale=32)
  # Pixel MNIST's 784 steps for the classifier; the BPTT window for the character LM.
  assert classification.ClassificationTask(cell="mingru", hidden_size=4).model.core == (
      rnn_jax.mingru(4, max_timescale=784))
  assert language_model.CharLMTask(cell="minlstm", hidden_size=4, window=16).model(5).core == (
      rnn_jax.minlstm(4, max_timescale=16))


def test_remat_keeps_a_stacks_dropout():
  core = cores.build_core("gru", 4, num_layers=2, dropout=0.5, remat=True)
  assert isinstance(core, rnn_jax.Stack) and core.dropout == 0.5
  assert all(isinstance(layer, rnn_jax.Remat) for layer in core.layers)


def test_register_cell_makes_a_cell_buildable_by_name_and_a_flag_value(monkeypatch):
  from experiments import train_mnist  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(cores, "CELLS", dict(cores.CELLS))  # The registration leaves with the test.
  builder = lambda hidden_size, sequence_length: rnn_jax.gru(hidden_size, reset_after=False)
  with pytest.raises(Exception, match="unknown cell; choose one of"):
    train_mnist.MnistConfig.resolve({"cell": "gru_v1"})
  cores.register_cell("gru_v1", builder)
  cores.register_cell("gru_v1", builder)  # The same builder again: nothing changes.
  assert train_mnist.MnistConfig.resolve({"cell": "gru_v1"}).cell == "gru_v1"
  core = cores.build_core("gru_v1", 4, 2)
  assert core.layers == (rnn_jax.gru(4, reset_after=False),) * 2
  with pytest.raises(ValueError, match="'gru' already names a cell builder"):
    cores.register_cell("gru", builder)
