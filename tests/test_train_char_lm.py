"""Tests of ``python -m experiments.train_char_lm`` and ``python -m experiments.generate``.

Training runs are in-process calls of ``train_char_lm.run`` on a tiny text
written by the test (an interruption is a real SIGTERM caught by the loop);
the command lines (flags, exit statuses, what goes to stdout) run as
subprocesses. The one real-data run is marked slow.
"""

import dataclasses
import json
import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from experiments import generate, train_char_lm
from rnn_jax.training import language_model, loop, text
from scripts import REPO, one_line, run_experiment

CONFIG = {"cell": "gru", "hidden_size": 16, "embed_size": 8, "batch_size": 4, "window": 16,
          "steps": 16, "warmup_steps": 2, "learning_rate": 1e-2, "dropout": 0.1}
OPTIONS = train_char_lm.Options(log_every=4, checkpoint_every=4, eval_every=8, eval_streams=4,
                                eval_window=32, sample_length=20)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
  words = ["to", "be", "or", "not", "the", "question", "whether", "tis", "nobler", "mind"]
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("text") / "tiny.txt"
  path.write_text(" ".join(rng.choice(words, 600)) + "\n", encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def trained(tiny_text, tmp_path_factory):
  """``(workdir, summary, lines)`` of one uninterrupted tiny run."""
  workdir, lines = str(tmp_path_factory.mktemp("run") / "a"), []
  summary = train_char_lm.run({**CONFIG, "text_file": tiny_text}, workdir, OPTIONS,
                              say=lines.append)
  return workdir, summary, lines


def test_run_writes_everything_and_reports_json_figures(trained):
  workdir, summary, lines = trained
  assert summary["steps"] == 16 and summary["resumed_from"] is None
  assert summary["val_bpc"] == pytest.approx(summary["val_loss"] / np.log(2))
  vocabulary = text.Vocabulary.load(os.path.join(workdir, "vocabulary.json"))
  assert summary["val_loss"] < np.log(vocabulary.size) - 0.25  # Below uniform.
  assert summary["chars_per_second"] > 0 and summary["val_chars"] > 100
  assert summary["last10_loss"] == pytest.approx(
      (summary["val_loss"] * summary["val_chars"] + summary["test_loss"] * summary["test_chars"])
      / (summary["val_chars"] + summary["test_chars"]))
  assert sorted(os.listdir(workdir)) == [".lock", "checkpoints", "config.json", "curves.png",
                                         "metrics.jsonl", "sample.txt", "vocabulary.json"]
  progress = [line for line in lines if line.startswith("step 8/16")]
  assert progress and " bits/char " in progress[0] and " chars/s  ETA " in progress[0]
  assert any(line.startswith("step 8: validation loss ") for line in lines)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records if r["kind"] == "validation"] == [8, 16]
  with open(os.path.join(workdir, "sample.txt"), encoding="utf-8") as stream:
    sample = stream.read()
  prompt = open(summary["config"]["text_file"], encoding="utf-8").readline(40).rstrip("\n")
  assert sample.startswith(prompt) and len(sample) == len(prompt) + OPTIONS.sample_length


def test_interrupted_run_resumes_to_the_same_figures(trained, tiny_text, tmp_path):
  _, straight, _ = trained
  workdir = str(tmp_path / "b")

  def sigterm_at_step_8(line):
    if line.startswith("step 8/16"):
      os.kill(os.getpid(), signal.SIGTERM)

  options = dataclasses.replace(OPTIONS, sample_length=0, plots=False)  # Not compared here.
  with pytest.raises(loop.Interrupted, match="SIGTERM received: stopped at step 8/16"):
    train_char_lm.run({**CONFIG, "text_file": tiny_text}, workdir, options,
                      say=sigterm_at_step_8)
  resumed = train_char_lm.run({**CONFIG, "text_file": tiny_text}, workdir, options,
                              say=lambda line: None)
  assert resumed["resumed_from"] == 8 and resumed["steps"] == 16
  for name in ("val_loss", "test_loss"):
    assert resumed[name] == straight[name]
  with pytest.raises(train_char_lm.UsageError, match=r"--hidden_size=17 \(was 16\)"):
    train_char_lm.run({**CONFIG, "text_file": tiny_text, "hidden_size": 17}, workdir, options)


def test_vocabulary_and_params_round_trip_through_the_checkpoint(trained, tiny_text):
  workdir, _, _ = trained
  loaded = language_model.load(workdir)
  model, vocabulary, step = loaded.model, loaded.vocabulary, loaded.step
  assert step == 16
  train_split = text.split_text(open(tiny_text, encoding="utf-8").read())["train"]
  assert vocabulary == text.Vocabulary.from_text(train_split)
  assert model.vocab_size == vocabulary.size == len(set(train_split)) + 1
  first = generate.sample(workdir, "to be", 30, temperature=0.0)
  assert first == generate.sample(workdir, "to be", 30, temperature=0.0)
  assert first.startswith("to be") and len(first) == 35
  seeded = [generate.sample(workdir, "to", 30, temperature=1.0, top_p=0.9, seed=seed)
            for seed in (1, 1, 2)]
  assert seeded[0] == seeded[1] != seeded[2]
  with pytest.raises(generate.UsageError, match="--prompt is empty"):
    generate.sample(workdir, "", 10)
  with pytest.raises(generate.UsageError, match=r"--top_p=0.0: must be in \(0, 1\]"):
    generate.sample(workdir, "to", 10, top_p=0.0)


