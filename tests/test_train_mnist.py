"""Tests of ``python -m experiments.train_mnist``, run as a subprocess.

Most tests point the script at a tiny synthetic MNIST written by the test
(``rnn_jax.training.idx.write_idx``), so they need neither the real data nor
the network; the one real-data run is marked slow. ``run`` is also called
in-process, as Python code without flags would.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train_mnist
from rnn_jax.training import classification, datasets, idx, optim, script
from scripts import REPO, run_experiment, start_experiment, write_tiny_mnist

TINY = ["--cell=gru", "--hidden_size=8", "--batch_size=16", "--unroll=1", "--log_every=1",
        "--checkpoint_every=4", "--eval_batch_size=16", "--plots=false"]


def _script(*args, timeout=120, devices=None, popen=False):
  """The script in a subprocess (JAX's compilation cache shared with the other script runs);
  ``devices``: that many forced CPU devices; ``popen``: started in the background."""
  if popen:
    return start_experiment("train_mnist", *args, devices=devices)
  return run_experiment("train_mnist", *args, timeout=timeout, devices=devices)


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
  """64 training and 20 test 'digits': class c lights up row band 2c..2c+4."""
  return write_tiny_mnist(tmp_path_factory.mktemp("tiny_mnist"))


def _summary(result):
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args, flag", [
    (["--hidden_size=-3"], "--hidden_size"),
    (["--cell=transformer"], "--cell"),
    (["--steps=0", "--epochs=0"], "--epochs"),
    (["--platform=tpu"], "--platform=tpu: not available on this machine"),
    (["--validation_examples=-1"], "--validation_examples"),
    (["--compute_dtype=float16"], "--compute_dtype"),
])
def test_bad_flag_prints_one_line_and_exits_nonzero(args, flag):
  result = _script(*args, "--workdir=/nonexistent/never-created")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and flag in lines[0] and "Traceback" not in result.stderr, lines
  assert not os.path.exists("/nonexistent/never-created")


def test_run_interrupt_resume_equals_uninterrupted(tiny_mnist, tmp_path):
  common = [*TINY, f"--data_dir={tiny_mnist}", "--steps=40"]
  straight = _summary(_script(*common, f"--workdir={tmp_path / 'a'}"))
  assert straight["steps"] == 40 and straight["test_examples"] == 20
  assert straight["resumed_from"] is None
  records = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
  assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 41))
  assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["32", "36", "40"]

  # Interrupt a second run with SIGTERM after its second step, then rerun it.
  workdir = f"--workdir={tmp_path / 'b'}"
  process = _script(*common, workdir, popen=True)
  for line in process.stdout:
    if line.startswith("step 2/40"):
      process.send_signal(signal.SIGTERM)
      break
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 128 + signal.SIGTERM, stderr
  assert stderr.strip().startswith("interrupted: SIGTERM received: stopped at step")
  assert "Traceback" not in stderr
  resumed = _summary(_script(*common, workdir))
  assert 2 <= resumed["resumed_from"] < 40 and resumed["steps"] == 40
  assert resumed["test_loss"] == straight["test_loss"]
  assert resumed["test_accuracy"] == straight["test_accuracy"]



def test_a_loaded_run_predicts_the_reported_test_accuracy(tiny_mnist, tmp_path):
  """classification.load(workdir).predict gives the test accuracy the run printed, to the image;
  with --ema_decay that is the moving average's (the parameters the run evaluated)."""
  for view, extra in (("rows", ["--ema_decay=0.9"]), ("permuted_pixels", [])):
    workdir = tmp_path / view
    summary = _summary(_script(*TINY, f"--data_dir={tiny_mnist}", "--steps=24", f"--view={view}",
                               *extra, f"--workdir={workdir}"))
    loaded = classification.load(workdir)
    assert loaded.step == 24 and loaded.view == view
    images, labels = datasets.load("mnist", "test", tiny_mnist)
    predicted = loaded.predict(images, batch_size=7)  # Batches that do not divide the 20 images.
    assert predicted.shape == (20,)
    assert np.mean(predicted == labels) == summary["test_accuracy"]
    np.testing.assert_allclose(loaded.logits(images[:3]), loaded.logits(images)[:3], atol=1e-6)
  (tmp_path / "lm").mkdir()
  (tmp_path / "lm" / "config.json").write_text(json.dumps({"text_file": "x", "window": 8}))
  with pytest.raises(idx.DataError, match="not a run of experiments.train_mnist"):
    classification.load(tmp_path / "lm")
  with pytest.raises(idx.DataError, match="no checkpoint to load"):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    classification.load(tmp_path / "empty")
  assert os.listdir(tmp_path / "empty") == ["config.json"]  # A reader writes nothing.


@pytest.mark.parametrize("args, message", [
    (["--batch_size=18"], "error: flag --batch_size=18: the global batch must divide by the "
     "device count, 4"),
    (["--num_devices=8"], "error: flag --num_devices=8: this run has 4 devices"),
])
def test_batch_and_devices_that_do_not_fit_are_refused(args, message):
  result = _script(*args, "--workdir=/nonexistent/never-created", devices=4)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), lines
  assert not os.path.exists("/nonexistent/never-created")


