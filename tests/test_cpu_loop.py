"""The ``"cpu_loop"`` kernel (rnn_jax.cpu_loop, the extension's C++ LSTM) against the scan.

Outputs, final carries and every gradient (parameters, inputs, initial carry)
to 1e-5 against ``kernel="scan"``, over lengths, reverse, resets, batch axes
and vmap; the tests that call the extension are skipped without it, the
refusals always run. One jitted function per kernel, shared by the cases.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import cpu_loop, onednn

import testing
from testing import assert_trees_close, loss_terms, random_params

needs_extension = pytest.mark.skipif(
    not onednn.available(), reason="rnn_jax_onednn is not installed (pip install ./rnn_jax_onednn)")

TOL = dict(rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnames=("layer", "reverse", "kernel"))
def run_and_grad(layer, params, xs, carry, lengths, resets, *, reverse, kernel):
  """``((outputs, final carry), d loss / d (params, xs, initial carry))``."""

  def loss(params, xs, carry):
    outputs, final = rnn_jax.rnn(layer, params, xs, initial_carry=carry, lengths=lengths,
                                 resets=resets, reverse=reverse, kernel=kernel)
    return loss_terms(outputs, final), (outputs, final)

  grads, values = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, carry)
  return values, grads


def resets_at(batch_shape, steps, flagged):
  """``[..., T]`` bool with True at the ``(batch index..., t)`` positions in ``flagged``."""
  resets = np.zeros((*batch_shape, steps), bool)
  for position in flagged:
    resets[position] = True
  return jnp.asarray(resets)


# (cell, batch shape, T, I, reverse, lengths, resets): batch, time and width 1, no batch
# axis, two batch axes, a zero and a full length, resets at step 0 and mid-sequence, a batch
# split between threads.
CASES = {
    "lstm": (rnn_jax.lstm(4), (3,), 5, 3, False, None, None),
    "reverse_2d_batch": (rnn_jax.lstm(3, forget_bias=0.5), (2, 3), 4, 2, True, None, None),
    "h1_t1_b1": (rnn_jax.lstm(1), (1,), 1, 2, False, None, None),
    "no_batch_axis": (rnn_jax.lstm(2, forget_bias=0.0), (), 3, 1, False, None, None),
    "lengths": (rnn_jax.lstm(4), (4,), 6, 3, False, [6, 2, 0, 5], None),
    "lengths_reverse": (rnn_jax.lstm(4), (4,), 6, 3, True, [6, 2, 0, 5], None),
    "resets": (rnn_jax.lstm(3), (3,), 7, 2, False, None, [(0, 2), (1, 0), (2, 6), (0, 5)]),
    "resets_reverse": (rnn_jax.lstm(3), (3,), 7, 2, True, None, [(0, 2), (1, 0), (2, 6)]),
    "resets_lengths_reverse": (rnn_jax.lstm(3), (3,), 7, 2, True, [7, 4, 5],
                               [(0, 3), (1, 2), (1, 5), (2, 4)]),
    # 20 sequences: the C++ loop splits the batch between threads (slices of >= 8 rows).
    "batch_slices": (rnn_jax.lstm(5), (20,), 6, 3, True, [6, 1, 4, 6, 0] * 4,
                     [(1, 2), (9, 3), (10, 4), (17, 1), (19, 5)]),
    "gru": (rnn_jax.gru(4), (3,), 5, 3, False, None, None),
    "gru_reverse_2d_batch": (rnn_jax.gru(3), (2, 3), 4, 2, True, None, None),
    "gru_h1_t1_b1": (rnn_jax.gru(1), (1,), 1, 2, False, None, None),
    "gru_lengths_reverse": (rnn_jax.gru(4), (4,), 6, 3, True, [6, 2, 0, 5], None),
    "gru_resets_lengths_reverse": (rnn_jax.gru(3), (3,), 7, 2, True, [7, 4, 5],
                                   [(0, 3), (1, 2), (1, 5), (2, 4)]),
    "gru_batch_slices": (rnn_jax.gru(5), (20,), 6, 3, False, [6, 1, 4, 6, 0] * 4,
                         [(1, 2), (9, 3), (10, 4), (17, 1), (19, 5)]),
}


def case_inputs(name):
  layer, batch_shape, steps, inputs, reverse, lengths, flagged = CASES[name]
  params = random_params(layer, inputs, seed=1)
  xs = testing.normal(2, (*batch_shape, steps, inputs))
  carry = testing.random_carry(layer, batch_shape, seed=3)
  lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
  resets = None if flagged is None else resets_at(batch_shape, steps, flagged)
  return layer, params, xs, carry, lengths, resets, reverse


@needs_extension
@pytest.mark.parametrize("name", CASES)
def test_outputs_carry_and_all_gradients_match_the_scan(name):
  layer, params, xs, carry, lengths, resets, reverse = case_inputs(name)
  want = run_and_grad(layer, params, xs, carry, lengths, resets, reverse=reverse, kernel="scan")
  got = run_and_grad(layer, params, xs, carry, lengths, resets, reverse=reverse,
                     kernel="cpu_loop")
  assert_trees_close(got, want, **TOL)
  for leaf in jax.tree.leaves(got[1]):
    assert np.abs(np.asarray(leaf)).max() > 0  # Every gradient reaches something.
  jaxpr = str(jax.make_jaxpr(functools.partial(run_and_grad.__wrapped__, layer, reverse=reverse,
                                               kernel="cpu_loop"))(params, xs, carry, lengths,
                                                                   resets))
  target = f"rnn_jax_{layer.name}_loop"
  assert f"{target}_forward" in jaxpr and f"{target}_backward" in jaxpr


@needs_extension
@pytest.mark.parametrize("layer", [rnn_jax.lstm(32), rnn_jax.gru(32)], ids=["lstm", "gru"])
def test_pixel_mnist_shape_matches_the_scan(layer):
  """A long sequence of a narrow input (T = 300, I = 1, H = 32): errors do not grow with T."""
  params = random_params(layer, 1, seed=4)
  params = jax.tree.map(lambda w: 0.3 * w, params)
  xs = testing.normal(5, (2, 300, 1))
  carry = testing.random_carry(layer, (2,), seed=6)
  want = run_and_grad(layer, params, xs, carry, None, None, reverse=False, kernel="scan")
  got = run_and_grad(layer, params, xs, carry, None, None, reverse=False, kernel="cpu_loop")
  assert_trees_close(got, want, rtol=1e-5, atol=2e-5)


@needs_extension
def test_stack_and_bidirectional_run_it_for_every_leaf():
  layer = rnn_jax.stack([rnn_jax.lstm(3), rnn_jax.bidirectional(
      rnn_jax.lstm(2), rnn_jax.gru(2, reset_after=False))])
  params = random_params(layer, 2, seed=7)
  xs = testing.normal(8, (2, 5, 2))
  carry = testing.random_carry(layer, (2,), seed=9)
  lengths = jnp.asarray([5, 3], jnp.int32)
  with pytest.raises(ValueError, match="reset_after=True"):  # The backward half cannot.
    run_and_grad(layer, params, xs, carry, lengths, None, reverse=False, kernel="cpu_loop")
  lstms = rnn_jax.stack([rnn_jax.lstm(3), rnn_jax.bidirectional(rnn_jax.lstm(2),
                                                                 rnn_jax.gru(2))])
  params = random_params(lstms, 2, seed=7)
  carry = testing.random_carry(lstms, (2,), seed=9)
  want = run_and_grad(lstms, params, xs, carry, lengths, None, reverse=False, kernel="scan")
  got = run_and_grad(lstms, params, xs, carry, lengths, None, reverse=False, kernel="cpu_loop")
  assert_trees_close(got, want, **TOL)


@needs_extension
def test_vmap_of_per_example_gradients():
  layer = rnn_jax.lstm(3)
  params = random_params(layer, 2, seed=10)
  xs = testing.normal(11, (4, 5, 2))

  def per_example(kernel):
    loss = lambda p, x: jnp.sum(jnp.tanh(rnn_jax.rnn(layer, p, x, kernel=kernel)[0]))
    return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, xs)

  assert_trees_close(per_example("cpu_loop"), per_example("scan"), **TOL)


@pytest.mark.parametrize("layer, dtype, reason", [
    (rnn_jax.simple_rnn(3), jnp.float32, "LSTM and GRU cells only"),
    (rnn_jax.gru(3, reset_after=False), jnp.float32, "reset_after=True"),
    (rnn_jax.lstm(3, proj_size=2), jnp.float32, "no proj_size or layer_norm"),
    (rnn_jax.lstm(3, compute_dtype=jnp.bfloat16), jnp.float32, "float32, not compute_dtype"),
    (rnn_jax.lstm(3), jnp.bfloat16, "float32 inputs"),
])
def test_refuses_what_it_cannot_run(layer, dtype, reason):
  xs = jnp.zeros((5, 2, 3), dtype)
  assert reason in cpu_loop.unsupported_reason(layer, xs, backend="cpu")
  with pytest.raises(ValueError, match=reason if onednn.available() else "not installed"):
    rnn_jax.rnn(layer, layer.init(jax.random.key(0), 3), xs, time_major=True, kernel="cpu_loop")


def test_refuses_other_backends_and_empty_inputs():
  layer = rnn_jax.lstm(3)
  assert "CPU only" in cpu_loop.unsupported_reason(layer, jnp.zeros((5, 2, 3)), backend="gpu")
  assert "non-empty" in cpu_loop.unsupported_reason(layer, jnp.zeros((0, 2, 3)), backend="cpu")
  assert cpu_loop.unsupported_reason(layer, jnp.zeros((5, 2, 3)), backend="cpu") is None


@needs_extension
@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("kwargs", [{}, {"lengths": np.array([4, 0, 2])}, {"reverse": True}],
                         ids=["whole", "lengths", "reverse"])
def test_a_call_nobody_differentiates_runs_the_forward_without_residuals(name, kwargs):
  """Forward-only calls run the C++ forward that keeps no residuals (its activations output
  is empty), no backward and no oneDNN primitive; the scan's values."""
  layer = getattr(rnn_jax, name)(3)
  params = random_params(layer, 2, seed=12)
  xs = testing.normal(13, (3, 4, 2))
  forward = lambda kernel: (lambda p, x: rnn_jax.rnn(layer, p, x, kernel=kernel, **kwargs))
  jaxpr = str(jax.make_jaxpr(forward("cpu_loop"))(params, xs))
  assert f"rnn_jax_{name}_loop_forward" in jaxpr and "f32[0]" in jaxpr
  assert "loop_backward" not in jaxpr and "rnn_jax_onednn_forward" not in jaxpr
  assert_trees_close(jax.jit(forward("cpu_loop"))(params, xs),
                     jax.jit(forward("scan"))(params, xs), **TOL)


