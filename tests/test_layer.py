"""Tests of rnn_jax.layer: the layer protocol every layer kind follows, RunOptions, uses_dropout."""

import dataclasses
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax.layer import RunOptions

import testing

INPUTS = 3
LEAVES = {
    "simple_rnn": rnn_jax.simple_rnn(4),
    "lstm": rnn_jax.lstm(4),
    "gru": rnn_jax.gru(4),
    "mingru": rnn_jax.mingru(4),
    "minlstm_sequential": rnn_jax.minlstm(4, parallel=False),
    "lru": rnn_jax.lru(4, 4, skip="dense"),
}
STEPPABLE = {
    **LEAVES,
    "stack": rnn_jax.stack([rnn_jax.lstm(4), rnn_jax.mingru(3), rnn_jax.gru(2)], dropout=0.5),
    "remat_stack": rnn_jax.remat(rnn_jax.stack([rnn_jax.gru(3), rnn_jax.lru(2, 2, skip="none")])),
}


@pytest.mark.parametrize("name", sorted(STEPPABLE))
def test_stepping_equals_running(name, rnn_jit):
  """``step`` applied T times gives ``rnn``'s outputs and final carry (what generation needs)."""
  layer = STEPPABLE[name]
  params = layer.init(jax.random.key(0), INPUTS)
  xs = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, INPUTS)))
  outputs, final = rnn_jit(layer, params, xs)

  @jax.jit
  def step_through(params, xs):
    carry = layer.initial_carry(2)
    steps = []
    for t in range(xs.shape[1]):
      carry, y = layer.step(params, carry, xs[:, t])
      steps.append(y)
    return jnp.stack(steps, axis=1), carry

  stepped, stepped_final = step_through(params, xs)
  np.testing.assert_allclose(stepped, outputs, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               stepped_final, final)


def test_bidirectional_cannot_step():
  layer = rnn_jax.bidirectional(rnn_jax.gru(2), rnn_jax.gru(2))
  params = layer.init(jax.random.key(0), INPUTS)
  with pytest.raises(TypeError, match="Bidirectional cannot be stepped"):
    layer.step(params, layer.initial_carry(), jnp.ones(INPUTS))


@pytest.mark.parametrize("layer", [
    rnn_jax.lstm(3), rnn_jax.stack([rnn_jax.gru(2), rnn_jax.lstm(3)]),
    rnn_jax.bidirectional(rnn_jax.mingru(2), rnn_jax.lstm(3)), rnn_jax.remat(rnn_jax.lru(2, 3)),
], ids=["cell", "stack", "bidirectional", "remat"])
def test_every_layer_is_a_hashable_value_with_the_protocol(layer):
  assert isinstance(layer, rnn_jax.Layer)
  rebuilt = type(layer)(**{f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)})
  assert rebuilt == layer and rebuilt is not layer and hash(rebuilt) == hash(layer)
  for method in ("init", "initial_carry", "input_size", "run", "step"):
    assert callable(getattr(layer, method))
  params = jax.eval_shape(lambda key: layer.init(key, INPUTS), jax.random.key(0))
  assert layer.input_size(params) == INPUTS
  carry = layer.initial_carry(4)  # An int batch shape is one batch axis.
  assert all(leaf.shape[0] == 4 for leaf in jax.tree.leaves(carry))
  outputs, _ = jax.eval_shape(lambda p: rnn_jax.rnn(layer, p, jnp.zeros((4, 6, INPUTS))), params)
  assert outputs.shape == (4, 6, layer.output_size)