@pytest.fixture(scope="module")
def run_on_four_devices(tiny_mnist, tmp_path_factory):
  """A 12-step run on 4 devices (checkpoints at 4, 8, 12): ``(args, workdir, summary)``."""
  args = [*TINY, f"--data_dir={tiny_mnist}", "--steps=12", "--log_every=4",
          "--eval_batch_size=6"]
  workdir = tmp_path_factory.mktemp("four_devices")
  summary = _summary(_script(*args, f"--workdir={workdir}", devices=4))
  assert summary["devices"] == 4 and summary["steps"] == 12
  return args, workdir, summary


@pytest.mark.slow
def test_run_checkpointed_on_four_devices_resumes_on_two(run_on_four_devices, tmp_path):
  args, workdir, four = run_on_four_devices
  shutil.copytree(workdir, tmp_path / "run")
  for step in ("8", "12"):  # As if stopped after step 4.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / step)
  resumed = _summary(_script(*args, f"--workdir={tmp_path / 'run'}", "--num_devices=2",
                             devices=4))
  assert resumed["resumed_from"] == 4 and resumed["devices"] == 2 and resumed["steps"] == 12
  assert resumed["test_accuracy"] == four["test_accuracy"]
  assert resumed["test_loss"] == pytest.approx(four["test_loss"], rel=1e-5)


def _start_two_processes(*args):
  """The script as processes 0 and 1 of a run on a free local port, 2 forced devices each."""
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  return [_script(*args, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={index}", devices=2, popen=True) for index in range(2)]


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_process_of_four(run_on_four_devices, tmp_path):
  args, _, four = run_on_four_devices
  processes = _start_two_processes(*args, f"--workdir={tmp_path}")
  outputs = [process.communicate(timeout=180) for process in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  primary, other = (stdout for stdout, _ in outputs)
  # Only process 0 prints (gloo's C++ connection messages aside).
  # Process 1 prints nothing of ours (gloo's C++ connection messages, possibly split across
  # lines by its threads, are not ours).
  for ours in ("steps/s", "accuracy", "test_loss", "per-step outputs", "workdir", "parameters"):
    assert ours not in other, other
  summary = json.loads(primary.strip().splitlines()[-1])
  assert summary["devices"] == 4 and summary["steps"] == 12
  assert summary["test_accuracy"] == four["test_accuracy"]
  assert summary["test_loss"] == pytest.approx(four["test_loss"], rel=1e-5)
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records if r["kind"] == "train"] == [4, 8, 12]  # Written once.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "4", "8"]


@pytest.mark.slow
def test_a_killed_process_stops_the_other_in_one_line_and_a_rerun_resumes(run_on_four_devices,
                                                                          tmp_path):
  """kill -9 of process 1: process 0 ends at once, one line, status 1; rerunning both resumes
  and ends as the uninterrupted run does."""
  args, _, four = run_on_four_devices
  processes = _start_two_processes(*args, f"--workdir={tmp_path}")
  for line in processes[0].stdout:
    if line.startswith("step 8/12"):
      break
  processes[1].kill()
  killed = time.monotonic()
  processes[1].communicate(timeout=60)
  _, stderr = processes[0].communicate(timeout=180)
  assert processes[0].returncode == 1, stderr[-3000:]
  assert time.monotonic() - killed < 30  # Not the coordination service's heartbeat timeout.
  assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]  # After gloo's and the coordination service's logs.
  assert last.startswith("stopped: process 0 of 2: ") and last.endswith(
      "rerun the same command on every host: it resumes from the newest complete checkpoint")

  processes = _start_two_processes(*args, f"--workdir={tmp_path}")
  outputs = [process.communicate(timeout=180) for process in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  summary = json.loads(outputs[0][0].strip().splitlines()[-1])
  assert summary["resumed_from"] in (4, 8) and summary["steps"] == 12
  assert summary["test_accuracy"] == four["test_accuracy"]
  assert summary["test_loss"] == pytest.approx(four["test_loss"], rel=1e-5)


def test_missing_matplotlib_is_refused_before_any_work(tmp_path):
  """With matplotlib unimportable, --plots (the default) is one line and status 2."""
  code = ("import sys; sys.modules['matplotlib'] = None; from experiments import train_mnist as t; "
          "t.app.run(t.main_with_exit_codes, flags_parser=t.parse_flags)")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code, f"--workdir={tmp_path / 'run'}"], cwd=REPO,
                          env=env, text=True, capture_output=True, timeout=120)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --plots need matplotlib"), lines
  assert "--plots=false" in lines[0] and not os.path.exists(tmp_path / "run")


