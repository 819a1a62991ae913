"""Smoke tests of the benchmark machinery (experiments.benchmarking, bench_rnn): nothing timed."""

import dataclasses
import importlib
import json
import mmap
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


def test_time_interleaved_rewarm_calls_each_case_untimed_before_its_timed_call():
  log = []

  def make(name):
    def fn():
      log.append(name)
    return fn

  result = benchmarking.time_interleaved({"a": (make("a"), ()), "b": (make("b"), ())},
                                         rounds=3, warmup=1, rewarm=True)
  timed = log[2:]  # After one warm-up call each: every round runs a, a, b, b or b, b, a, a.
  assert len(timed) == 12 and all(timed[i] == timed[i + 1] for i in range(0, 12, 2))
  assert result["a"]["repeats"] == result["b"]["repeats"] == 3


def test_time_interleaved_counts_the_page_faults_of_a_call():
  """A call that writes every page of a fresh 4 MiB anonymous mapping faults each in (1,024 of
  4 KiB; at least 2 where transparent huge pages are always on); a call that does nothing, none."""
  def touch_fresh_pages():
    pages = mmap.mmap(-1, 4 << 20)
    for offset in range(0, len(pages), mmap.PAGESIZE):
      pages[offset] = 1
    pages.close()

  result = benchmarking.time_interleaved({"fresh": (touch_fresh_pages, ()),
                                          "nothing": (lambda: None, ())}, rounds=5, warmup=1)
  assert result["fresh"]["faults_per_call"] >= 2
  assert result["nothing"]["faults_per_call"] == 0


def test_model_flops():
  # LSTM forward: 2 * T * B * (I + H) * 4H, backward twice that again.
  assert benchmarking.model_flops("lstm", SHAPE, "fwd") == 2 * 3 * 2 * (2 + 4) * 16
  assert benchmarking.model_flops("gru", SHAPE, "fwd+bwd") == 3 * 2 * 3 * 2 * (2 + 4) * 12


def test_gflops_and_peak_fraction_for_a_tiny_shape():
  # GRU (B, T, I, H) = (2, 3, 2, 4): forward matmuls 2*2*3*(2+4)*12 = 864 flops; in 1 us that
  # is 0.864 GFLOP/s, forward+backward (3x the flops) 2.592.
  assert benchmarking.achieved_gflops("gru", SHAPE, "fwd", 1e-6) == pytest.approx(0.864)
  assert benchmarking.achieved_gflops("gru", SHAPE, "fwd+bwd", 1e-6) == pytest.approx(2.592)
  assert benchmarking.peak_fraction(0.864, 1.728) == pytest.approx(0.5)
  assert benchmarking.peak_fraction(2.592, 2.592) == pytest.approx(1.0)
  assert benchmarking.peak_fraction(2.6, 2.592) is None  # Above the peak: left out.
  peak = benchmarking.gemm_peak(size=32, repeats=2)
  assert np.isfinite(peak) and peak > 0


