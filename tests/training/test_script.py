"""Tests of rnn_jax.training.script pieces not covered through the scripts' own tests."""

import jax

from rnn_jax.training import distributed, script


def test_placement_names_the_platform_and_the_devices_when_data_parallel():
  mesh = distributed.make_data_mesh()
  platform = jax.devices()[0].platform
  assert script.placement(mesh, None) == f"on {platform}"
  assert script.placement(mesh, mesh) == (
      f"on {platform}, data-parallel over {mesh.size} devices of 1 process(es)")
