"""rnn_jax.export against rnn_jax.rnn, run in onnxruntime (tiny: I=3, H=4, batch 1 or 3, T 1 or 5).

One file per layer kind and lengths setting serves every batch size and length (dynamic axes);
the initial carry is fed (random, complex for the LRU) or left at its zero default.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from experiments import bench_export
from rnn_jax import export

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ort.set_default_logger_severity(3)  # Not the per-session note on overridable initializers.

INPUT, HIDDEN = 3, 4
SHAPES = ((1, 1), (3, 5))  # (batch, time), both from one exported file.
LAYERS = {
    "rnn_tanh": rnn_jax.simple_rnn(HIDDEN),
    "rnn_relu": rnn_jax.simple_rnn(HIDDEN, "relu"),
    "lstm": rnn_jax.lstm(HIDDEN, forget_bias=0.7),
    "gru": rnn_jax.gru(HIDDEN),
    "gru_reset_before": rnn_jax.gru(HIDDEN, reset_after=False),
    "mingru": rnn_jax.mingru(HIDDEN),
    "mingru_g": rnn_jax.mingru(HIDDEN, "g"),
    "minlstm": rnn_jax.minlstm(HIDDEN),
    "minlstm_g": rnn_jax.minlstm(HIDDEN, "g"),
    "lru": rnn_jax.lru(5, INPUT),
    "lru_dense": rnn_jax.lru(5, 2, skip="dense"),
    "lru_none": rnn_jax.lru(5, 2, skip="none"),
    "stack": rnn_jax.stack([rnn_jax.gru(HIDDEN), rnn_jax.lstm(HIDDEN)], dropout=0.5),
    "bidirectional_lstm": rnn_jax.bidirectional(rnn_jax.lstm(HIDDEN), rnn_jax.lstm(HIDDEN)),
    "bidirectional_gru_sum": rnn_jax.bidirectional(rnn_jax.gru(HIDDEN), rnn_jax.gru(HIDDEN),
                                                   "sum"),
    "bidirectional_mixed": rnn_jax.bidirectional(rnn_jax.lstm(HIDDEN), rnn_jax.gru(3)),
    "bidirectional_linear_mean": rnn_jax.bidirectional(
        rnn_jax.mingru(HIDDEN), rnn_jax.lru(6, HIDDEN, skip="none"), "mean"),
    # A bidirectional layer read backwards: the inner one-operator pair runs reversed.
    "nested": rnn_jax.bidirectional(
        rnn_jax.stack([rnn_jax.minlstm(HIDDEN), rnn_jax.simple_rnn(HIDDEN)]),
        rnn_jax.bidirectional(rnn_jax.simple_rnn(HIDDEN),
                              rnn_jax.simple_rnn(HIDDEN, "relu"), "sum")),
    # Rematerialisation (per step or every k steps) changes only the backward pass.
    "remat": rnn_jax.remat(rnn_jax.stack([rnn_jax.lstm(HIDDEN), rnn_jax.mingru(HIDDEN)]),
                           every=3),
}


def _carry(layer, batch, rng):
  """A random carry of ``layer`` for one batch axis (complex leaves with an imaginary part)."""
  def draw(leaf):
    values = rng.normal(size=leaf.shape)
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
      values = values + 1j * rng.normal(size=leaf.shape)
    return np.asarray(values, leaf.dtype)
  return jax.tree.map(draw, jax.eval_shape(lambda: layer.initial_carry(batch)))


def _session(path):
  return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, feeds):
  names = [output.name for output in session.get_outputs()]
  return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize("name", LAYERS)
def test_onnxruntime_matches_rnn(name, tmp_path, rnn_jit, random_params):
  """Outputs and final carries to 1e-5: every shape, with and without lengths, fed or zero carry."""
  layer = LAYERS[name]
  params = random_params(layer, INPUT, seed=1)
  rng = np.random.default_rng(0)
  for lengths in (False, True):
    path = tmp_path / f"{name}_{lengths}.onnx"
    export.to_onnx(layer, params, path, lengths=lengths)
    session = _session(path)
    for batch, steps in SHAPES:
      xs = rng.normal(size=(batch, steps, INPUT)).astype(np.float32)
      valid = np.full(batch, steps, np.int32)
      if lengths:  # A zero length, a full one and a length past the end (clipped).
        valid = np.array([0, steps, steps + 2][:batch] if batch > 1 else [steps], np.int32)
        valid[-1] = rng.integers(0, steps + 1) if batch > 1 else valid[-1]
      feeds = {"xs": xs, **({"lengths": valid} if lengths else {})}
      for carry in (_carry(layer, batch, rng), None):
        if carry is None:
          given = {}
          carry = jax.tree.map(np.zeros_like, _carry(layer, batch, rng))
        else:
          given = export.carry_inputs(layer, carry)
        got = _run(session, {**feeds, **given})
        outputs, final = rnn_jit(layer, params, xs, initial_carry=carry, lengths=valid)
        np.testing.assert_allclose(got["outputs"], outputs, atol=1e-5, rtol=0)
        got_final = export.carry_from_outputs(layer, got)
        assert jax.tree.structure(got_final) == jax.tree.structure(final)
        for got_leaf, leaf in zip(jax.tree.leaves(got_final), jax.tree.leaves(final)):
          np.testing.assert_allclose(got_leaf, leaf, atol=1e-5, rtol=0)


def test_interface_names_and_dynamic_axes(tmp_path, random_params):
  layer = rnn_jax.stack([rnn_jax.gru(HIDDEN),
                         rnn_jax.bidirectional(rnn_jax.lstm(2), rnn_jax.lru(3, 2, skip="none"))])
  params = random_params(layer, INPUT, seed=0)
  model = export.to_onnx(layer, params, tmp_path / "m.onnx", lengths=True)
  names = ("0.h", "1.forward.h", "1.forward.c", "1.backward.h_re", "1.backward.h_im")
  assert export.carry_names(layer) == names

  def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

  inputs = {value.name: dims(value) for value in model.graph.input}
  assert inputs == {"xs": ["batch", "time", INPUT], "lengths": ["batch"],
                    **{f"initial_{n}": ["batch", size] for n, size in zip(names, (4, 2, 2, 3, 3))}}
  outputs = {value.name: dims(value) for value in model.graph.output}
  assert outputs == {"outputs": ["batch", "time", 4],
                     **{n: ["batch", size] for n, size in zip(names, (4, 2, 2, 3, 3))}}
  session = _session(tmp_path / "m.onnx")
  assert [i.name for i in session.get_inputs()] == ["xs", "lengths"]
  assert {i.name for i in session.get_overridable_initializers()} == {f"initial_{n}"
                                                                       for n in names}


@pytest.mark.parametrize("layer, operators", [
    (rnn_jax.bidirectional(rnn_jax.gru(HIDDEN), rnn_jax.gru(HIDDEN)), {"GRU": ["bidirectional"]}),
    (rnn_jax.bidirectional(rnn_jax.gru(HIDDEN), rnn_jax.gru(HIDDEN, reset_after=False)),
     {"GRU": ["forward", "reverse"]}),
    (rnn_jax.bidirectional(rnn_jax.remat(rnn_jax.simple_rnn(HIDDEN)),
                           rnn_jax.simple_rnn(HIDDEN, "relu")), {"RNN": ["bidirectional"]}),
    (rnn_jax.stack([rnn_jax.lstm(HIDDEN), rnn_jax.lru(2, 2, skip="dense")]),
     {"LSTM": ["forward"], "Scan": [None]}),
])
def test_operators(layer, operators, tmp_path, random_params):
  """Same-kind halves share one operator with direction="bidirectional"; the rest, their own."""
  model = export.to_onnx(layer, random_params(layer, INPUT, seed=0), tmp_path / "m.onnx")
  found = {}
  for node in model.graph.node:
    if node.op_type in ("RNN", "LSTM", "GRU", "Scan"):
      direction = [a.s.decode() for a in node.attribute if a.name == "direction"]
      found.setdefault(node.op_type, []).append(direction[0] if direction else None)
  assert found == operators
  # Every value has one name across the graph and the Scan bodies (none shadows another).
  def names(graph):
    for node in graph.node:
      yield from node.output
      for attribute in node.attribute:
        if attribute.g.name:
          yield from (value.name for value in attribute.g.input)
          yield from names(attribute.g)
  produced = list(names(model.graph)) + [value.name for value in model.graph.initializer]
  assert len(produced) == len(set(produced))


def test_chunked_streaming_equals_one_call(tmp_path, random_params):
  """Each chunk's final carry fed into the next gives the whole sequence's outputs and carry."""
  layer = rnn_jax.stack([rnn_jax.lstm(HIDDEN), rnn_jax.lru(3, 2, skip="none")])
  export.to_onnx(layer, random_params(layer, INPUT, seed=2), tmp_path / "m.onnx")
  session = _session(tmp_path / "m.onnx")
  xs = np.random.default_rng(3).normal(size=(2, 9, INPUT)).astype(np.float32)
  whole = _run(session, {"xs": xs})
  carry, chunks = {}, []
  for start in range(0, 9, 4):  # chunks of 4, 4 and 1 steps
    got = _run(session, {"xs": xs[:, start:start + 4], **carry})
    chunks.append(got["outputs"])
    carry = {f"initial_{name}": got[name] for name in export.carry_names(layer)}
  np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole["outputs"], atol=1e-5)
  for name in export.carry_names(layer):
    np.testing.assert_allclose(carry[f"initial_{name}"], whole[name], atol=1e-5)


@pytest.mark.parametrize("opset", [export.MIN_OPSET, 21])
def test_opsets(opset, tmp_path, rnn_jit, random_params):
  layer = rnn_jax.stack([rnn_jax.lstm(HIDDEN), rnn_jax.minlstm(HIDDEN)])
  params = random_params(layer, INPUT, seed=0)
  model = export.to_onnx(layer, params, tmp_path / "m.onnx", lengths=True, opset=opset)
  assert model.opset_import[0].version == opset
  xs = np.random.default_rng(4).normal(size=(3, 5, INPUT)).astype(np.float32)
  valid = np.array([5, 2, 0], np.int32)
  got = _run(_session(tmp_path / "m.onnx"), {"xs": xs, "lengths": valid})
  np.testing.assert_allclose(got["outputs"], rnn_jit(layer, params, xs, lengths=valid)[0],
                             atol=1e-5, rtol=0)


@pytest.mark.parametrize("opset", [12, 10_000, 17.0, True])
def test_refuses_an_opset_out_of_range(opset, tmp_path, random_params):
  layer = rnn_jax.gru(HIDDEN)
  with pytest.raises(ValueError, match=r"opset must be an int from 13"):
    export.to_onnx(layer, random_params(layer, INPUT, seed=0), tmp_path / "m.onnx", opset=opset)


def test_refuses_a_layer_it_cannot_write_naming_it(tmp_path, random_params):
  class PeepholeLSTM(rnn_jax.LSTM):  # A subclass may compute anything: refused by kind.
    pass

  layer = rnn_jax.stack([rnn_jax.gru(HIDDEN), PeepholeLSTM(HIDDEN)])
  params = random_params(layer, INPUT, seed=0)
  with pytest.raises(ValueError, match=r"cannot export PeepholeLSTM lstm\(4\): no ONNX mapping"):
    export.to_onnx(layer, params, tmp_path / "m.onnx")
  assert not (tmp_path / "m.onnx").exists()
  with pytest.raises(TypeError, match="layer"):
    export.to_onnx("lstm", params, tmp_path / "m.onnx")


def test_refuses_a_hyperparameter_it_does_not_know(tmp_path, monkeypatch, random_params):
  """A field added to a layer after the exporter (here: forget_bias made unknown) must keep its
  default; the default itself still exports."""
  known = dict(export.KNOWN_FIELDS)
  known[rnn_jax.LSTM] = known[rnn_jax.LSTM] - {"forget_bias"}
  monkeypatch.setattr(export, "KNOWN_FIELDS", known)
  layer = rnn_jax.bidirectional(rnn_jax.gru(HIDDEN), rnn_jax.lstm(HIDDEN, forget_bias=0.0))
  with pytest.raises(ValueError, match=r"cannot export LSTM lstm\(4, forget_bias=0.0\): its "
                                       r"forget_bias=0.0 has no ONNX mapping"):
    export.to_onnx(layer, random_params(layer, INPUT, seed=0), tmp_path / "m.onnx")
  default = rnn_jax.lstm(HIDDEN)
  export.to_onnx(default, random_params(default, INPUT, seed=0), tmp_path / "m.onnx")


def test_refuses_a_merge_function(tmp_path, random_params):
  def halves_product(forward, backward):
    return forward * backward

  layer = rnn_jax.bidirectional(rnn_jax.gru(HIDDEN), rnn_jax.gru(HIDDEN), halves_product)
  with pytest.raises(ValueError, match=r"cannot export Bidirectional .*halves_product.*: its "
                                       r"merge function has no ONNX mapping"):
    export.to_onnx(layer, random_params(layer, INPUT, seed=0), tmp_path / "m.onnx")


def test_refuses_params_of_another_layer(tmp_path, random_params):
  with pytest.raises(ValueError, match="params"):
    export.to_onnx(rnn_jax.lstm(HIDDEN), random_params(rnn_jax.gru(HIDDEN), INPUT, seed=0),
                   tmp_path / "m.onnx")


@pytest.mark.slow  # Compiles two forwards and builds torch's module: about 10 s.
def test_bench_export_quick(tmp_path, capsys):
  """The benchmark script's smoke run: it checks onnxruntime against rnn_jax, then tabulates."""
  bench_export.main(["--quick", "--cells", "lstm", "--threads", "1", "--out", str(tmp_path)])
  rows = json.loads((tmp_path / "bench_export_quick_threads1.json").read_text())["rows"]
  assert {row["runtime"] for row in rows} >= {"rnn_jax", "onnxruntime"}
  assert all(row["median_ms"] > 0 for row in rows)
  assert "| lstm | (4, 6, 3, 8) |" in capsys.readouterr().out
