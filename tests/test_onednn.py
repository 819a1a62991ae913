"""The oneDNN kernel (rnn_jax.onednn, the optional rnn_jax_onednn extension) against the scan.

Tests marked ``needs_extension`` are skipped when ``rnn_jax_onednn`` is not
installed (``pip install ./rnn_jax_onednn``); the fallback tests always run.
Each compared case is one jitted ``(outputs, final carry, gradients)``
function per kernel, shared by the tests so equal cases compile once.
``"onednn_inference"`` (oneDNN's inference forward, the scan's derivatives) is
checked against the scan: forward to 1e-5, gradients and ``jvp`` bit for bit.
"""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import onednn
from rnn_jax.layer import RunOptions

import testing
from testing import assert_trees_close, loss_terms, random_params

needs_extension = pytest.mark.skipif(
    not onednn.available(), reason="rnn_jax_onednn is not installed (pip install ./rnn_jax_onednn)")

TOL = dict(rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnames=("layer", "reverse", "kernel"))
def run_and_grad(layer, params, xs, carry, *, reverse, kernel):
  """``((outputs, final carry), d loss / d (params, xs, initial carry))``."""

  def loss(params, xs, carry):
    outputs, final = rnn_jax.rnn(layer, params, xs, initial_carry=carry, reverse=reverse,
                                 kernel=kernel)
    return loss_terms(outputs, final), (outputs, final)

  grads, values = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, carry)
  return values, grads


def uses_onednn(fn, *args) -> bool:
  return "rnn_jax_onednn_forward" in str(jax.make_jaxpr(fn)(*args))


# (layer, batch shape, T, I, reverse): batch 1, T 1, H 1, no batch axis, extra
# batch axes, both GRU variants, an LSTM forget bias, stacks and bidirectional.
CASES = {
    "lstm": (rnn_jax.lstm(4), (3,), 5, 3, False),
    "lstm_reverse_2d_batch": (rnn_jax.lstm(3, forget_bias=0.5), (2, 3), 4, 2, True),
    "lstm_h1_t1_b1": (rnn_jax.lstm(1), (1,), 1, 2, False),
    "gru_reverse": (rnn_jax.gru(4), (2,), 6, 3, True),
    "gru_no_batch_axis": (rnn_jax.gru(1), (), 3, 1, False),
    "gru_reset_before": (rnn_jax.gru(3, reset_after=False), (2, 2), 3, 2, True),
    "gru_reset_before_t1": (rnn_jax.gru(2, reset_after=False), (1,), 1, 3, False),
    "stack": (rnn_jax.stack([rnn_jax.lstm(3), rnn_jax.gru(4)]), (2,), 4, 3, False),
    "bidirectional": (rnn_jax.bidirectional(rnn_jax.lstm(3), rnn_jax.gru(2)), (2,), 4, 3, False),
}


@needs_extension
@pytest.mark.parametrize("name", CASES)
def test_outputs_carry_and_all_gradients_match_the_scan(name):
  layer, batch_shape, steps, inputs, reverse = CASES[name]
  params = random_params(layer, inputs, seed=1)
  xs = testing.normal(2, (*batch_shape, steps, inputs))
  carry = testing.random_carry(layer, batch_shape, seed=3)
  want = run_and_grad(layer, params, xs, carry, reverse=reverse, kernel="scan")
  got = run_and_grad(layer, params, xs, carry, reverse=reverse, kernel="onednn")
  assert_trees_close(got, want, **TOL)
  for leaf in jax.tree.leaves(got[1]):
    assert np.abs(np.asarray(leaf)).max() > 0  # Every gradient reaches something.


def forward_fn(layer, reverse, kernel):
  return jax.jit(lambda p, x, c: rnn_jax.rnn(layer, p, x, initial_carry=c, reverse=reverse,
                                             kernel=kernel))


