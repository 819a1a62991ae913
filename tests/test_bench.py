"""Smoke tests of the benchmark machinery (experiments.benchmarking, bench_rnn): nothing timed."""

import dataclasses
import importlib
import json
import pathlib
import re
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from absl import flags

from experiments import benchmarking
from rnn_jax.training.config import Config

SHAPE = (2, 3, 2, 4)  # B, T, I, H


def test_time_function_counts_calls_and_waits():
  calls = []

  def fn(x):
    calls.append(1)
    return x * 2

  result = benchmarking.time_function(fn, jnp.ones(3), repeats=4, warmup=2)
  assert len(calls) == 6 and result["repeats"] == 4 and len(result["times_s"]) == 4
  assert result["min_s"] <= result["median_s"] <= max(result["times_s"])


def test_time_interleaved_runs_every_case_each_round():
  calls = {"a": 0, "b": 0}

  def make(name):
    def fn():
      calls[name] += 1
    return fn

  result = benchmarking.time_interleaved({"a": (make("a"), ()), "b": (make("b"), ())},
                                         rounds=3, warmup=1)
  assert calls == {"a": 4, "b": 4}
  assert set(result) == {"a", "b"} and result["a"]["repeats"] == 3


def test_model_flops():
  # LSTM forward: 2 * T * B * (I + H) * 4H, backward twice that again.
  assert benchmarking.model_flops("lstm", SHAPE, "fwd") == 2 * 3 * 2 * (2 + 4) * 16
  assert benchmarking.model_flops("gru", SHAPE, "fwd+bwd") == 3 * 2 * 3 * 2 * (2 + 4) * 12


@pytest.mark.parametrize("cell_name", ["gru"])  # The builders differ by cell only in a lookup.
def test_builders_agree_on_shapes(cell_name):
  """rnn_jax's two backward modes give the same gradients; Flax and torch the same shapes."""
  forward, forward_backward, args = benchmarking.build_rnn_jax(cell_name, SHAPE)
  assert forward(*args).shape == (3, 2, 4)
  grads = forward_backward(*args)
  fused = benchmarking.build_rnn_jax(cell_name, SHAPE, vjp="fused", unroll=2)[1](*args)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(fused)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  flax_forward, _, flax_args = benchmarking.build_flax(cell_name, SHAPE)
  assert flax_forward(*flax_args).shape == (3, 2, 4)
  if benchmarking.torch_available():
    torch_forward, torch_backward, torch_args = benchmarking.build_torch(cell_name, SHAPE)
    assert tuple(torch_forward(*torch_args).shape) == (3, 2, 4)
    assert tuple(torch_backward(*torch_args).shape) == (3, 2, 2)


def test_suite_writes_json_and_chart(tmp_path):
  from experiments import bench_rnn  # pylint: disable=import-outside-toplevel
  bench_rnn.main(["--quick", "--no-sweep", "--no-train", "--no-torch", "--cells", "simple_rnn",
                  "--shapes", "2,3,2,4", "--rounds", "1", "--out", str(tmp_path),
                  "--allocator", "glibc"])
  record = json.loads((tmp_path / "results.json").read_text())
  assert (tmp_path / "results.png").stat().st_size > 0
  modes = {(s["mode"]) for s in record["summary"]}
  assert modes == {"fwd", "fwd+bwd"}
  for line in record["summary"]:
    assert line["rnn_jax_ms"] > 0 and line["flax_ms"] > 0
    assert line["flax_over_rnn_jax"] == pytest.approx(line["flax_ms"] / line["rnn_jax_ms"])
    assert line["allocator"] == "glibc"


