"""experiments.bench_resets: the timed functions compute what they say, the table and JSON line
come out, bad flags exit 2. Nothing here is timed."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from experiments import bench_resets


def test_gradient_fn_with_resets_is_the_gradient_of_the_run_with_resets():
  layer = rnn_jax.gru(3)
  params = layer.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 5, 2))
  resets = jnp.array([[False, False, True, False, False], [False, True, False, False, True]])
  got = bench_resets.gradient_fn(layer, True)(params, xs, resets)
  want = jax.grad(lambda p, x: jnp.sum(rnn_jax.rnn(layer, p, x, resets=resets)[0]),
                  argnums=(0, 1))(params, xs)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=1e-6)
  without = bench_resets.gradient_fn(layer, False)(params, xs, resets)
  assert not np.allclose(without[1], got[1])    # the flags change the gradient when used


@pytest.mark.slow
def test_quick_run_prints_the_table_and_a_json_line(capsys):
  bench_resets.main(["--quick", "--rounds", "1"])
  lines = capsys.readouterr().out.strip().splitlines()
  record = json.loads(lines[-1])
  assert [row["layer"] for row in record["rows"]] == list(bench_resets.LAYERS)
  assert all(row["ratio"] > 0 for row in record["rows"])
  assert lines[1].startswith("| layer (forward+backward) |")


@pytest.mark.parametrize("argv", [["--rate", "2"], ["--steps", "0"]])
def test_bad_flags_exit_2(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_resets.parse_args(argv)
  assert exit_info.value.code == 2
  assert "--" in capsys.readouterr().err