@needs_extension
@pytest.mark.parametrize("name", ["lstm_reverse_2d_batch", "gru_reset_before", "bidirectional"])
def test_inference_kernel_runs_onednn_forward_and_differentiates_the_scan(name):
  layer, batch_shape, steps, inputs, reverse = CASES[name]
  params = random_params(layer, inputs, seed=1)
  xs = testing.normal(2, (*batch_shape, steps, inputs))
  carry = testing.random_carry(layer, batch_shape, seed=3)
  # Not differentiated: oneDNN's inference primitive, equal to the scan to 1e-5.
  forward = forward_fn(layer, reverse, "onednn_inference")
  assert uses_onednn(forward, params, xs, carry)
  assert_trees_close(forward(params, xs, carry), forward_fn(layer, reverse, "scan")(
      params, xs, carry), **TOL)
  # Differentiated: the scan's program, so outputs and every gradient equal it bit for bit,
  # and no oneDNN call is left in it.
  got = run_and_grad(layer, params, xs, carry, reverse=reverse, kernel="onednn_inference")
  want = run_and_grad(layer, params, xs, carry, reverse=reverse, kernel="scan")
  assert_trees_close(got, want, rtol=0, atol=0)
  grad = lambda *args: run_and_grad(layer, *args, reverse=reverse, kernel="onednn_inference")
  assert not uses_onednn(grad, params, xs, carry)
  # Forward mode too (a custom_vjp would refuse jvp).
  tangents = jax.tree.map(lambda a: jnp.cos(jnp.asarray(a)), (params, xs, carry))
  jvp = lambda kernel: jax.jvp(forward_fn(layer, reverse, kernel), (params, xs, carry), tangents)
  assert_trees_close(jvp("onednn_inference"), jvp("scan"), rtol=0, atol=0)


@needs_extension
def test_the_defaults_run_the_cpp_loop_not_onednns_primitives():
  """The LSTM's and GRU's default on CPU, the C++ loop, runs its own forward for calls nobody
  differentiates at any batch (it measured faster than oneDNN's inference primitive) and
  its forward and backward for gradients; both equal the scan's to 1e-5."""
  lstm, gru = rnn_jax.lstm(3), rnn_jax.gru(3)
  xs = testing.normal(0, (128, 4, 2))
  carry = testing.random_carry(lstm, (128,), seed=1)
  params = random_params(lstm, 2, seed=2)
  default = lambda layer, **kw: (lambda p, x: rnn_jax.rnn(layer, p, x, **kw))
  for layer, p in ((lstm, params), (gru, random_params(gru, 2, seed=4)),
                   (rnn_jax.stack([lstm, lstm]), [params, random_params(lstm, 3, 3)])):
    assert not uses_onednn(default(layer), p, xs), layer
  grad_jaxpr = str(jax.make_jaxpr(jax.grad(lambda p, x: jnp.sum(default(lstm)(p, x)[0])))(
      params, xs))
  assert "rnn_jax_onednn_forward" not in grad_jaxpr
  assert "rnn_jax_lstm_loop_backward" in grad_jaxpr
  assert_trees_close(forward_fn(lstm, False, None)(params, xs, carry),
                     forward_fn(lstm, False, "scan")(params, xs, carry), **TOL)
  assert_trees_close(run_and_grad(lstm, params, xs, carry, reverse=False, kernel=None),
                     run_and_grad(lstm, params, xs, carry, reverse=False, kernel="scan"), **TOL)