def test_init_benchmark_times_fresh_processes(tmp_path, capsys):
  from experiments import bench_init  # pylint: disable=import-outside-toplevel
  bench_init.main(["--layers", "simple_rnn", "--repeats", "1", "--out", str(tmp_path)])
  record = json.loads((tmp_path / "bench_init.json").read_text())
  (row,) = record["rows"]
  assert row["layer"] == "simple_rnn(128)" and row["input_size"] == 28
  for how in ("op by op", "compiled"):
    (times,) = row["runs"][how]
    assert len(times) == 2 and all(t > 0 for t in times)
  assert "| simple_rnn(128) | 28 |" in capsys.readouterr().out
  with pytest.raises(SystemExit) as refused:
    bench_init.main(["--layers", "lsmt"])
  assert refused.value.code == 2
  assert "error: flag --layers=lsmt: unknown lsmt; choose one of lstm" in capsys.readouterr().err


ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ("bench_rnn", "bench_parallel", "bench_init", "bench_devices", "bench_export",
           "bench_char_lm", "bench_memory", "gradient_flow", "hopfield_capacity")


def settings_classes(name: str) -> list[type[Config]]:
  """The Config classes a script declares (its flags are theirs)."""
  module = importlib.import_module(f"experiments.{name}")
  return [value for value in vars(module).values() if isinstance(value, type)
          and issubclass(value, Config) and value.__module__ == module.__name__]


def documented_commands() -> list[tuple[str, list[str]]]:
  """``(script, arguments)`` of every ``python -m experiments.<script> ...`` the README, the
  guides, the recorded results and the scripts' docstrings show (``<cell>`` read as lstm)."""
  pattern = re.compile(r"python -m experiments\.(\w+)((?: +--?[\w-]+(?:[= ](?!--)(?:\"[^\"]*\"|"
                       r"[^\s`|#]+))?)*)")
  files = [ROOT / "README.md", ROOT / "experiments/results/README.md",
           *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "experiments").glob("*.py"))]
  commands = []
  for path in files:
    text = " ".join(path.read_text().replace("<cell>", "lstm").split())  # Wrapped lines joined.
    for script, arguments in pattern.findall(text):
      if script in SCRIPTS:
        commands.append((script, shlex.split(arguments)))
  return commands


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_setting_has_help(script):
  classes = settings_classes(script)
  assert classes, script
  for settings_class in classes:
    for field in dataclasses.fields(settings_class):
      help_text = field.metadata.get("help", "")
      assert len(help_text) > 5 and help_text.endswith("."), (settings_class, field.name)


def test_documented_commands_parse():
  commands = documented_commands()
  assert {script for script, _ in commands} == set(SCRIPTS)
  assert ("bench_rnn", ["--no-sweep"]) in commands
  for script, arguments in commands:
    flag_values = flags.FlagValues()
    classes = settings_classes(script)
    for settings_class in classes:
      settings_class.define_flags(flag_values)
    if script in ("gradient_flow", "hopfield_capacity"):  # script.flags_parser adds --workdir.
      flags.DEFINE_string("workdir", None, "Run directory.", flag_values=flag_values)
    assert flag_values(["prog", *arguments]) == ["prog"], (script, arguments)
    for settings_class in classes:
      settings_class.from_flags(flag_values)  # Checked: raises UsageError on a bad value.


def test_bench_rnn_keeps_its_dashed_flags_and_reads_shapes_four_integers_each():
  from experiments import bench_rnn  # pylint: disable=import-outside-toplevel
  config = benchmarking.parse(bench_rnn.BenchRnnConfig, [
      "--no-sweep", "--no-torch", "--no-flax", "--no-train", "--min-time", "0.5", "--quick",
      "--shapes", "2,3,2,4,5,6,7,8"]).resolved()
  assert config.no_sweep and config.no_torch and config.no_flax and config.no_train
  assert config.min_time == 0.5 and config.rounds == 3 and config.unrolls == (1, 2)
  assert config.shape_list() == [(2, 3, 2, 4), (5, 6, 7, 8)]
  assert bench_rnn.BenchRnnConfig().resolved().shape_list() == list(benchmarking.DEFAULT_SHAPES)