def test_generate_command_prints_only_the_text(trained):
  workdir, _, _ = trained
  result = run_experiment("generate", f"--workdir={workdir}", "--prompt=not ", "--length=25",
                    "--temperature=0.5", "--top_k=3", "--seed=4")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("not ") and len(result.stdout) == len("not ") + 25 + 1
  assert "Traceback" not in result.stderr


def test_generate_refuses_bad_input_inone_line(trained):
  workdir, _, _ = trained
  line = one_line(run_experiment("generate", f"--workdir={workdir}", "--length=-5"), 2)
  assert line == "error: --length=-5: must be >= 0"
  # The same exit path (UsageError -> one line, status 2) for a prompt the model cannot read:
  with pytest.raises(generate.UsageError) as error:
    generate.sample(workdir, "to bé?", 10)
  assert str(error.value) == "--prompt: characters not in the model's vocabulary: 'é' '?'"


def test_generate_refuses_missing_and_foreign_workdirs(tmp_path):
  line = one_line(run_experiment("generate", f"--workdir={tmp_path / 'none'}"), 1)
  assert line == f"data error: --workdir={tmp_path / 'none'}: no such directory"
  (tmp_path / "config.json").write_text(json.dumps({"cell": "gru", "view": "rows"}))
  with pytest.raises(text.DataError, match="not a run of experiments.train_char_lm"):
    language_model.load(tmp_path)
  with pytest.raises(text.DataError, match="no such directory"):
    language_model.load(tmp_path / "none")


def test_a_loaded_run_generates_what_the_command_prints(trained):
  """language_model.load(workdir).generate(...) == python -m experiments.generate, to the character."""
  workdir, _, _ = trained
  loaded = language_model.load(workdir)
  for settings in ({"temperature": 0.5, "top_k": 3, "seed": 4},
                   {"temperature": 1.3, "top_p": 0.8, "seed": 11}):
    flags = [f"--{name}={value}" for name, value in settings.items()]
    result = run_experiment("generate", f"--workdir={workdir}", "--prompt=to be", "--length=40",
                            *flags)
    assert result.returncode == 0, result.stderr
    assert loaded.generate("to be", 40, **settings) + "\n" == result.stdout
  assert loaded.generate("to", 0) == "to"
  with pytest.raises(ValueError, match=r"^top_k=-1: must be >= 0$"):
    loaded.generate("to", 5, top_k=-1)
  with pytest.raises(ValueError, match=r"^prompt: characters not in the model's vocabulary: 'é'"):
    loaded.generate("é", 5)


@pytest.mark.parametrize("args, flag", [
    (["--cell=transformer"], "--cell"),
    (["--window=0"], "--window"),
    (["--cell=gru", "--proj_size=8"], "--proj_size=8: an option of --cell=lstm"),
    (["--cell=mingru", "--weight_drop=0.1"], "--weight_drop=0.1: --cell=mingru has no"),
    (["--zoneout=1"], "--zoneout"),
    (["--compute_dtype=float16"], "--compute_dtype"),
    (["--preset=huge"], "--preset=huge: unknown preset; choose one of best"),
])
def test_bad_flag_prints_one_line_and_exits_2(args, flag):
  line = one_line(run_experiment("train_char_lm", *args, "--workdir=/nonexistent/never"), 2)
  assert flag in line
  assert not os.path.exists("/nonexistent/never")


def test_batch_that_does_not_divide_by_the_devices_is_refused(tiny_text):
  line = one_line(run_experiment("train_char_lm", f"--text_file={tiny_text}", "--batch_size=6",
                            "--workdir=/nonexistent/never", devices=4), 2)
  assert line.startswith("error: flag --batch_size=6: the global batch must divide by the "
                         "device count, 4"), line
  assert not os.path.exists("/nonexistent/never")


@pytest.mark.slow
def test_four_devices_match_one_and_the_checkpoint_resumes_on_two(tiny_text, tmp_path):
  # 3 evaluation streams: padded to 4 on four devices, masked out; the cut stays one device's.
  args = [f"--text_file={tiny_text}", "--cell=gru", "--hidden_size=16", "--embed_size=8",
          "--batch_size=4", "--window=16", "--steps=8", "--warmup_steps=2",
          "--learning_rate=1e-2", "--dropout=0.1", "--log_every=4", "--checkpoint_every=4",
          "--eval_every=0", "--eval_streams=3", "--eval_window=32", "--sample_length=5",
          "--plots=false"]

  def summary(workdir, *extra):
    result = run_experiment("train_char_lm", *args, f"--workdir={workdir}", *extra, devices=4)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])

  one = summary(tmp_path / "one", "--num_devices=1")
  four = summary(tmp_path / "four")
  assert (one["devices"], four["devices"]) == (1, 4)
  assert four["val_chars"] == one["val_chars"] and four["test_chars"] == one["test_chars"]
  for key in ("val_loss", "test_loss"):
    assert four[key] == pytest.approx(one[key], abs=1e-5)
  two = summary(tmp_path / "four", "--num_devices=2")
  assert two["devices"] == 2 and two["resumed_from"] == 8
  for key in ("val_loss", "test_loss"):
    assert two[key] == pytest.approx(four[key], abs=1e-5)