def test_uses_dropout_at_any_depth():
  dropping = rnn_jax.stack([rnn_jax.gru(2), rnn_jax.gru(2)], dropout=0.3)
  plain = rnn_jax.stack([rnn_jax.gru(2), rnn_jax.gru(2)])
  assert rnn_jax.uses_dropout(dropping)
  assert not rnn_jax.uses_dropout(plain) and not rnn_jax.uses_dropout(rnn_jax.lstm(2))
  assert rnn_jax.uses_dropout(rnn_jax.bidirectional(dropping, plain))
  assert rnn_jax.uses_dropout(rnn_jax.bidirectional(plain, dropping))
  assert rnn_jax.uses_dropout(rnn_jax.stack([plain, rnn_jax.stack([dropping])]))
  assert rnn_jax.uses_dropout(rnn_jax.remat(rnn_jax.bidirectional(plain, dropping)))
  assert not rnn_jax.uses_dropout(rnn_jax.remat(rnn_jax.bidirectional(plain, plain)))


def test_run_options_resolve_per_layer_and_backend():
  options = RunOptions()
  assert options.resolve(rnn_jax.lstm(4), "gpu") == RunOptions(
      unroll=8, vjp="fused", hoist=False, kernel="scan", parallel=False)
  assert options.resolve(rnn_jax.gru(4), "cpu") == RunOptions(
      unroll=2, vjp="autodiff", hoist=False, kernel="scan", parallel=False)
  assert options.resolve(rnn_jax.mingru(4), "gpu") == RunOptions(
      unroll=1, vjp="autodiff", hoist=False, kernel="scan", parallel=True)
  # The sequential linear recurrences hoist on CPU (measured faster there); the cells do not.
  assert options.resolve(rnn_jax.minlstm(4), "cpu").hoist is True
  assert options.resolve(rnn_jax.lru(4, 4), "cpu").hoist is True
  assert options.resolve(rnn_jax.lstm(4), "cpu").hoist is False
  assert RunOptions(hoist=False).resolve(rnn_jax.minlstm(4), "cpu").hoist is False
  # ... but never with a single input feature (HOIST_MIN_INPUT_SIZE), unless asked to.
  one_feature, two_features = jnp.zeros((5, 3, 1)), jnp.zeros((5, 3, 2))
  assert options.resolve(rnn_jax.mingru(4), "cpu", xs=one_feature).hoist is False
  assert options.resolve(rnn_jax.mingru(4), "cpu", xs=two_features).hoist is True
  assert RunOptions(hoist=True).resolve(rnn_jax.mingru(4), "cpu", xs=one_feature).hoist is True
  explicit = RunOptions(reverse=True, unroll=3, vjp="autodiff", hoist=True, kernel="scan",
                        parallel=False)
  assert explicit.resolve(rnn_jax.lstm(4), "gpu") == explicit
  assert explicit.flipped() == dataclasses.replace(explicit, reverse=False)
  with pytest.raises(ValueError, match="vjp"):
    RunOptions(vjp="manual")
  assert RunOptions(vjp="remat").resolve(rnn_jax.lstm(4), "cpu").vjp == "remat"


def test_run_options_resolve_per_shape_class():
  """TUNED_BY_SHAPE: on CPU, long sequences of a narrow batch (N * H <= 4096, T >= 512)
  recompute each step (vjp="remat"); other shapes keep the per-backend choice."""
  options = RunOptions()
  pixels = jax.ShapeDtypeStruct((784, 16, 1), jnp.float32)       # [T, N, I], N * H = 2048
  rows = jax.ShapeDtypeStruct((28, 128, 28), jnp.float32)
  wide = jax.ShapeDtypeStruct((784, 2, 17, 1), jnp.float32)      # N = 34: N * H = 4352
  for cell in (rnn_jax.lstm(128), rnn_jax.gru(128)):
    assert options.resolve(cell, "cpu", xs=pixels).vjp == "remat"
    assert options.resolve(cell, "cpu", xs=rows).vjp == "autodiff"
    assert options.resolve(cell, "cpu", xs=wide).vjp == "autodiff"
    assert options.resolve(cell, "cpu").vjp == "autodiff"        # Shape unknown.
    assert options.resolve(cell, "gpu", xs=pixels).vjp == "fused"
    assert RunOptions(vjp="fused").resolve(cell, "cpu", xs=pixels).vjp == "fused"
  assert options.resolve(rnn_jax.gru(128), "cpu", xs=pixels).unroll == 2  # Unchanged.
  assert options.resolve(rnn_jax.remat(rnn_jax.lstm(128)), "cpu", xs=pixels).vjp == "remat"
  assert options.resolve(rnn_jax.simple_rnn(128), "cpu", xs=pixels).vjp == "fused"
  long_and_narrow = rnn_jax.layer.ShapeClass(min_steps=512, max_batch_width=4096)
  assert long_and_narrow.contains(512, 32, 128) and not long_and_narrow.contains(511, 1, 1)
  assert not long_and_narrow.contains(1000, 33, 128)
  assert rnn_jax.layer.ShapeClass().contains(1, 10**6, 10**6)
  with pytest.raises(ValueError, match="unroll must be a positive int"):
    RunOptions(unroll=0)
  with pytest.raises(ValueError, match="hoist must be True, False or None"):
    RunOptions(hoist="yes")
  with pytest.raises(ValueError, match="parallel must be True, False or None"):
    RunOptions(parallel=1)