def test_run_from_python_needs_no_flags(tiny_mnist, tmp_path):
  lines = []
  options = train_mnist.Options(data_dir=tiny_mnist, log_every=1, eval_batch_size=16,
                                plots=False)
  config = {"hidden_size": 8, "batch_size": 16, "steps": 3, "unroll": 1}
  summary = train_mnist.run(config, str(tmp_path), options, say=lines.append)
  assert summary["steps"] == 3 and summary["test_examples"] == 20
  assert summary["config"] == {**train_mnist.MnistConfig().to_dict(), **config}
  assert lines[0] == f"mnist data from {tiny_mnist}"  # Where the data was found, first.
  assert lines[1].startswith("gru x1 H=8 ") and any(line.startswith("step 3/3") for line in lines)
  with pytest.raises(train_mnist.UsageError, match=r"--hidden_size=9 \(was 8\)"):
    train_mnist.run({**config, "hidden_size": 9}, str(tmp_path), options, say=lines.append)
  with pytest.raises(train_mnist.UsageError, match="--batch_size=100: larger than the 64"):
    train_mnist.run({"batch_size": 100}, str(tmp_path / "big"), options)
  assert not os.path.exists(tmp_path / "big")
  with pytest.raises(train_mnist.UsageError, match="unknown config keys"):
    train_mnist.run({"hidden": 8}, str(tmp_path), options)


def test_remat_every_trains_as_the_plain_run(tiny_mnist, tmp_path):
  """--remat_every=K changes only what the backward pass keeps: the same run, to rounding."""
  options = train_mnist.Options(data_dir=tiny_mnist, log_every=4, eval_batch_size=20,
                                plots=False)
  config = {"hidden_size": 8, "batch_size": 16, "steps": 4, "unroll": 1, "view": "pixels"}
  plain = train_mnist.run(config, str(tmp_path / "plain"), options, say=lambda line: None)
  chunked = train_mnist.run({**config, "remat_every": 30}, str(tmp_path / "chunked"), options,
                            say=lambda line: None)
  assert chunked["config"]["remat_every"] == 30
  np.testing.assert_allclose(chunked["test_loss"], plain["test_loss"], rtol=1e-4)
  assert chunked["test_accuracy"] == plain["test_accuracy"]
  assert train_mnist.default_workdir(train_mnist.MnistConfig()) == "runs/default-17e4a2c6"
  with pytest.raises(train_mnist.UsageError, match="--remat and --remat_every=30: pick one"):
    train_mnist.run({**config, "remat": True, "remat_every": 30}, str(tmp_path / "both"), options)


def test_compute_dtype_flag_reaches_the_core_and_keeps_the_default_hash(tiny_mnist, tmp_path):
  """--compute_dtype=bfloat16: the core's options carry it (rnn's compute_dtype), the run is
  the float32 one to bf16 rounding; float32 (the default) is left out of the config's hash."""
  config = train_mnist.MnistConfig.resolve({"compute_dtype": "bfloat16"})
  task = classification.ClassificationTask.from_config(config.to_dict())
  assert task.options.compute_dtype == jnp.bfloat16
  default = train_mnist.MnistConfig()
  assert "compute_dtype" not in default.identity() and config.identity()["compute_dtype"] == (
      "bfloat16")
  assert classification.ClassificationTask.from_config(
      default.to_dict()).options.compute_dtype is None
  assert train_mnist.default_workdir(default) == "runs/default-17e4a2c6"
  options = train_mnist.Options(data_dir=tiny_mnist, log_every=4, eval_batch_size=20,
                                plots=False)
  small = {"hidden_size": 8, "batch_size": 16, "steps": 4}
  plain = train_mnist.run(small, str(tmp_path / "f32"), options, say=lambda line: None)
  bf16 = train_mnist.run({**small, "compute_dtype": "bfloat16"}, str(tmp_path / "bf16"),
                         options, say=lambda line: None)
  assert bf16["config"]["compute_dtype"] == "bfloat16"
  np.testing.assert_allclose(bf16["test_loss"], plain["test_loss"], rtol=0.02)


