"""How long a layer's first ``init`` takes: compiled whole against op by op.

    python -m experiments.bench_init                       # the built-in layers at MNIST sizes
    python -m experiments.bench_init --repeats 5

A new user's first ``lstm(128).init(key, 28)`` used to run op by op, which
compiles every primitive of the initialisers (the orthogonal one's QR among
them) separately. ``init`` is now one compiled program per (layer, input
size) (:func:`rnn_jax.layer.compiled_init`). For each layer this script starts
fresh Python processes (so no compilation is cached, and the persistent
compilation cache is off) and times, in each, the first call and a second
call with a new key, for:

* ``compiled``: ``layer.init(key, input_size)``, what users call;
* ``op by op``: the same function undecorated (``type(layer).init.__wrapped__``),
  how ``init`` ran before (except that the gate blocks of a weight matrix
  are now drawn in one batched call).

It prints the median over ``--repeats`` processes of each, in seconds, and
writes ``bench_init.json`` to ``--out``. Import time is not included.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys

from experiments import benchmarking
from rnn_jax.training.config import setting

# name -> (the layer's factory call, input size): MNIST rows (28) and pixels (1).
LAYERS = {
    "lstm": ("rnn_jax.lstm(128)", 28),
    "gru": ("rnn_jax.gru(128)", 28),
    "simple_rnn": ("rnn_jax.simple_rnn(128)", 28),
    "stacked_lstm": ("rnn_jax.stack([rnn_jax.lstm(128)] * 2)", 28),
    "mingru": ("rnn_jax.mingru(128, max_timescale=784)", 1),
    "lru": ("rnn_jax.lru(128, 128, skip='dense')", 1),
}

# Runs in a fresh interpreter: prints "first_s second_s".
_PROBE = """
import time
import jax
import rnn_jax

def op_by_op(layer, key, size):
  if layer.sublayers:  # A stack: each layer's init undecorated, as a stack's init calls them.
    params = []
    for sub, sub_key in zip(layer.sublayers, jax.random.split(key, len(layer.sublayers))):
      params.append(op_by_op(sub, sub_key, size))
      size = sub.output_size
    return tuple(params)
  return type(layer).init.__wrapped__(layer, key, size)

layer, input_size = {layer}, {input_size}
init = layer.init if {how!r} == "compiled" else lambda key, size: op_by_op(layer, key, size)
jax.block_until_ready(jax.random.key(0))
times = []
for seed in (0, 1):
  start = time.perf_counter()
  jax.block_until_ready(init(jax.random.key(seed), input_size))
  times.append(time.perf_counter() - start)
print(*times)
"""


def probe(layer: str, input_size: int, how: str) -> tuple[float, float]:
  """(first call s, second call s) of one fresh process."""
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false", JAX_PLATFORMS="cpu")
  code = _PROBE.format(layer=layer, input_size=input_size, how=how)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True)
  first, second = result.stdout.split()
  return float(first), float(second)


@dataclasses.dataclass(frozen=True)
class InitConfig(benchmarking.BenchConfig):
  """The benchmark's settings; each field is a flag."""

  layers: tuple[str, ...] = setting(tuple(LAYERS), "Layers to time.", choices=tuple(LAYERS))
  repeats: int = setting(3, "Fresh processes per case.", lower=1)


def main(argv=None) -> None:
  config = benchmarking.parse(InitConfig, argv)
  machine = benchmarking.describe_machine(config.label)
  print(f"# {machine['label'] or machine['device']} | jax {machine['jax']} | "
        f"load average {machine['load_average_start'][0]:.2f}", flush=True)
  rows = []
  header = "| layer | input | first, op by op (s) | first, compiled (s) | speed-up | " \
           "second, op by op (ms) | second, compiled (ms) |"
  print(header + "\n|---|---|---|---|---|---|---|", flush=True)
  for name in config.layers:
    expression, input_size = LAYERS[name]
    runs = {"op by op": [], "compiled": []}
    for _ in range(config.repeats):
      for how in runs:  # Interleaved, so load changes hit both alike.
        runs[how].append(probe(expression, input_size, how))
    median = {how: [statistics.median(r[i] for r in runs[how]) for i in (0, 1)] for how in runs}
    row = {"layer": expression.replace("rnn_jax.", ""), "input_size": input_size,
           "repeats": config.repeats,
           "first_op_by_op_s": median["op by op"][0], "first_compiled_s": median["compiled"][0],
           "second_op_by_op_s": median["op by op"][1],
           "second_compiled_s": median["compiled"][1], "runs": runs}
    rows.append(row)
    print(f"| {row['layer']} | {input_size} | {row['first_op_by_op_s']:.2f} | "
          f"{row['first_compiled_s']:.2f} | "
          f"{row['first_op_by_op_s'] / row['first_compiled_s']:.1f}x | "
          f"{row['second_op_by_op_s'] * 1e3:.1f} | {row['second_compiled_s'] * 1e3:.1f} |",
          flush=True)
  machine["load_average_end"] = os.getloadavg()
  os.makedirs(config.out, exist_ok=True)
  with open(os.path.join(config.out, "bench_init.json"), "w") as f:
    json.dump({"machine": machine, "command": " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