def test_the_mode_of_a_linear_recurrence_is_resolved_with_the_options():
  """The layer's own ``parallel`` wins; else the options'; else TUNED_PARALLEL per backend."""
  for backend, tuned in (("cpu", False), ("gpu", True)):
    assert RunOptions().resolve(rnn_jax.mingru(4), backend).parallel is tuned
    assert rnn_jax.mingru(4).runs_parallel(backend) is tuned
    for mode in (True, False):
      assert RunOptions(parallel=mode).resolve(rnn_jax.minlstm(4), backend).parallel is mode
      assert RunOptions(parallel=not mode).resolve(rnn_jax.lru(4, 4, parallel=mode),
                                                   backend).parallel is mode
      assert RunOptions().resolve(rnn_jax.remat(rnn_jax.mingru(4, parallel=mode)),
                                  backend).parallel is mode
  # Through rnn: a stack of linear recurrences run in the sequential mode by the options.
  layer = rnn_jax.stack([rnn_jax.mingru(3, parallel=None), rnn_jax.lru(3, 3)])
  params = layer.init(jax.random.key(0), 3)
  xs = jnp.asarray(testing.normal(0, (2, 6, 3)))
  scans = lambda mode: len(re.findall(r"\bscan\[", str(jax.make_jaxpr(
      lambda p, x: rnn_jax.rnn(layer, p, x, options=RunOptions(parallel=mode)))(params, xs))))
  assert scans(False) == 2 and scans(True) == 0  # jax.lax.scan primitives, one per layer.
  np.testing.assert_allclose(rnn_jax.rnn(layer, params, xs, options=RunOptions(parallel=True))[0],
                             rnn_jax.rnn(layer, params, xs, options=RunOptions(parallel=False))[0],
                             atol=1e-5)


def test_rnn_takes_one_options_record_and_keywords_replace_its_fields():
  layer = rnn_jax.gru(3)
  params = layer.init(jax.random.key(0), 2)
  xs = jnp.asarray(testing.normal(1, (2, 5, 2)))
  lengths = jnp.array([5, 3])
  backwards = rnn_jax.rnn(layer, params, xs, lengths=lengths, reverse=True)
  through_options = rnn_jax.rnn(layer, params, xs, lengths=lengths,
                                options=RunOptions(reverse=True, unroll=2))
  jax.tree.map(np.testing.assert_array_equal, through_options, backwards)
  # A keyword given replaces the field; one left at None keeps it.
  forwards = rnn_jax.rnn(layer, params, xs, lengths=lengths,
                         options=RunOptions(reverse=True), reverse=False)
  jax.tree.map(np.testing.assert_array_equal, forwards,
               rnn_jax.rnn(layer, params, xs, lengths=lengths))
  assert RunOptions.of(RunOptions(unroll=4), vjp="fused", hoist=None) == RunOptions(
      unroll=4, vjp="fused")
  with pytest.raises(TypeError, match="options: expected an rnn_jax.RunOptions, got dict"):
    rnn_jax.rnn(layer, params, xs, options={"reverse": True})


