"""Smoke tests of ``python -m experiments.hopfield_capacity``, run as a subprocess.

One tiny run on random patterns and the real MNIST digits (marked slow: it
loads MNIST and compiles the recall), checked for its files and for numbers
that hold whatever the seed: one stored pattern is always recovered from 10%
noise, three or more binarised digits are never recalled by the Hebbian rule,
and the modern update with beta = 1 recovers every random memory. Bad
settings are checked in-process (:class:`hopfield_capacity.HopfieldConfig`); a bad
flag and missing data as a script, refused with one line and their exit
status.
"""

import json
import os

import pytest

from rnn_jax.training import script

from experiments import hopfield_capacity
from scripts import run_experiment

TINY = ["--num_patterns=1,8,16", "--num_queries=8", "--max_sweeps=20", "--modern_memories=50,100",
        "--modern_betas=0.1,1", "--modern_queries=10", "--digits_patterns=8"]


@pytest.mark.slow
def test_tiny_run_writes_its_results_and_figures(tmp_path):
  result = run_experiment("hopfield_capacity", f"--workdir={tmp_path}", *TINY, timeout=180)
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["workdir"] == str(tmp_path) and summary["wall_seconds"] > 0
  assert "| K | K/N |" in result.stdout
  assert sorted(os.listdir(tmp_path)) == ["capacity.png", "recalled_digits.png", "results.json"]
  for name in ("capacity.png", "recalled_digits.png"):
    with open(tmp_path / name, "rb") as file:
      assert file.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(tmp_path / "results.json", encoding="utf-8") as file:
    results = json.load(file)
  assert results["num_units"] == 784 and results["config"]["num_patterns"] == [1, 8, 16]
  classical = {(r["dataset"], r["rule"], r["num_patterns"]): r for r in results["classical"]}
  assert len(classical) == 2 * 3 * 3
  for rule in ("hebbian", "storkey", "pseudoinverse"):
    for dataset in ("random", "mnist"):  # One stored pattern, 78 of 784 units flipped: recalled.
      assert classical[(dataset, rule, 1)]["recalled"] == 1.0
  # Binarised digits overlap by ~0.66: with 16 of them no Hebbian query is recalled, and
  # recall ends near the sign of their sum.
  assert 0.55 < results["pattern_overlap"]["mnist"] < 0.75
  assert abs(results["pattern_overlap"]["random"]) < 0.01
  assert classical[("mnist", "hebbian", 16)]["recalled"] == 0.0
  assert classical[("mnist", "hebbian", 16)]["stored_fixed"] == 0.0
  assert classical[("mnist", "hebbian", 16)]["mean_pattern_overlap"] > 0.9
  assert classical[("random", "hebbian", 16)]["recalled"] == 1.0
  modern = {(r["dataset"], r["num_memories"], r["beta"]): r for r in results["modern"]}
  assert len(modern) == 2 * 2 * 2
  assert modern[("random", 100, 1.0)]["recalled"] == 1.0
  assert summary["modern_at_largest_m"]["random beta=1"] == 1.0


@pytest.mark.parametrize("changes, message", [
    ({"corruption": 0.7}, "flag --corruption=0.7: must be in [0, 0.5]"),
    ({"num_patterns": [0, 4]}, "flag --num_patterns=0,4: every value must be in [1, 784]"),
    ({"num_patterns": []}, "flag --num_patterns=: give at least one value"),
    ({"rules": ["hebbian", "oja"]}, "flag --rules=hebbian,oja: unknown oja; choose one of "
     "hebbian, storkey, pseudoinverse"),
    ({"modern_betas": [0.0]}, "flag --modern_betas=0.0: every value must be > 0"),
    ({"modern_memories": [784, 70000]},
     "flag --modern_memories=784,70000: every value must be in [1, 60000]"),
    ({"modern_queries": 1000}, "flag --modern_queries=1000: must be at most the smallest "
     "--modern_memories (784)"),
    ({"digits_patterns": 4}, "flag --digits_patterns=4: must be in 8..588"),
    ({"num_queries": 0}, "flag --num_queries=0: must be >= 1"),
])
def test_bad_settings_are_one_line_naming_the_flag(changes, message):
  with pytest.raises(script.UsageError) as error:
    hopfield_capacity.HopfieldConfig.resolve(changes)
  assert str(error.value).startswith(message)


def test_config_sorts_the_sizes():
  settings = hopfield_capacity.HopfieldConfig.resolve(
      {"num_patterns": [16, 8, 16], "modern_betas": [1.0, 0.1], "digits_patterns": 8})
  assert settings.num_patterns == (8, 16) and settings.modern_betas == (0.1, 1.0)


@pytest.mark.parametrize("flag, message", [
    ("--corruption=0.7", "error: flag --corruption=0.7: must be in [0, 0.5]"),
    ("--mode=parallel", "error: flag --mode=parallel"),
])
def test_bad_flags_are_one_line_and_status_2(tmp_path, flag, message):
  result = run_experiment("hopfield_capacity", f"--workdir={tmp_path}", flag, timeout=60)
  assert result.returncode == 2
  assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
  assert not os.listdir(tmp_path)


def test_missing_data_is_one_line_and_status_1(tmp_path):
  result = run_experiment("hopfield_capacity", f"--workdir={tmp_path}",
                          f"--data_dir={tmp_path / 'nowhere'}", "--datasets=mnist",
                          "--modern_memories=", timeout=60)
  assert result.returncode == 1
  assert result.stderr.startswith("data error: ")
  assert len(result.stderr.strip().splitlines()) == 1
