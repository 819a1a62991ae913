"""Tests of rnn_jax.kernels: the registry, and a kernel registered from outside the package.

The kernel registered here runs a layer with a Python loop over ``layer.step``
(unrolled at trace time) instead of ``jax.lax.scan``: a different program, so
equal numbers mean the registry really routed the run to it.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import kernels

import testing


def _python_loop_unsupported(layer, params, xs, carry, lengths, backend):
  del params, xs, carry, backend
  if lengths is not None:
    return "the Python loop has no lengths"
  if not isinstance(layer, (rnn_jax.Cell, rnn_jax.LinearRNN)):
    return f"the Python loop steps cells and linear recurrences only, not {layer!r}"
  return None


def _python_loop_run(layer, params, xs, carry, lengths, options):
  del lengths
  order = range(xs.shape[0] - 1, -1, -1) if options.reverse else range(xs.shape[0])
  outputs = [None] * xs.shape[0]
  for t in order:
    carry, outputs[t] = layer.step(params, carry, xs[t])
  return jnp.stack(outputs), carry


PYTHON_LOOP = kernels.Kernel("python_loop", _python_loop_unsupported, _python_loop_run)


@pytest.fixture
def python_loop():
  kernels.register(PYTHON_LOOP)
  yield PYTHON_LOOP
  kernels.unregister(PYTHON_LOOP.name)


def _uses_scan(function, *args) -> bool:
  return re.search(r"\bscan\[", str(jax.make_jaxpr(function)(*args))) is not None


def test_scan_and_onednn_are_registered_with_the_package():
  assert kernels.names()[:2] == ("scan", "onednn")
  assert kernels.get("scan") is kernels.SCAN
  assert kernels.get("onednn") is rnn_jax.onednn.ONEDNN
  with pytest.raises(ValueError, match=r"kernel must be one of \('scan', 'onednn'"):
    kernels.get("cudnn")


@pytest.mark.parametrize("layer", [rnn_jax.lstm(3), rnn_jax.gru(3, reset_after=False),
                                   rnn_jax.mingru(3, parallel=True), rnn_jax.lru(4, 2, skip="dense")],
                         ids=repr)
def test_a_registered_kernel_runs_instead_of_the_scan(python_loop, layer):
  params = layer.init(jax.random.key(0), 2)
  xs = jnp.asarray(testing.normal(1, (2, 5, 2)))
  for reverse in (False, True):
    want = rnn_jax.rnn(layer, params, xs, reverse=reverse)
    got = rnn_jax.rnn(layer, params, xs, reverse=reverse, kernel=python_loop.name)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5), got, want)
  run = lambda kernel: (lambda p, x: rnn_jax.rnn(layer, p, x, kernel=kernel)[0])
  assert not _uses_scan(run(python_loop.name), params, xs)
  assert _uses_scan(run("scan"), params, xs) or layer.runs_parallel()


def test_composites_pass_the_kernel_to_every_leaf(python_loop):
  layer = rnn_jax.stack([rnn_jax.gru(3), rnn_jax.bidirectional(rnn_jax.lstm(2), rnn_jax.lstm(2))])
  params = layer.init(jax.random.key(0), 2)
  xs = jnp.asarray(testing.normal(2, (2, 4, 2)))
  want = rnn_jax.rnn(layer, params, xs)
  got = rnn_jax.rnn(layer, params, xs, kernel=python_loop.name)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5), got, want)
  assert not _uses_scan(lambda p, x: rnn_jax.rnn(layer, p, x, kernel=python_loop.name)[0],
                        params, xs)


def test_a_kernel_that_cannot_run_says_why(python_loop):
  layer = rnn_jax.remat(rnn_jax.gru(2))
  params = layer.init(jax.random.key(0), 2)
  with pytest.raises(ValueError, match=r"kernel='python_loop': the Python loop steps cells"):
    rnn_jax.rnn(layer, params, jnp.ones((1, 3, 2)), kernel=python_loop.name)
  with pytest.raises(ValueError, match="kernel='python_loop': the Python loop has no lengths"):
    rnn_jax.rnn(rnn_jax.gru(2), params, jnp.ones((1, 3, 2)), lengths=jnp.array([2]),
                kernel=python_loop.name)


def test_the_default_takes_a_tuned_kernel_where_it_can_run(python_loop, monkeypatch):
  monkeypatch.setattr(rnn_jax.GRU, "TUNED_KERNEL", {jax.default_backend(): python_loop.name})
  layer = rnn_jax.gru(2)
  params = layer.init(jax.random.key(0), 2)
  xs = jnp.ones((1, 3, 2))
  assert not _uses_scan(lambda p, x: rnn_jax.rnn(layer, p, x)[0], params, xs)
  # Where it cannot run (lengths), the default falls back to the scan, silently.
  assert _uses_scan(lambda p, x: rnn_jax.rnn(layer, p, x, lengths=jnp.array([2]))[0], params, xs)
  # An explicit choice wins over the table.
  assert _uses_scan(lambda p, x: rnn_jax.rnn(layer, p, x, kernel="scan")[0], params, xs)
  resolved = rnn_jax.RunOptions().resolve(layer, xs=jnp.moveaxis(xs, 1, 0))
  assert resolved.kernel == python_loop.name
  # Without the inputs a kernel's checks cannot run: the scan.
  assert rnn_jax.RunOptions().resolve(layer).kernel == "scan"
  # A tuned kernel nobody registered is ignored, not an error.
  kernels.unregister(python_loop.name)
  assert _uses_scan(lambda p, x: rnn_jax.rnn(layer, p, x)[0], params, xs)


def test_register_refuses_what_is_not_a_kernel():
  with pytest.raises(TypeError, match="expected an rnn_jax.kernels.Kernel"):
    kernels.register(("mine", None, None))
  with pytest.raises(ValueError, match="a name other than 'scan'"):
    kernels.register(kernels.Kernel("scan", _python_loop_unsupported, _python_loop_run))
  kernels.unregister("scan")  # Ignored: the scan always stays.
  assert "scan" in kernels.names()