def test_presets_apply_under_the_given_values():
  rnn150 = train_mnist.MnistConfig.resolve({"steps": 10}, "rnn150")
  assert (rnn150.cell, rnn150.optimizer, rnn150.steps) == ("rnn", "rmsprop", 10)
  with pytest.raises(train_mnist.UsageError, match="flag --preset=huge: unknown preset"):
    train_mnist.MnistConfig.resolve({}, "huge")


def test_rnn50_preset_is_the_tutorials_configuration():
  """Tanh RNN of 50, batch 100, 2,500 steps of plain gradient descent on all 60,000 images;
  our learning rate, cosine decay and clipping (see the module doc)."""
  config = train_mnist.MnistConfig.resolve({}, "rnn50").to_dict()
  expected = {"cell": "rnn", "hidden_size": 50, "num_layers": 1, "view": "rows",
              "batch_size": 100, "steps": 2500, "optimizer": "sgd", "momentum": 0.0,
              "learning_rate": 0.3, "schedule": "cosine", "warmup_steps": 0, "clip_norm": 1.0,
              "dropout": 0.0, "ema_decay": 0.0, "validation_examples": 0,
              "max_train_examples": 0}
  assert {name: config[name] for name in expected} == expected
  optimizer = optim.make_optimizer(config["optimizer"], config["learning_rate"],
                                   momentum=config["momentum"], clip_norm=config["clip_norm"])
  assert jax.tree.leaves(optimizer.init({"w": np.zeros(3, np.float32)})) == []  # No momentum.


def test_hold_out_splits_off_the_last_examples():
  images, labels = np.arange(10)[:, None, None] * np.ones((1, 2, 2)), np.arange(10)
  (train_images, train_labels), (validation_images, validation_labels) = (
      classification.hold_out(images, labels, 3))
  assert train_labels.tolist() == list(range(7)) and validation_labels.tolist() == [7, 8, 9]
  np.testing.assert_array_equal(train_images[:, 0, 0], train_labels)
  np.testing.assert_array_equal(validation_images[:, 0, 0], validation_labels)
  (all_images, _), (none, _) = classification.hold_out(images, labels, 0)
  assert len(all_images) == 10 and len(none) == 0
  for bad in (10, 11, -1):
    with pytest.raises(train_mnist.UsageError, match=f"--validation_examples={bad}: must be in"):
      classification.hold_out(images, labels, bad)


def _tiny_file(tiny_mnist, split):
  """The tiny data set's split as ``as_sequences`` gives it: ``(inputs, labels)``."""
  images, labels = datasets.load("mnist", split, tiny_mnist)
  return datasets.as_sequences(images), labels


def test_validation_split_is_the_training_files_end_and_the_test_set_is_untouched(
    tiny_mnist, tmp_path, monkeypatch):
  """48 examples train, the last 16 validate after each epoch (3 steps), the test set at the end."""
  seen = {"fit": [], "evaluate": []}
  batches, evaluate = classification.batches, classification.evaluate

  def batches_spy(order, inputs, labels, mesh=None):  # What the training steps read from.
    seen["fit"].append((np.array(inputs), np.array(labels)))
    return batches(order, inputs, labels, mesh)

  def evaluate_spy(eval_step, params, inputs, labels, *args, **kwargs):
    seen["evaluate"].append((np.array(inputs), np.array(labels)))
    return evaluate(eval_step, params, inputs, labels, *args, **kwargs)

  monkeypatch.setattr(classification, "batches", batches_spy)
  monkeypatch.setattr(classification, "evaluate", evaluate_spy)
  lines = []
  config = {"hidden_size": 8, "batch_size": 16, "steps": 7, "unroll": 1,
            "validation_examples": 16}
  summary = train_mnist.run(config, str(tmp_path), train_mnist.Options(
      data_dir=tiny_mnist, log_every=1, eval_batch_size=16, plots=False), say=lines.append)

  train_inputs, train_labels = _tiny_file(tiny_mnist, "train")
  test_inputs, test_labels = _tiny_file(tiny_mnist, "test")
  [(trained_inputs, trained_labels)] = seen["fit"]
  np.testing.assert_array_equal(trained_inputs, train_inputs[:48])
  np.testing.assert_array_equal(trained_labels, train_labels[:48])
  *validations, (tested_inputs, tested_labels) = seen["evaluate"]
  assert len(validations) == 3  # Steps 3, 6 (epoch ends) and 7 (the end).
  for inputs, labels in validations:
    np.testing.assert_array_equal(inputs, train_inputs[48:])
    np.testing.assert_array_equal(labels, train_labels[48:])
  np.testing.assert_array_equal(tested_inputs, test_inputs)
  np.testing.assert_array_equal(tested_labels, test_labels)
  # No training example is a validation example (the tiny images are all distinct).
  flat = lambda inputs: {row.tobytes() for row in inputs}
  assert not flat(trained_inputs) & flat(validations[0][0])

  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  validation_records = [r for r in records if r["kind"] == "validation"]
  assert [r["step"] for r in validation_records] == [3, 6, 7]
  assert [r["step"] for r in records if r["kind"] == "test"] == [7]  # The test set: once.
  assert validation_records[-1]["validation_accuracy"] == summary["validation_accuracy"]
  assert validation_records[-1]["validation_loss"] == summary["validation_loss"]
  assert summary["validation_examples"] == 16 and summary["test_examples"] == 20
  assert "48 train / 16 validation" in lines[1]
  assert any(line.startswith("step 3: validation accuracy ") for line in lines)


