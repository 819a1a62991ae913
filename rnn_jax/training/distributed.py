"""Data parallelism on JAX's SPMD machinery: a ``data`` mesh axis, sharded batches, replication.

A training script that runs on many devices and hosts does five things, all
here:

1. :func:`initialize`: ``jax.distributed.initialize`` for a run of several
   processes (one per host, or several on one machine), before any JAX work.
   On CPU the processes talk through gloo's collectives.
2. :func:`make_data_mesh`: a one-axis mesh (axis :data:`DATA_AXIS`) over the
   first ``num_devices`` devices (0: all of them; each process contributes the
   same number of its local devices).
3. :func:`check_batch_size`: the global batch must divide by the device
   count; the error names both numbers.
4. :func:`replicate`: the train state (parameters, optimizer state) copied
   onto every device of the mesh. A checkpoint restored onto a template made
   this way lands with the same shardings, whatever the device count it was
   saved from (see :meth:`~rnn_jax.training.checkpoint.CheckpointStore.restore_latest`).
5. :func:`global_batch`: each process loads only its own rows of a global
   batch (:func:`process_rows`) and ``jax.make_array_from_process_local_data``
   joins them into one array sharded over ``data``.

Then the ordinary jitted step (:func:`rnn_jax.training.loop.make_train_step`)
follows its inputs' shardings: XLA's SPMD partitioner splits the batch
computation over the devices and all-reduces the gradients, and the model code
knows nothing of it. Every process runs the same steps in the same order
(SPMD); only :func:`is_primary` (process 0) should print, write metrics and
plots.

The global batch, the data order and the seeds do not depend on the device
count, so a run gives the same result on any number of devices up to the
order of float reductions, and a checkpoint written on 4 devices resumes on 2.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
"""The mesh axis that the batch dimension is sharded over."""


def initialize(coordinator_address: str | None = None, num_processes: int = 1,
               process_id: int = 0,
               heartbeat_timeout_seconds: int | None = None) -> None:
  """Joins a run of ``num_processes`` processes (``jax.distributed.initialize``); no-op for one.

  Call it before anything else uses JAX. Every process passes the same
  ``coordinator_address`` (``host:port`` of process 0, which serves it) and
  ``num_processes``, and its own ``process_id``. On CPU the cross-process
  collectives are gloo's. ``heartbeat_timeout_seconds``: JAX's coordination
  service declares a process that has sent no heartbeat for that long dead and
  stops the others (``None``: JAX's default, 100 s in jax 0.10; the many-devices
  guide shows what the stop looks like).

  Raises:
    ValueError: ``"<argument>=<value>: why"``: a missing address, a process id
      out of range, a heartbeat timeout under 1 second.
  """
  if num_processes < 1:
    raise ValueError(f"num_processes={num_processes}: must be >= 1")
  if heartbeat_timeout_seconds is not None and heartbeat_timeout_seconds < 1:
    raise ValueError(f"heartbeat_timeout_seconds={heartbeat_timeout_seconds}: must be >= 1")
  if num_processes == 1:
    return
  if not coordinator_address:
    raise ValueError(f"num_processes={num_processes}: needs a coordinator_address (host:port "
                     "of process 0)")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id}: must be in 0..{num_processes - 1}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timeouts = ({} if heartbeat_timeout_seconds is None
              else {"heartbeat_timeout_seconds": heartbeat_timeout_seconds})
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id, **timeouts)


def is_primary() -> bool:
  """Whether this is process 0, the one that prints and writes metrics, plots and summaries."""
  return jax.process_index() == 0


def make_data_mesh(num_devices: int = 0) -> Mesh:
  """A one-axis mesh (:data:`DATA_AXIS`) over the first ``num_devices`` devices.

  Args:
    num_devices: the global device count, a multiple of the process count;
      each process contributes its first ``num_devices / process_count``
      local devices. 0: every device of every process.

  Returns:
    A ``jax.sharding.Mesh`` of shape ``(num_devices,)`` with an ``Auto`` axis;
    jitted code keeps XLA's sharding propagation, so the model code needs no
    sharding annotations.

  Raises:
    ValueError: ``"num_devices=<value>: why"``: more devices than there are,
      or a count that does not divide by the process count.
  """
  process_count, available = jax.process_count(), jax.device_count()
  num_devices = num_devices or available
  if not 1 <= num_devices <= available:
    raise ValueError(f"num_devices={num_devices}: this run has {available} devices "
                     f"({process_count} process(es))")
  if num_devices % process_count:
    raise ValueError(f"num_devices={num_devices}: does not divide by the {process_count} "
                     "processes; each process uses the same number of its devices")
  per_process = num_devices // process_count
  devices = [device for process in range(process_count)
             for device in jax.local_devices(process_index=process)[:per_process]]
  return jax.make_mesh((num_devices,), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows (the leading axis) split over :data:`DATA_AXIS`, other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, num_devices: int, name: str = "batch_size") -> None:
  """Refuses a global batch that does not divide by the device count.

  Raises:
    ValueError: one line, ``"<name>=<batch_size>: ..."``, naming both numbers.
  """
  if batch_size % num_devices:
    raise ValueError(f"{name}={batch_size}: the global batch must divide by the device count, "
                     f"{num_devices} (use a multiple of {num_devices}, or fewer devices)")


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree``'s array leaves as global arrays replicated over ``mesh``.

  Every process must pass the same values (as it does for a state made from
  the same seed, or restored from the same checkpoint).
  """
  sharding = replicated_sharding(mesh)
  return jax.tree.map(
      lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf),
                                                         np.shape(leaf)), tree)


