"""Tests of rnn_jax.checks: it passes what is right and catches what is wrong."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax import kernels
from rnn_jax.checks import assert_run_matches_steps, run_by_steps

import testing

LAYER = rnn_jax.gru(3)
PARAMS = LAYER.init(jax.random.key(0), 2)
XS = testing.normal(1, (3, 6, 2))
LENGTHS = np.array([6, 4, 0])


def test_run_by_steps_is_the_library_semantics_written_out():
  outputs, final = run_by_steps(LAYER, PARAMS, XS, lengths=LENGTHS)
  np.testing.assert_array_equal(outputs[1, 4:], 0.0)  # Zero past the length ...
  np.testing.assert_allclose(final[1], outputs[1, 3], atol=1e-6)  # ... the carry held there.
  np.testing.assert_array_equal(final[2], 0.0)  # Length 0: the initial carry.
  want = rnn_jax.rnn(LAYER, PARAMS, jnp.asarray(XS), lengths=jnp.asarray(LENGTHS))
  np.testing.assert_allclose(outputs, want[0], atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_right_run_passes(reverse):
  assert_run_matches_steps(LAYER, PARAMS, XS, lengths=LENGTHS, reverse=reverse)
  assert_run_matches_steps(rnn_jax.stack([LAYER, rnn_jax.mingru(2)]),
                           rnn_jax.stack([LAYER, rnn_jax.mingru(2)]).init(jax.random.key(1), 2),
                           XS, lengths=LENGTHS, reverse=reverse)


def test_a_wrong_kernel_is_caught():
  """A kernel that ignores ``reverse`` (reads forwards always) must fail the check."""
  scan = kernels.get("scan")

  def forwards_only(layer, params, xs, carry, lengths, options, **kwargs):
    import dataclasses  # pylint: disable=import-outside-toplevel
    return scan.run(layer, params, xs, carry, lengths,
                    dataclasses.replace(options, reverse=False), **kwargs)

  kernels.register(kernels.Kernel("forwards_only", scan.unsupported, forwards_only))
  try:
    options = rnn_jax.RunOptions(kernel="forwards_only")
    assert_run_matches_steps(LAYER, PARAMS, XS, lengths=LENGTHS, options=options)  # Forwards: fine.
    with pytest.raises(AssertionError, match="outputs of gru"):
      assert_run_matches_steps(LAYER, PARAMS, XS, lengths=LENGTHS, reverse=True, options=options)
  finally:
    kernels.unregister("forwards_only")