@needs_extension
def test_default_kernel_is_the_cells_tuned_one(monkeypatch):
  xs = testing.normal(0, (2, 3, 2))
  layers = (rnn_jax.lstm(2), rnn_jax.gru(2, reset_after=False), rnn_jax.simple_rnn(2),
            rnn_jax.stack([rnn_jax.simple_rnn(2), rnn_jax.gru(2)]))
  params = [random_params(layer, 2, seed=0) for layer in layers]
  default = lambda layer: (lambda p, x: rnn_jax.rnn(layer, p, x))
  # As measured: no cell picks oneDNN by itself (the LSTM's and GRU's default is the C++ loop).
  for layer, p in zip(layers, params):
    assert not uses_onednn(default(layer), p, xs), layer
  # A backend entry in TUNED_KERNEL makes the default run oneDNN where it can.
  for kind in (rnn_jax.LSTM, rnn_jax.GRU):
    monkeypatch.setattr(kind, "TUNED_KERNEL", {"cpu": "onednn"})
  for layer, p, expected in zip(layers, params, (True, True, False, True)):
    assert uses_onednn(default(layer), p, xs) == expected, layer
    assert not uses_onednn(lambda p, x: rnn_jax.rnn(layer, p, x, kernel="scan"), p, xs)
  # Lengths (which oneDNN has not) make the default fall back to the scan.
  assert not uses_onednn(lambda p, x: rnn_jax.rnn(layers[0], p, x, lengths=jnp.array([3, 1])),
                         params[0], xs)


@needs_extension
@pytest.mark.parametrize("kernel", ["onednn", "onednn_inference"])
def test_vmap_of_forward_and_of_per_example_gradients(kernel):
  layer = rnn_jax.gru(3)
  params = random_params(layer, 2, seed=4)
  xs = testing.normal(5, (3, 2, 4, 2))  # vmapped axis, batch, T, I

  def loss(kernel, params, xs):
    return loss_terms(*rnn_jax.rnn(layer, params, xs, reverse=True, kernel=kernel))

  # Shared parameters and mapped inputs; then per-example gradients, parameters mapped too.
  forward = lambda k: jax.jit(jax.vmap(lambda x: rnn_jax.rnn(layer, params, x, kernel=k)))
  assert_trees_close(forward(kernel)(xs), forward("scan")(xs), **TOL)
  batched_params = jax.tree.map(lambda p: jnp.stack([p, 0.5 * p, -p]), params)
  per_example = lambda k: jax.jit(jax.vmap(jax.grad(functools.partial(loss, k), argnums=(0, 1))))
  assert_trees_close(per_example(kernel)(batched_params, xs),
                     per_example("scan")(batched_params, xs), **TOL)


@needs_extension
def test_bidirectional_runs_its_backward_half_right_to_left():
  """The backward half of a bidirectional LSTM equals a reverse run, and differs from a forward one."""
  cell = rnn_jax.lstm(3)
  layer = rnn_jax.bidirectional(cell, cell)
  params = random_params(layer, 2, seed=6)
  xs = testing.normal(7, (2, 5, 2))
  outputs = rnn_jax.rnn(layer, params, xs, kernel="onednn")[0]
  backward = rnn_jax.rnn(cell, params["backward"], xs, reverse=True, kernel="scan")[0]
  np.testing.assert_allclose(outputs[..., 3:], backward, **TOL)
  forward = rnn_jax.rnn(cell, params["backward"], xs, kernel="scan")[0]
  assert np.abs(np.asarray(outputs[..., 3:] - forward)).max() > 1e-3


@pytest.mark.parametrize("kernel", ["onednn", "onednn_inference"])
@pytest.mark.parametrize("layer, kwargs, dtype, reason", [
    (rnn_jax.lstm(2), {"lengths": np.array([3, 1])}, np.float32, "lengths"),
    (rnn_jax.lstm(2), {"resets": np.array([[False, True, False]] * 2)}, np.float32,
     "resets: oneDNN"),
    (rnn_jax.gru(2), {}, jnp.bfloat16, "float32 inputs"),
    (rnn_jax.simple_rnn(2), {}, np.float32, "LSTM and GRU cells only"),
    (rnn_jax.stack([rnn_jax.simple_rnn(2), rnn_jax.lstm(2)]), {}, np.float32,
     "LSTM and GRU cells only"),
    (rnn_jax.lstm(2), {"compute_dtype": jnp.bfloat16}, np.float32,
     "compute in float32, not compute_dtype=bfloat16"),
])
def test_onednn_kernels_raise_when_they_cannot_run(kernel, layer, kwargs, dtype, reason):
  params = random_params(layer, 2, seed=0)
  xs = jnp.asarray(testing.normal(0, (2, 3, 2)), dtype)
  with pytest.raises(ValueError, match=f"kernel='{kernel}': .*{reason}"):  # Installed or not.
    rnn_jax.rnn(layer, params, xs, kernel=kernel, **kwargs)