def test_vjp_fused_for_a_layer_without_a_fused_backward_says_so():
  layer = rnn_jax.stack([rnn_jax.mingru(2), rnn_jax.remat(rnn_jax.lstm(2))])
  params = layer.init(jax.random.key(0), 2)
  with pytest.warns(UserWarning, match=r"vjp='fused' does nothing for stack\(\[mingru\(2\)"):
    rnn_jax.rnn(layer, params, jnp.ones((1, 3, 2)), vjp="fused")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    mixed = rnn_jax.stack([rnn_jax.mingru(2), rnn_jax.lstm(2)])
    rnn_jax.rnn(mixed, mixed.init(jax.random.key(0), 2), jnp.ones((1, 3, 2)), vjp="fused")


def test_a_layer_class_missing_a_protocol_method_is_refused_when_created():
  with pytest.raises(TypeError, match=r"Half does not define input_size, output_size \(a field "
                                      r"or property\), scan \(or run\), which every"):
    @dataclasses.dataclass(frozen=True)
    class Half(rnn_jax.Layer):  # pylint: disable=unused-variable
      def init(self, key, input_size):
        return {}

      def initial_carry(self, batch_shape=(), dtype=None):
        return jnp.zeros(batch_shape)

      def recur(self, params, carry, px):  # Not a method of the protocol: ignored.
        return carry, carry

  with pytest.raises(TypeError, match=r"NoRecur does not define recur"):
    @dataclasses.dataclass(frozen=True)
    class NoRecur(rnn_jax.Cell):  # pylint: disable=unused-variable
      hidden_size: int

      def init(self, key, input_size):
        return {}

      def project(self, params, x):
        return x

  # An intermediate base says so and is not checked; its concrete subclasses are.
  class Base(rnn_jax.Cell, abstract=True):
    pass

  with pytest.raises(TypeError, match="Concrete does not define init, project, recur"):
    class Concrete(Base):  # pylint: disable=unused-variable
      hidden_size = 2


def test_remat_keeps_the_tuned_unroll():
  """Remat wraps the layer instead of renaming it, so its tuned values survive (GPU: 8)."""
  for cell in (rnn_jax.lstm(4), rnn_jax.gru(4), rnn_jax.simple_rnn(4)):
    assert RunOptions().resolve(rnn_jax.remat(cell), "gpu").unroll == 8
    assert (RunOptions().resolve(rnn_jax.remat(cell), "cpu").unroll
            == RunOptions().resolve(cell, "cpu").unroll)


def test_profiles_show_named_scopes():
  layer = rnn_jax.stack([rnn_jax.lstm(3), rnn_jax.mingru(3)])
  params = layer.init(jax.random.key(0), INPUTS)
  loss = lambda p, x: rnn_jax.rnn(layer, p, x, vjp="fused", kernel="scan")[0].sum()
  text = jax.jit(jax.grad(loss)).lower(params, jnp.ones((2, 4, INPUTS))).as_text(debug_info=True)
  for scope in ("lstm", "fused_lstm", "mingru"):
    assert re.search(rf'"[^"]*\b{scope}\b', text), scope


def test_rnn_names_a_layer_from_another_library():
  params = rnn_jax.gru(2).init(jax.random.key(0), INPUTS)
  with pytest.raises(TypeError, match="expected an rnn_jax layer"):
    rnn_jax.rnn(params, rnn_jax.gru(2), jnp.ones((5, INPUTS)))
  with pytest.raises(TypeError, match="stack layer 1: expected an rnn_jax layer"):
    rnn_jax.stack([rnn_jax.gru(2), object()])


