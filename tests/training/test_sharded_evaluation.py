"""``language_model.evaluate(mesh=...)`` counts every character once, as on one device.

The split is cut into a number of streams that is not a multiple of the
device count (so ``evaluate`` pads it with masked-out streams) and the loss is
computed over 4 forced CPU devices and with ``mesh=None`` in the same process,
in a subprocess (see :mod:`forced_devices`). A stream counted twice, or a
padding stream counted at all, moves the total by a whole stream's loss.
"""

from __future__ import annotations

import numpy as np

import forced_devices

VOCAB, EMBED, HIDDEN, LENGTH, WINDOW = 7, 4, 16, 203, 8


def _scenario_evaluation_over_four_devices() -> dict:
  """``evaluate`` of one split for several stream counts, with a 4-device mesh and without."""
  # pylint: disable=import-outside-toplevel
  import jax
  import rnn_jax
  from rnn_jax.training import distributed, language_model

  mesh = distributed.make_data_mesh(4)
  assert mesh.size == 4
  model = language_model.CharLM(rnn_jax.gru(HIDDEN), VOCAB, EMBED)
  rng = np.random.default_rng(0)
  # Random parameters (biases included) and random text: every stream's loss differs.
  params = jax.tree.map(lambda leaf: 0.6 * rng.standard_normal(leaf.shape).astype(leaf.dtype),
                        jax.eval_shape(model.init, jax.random.key(0)))
  ids = rng.integers(0, VOCAB, LENGTH).astype(np.int32)
  results = {}
  for streams in (3, 5, 6, 7):
    one = language_model.evaluate(model, params, ids, num_streams=streams, window=WINDOW)
    four = language_model.evaluate(model, distributed.replicate(params, mesh), ids,
                                   num_streams=streams, window=WINDOW, mesh=mesh)
    results[str(streams)] = {"one_device": one, "four_devices": four}
  return results


def test_sharded_evaluation_counts_every_character_once():
  results = forced_devices.run_scenario(__file__, "evaluation_over_four_devices")
  assert sorted(results) == ["3", "5", "6", "7"]
  losses = []
  for streams, result in results.items():
    one, four = result["one_device"], result["four_devices"]
    assert one["count"] == four["count"] == LENGTH - 1, (streams, result)
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5, err_msg=streams)
    np.testing.assert_allclose(four["bpc"], one["bpc"], rtol=1e-5, err_msg=streams)
    losses.append(one["loss"])
  # The stream counts cut the split differently (each stream starts from a zero carry), so the
  # losses differ a little: a comparison of equal numbers would prove nothing.
  assert np.ptp(losses) > 1e-4 and 0.5 < min(losses) and max(losses) < 5.0


if __name__ == "__main__":
  forced_devices.main({"evaluation_over_four_devices": _scenario_evaluation_over_four_devices})