@pytest.mark.parametrize("count", ["64", "100"])
def test_validation_split_as_large_as_the_training_file_is_refused(tiny_mnist, tmp_path, count):
  result = _script(*TINY, f"--data_dir={tiny_mnist}", f"--validation_examples={count}",
                   f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines == [f"error: flag --validation_examples={count}: must be in 0..63 (the training "
                   "file has 64 examples)"], lines
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_validation_on_four_devices_matches_one_device(tiny_mnist, tmp_path):
  args = [*TINY, f"--data_dir={tiny_mnist}", "--steps=8", "--log_every=4", "--eval_every=4",
          "--eval_batch_size=6", "--validation_examples=16"]
  one = _summary(_script(*args, f"--workdir={tmp_path / 'one'}", "--num_devices=1", devices=4))
  four = _summary(_script(*args, f"--workdir={tmp_path / 'four'}", devices=4))
  assert (one["devices"], four["devices"]) == (1, 4)
  assert four["validation_examples"] == 16 and four["test_examples"] == 20
  assert four["validation_accuracy"] == one["validation_accuracy"]
  assert four["validation_loss"] == pytest.approx(one["validation_loss"], rel=1e-5)
  records = [json.loads(line) for line in open(tmp_path / "four" / "metrics.jsonl")]
  assert [r["step"] for r in records if r["kind"] == "validation"] == [4, 8]


def test_workdir_refuses_other_settings(tmp_path):
  config = {"cell": "gru", "hidden_size": 8}
  script.check_workdir_config(str(tmp_path), config)
  script.check_workdir_config(str(tmp_path), dict(config))  # Same settings: fine.
  with pytest.raises(train_mnist.UsageError, match=r"--hidden_size=9 \(was 8\)"):
    script.check_workdir_config(str(tmp_path), {**config, "hidden_size": 9})


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(tiny_mnist, tmp_path):
  result = _script(*TINY, f"--data_dir={tiny_mnist}", "--steps=20", "--learning_rate=1e38",
                   "--warmup_steps=0", "--schedule=constant", "--checkpoint_every=1",
                   f"--workdir={tmp_path}")
  assert result.returncode == 1
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("stopped: loss or gradients became NaN/inf at step "), message
  bad_step = int(message.split("at step ")[1].split(";")[0])
  saved = sorted(int(step) for step in os.listdir(tmp_path / "checkpoints"))
  assert saved and saved[-1] == bad_step  # The state before the bad step, nothing after.


def test_missing_data_is_one_clear_error(tmp_path):
  result = _script(f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 1
  assert result.stderr.startswith("data error: no mnist data found")
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_short_real_run_beats_chance_by_far(tmp_path):
  result = _script("--cell=lstm", "--hidden_size=64", "--steps=300", "--batch_size=128",
                   "--learning_rate=3e-3", "--plots=false", f"--workdir={tmp_path}",
                   "--checkpoint_every=1000", timeout=240)
  summary = _summary(result)
  assert summary["test_examples"] == 10000 and summary["steps"] == 300
  assert summary["test_accuracy"] > 0.8, summary
  assert "[5, 28, 64]" in result.stdout