@pytest.mark.parametrize("kernel", ["onednn", "onednn_inference"])
def test_onednn_kernels_raise_for_float64(x64, kernel):
  layer = rnn_jax.lstm(2)
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), random_params(layer, 2, seed=0))
  xs = jnp.asarray(testing.normal(0, (2, 3, 2)), jnp.float64)
  with pytest.raises(ValueError, match="float32"):
    rnn_jax.rnn(layer, params, xs, kernel=kernel)


def test_unknown_kernel_is_rejected():
  with pytest.raises(ValueError, match="kernel must be one of"):
    RunOptions(kernel="cudnn")
  layer = rnn_jax.lstm(2)
  with pytest.raises(ValueError, match="kernel must be one of"):
    rnn_jax.rnn(layer, random_params(layer, 2, 0), np.ones((1, 2, 2), np.float32), kernel="dnn")


def test_the_lstms_cpu_tables_name_the_cpp_loop_and_remat_for_long_narrow_inputs():
  xs = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  batch = 128
  assert rnn_jax.LSTM.TUNED_KERNEL == {"cpu": "cpu_loop"}
  assert rnn_jax.lstm(4).tuned_for_shape("cpu", xs(5, batch, 3)) == {}
  assert rnn_jax.lstm(4).tuned_for_shape("cpu", xs(600, 16, 3)) == {"vjp": "remat"}
  assert rnn_jax.gru(4).tuned_for_shape("cpu", xs(5, batch, 3)) == {}
  # A projected LSTM: the C++ loop refuses it, so the default resolves to the scan.
  projected = rnn_jax.lstm(4, proj_size=2)
  params = projected.init(jax.random.key(0), 3)
  inputs = jnp.zeros((5, batch, 3))
  options = rnn_jax.RunOptions().resolve(projected, "cpu", xs=inputs, params=params,
                                         carry=projected.initial_carry((batch,)))
  assert options.kernel == "scan"
  plain = rnn_jax.lstm(4)
  resolve = lambda **kw: rnn_jax.RunOptions(**kw).resolve(
      plain, "cpu", xs=inputs, params=plain.init(jax.random.key(0), 3),
      carry=plain.initial_carry((batch,))).kernel
  assert resolve() == ("cpu_loop" if onednn.available() else "scan")
  # A vjp named explicitly is about the scan's backward: the default keeps the scan.
  assert resolve(vjp="fused") == "scan"


def test_unsupported_reason():
  xs = jnp.ones((3, 2, 2), jnp.float32)
  assert onednn.unsupported_reason(rnn_jax.lstm(2), xs, None) is None
  assert onednn.unsupported_reason(rnn_jax.gru(2, reset_after=False), xs, None) is None
  assert "lengths" in onednn.unsupported_reason(rnn_jax.gru(2), xs, jnp.array([1, 2]))
  assert "LSTM and GRU" in onednn.unsupported_reason(rnn_jax.mingru(2), xs, None)
  for variant in (rnn_jax.lstm(2, proj_size=1), rnn_jax.lstm(2, layer_norm=True)):
    assert "without proj_size or layer_norm" in onednn.unsupported_reason(variant, xs, None)
  assert "empty" in onednn.unsupported_reason(rnn_jax.lstm(2), jnp.ones((3, 0, 2)), None)
  assert "compute_dtype=bfloat16" in onednn.unsupported_reason(
      rnn_jax.gru(2, compute_dtype=jnp.bfloat16), xs, None)
  assert onednn.unsupported_reason(rnn_jax.gru(2, compute_dtype=jnp.float32), xs, None) is None
  # Where a tuned default would pick oneDNN, a bf16 layer resolves to the scan instead.
  tuned = rnn_jax.RunOptions().resolve(rnn_jax.lstm(2, compute_dtype=jnp.bfloat16), "cpu", xs=xs)
  assert tuned.kernel == "scan"