def test_step_names_a_sequence_passed_as_one_step():
  cell = rnn_jax.gru(2)
  params = cell.init(jax.random.key(0), INPUTS)
  with pytest.raises(ValueError, match=r"x: expected one time step of shape \(4, 3\) .* got "
                                       r"\(4, 7, 3\); to run a whole sequence"):
    cell.step(params, cell.initial_carry(4), jnp.ones((4, 7, INPUTS)))
  with pytest.raises(ValueError, match=r"x: expected one time step of shape \(3,\)"):
    rnn_jax.mingru(2).step(rnn_jax.mingru(2).init(jax.random.key(0), 3), jnp.zeros(2),
                           jnp.ones(5))


def test_repr_is_the_factory_call():
  layer = rnn_jax.stack([rnn_jax.bidirectional(rnn_jax.lstm(16, forget_bias=0.0),
                                               rnn_jax.lstm(16, forget_bias=0.0))] * 2,
                        dropout=0.2)
  pair = "bidirectional(lstm(16, forget_bias=0.0), lstm(16, forget_bias=0.0))"
  assert repr(layer) == f"stack([{pair}, {pair}], dropout=0.2)"
  assert eval(repr(layer), vars(rnn_jax)) == layer  # pylint: disable=eval-used
  assert repr(rnn_jax.remat(rnn_jax.lru(4, 4, skip="dense"))) == "remat(lru(4, 4, skip='dense'))"
  assert repr(rnn_jax.gru(3, param_dtype=jnp.bfloat16)) == "gru(3, param_dtype=jnp.bfloat16)"


INIT_CASES = [rnn_jax.lstm(16), rnn_jax.gru(8, reset_after=False), rnn_jax.simple_rnn(8),
              rnn_jax.mingru(8, max_timescale=100.0), rnn_jax.minlstm(8),
              rnn_jax.lstm(8, param_dtype=jnp.bfloat16),
              rnn_jax.stack([rnn_jax.gru(8), rnn_jax.lstm(4)])]


@pytest.mark.parametrize("layer", INIT_CASES, ids=repr)
def test_compiled_init_equals_the_op_by_op_init_bitwise(layer):
  key = jax.random.PRNGKey(7)
  compiled = layer.init(key, 5)
  with jax.disable_jit():
    op_by_op = layer.init(key, 5)
  assert jax.tree.structure(compiled) == jax.tree.structure(op_by_op)
  for got, want in zip(jax.tree.leaves(compiled), jax.tree.leaves(op_by_op)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_compiled_init_of_the_lru_is_within_one_ulp():
  layer = rnn_jax.lru(8, 6, skip="dense")
  compiled = layer.init(jax.random.PRNGKey(1), 5)
  with jax.disable_jit():
    op_by_op = layer.init(jax.random.PRNGKey(1), 5)
  for got, want in zip(jax.tree.leaves(compiled), jax.tree.leaves(op_by_op)):
    np.testing.assert_array_max_ulp(np.asarray(got), np.asarray(want), maxulp=1)


def test_init_compiles_once_per_layer_and_input_size():
  traces = []

  def counting_init(key, shape, dtype=jnp.float32):
    traces.append(shape)
    return jax.nn.initializers.glorot_uniform()(key, shape, dtype)

  layer = rnn_jax.gru(4, kernel_init=counting_init)
  first = layer.init(jax.random.PRNGKey(0), 3)
  again = layer.init(jax.random.PRNGKey(1), 3)
  assert len(traces) == 1  # Traced once (one vmapped draw for the three gate blocks).
  assert not np.array_equal(first["w_ih"], again["w_ih"])  # A new key, new values.
  layer.init(jax.random.PRNGKey(0), 6)
  assert len(traces) == 2  # A new input size compiles anew.
  # Inside a user's jit, with a traced key.
  inside = jax.jit(lambda key: rnn_jax.gru(4, kernel_init=counting_init).init(key, 3))
  np.testing.assert_array_equal(inside(jax.random.PRNGKey(0))["w_ih"], first["w_ih"])


@pytest.mark.parametrize("input_size", [0, -1, 2.0, True, "3"])
def test_init_names_a_bad_input_size(input_size):
  with pytest.raises(ValueError, match="input_size must be a positive int"):
    rnn_jax.lstm(4).init(jax.random.PRNGKey(0), input_size)