def test_cpu_flags_reads_the_first_cpus_simd_flags(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("model name\t: X\nflags\t\t: fpu avx512_bf16 sse avx2 avx512f\n"
                     "flags\t\t: amx_tile\n")
  assert benchmarking.cpu_flags(str(cpuinfo)) == ["avx2", "avx512f", "avx512_bf16"]
  assert benchmarking.cpu_flags(str(tmp_path / "missing")) == []


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
  # Batch-major (what the published tables time): the same numbers, inputs [B, T, I].
  _, batch_major, batch_args = benchmarking.build_rnn_jax(cell_name, SHAPE, time_major=False)
  np.testing.assert_array_equal(batch_args[1], np.swapaxes(args[1], 0, 1))
  (value, (d_params, d_xs)), (value_t, (d_params_t, d_xs_t)) = batch_major(*batch_args), grads
  np.testing.assert_allclose(value, value_t, rtol=1e-5)
  np.testing.assert_allclose(d_xs, np.swapaxes(d_xs_t, 0, 1), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(d_params), jax.tree.leaves(d_params_t)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert benchmarking.build_flax(cell_name, SHAPE, time_major=False)[0](
      *benchmarking.build_flax(cell_name, SHAPE, time_major=False)[2]).shape == (2, 3, 4)
  if benchmarking.torch_available():
    torch_forward, _, torch_args = benchmarking.build_torch(cell_name, SHAPE, time_major=False)
    assert tuple(torch_forward(*torch_args).shape) == (2, 3, 4)


def test_suite_writes_json_and_chart(tmp_path):
  from experiments import bench_rnn  # pylint: disable=import-outside-toplevel
  bench_rnn.main(["--quick", "--no-sweep", "--no-train", "--no-torch", "--cells", "simple_rnn",
                  "--shapes", "2,3,2,4", "--rounds", "1", "--out", str(tmp_path),
                  "--allocator", "glibc"])
  record = json.loads((tmp_path / "results.json").read_text())
  assert (tmp_path / "results.png").stat().st_size > 0
  modes = {(s["mode"]) for s in record["summary"]}
  assert modes == {"fwd", "fwd+bwd"}
  assert not record["time_major"] and len(record["machine"]["gemm_peak_gflops"]) == 1
  for line in record["summary"]:
    assert line["rnn_jax_ms"] > 0 and line["flax_ms"] > 0 and line["runs"] == 1
    assert line["flax_over_rnn_jax"] == pytest.approx(line["flax_ms"] / line["rnn_jax_ms"])
    assert line["gflops"] == pytest.approx(benchmarking.achieved_gflops(
        "simple_rnn", SHAPE, line["mode"], line["rnn_jax_ms"] / 1e3))
    assert line["allocator"] == "glibc"
  fwd, fwd_bwd = sorted(record["summary"], key=lambda s: s["mode"])
  assert fwd_bwd["fwd_bwd_over_fwd"] == pytest.approx(fwd_bwd["rnn_jax_ms"] / fwd["rnn_jax_ms"])
  assert fwd_bwd["faults_per_call"] >= 0


def fake_rows(ms_per_run, runs):
  """``bench_rnn.time_group``-like rows of one LSTM shape: ``ms_per_run[run][(mode, name)]``."""
  rows = []
  for run in range(runs):
    for (mode, name), ms in ms_per_run[run].items():
      library = name.split(" ")[0]
      gflops = benchmarking.achieved_gflops("lstm", SHAPE, mode, ms / 1e3)
      rows.append({"cell": "lstm", "shape": list(SHAPE), "mode": mode, "run": run, "name": name,
                   "library": library, "variant": "default", "median_ms": ms, "gflops": gflops,
                   "peak_fraction": benchmarking.peak_fraction(gflops, 1e-3),
                   "faults_per_call": 1000.0 * run if mode == "fwd+bwd" else 0.0})
  return rows


def test_ratios_spread_over_runs_and_the_guide_block_round_trips(tmp_path):
  from experiments import bench_rnn  # pylint: disable=import-outside-toplevel
  ms = [{("fwd", "rnn_jax default"): 1.0, ("fwd", "torch"): 2.0,
         ("fwd+bwd", "rnn_jax default"): 3.0, ("fwd+bwd", "torch"): 3.0},
        {("fwd", "rnn_jax default"): 2.0, ("fwd", "torch"): 3.0,
         ("fwd+bwd", "rnn_jax default"): 4.0, ("fwd+bwd", "torch"): 6.0},
        {("fwd", "rnn_jax default"): 1.0, ("fwd", "torch"): 4.0,
         ("fwd+bwd", "rnn_jax default"): 4.0, ("fwd+bwd", "torch"): 5.0}]
  summary = bench_rnn.aggregate(bench_rnn.summarize(fake_rows(ms, 3)))
  fwd, fwd_bwd = summary
  assert (fwd["mode"], fwd["runs"], fwd["rnn_jax_ms"]) == ("fwd", 3, 1.0)
  # torch / ours per run: 2, 1.5, 4 (fwd); 1, 1.5, 1.25 (fwd+bwd); ours fwd+bwd / fwd: 3, 2, 4.
  assert fwd["torch_over_rnn_jax_spread"] == {"median": 2.0, "min": 1.5, "max": 4.0}
  assert fwd_bwd["torch_over_rnn_jax_spread"] == {"median": 1.25, "min": 1.0, "max": 1.5}
  assert fwd_bwd["fwd_bwd_over_fwd_spread"] == {"median": 3.0, "min": 2.0, "max": 4.0}
  # LSTM (2, 3, 2, 4) forward: 2*2*3*6*16 = 1152 flops, in 1 ms 0.001152 GFLOP/s, above the
  # fake peak of 0.001 (left out), in 2 ms 57.6%; forward+backward 3456 flops in 3 ms (left
  # out), in 4 ms 86.4%. Fractions: the median of those kept.
  assert fwd["gflops"] == pytest.approx(1.152e-3) and fwd["peak_fraction"] == pytest.approx(0.576)
  assert fwd_bwd["gflops"] == pytest.approx(8.64e-4)
  assert fwd_bwd["peak_fraction"] == pytest.approx(0.864)
  one_run = bench_rnn.aggregate(bench_rnn.summarize(fake_rows(ms[:1], 1)))
  assert one_run[0]["peak_fraction"] is None and one_run[1]["peak_fraction"] is None
  assert bench_rnn.format_ratio(fwd_bwd, "torch_over_rnn_jax") == "1.25 (1.00-1.50)"
  machine = {"label": "", "cpu_model": "AMD EPYC", "cpu_count": 2, "cpu_flags": ["avx512f"],
             "jax": "0.10.2", "flax": "0.12.8", "time_utc": "2026-12-07 01:00:00",
             "load_average_start": [0.5, 0, 0], "load_average_end": [0.7, 0, 0],
             "gemm_peak_gflops": [100.0, 90.0, 110.0], "gemm_peak_size": 2048}
  record = bench_rnn.combine(
      {"glibc": {"machine": machine, "summary": summary,
                 "training_step_ms": {"rnn_jax": 10.0, "torch": 12.0, "torch_over_rnn_jax": 1.2,
                                      "runs": 1}}},
      ["--no-sweep", "--label=2-core VM", "--write_guide"])
  block = bench_rnn.guide_block(record)
  assert ('python -m experiments.bench_rnn --no-sweep --label="2-core VM" --write_guide'
          in block)
  assert ("| lstm | 2, 3, 2, 4 | glibc | 4.00 (1,000) | - | 1.25 (1.00-1.50) | 3.00 (2.00-4.00) "
          "| 0.0 (86.4) |") in block  # Page faults per run 0, 1000, 2000: their median.
  assert "| lstm | 2, 3, 2, 4 | glibc | 1.00 (0) | - | 2.00 (1.50-4.00) | 0.0 (57.6) |" in block
  assert "| glibc | 10.00 | 12.00 | 1.20 |" in block and "glibc 100 GFLOP/s" in block
  assert "AMD EPYC x2 (avx512f)" in block and "2026-12-07" in block
  # The guide's block: written, read back the same, rewritten unchanged; the rest untouched.
  text = f"intro\n{bench_rnn.GUIDE_BEGIN}\nold table\n{bench_rnn.GUIDE_END}\nafter\n"
  written = bench_rnn.replace_guide_block(text, block)
  assert written.startswith("intro\n" + bench_rnn.GUIDE_BEGIN + "\n")
  assert written.endswith(bench_rnn.GUIDE_END + "\nafter\n")
  assert bench_rnn.read_guide_block(written) == block
  assert bench_rnn.replace_guide_block(written, bench_rnn.read_guide_block(written)) == written
  guide = (ROOT / "docs/guides/performance.md").read_text()
  assert bench_rnn.replace_guide_block(guide, bench_rnn.read_guide_block(guide)) == guide
  with pytest.raises(ValueError, match="expected one <!-- bench_rnn:begin --> line"):
    bench_rnn.read_guide_block("no markers")
  path = tmp_path / "guide.md"
  path.write_text(text)
  bench_rnn.write_guide(str(path), record)
  assert path.read_text() == written


def test_cold_calls_times_each_way_and_writes_json(tmp_path, capsys, monkeypatch):
  from experiments import bench_cold_calls  # pylint: disable=import-outside-toplevel
  sleeps, calls = [], []
  monkeypatch.setattr(bench_cold_calls.time, "sleep", sleeps.append)
  result = bench_cold_calls.measure(lambda: calls.append(1), (), calls=3, idle=(0.25, 0.5))
  # Two warm-up calls, three back to back, three after each pause.
  assert len(calls) == 2 + 3 + 3 + 3 and sleeps == [0.25] * 3 + [0.5] * 3
  assert set(result) == {"back_to_back_ms", "after_idle_ms"}
  assert set(result["after_idle_ms"]) == {0.25, 0.5}
  monkeypatch.undo()
  bench_cold_calls.main(["--cells", "gru", "--shapes", "2,3,2,4", "--calls", "1", "--idle", "0",
                         "--no-flax", "--out", str(tmp_path)])
  record = json.loads((tmp_path / "bench_cold_calls.json").read_text())
  assert [(r["library"], r["mode"]) for r in record["rows"]] == [
      ("rnn_jax", "fwd"), ("rnn_jax", "fwd+bwd"), ("rnn_jax scan", "fwd"),
      ("rnn_jax scan", "fwd+bwd")]
  assert all(r["back_to_back_ms"] > 0 and r["after_idle_ms"]["0.0"] > 0 for r in record["rows"])
  assert "| gru | 2, 3, 2, 4 | rnn_jax | fwd+bwd |" in capsys.readouterr().out


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
           "bench_char_lm", "bench_memory", "gradient_flow", "hopfield_capacity",
           "bench_cold_calls")


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
  assert ("bench_rnn", ["--no-sweep", "--write_guide"]) in commands  # The README's headline row.
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
  defaults = bench_rnn.BenchRnnConfig().resolved()
  assert defaults.cells == ("lstm", "gru") and defaults.repeats == 3 and not defaults.time_major
  assert bench_rnn.without_flags(["--out", "x", "--write-guide", "--allocator=glibc", "--quick"],
                                 ("allocator", "out", "write_guide")) == ["--quick"]