def test_without_the_extension_the_default_is_exactly_the_scan(monkeypatch):
  monkeypatch.setattr(onednn, "available", lambda: False)
  for kind in (rnn_jax.LSTM, rnn_jax.GRU):  # Even where oneDNN would be the tuned kernel.
    monkeypatch.setattr(kind, "TUNED_KERNEL", {"cpu": "onednn"})
  layer = rnn_jax.stack([rnn_jax.lstm(3), rnn_jax.gru(2)])
  params = random_params(layer, 2, seed=8)
  xs = testing.normal(9, (2, 4, 2))
  carry = testing.random_carry(layer, (2,), seed=10)
  # Fresh jitted closures, so that the patched available() is seen at trace time.
  trace = lambda kernel: jax.jit(lambda *args: run_and_grad.__wrapped__(
      layer, *args, reverse=True, kernel=kernel))(params, xs, carry)
  default, scan = trace(None), trace("scan")
  assert_trees_close(default, scan, rtol=0, atol=0)
  assert not uses_onednn(lambda p, x: rnn_jax.rnn(layer, p, x), params, xs)
  with pytest.raises(ValueError, match="not installed: pip install ./rnn_jax_onednn"):
    rnn_jax.rnn(layer, params, xs, kernel="onednn")
  # The LSTM's own TUNED_KERNEL ("cpu_loop"): the scan too, at a large batch as at a small one.
  monkeypatch.undo()
  monkeypatch.setattr(onednn, "available", lambda: False)
  lstm, big = rnn_jax.lstm(2), testing.normal(11, (128, 3, 2))
  lstm_params = random_params(lstm, 2, seed=12)
  forward = lambda kernel: jax.jit(lambda p, x: rnn_jax.rnn(lstm, p, x, kernel=kernel))
  assert_trees_close(forward(None)(lstm_params, big), forward("scan")(lstm_params, big),
                     rtol=0, atol=0)
  with pytest.raises(ValueError, match="not installed: pip install ./rnn_jax_onednn"):
    rnn_jax.rnn(lstm, lstm_params, big, kernel="onednn_inference")


NO_EXTENSION = """
import sys
sys.modules["rnn_jax_onednn"] = None  # `import rnn_jax_onednn` now raises ImportError.
import jax, numpy as np
import rnn_jax
from rnn_jax import onednn
assert not onednn.available()
rnn_jax.LSTM.TUNED_KERNEL = {"cpu": "onednn"}  # Would pick oneDNN, were it installed.
layer = rnn_jax.lstm(3)
params = layer.init(jax.random.key(0), 2)
xs = np.random.default_rng(0).standard_normal((2, 4, 2)).astype(np.float32)
for reverse in (False, True):
  default = rnn_jax.rnn(layer, params, xs, reverse=reverse)
  scan = rnn_jax.rnn(layer, params, xs, reverse=reverse, kernel="scan")
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(scan)):
    np.testing.assert_array_equal(a, b)
assert "rnn_jax_onednn" not in str(jax.make_jaxpr(lambda x: rnn_jax.rnn(layer, params, x))(xs))
rnn_jax.LSTM.TUNED_KERNEL = {"cpu": "onednn_inference"}  # Without the extension: the scan.
big = np.random.default_rng(1).standard_normal((128, 3, 2)).astype("f")
for a, b in zip(jax.tree.leaves(rnn_jax.rnn(layer, params, big)),
                jax.tree.leaves(rnn_jax.rnn(layer, params, big, kernel="scan"))):
  np.testing.assert_array_equal(a, b)
try:
  rnn_jax.rnn(layer, params, xs, kernel="onednn")
except ValueError as error:
  assert "not installed" in str(error), error
else:
  raise AssertionError("kernel='onednn' ran without the extension")
print("ok")
"""


def test_without_the_extension_in_a_fresh_process():
  result = subprocess.run([sys.executable, "-c", NO_EXTENSION], capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "ok"
