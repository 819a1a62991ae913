"""experiments.bench_bf16: the dot census reads what XLA compiled, the quick run prints its tables
and a JSON line, bad flags exit 2. Nothing here is timed."""

import json

import jax
import jax.numpy as jnp
import pytest

from experiments import bench_bf16


def test_dot_census_counts_the_compiled_dots_by_operand_type():
  a, b = jnp.ones((8, 16)), jnp.ones((16, 32))
  compiled = lambda fn, *args: jax.jit(fn).lower(*args).compile().as_text()
  float32 = bench_bf16.dot_census(compiled(lambda a, b: a @ b, a, b))
  assert float32["f32_library"] + float32["f32_xla"] == 1
  assert float32["bf16_library"] + float32["bf16_xla"] == 0
  bf16 = bench_bf16.dot_census(compiled(
      lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32),
      a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)))
  assert sum(bf16.values()) == 1  # One dot, bf16 or upcast by XLA: the census says which.
  assert bench_bf16.dot_census("") == dict.fromkeys(bf16, 0)


@pytest.mark.slow
def test_quick_run_prints_the_tables_and_a_json_line(capsys):
  bench_bf16.main(["--quick", "--rounds", "1"])
  lines = capsys.readouterr().out.strip().splitlines()
  record = json.loads(lines[-1])
  assert [row["cell"] for row in record["rows"]] == ["lstm", "lstm", "gru", "gru"]
  assert all(row["ratio"] > 0 and row["bf16_library"] + row["bf16_xla"] > 0
             for row in record["rows"])
  assert len(record["dots"]) == 3 * len(record["rows"]) // 2
  assert lines[0].startswith("| one matmul |")


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--shape", "1,2,3"], ["--shape", "a"]])
def test_bad_flags_exit_2(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_bf16.parse_args(argv)
  assert exit_info.value.code == 2
  assert "--" in capsys.readouterr().err.splitlines()[-1]