@pytest.mark.slow
def test_the_lm_kit_flags_train_and_keep_their_config(tiny_text, tmp_path):
  workdir = str(tmp_path / "kit")
  config = {**CONFIG, "text_file": tiny_text, "cell": "lstm", "num_layers": 2, "steps": 4,
            "proj_size": 4, "layer_norm": True, "zoneout": 0.1, "weight_drop": 0.2,
            "variational_dropout": True}
  summary = train_char_lm.run(config, workdir, dataclasses.replace(OPTIONS, sample_length=0,
                                                                   plots=False), say=print)
  assert np.isfinite(summary["last10_loss"])
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert {key: saved[key] for key in ("proj_size", "layer_norm", "zoneout", "weight_drop",
                                      "variational_dropout")} == {
      "proj_size": 4, "layer_norm": True, "zoneout": 0.1, "weight_drop": 0.2,
      "variational_dropout": True}
  loaded = language_model.load(workdir)
  assert loaded.model.core.layers[0].layer.layer == rnn_jax.lstm(16, proj_size=4, layer_norm=True)


def test_compute_dtype_flag_trains_in_bf16_and_is_kept_in_the_config(tiny_text, tmp_path):
  workdir = str(tmp_path / "bf16")
  config = {**CONFIG, "text_file": tiny_text, "steps": 2, "compute_dtype": "bfloat16"}
  summary = train_char_lm.run(config, workdir, dataclasses.replace(OPTIONS, sample_length=0,
                                                                   plots=False),
                              say=lambda line: None)
  assert np.isfinite(summary["last10_loss"])
  assert json.load(open(os.path.join(workdir, "config.json")))["compute_dtype"] == "bfloat16"
  assert language_model.load(workdir).model.options.compute_dtype == jnp.bfloat16
  assert "compute_dtype" not in train_char_lm.CharLMConfig().identity()


@pytest.mark.slow
def test_preset_gives_its_values_under_the_flags_given(tiny_text, tmp_path):
  best = train_char_lm.CharLMConfig.PRESETS["best"]
  assert "dropout" in best and "steps" in best
  result = run_experiment("train_char_lm", "--preset=best", f"--text_file={tiny_text}",
                          "--cell=gru", "--hidden_size=16", "--embed_size=8", "--batch_size=4",
                          "--window=16", "--steps=4", "--eval_every=0", "--eval_streams=4",
                          "--eval_window=32", "--sample_length=0", "--plots=false",
                          f"--workdir={tmp_path / 'best'}")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["preset"] == "best" and summary["steps"] == 4  # Given: the flag's.
  assert summary["config"]["dropout"] == best["dropout"]  # Not given: the preset's.


def test_missing_text_file_is_one_clear_error(tmp_path):
  line = one_line(run_experiment("train_char_lm", f"--text_file={tmp_path / 'no.txt'}",
                            f"--workdir={tmp_path / 'run'}"), 1)
  assert line == f"data error: --text_file={tmp_path / 'no.txt'}: no such file"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, "..", "shared", "data",
                                                    "tinyshakespeare", "input.txt")),
                    reason="no offline Tiny Shakespeare")
def test_short_real_run_learns_tiny_shakespeare(tmp_path):
  config = {"hidden_size": 64, "embed_size": 16, "batch_size": 16, "window": 32, "steps": 150,
            "dropout": 0.0, "warmup_steps": 10, "learning_rate": 1e-2}
  options = train_char_lm.Options(log_every=50, eval_every=0, sample_length=0, plots=False)
  summary = train_char_lm.run(config, str(tmp_path), options, say=lambda line: None)
  assert summary["val_chars"] == 55769 and summary["test_chars"] == 55769
  assert summary["val_loss"] < 3.0, summary  # Uniform over 66 ids: 4.19 nats/char.


def test_torch_comparison_times_both_training_steps():
  pytest.importorskip("torch")
  from experiments import bench_char_lm  # pylint: disable=import-outside-toplevel
  config = language_model.CharLMTask(hidden_size=8, embed_size=4, batch_size=2,
                                     window=4).config_values()
  result = bench_char_lm.compare(config, rounds=1, warmup=1)
  assert result["rnn_jax"]["median_ms"] > 0 and result["torch"]["median_ms"] > 0
  assert result["torch_over_rnn_jax"] == pytest.approx(
      result["torch"]["median_ms"] / result["rnn_jax"]["median_ms"], rel=0.02)