@functools.lru_cache(maxsize=None)
def process_rows(mesh: Mesh, global_batch_size: int) -> np.ndarray:
  """The rows of every global batch that this process loads: those its devices hold.

  Args:
    mesh: from :func:`make_data_mesh`.
    global_batch_size: ``B``, a multiple of ``mesh.size``.

  Returns:
    Read-only int64 ``[B * local devices / mesh.size]``, the increasing positions
    in the global batch, in the order ``jax.make_array_from_process_local_data``
    expects this process's rows. All of ``range(B)`` for a single process.
  """
  check_batch_size(global_batch_size, mesh.size)
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
  spans = sorted({index[0].indices(global_batch_size)[:2] for index in indices.values()})
  rows = np.concatenate([np.arange(start, stop) for start, stop in spans])
  rows.flags.writeable = False
  return rows


def global_batch(mesh: Mesh, global_batch_size: int,
                 load_rows: Callable[[np.ndarray], Any]) -> Any:
  """A global batch sharded over :data:`DATA_AXIS`, of which this process loads only its share.

  Args:
    mesh: from :func:`make_data_mesh`.
    global_batch_size: ``B``, a multiple of ``mesh.size``.
    load_rows: ``rows -> batch``: given this process's positions in the global
      batch (:func:`process_rows`), a pytree of host arrays whose leading
      axis has one entry per position, in that order.

  Returns:
    The same pytree of ``jax.Array``\\ s of leading size ``B``, sharded over
    ``data`` (on a single process, ``load_rows`` gets ``range(B)``).
  """
  sharding = batch_sharding(mesh)
  local = load_rows(process_rows(mesh, global_batch_size))
  return jax.tree.map(
      lambda leaf: jax.make_array_from_process_local_data(
          sharding, leaf, (global_batch_size, *np.shape(leaf)[1:])), local)


def place_state(state, mesh: Mesh, batch_size: int):
  """A train state on ``mesh``: parameters and optimizer state replicated, the carried ``aux``
  (a pytree whose leaves have the global batch as leading axis, or ``None``) sharded by rows,
  so that row ``b`` of the carry lives with row ``b`` of every batch.

  Args:
    state: a :class:`~rnn_jax.training.loop.TrainState` of host or single-device arrays,
      the same on every process.
    mesh: the data mesh.
    batch_size: the global batch (``aux``'s leading dimension).
  """
  host_aux = jax.device_get(state.aux)
  state = replicate(state._replace(aux=None), mesh)
  if host_aux is None:
    return state
  return state._replace(aux=global_batch(
      mesh, batch_size, lambda rows: jax.tree.map(lambda leaf: np.asarray(leaf)[rows], host_aux)))
