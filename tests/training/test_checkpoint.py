"""Tests of rnn_jax.training.checkpoint: saves, old layouts, corrupt checkpoints set aside."""

import os
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from rnn_jax.training import checkpoint, loop
from tiny_task import as_numpy, assert_trees_equal, fit, fresh_state


def test_saving_an_existing_step_is_a_no_op(tmp_path):
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"))
  first = {"w": jnp.arange(3.0), "step": jnp.int32(5)}
  store.save(5, first)
  store.save(5, {"w": jnp.zeros(3), "step": jnp.int32(5)})  # Neither raises nor overwrites.
  assert store.steps() == [5]
  step, restored = store.restore_latest(first)
  assert step == 5
  assert_trees_equal(restored, first)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
  messages = []
  store = checkpoint.CheckpointStore(str(tmp_path / "ckpt"), log=messages.append)
  first = fit(fresh_state(), 2, store, checkpoint_every=2)
  first_params = as_numpy(first.params)
  fit(first, 4, store, checkpoint_every=2)  # Donates `first`.
  assert store.steps() == [2, 4]
  for root, _, files in os.walk(tmp_path / "ckpt" / "4"):
    for name in files:
      with open(os.path.join(root, name), "r+b") as stream:
        size = stream.seek(0, 2)
        stream.seek(0)
        stream.write(b"\x00garbage" * (size // 8 + 1))
  step, restored = store.restore_latest(fresh_state())
  assert step == 2
  assert_trees_equal(restored.params, first_params)
  assert len(messages) == 1 and "step 4 is unreadable" in messages[0]
  assert store.steps() == [2]
  assert len(os.listdir(tmp_path / "corrupt_checkpoints")) == 1  # Kept, not deleted.


class _StateBeforeAux(NamedTuple):
  """The train state as checkpointed before ``TrainState.aux`` existed."""

  step: Any
  params: Any
  opt_state: Any
  bad_step: Any
  ema_params: Any


def test_a_state_saved_before_the_aux_slot_is_restored(tmp_path):
  optimizer = optax.adam(0.1)
  params = {"w": jnp.arange(3.0)}
  old = _StateBeforeAux(jnp.int32(4), params, optimizer.init(params), jnp.int32(-1),
                        {"w": jnp.ones(3)})
  manager = ocp.CheckpointManager(  # Written the way the store wrote NamedTuples then.
      str(tmp_path / "ckpt"), options=ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=False))
  manager.save(4, args=ocp.args.StandardSave(old))
  manager.wait_until_finished()
  manager.close()
  template = loop.init_state({"w": jnp.zeros(3)}, optimizer)
  step, restored = checkpoint.CheckpointStore(str(tmp_path / "ckpt")).restore_latest(template)
  assert step == 4 and isinstance(restored, loop.TrainState) and restored.aux is None
  assert_trees_equal(restored[:5], tuple(old))
