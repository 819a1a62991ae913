"""Data-parallel scaling of the MNIST training step: steps/s and examples/s against device count.

    python -m experiments.bench_devices                          # every device JAX sees
    python -m experiments.bench_devices --cpu_devices=4          # 4 forced CPU devices
    python -m experiments.bench_devices --batch_size=512 --rounds=5 --label=h100

It times, interleaved round by round in one process, the MNIST training step
of ``experiments/train_mnist.py`` (GRU 128 on the rows view, ``[28, 28]``
inputs, Adam, a fixed global batch) through
:func:`rnn_jax.training.classification.fit_classifier`, so each step includes
what a run does per step on the host:

* ``unsharded``: the single-device path (the split kept on the device, each
  step gathering its rows there), what a run on one device uses;
* ``sharded N``: the data-parallel path on the first N devices (1, 2, 4, ...
  up to all): the state replicated, each step's batch gathered on the host and
  sharded over the ``data`` axis (:mod:`rnn_jax.training.distributed`).
  ``sharded 1`` against ``unsharded`` is the overhead of the sharded path on
  one device.

The inputs are random (the speed does not depend on them). It prints a table
with the median over rounds and writes ``<label>.json`` to ``--out``.

Forced CPU devices (``--cpu_devices``) share the machine's cores: they show
that the sharded path runs and what its overhead is, not a speed-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from rnn_jax.training import runtime

if __name__ == "__main__":
  runtime.use_fast_allocator()

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments import benchmarking  # pylint: disable=wrong-import-position
from rnn_jax.training import (  # pylint: disable=wrong-import-position
    classification, distributed, loop, optim)
from rnn_jax.training.config import setting  # pylint: disable=wrong-import-position


def device_counts(available: int) -> list[int]:
  """1, 2, 4, ... up to ``available``, and ``available`` itself."""
  counts = [1 << power for power in range(available.bit_length()) if 1 << power <= available]
  return counts if counts[-1] == available else [*counts, available]


def make_cases(batch_size: int, hidden_size: int, num_examples: int) -> dict:
  """``name -> (run(num_steps), devices)``; ``run`` trains that many more steps and waits."""
  model = classification.classifier(classification.build_core("gru", hidden_size), 10)
  optimizer = optim.make_optimizer("adam", 1e-3, clip_norm=1.0)
  train_step = classification.make_train_step(model, optimizer, seed=0)
  rng = np.random.default_rng(0)
  inputs = rng.random((num_examples, 28, 28), dtype=np.float32)
  labels = rng.integers(0, 10, num_examples).astype(np.int32)

  def case(mesh):
    state = classification.create_state(model, optimizer, jax.random.key(0), 28)
    if mesh is not None:
      state = distributed.replicate(state, mesh)
    current = [state]

    def run(num_steps):
      state = current[0]
      target = int(state.step) + num_steps
      current[0] = classification.fit_classifier(
          state, train_step, inputs, labels, seed=0, batch_size=batch_size, num_steps=target,
          mesh=mesh, reporter=loop.Reporter(log_every=target, log=lambda line: None))

    return run

  cases = {"unsharded": (case(None), 1)}
  for count in device_counts(jax.device_count()):
    if batch_size % count == 0:
      cases[f"sharded {count}"] = (case(distributed.make_data_mesh(count)), count)
  return cases


@dataclasses.dataclass(frozen=True)
class DevicesConfig(benchmarking.BenchConfig):
  """The benchmark's settings; each field is a flag."""

  out: str = setting("experiments/results/devices", "Folder the <label>.json goes to.")
  label: str = setting("cpu", "A name for the machine: the results file's name.")
  cpu_devices: int = setting(0, "Force this many CPU devices (0: JAX's default devices).",
                             lower=0)
  batch_size: int = setting(128, "Global batch.", lower=1)
  hidden_size: int = setting(128, "Units of the GRU.", lower=1)
  steps: int = setting(20, "Timed steps per case and round.", lower=1)
  rounds: int = setting(3, "Rounds (the median is reported).", lower=1)


def main(argv=None):
  config = benchmarking.parse(DevicesConfig, argv)
  if config.cpu_devices:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", config.cpu_devices)

  cases = make_cases(config.batch_size, config.hidden_size,
                     num_examples=max(4096, config.batch_size))
  for run, _ in cases.values():  # Compiles.
    run(2)
  seconds = {name: [] for name in cases}
  for _ in range(config.rounds):
    for name, (run, _) in cases.items():
      started = time.perf_counter()
      run(config.steps)
      seconds[name].append(time.perf_counter() - started)

  device = jax.devices()[0]
  device_name = device.platform if device.platform == "cpu" else device.device_kind
  rows = []
  for name, (_, count) in cases.items():
    steps_per_second = config.steps / float(np.median(seconds[name]))
    rows.append({"case": name, "devices": count, "steps_per_second": round(steps_per_second, 2),
                 "examples_per_second": round(steps_per_second * config.batch_size, 1)})
  baseline = rows[0]["steps_per_second"]
  print(f"GRU {config.hidden_size}, MNIST rows [28, 28], global batch {config.batch_size}, "
        f"Adam; {device_name}, "
        f"{jax.device_count()} device(s), median of {config.rounds} rounds of {config.steps} "
        "steps")
  print(f"{'case':<12} {'devices':>7} {'steps/s':>9} {'examples/s':>11} {'vs unsharded':>13}")
  for row in rows:
    print(f"{row['case']:<12} {row['devices']:>7} {row['steps_per_second']:>9.2f} "
          f"{row['examples_per_second']:>11.0f} {row['steps_per_second'] / baseline:>12.2f}x")
  record = {
      "command": "python -m experiments.bench_devices " + " ".join(
          f"--{name}={value}" for name, value in config.to_dict().items() if name != "out"),
      "device": device_name,
      "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
      "allocator": runtime.allocator_name(), "jax": jax.__version__,
      "load_average_end": os.getloadavg(),
      "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
      "config": config.to_dict(), "rows": rows, "seconds": seconds,
  }
  os.makedirs(config.out, exist_ok=True)
  with open(os.path.join(config.out, f"{config.label}.json"), "w") as stream:
    json.dump(record, stream, indent=1)


if __name__ == "__main__":
  main()
