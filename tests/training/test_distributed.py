"""Tests of rnn_jax.training.distributed: data-parallel steps, evaluation, checkpoints, the HLO.

The multi-device checks need several devices, which JAX fixes when it starts:
each runs this file as a script in a subprocess with 4 forced CPU devices
(``--xla_force_host_platform_device_count``), under ``python <this file>
<scenario>``; a scenario asserts what it checks and prints one JSON line.
The checks of argument errors run in-process, on this process's one device.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import forced_devices

COLLECTIVE = re.compile(r"\b(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute|"
                        r"collective-broadcast)(?:-start)?\(")


def _run_scenario(name: str, *args: str, devices: int = 4) -> dict:
  return forced_devices.run_scenario(__file__, name, *args, devices=devices)


# --- Scenarios, run in a subprocess with forced devices. --------------------------------------


def _scenario_four_devices(directory: str) -> dict:
  """4 sharded steps and a padded evaluation equal one device's; the state restores onto 2."""
  import jax  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel
  from rnn_jax.training import checkpoint, classification, distributed
  import tiny_task  # pylint: disable=import-outside-toplevel

  mesh = distributed.make_data_mesh(4)
  assert mesh.size == 4 and mesh.axis_names == (distributed.DATA_AXIS,)
  runs = {}
  for name, data_mesh in (("one_device", None), ("four_devices", mesh)):
    state = tiny_task.fresh_state()
    if data_mesh is not None:
      state = distributed.replicate(state, data_mesh)
    records = []
    state = tiny_task.fit(state, 4, log_every=1, on_log=records.append, mesh=data_mesh)
    runs[name] = ([record["loss"] for record in records], state)
  losses, single = runs["one_device"]
  sharded_losses, sharded = runs["four_devices"]
  np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6),
               tiny_task.as_numpy(sharded), tiny_task.as_numpy(single))
  for leaf in jax.tree.leaves(sharded):
    assert leaf.sharding == distributed.replicated_sharding(mesh), leaf.sharding

  # 21 examples in batches of 6 -> 8 (rounded up to the devices): the last one is 5 of 8.
  model = tiny_task.setup()[0]
  eval_step = classification.make_eval_step(model)
  inputs, labels = tiny_task.synthetic(21)
  want = classification.evaluate(eval_step, single.params, inputs, labels, batch_size=6)
  got = classification.evaluate(eval_step, sharded.params, inputs, labels, batch_size=6,
                                mesh=mesh)
  assert got["count"] == want["count"] == 21 and got["correct"] == want["correct"], (got, want)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)

  # Saved from 4 devices, restored onto the template's 2.
  two = distributed.make_data_mesh(2)
  store = checkpoint.CheckpointStore(directory, log=lambda line: None)
  store.save(4, sharded)
  step, restored = store.restore_latest(distributed.replicate(tiny_task.fresh_state(), two))
  store.close()
  assert step == 4
  tiny_task.assert_trees_equal(restored, sharded)
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding == distributed.replicated_sharding(two), leaf.sharding
  return {"losses": sharded_losses}


def _scenario_collectives_of_sharded_gradients() -> dict:
  """The collectives in the compiled HLO of gradients with the batch sharded over 4 devices."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import rnn_jax  # pylint: disable=import-outside-toplevel
  from rnn_jax.training import distributed  # pylint: disable=import-outside-toplevel

  mesh = distributed.make_data_mesh(4)
  shardings = (distributed.replicated_sharding(mesh), distributed.batch_sharding(mesh))
  found = {}
  for name, cell in (("lstm", rnn_jax.lstm(16)), ("gru", rnn_jax.gru(16)),
                     ("stack", rnn_jax.stack([rnn_jax.lstm(16), rnn_jax.lstm(16)]))):
    params = cell.init(jax.random.key(0), 8)

    def loss(params, xs, cell=cell):
      outputs, _ = rnn_jax.rnn(cell, params, xs, vjp="fused")
      return jnp.sum(outputs ** 2)

    compiled = jax.jit(jax.grad(loss), in_shardings=shardings).lower(
        params, jnp.ones((8, 12, 8))).compile()
    found[name] = [match.group(1) for line in compiled.as_text().splitlines()
                   for match in [COLLECTIVE.search(line)] if match]
  return found


# --- Tests. -----------------------------------------------------------------------------------


def test_four_devices_match_one_and_their_checkpoint_restores_onto_two(tmp_path):
  losses = _run_scenario("four_devices", str(tmp_path / "ckpt"))["losses"]
  assert len(losses) == 4 and all(np.isfinite(losses))


def test_fused_backward_with_a_sharded_batch_only_all_reduces_weight_gradients():
  """No all-gather: the batch stays split; XLA combines the weight gradients' all-reduces."""
  for name, collectives in _run_scenario("collectives_of_sharded_gradients").items():
    assert collectives and set(collectives) == {"all-reduce"}, (name, collectives)


def test_one_device_mesh_and_batches():
  import jax  # pylint: disable=import-outside-toplevel
  from rnn_jax.training import distributed  # pylint: disable=import-outside-toplevel

  mesh = distributed.make_data_mesh()
  assert mesh.size == jax.device_count() == 1
  np.testing.assert_array_equal(distributed.process_rows(mesh, 6), np.arange(6))
  batch = distributed.global_batch(mesh, 6, lambda rows: {"x": np.arange(12.0).reshape(6, 2)[rows]})
  assert batch["x"].shape == (6, 2) and batch["x"].sharding == distributed.batch_sharding(mesh)


def test_place_state_replicates_the_state_and_shards_the_carried_aux_by_rows():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from rnn_jax.training import distributed, loop, optim  # pylint: disable=import-outside-toplevel

  mesh = distributed.make_data_mesh()
  params = {"w": jnp.arange(6.0).reshape(2, 3)}
  carry = (np.arange(12.0).reshape(6, 2), np.ones((6, 4)))
  state = loop.init_state(params, optim.make_optimizer("adam", 1e-3), aux=carry)
  placed = distributed.place_state(state, mesh, 6)
  assert placed.params["w"].sharding == distributed.replicated_sharding(mesh)
  assert all(leaf.sharding == distributed.batch_sharding(mesh) for leaf in placed.aux)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(placed), jax.device_get(state))
  without_aux = distributed.place_state(state._replace(aux=None), mesh, 6)
  assert without_aux.aux is None
  assert without_aux.step.sharding == distributed.replicated_sharding(mesh)


@pytest.mark.parametrize("call, message", [
    (lambda d: d.check_batch_size(130, 4), "batch_size=130: the global batch must divide by the "
     "device count, 4"),
    (lambda d: d.make_data_mesh(8), "num_devices=8: this run has 1 devices"),
    (lambda d: d.initialize(None, 2, 0), "num_processes=2: needs a coordinator_address"),
    (lambda d: d.initialize("127.0.0.1:1", 2, 2), r"process_id=2: must be in 0\.\.1"),
    (lambda d: d.initialize("127.0.0.1:1", 2, 0, heartbeat_timeout_seconds=0),
     "heartbeat_timeout_seconds=0: must be >= 1"),
])
def test_argument_errors_name_the_numbers(call, message):
  from rnn_jax.training import distributed  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=message):
    call(distributed)


if __name__ == "__main__":
  _SCENARIOS = {"four_devices": _scenario_four_devices,
                "collectives_of_sharded_gradients": _scenario_collectives_of_sharded_gradients}
  forced_devices.main(_SCENARIOS)
