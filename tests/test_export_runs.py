"""Trained runs exported whole (``python -m experiments.export``, ``rnn_jax.export``'s
``classifier_to_onnx`` and ``char_lm_to_onnx``), run in onnxruntime against the loaded run.

Tiny runs trained in-process (a synthetic MNIST, a short text); the real MNIST test set, where
the checkout has it beside it, in a test marked slow.
"""

import json
import os

import jax
import numpy as np
import pytest

import rnn_jax
from experiments import train_char_lm, train_mnist
from rnn_jax import export
from rnn_jax.training import classification, datasets, language_model
from scripts import REPO, one_line, run_experiment, write_tiny_mnist

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ort.set_default_logger_severity(3)  # Not the per-session note on overridable initializers.

REAL_MNIST = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")
MNIST_CONFIG = {"cell": "lstm", "num_layers": 2, "hidden_size": 8, "batch_size": 16, "steps": 8,
                "unroll": 1, "ema_decay": 0.9}
MNIST_OPTIONS = dict(log_every=4, checkpoint_every=4, eval_batch_size=16, plots=False)
CHAR_LM_CONFIG = {"cell": "lstm", "num_layers": 2, "hidden_size": 8, "embed_size": 4,
                  "batch_size": 4, "window": 16, "steps": 8, "warmup_steps": 2,
                  "learning_rate": 1e-2}


def _session(path):
  return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, feeds):
  names = [output.name for output in session.get_outputs()]
  return dict(zip(names, session.run(names, feeds)))


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
  """``(workdir, data_dir)`` of a tiny 2-layer LSTM run (with a moving average) on fake digits."""
  data_dir = write_tiny_mnist(tmp_path_factory.mktemp("tiny_mnist"))
  workdir = str(tmp_path_factory.mktemp("mnist_run") / "run")
  train_mnist.run(MNIST_CONFIG, workdir, train_mnist.Options(data_dir=data_dir, **MNIST_OPTIONS),
                  say=lambda line: None)
  return workdir, data_dir


@pytest.fixture(scope="module")
def char_lm_run(tmp_path_factory):
  """The workdir of a tiny 2-layer LSTM character LM run."""
  path = tmp_path_factory.mktemp("text") / "tiny.txt"
  words = ["to", "be", "or", "not", "the", "question", "whether", "tis", "nobler", "mind"]
  path.write_text(" ".join(np.random.default_rng(0).choice(words, 400)) + "\n", encoding="utf-8")
  workdir = str(tmp_path_factory.mktemp("char_lm_run") / "run")
  train_char_lm.run({**CHAR_LM_CONFIG, "text_file": str(path)}, workdir,
                    train_char_lm.Options(log_every=4, checkpoint_every=4, eval_every=8,
                                          eval_streams=2, eval_window=16, sample_length=4),
                    say=lambda line: None)
  return workdir


def test_script_exports_an_mnist_run_that_predicts_the_loaded_runs_labels(mnist_run, tmp_path):
  workdir, data_dir = mnist_run
  out = tmp_path / "mnist.onnx"
  result = run_experiment("export", f"--workdir={workdir}", f"--out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines() == [f"wrote {out}", "input xs float32 [batch, time, 28]",
                                        "output logits float32 [batch, 10]"]
  loaded = classification.load(workdir)
  images, _ = datasets.load("mnist", "test", data_dir)
  sequences = datasets.as_sequences(images, loaded.view, loaded.permutation_seed)
  session = _session(out)
  logits = _run(session, {"xs": sequences})["logits"]
  np.testing.assert_allclose(logits, loaded.logits(images), atol=1e-5, rtol=0)
  np.testing.assert_array_equal(np.argmax(logits, -1), loaded.predict(images))
  # Batch sizes from one file (dynamic axes).
  np.testing.assert_allclose(_run(session, {"xs": sequences[:1]})["logits"], logits[:1],
                             atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(REAL_MNIST), reason="no real MNIST beside the checkout")
def test_exported_classifier_predicts_the_jax_labels_on_1000_real_test_images(tmp_path):
  """A short run on real MNIST (rows view), then its exported model on the first 1,000 test
  images: the labels of ``classification.load(workdir).predict``."""
  workdir = str(tmp_path / "run")
  summary = train_mnist.run(
      {**MNIST_CONFIG, "hidden_size": 32, "steps": 60, "max_train_examples": 2048,
       "learning_rate": 1e-2, "warmup_steps": 5}, workdir,
      train_mnist.Options(data_dir=REAL_MNIST, max_test_examples=1000,
                          **{**MNIST_OPTIONS, "eval_batch_size": 500}), say=lambda line: None)
  loaded = classification.load(workdir)
  export.classifier_to_onnx(loaded, tmp_path / "mnist.onnx")
  images, labels = datasets.load("mnist", "test", REAL_MNIST)
  images, labels = images[:1000], labels[:1000]
  sequences = datasets.as_sequences(images, loaded.view, loaded.permutation_seed)
  predicted = np.argmax(_run(_session(tmp_path / "mnist.onnx"), {"xs": sequences})["logits"], -1)
  np.testing.assert_array_equal(predicted, loaded.predict(images))
  assert np.mean(predicted == labels) == summary["test_accuracy"]
  assert summary["test_accuracy"] > 0.3  # A trained model, not chance: the labels mean something.


@pytest.mark.parametrize("core", [
    rnn_jax.gru(5),
    rnn_jax.bidirectional(rnn_jax.stack([rnn_jax.lstm(4), rnn_jax.mingru(3)]),
                          rnn_jax.lru(3, 2, skip="none")),
    rnn_jax.remat(rnn_jax.bidirectional(rnn_jax.lstm(4), rnn_jax.lstm(4))),
], ids=["gru", "bidirectional_mixed", "remat_bidirectional_lstm"])
def test_classifier_logits_equal_apply(core, tmp_path, random_params):
  """The summary (forward last, backward first) and the dense layer, at several shapes."""
  model = classification.Classifier(core, num_classes=7)
  params = random_params(model, 3, seed=2)
  trained = classification.TrainedClassifier(model, params, "rows", 0, 0, str(tmp_path))
  export.classifier_to_onnx(trained, tmp_path / "classifier.onnx")
  session = _session(tmp_path / "classifier.onnx")
  assert [i.name for i in session.get_inputs()] == ["xs"]
  assert session.get_overridable_initializers() == []  # Always from the zero carry.
  rng = np.random.default_rng(0)
  for batch, steps in ((1, 1), (4, 6)):
    xs = rng.normal(size=(batch, steps, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(session, {"xs": xs})["logits"], model.apply(params, xs),
                               atol=1e-5, rtol=0)


def test_classifier_refuses_a_bidirectional_core_without_a_summary(tmp_path):
  model = classification.Classifier(
      rnn_jax.bidirectional(rnn_jax.gru(4), rnn_jax.gru(4), "sum"), num_classes=3)
  trained = classification.TrainedClassifier(model, model.init(jax.random.key(0), 2), "rows", 0,
                                             0, str(tmp_path))
  with pytest.raises(ValueError, match=r"bidirectional\(merge='sum'\) mixed the two halves"):
    export.classifier_to_onnx(trained, tmp_path / "classifier.onnx")
  assert not (tmp_path / "classifier.onnx").exists()


def test_char_lm_export_equals_the_model_whole_chunked_and_in_greedy_generation(char_lm_run,
                                                                                tmp_path):
  out = tmp_path / "char_lm.onnx"
  result = run_experiment("export", f"--workdir={char_lm_run}", f"--out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  loaded = language_model.load(char_lm_run)
  vocab = loaded.vocabulary.size
  carries = [f"{layer}.{leaf}" for layer in (0, 1) for leaf in ("h", "c")]
  assert result.stdout.splitlines() == [
      f"wrote {out}", "input ids int64 [batch, time]",
      *[f"input initial_{name} float32 [batch, 8] (optional)" for name in carries],
      f"output logits float32 [batch, time, {vocab}]",
      *[f"output {name} float32 [batch, 8]" for name in carries]]
  assert export.carry_names(loaded.model.core) == tuple(carries)
  metadata = {p.key: p.value for p in onnx.load(out).metadata_props}
  assert json.loads(metadata["vocabulary"]) == list(loaded.vocabulary.chars)

  session = _session(out)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, (3, 11))
  whole = _run(session, {"ids": ids})
  logits, final = loaded.model.apply(loaded.params, ids)
  np.testing.assert_allclose(whole["logits"], logits, atol=1e-5, rtol=0)
  for got, expected in zip(jax.tree.leaves(export.carry_from_outputs(loaded.model.core, whole)),
                           jax.tree.leaves(final)):
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  # Chunk by chunk, each chunk's final carry fed to the next: the whole call's logits.
  carry, chunks = {}, []
  for start in range(0, 11, 4):
    results = _run(session, {"ids": ids[:, start:start + 4], **carry})
    chunks.append(results["logits"])
    carry = export.carry_inputs(loaded.model.core,
                                export.carry_from_outputs(loaded.model.core, results))
  np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole["logits"], atol=1e-5, rtol=0)

  # Greedy generation served one character per call equals the JAX model's.
  prompt, length = "to be", 12
  results = _run(session, {"ids": np.asarray([loaded.vocabulary.encode(prompt)], np.int64)})
  tokens = []
  for _ in range(length):
    next_logits = results["logits"][:, -1].copy()
    next_logits[:, loaded.vocabulary.unknown_id] = -np.inf  # As generate excludes <unk>.
    tokens.append(int(np.argmax(next_logits, -1)[0]))
    carry = {f"initial_{name}": results[name] for name in carries}
    results = _run(session, {"ids": np.asarray([[tokens[-1]]], np.int64), **carry})
  served = prompt + loaded.vocabulary.decode(np.asarray(tokens))
  assert served == loaded.generate(prompt, length, temperature=0)


@pytest.mark.parametrize("args, status, message", [
    ([], 2, "--workdir is required"),
    (["--workdir={empty}"], 2, "--out is required"),
    (["--workdir={empty}/missing", "--out={out}"], 1, "no such directory"),
    (["--workdir={empty}", "--out={out}"], 1, "no readable config.json; is it a run of "
                                              "experiments.train_mnist or "
                                              "experiments.train_char_lm?"),
    (["--workdir={no_checkpoint}", "--out={out}"], 1, "no checkpoint to load"),
    (["--workdir={run}", "--out={empty}/no/such/folder/m.onnx"], 2, "no such folder"),
    (["--workdir={run}", "--out={empty}"], 2, "cannot write it"),  # A folder, not a file.
    (["--workdir={run}", "--out={out}", "--opset=12"], 2, "opset must be an int from 13 to"),
])
def test_script_refusals_are_one_line(args, status, message, mnist_run, tmp_path):
  workdir, _ = mnist_run
  (tmp_path / "no_checkpoint").mkdir()
  with open(os.path.join(workdir, "config.json")) as source:  # A run that saved nothing yet.
    (tmp_path / "no_checkpoint" / "config.json").write_text(source.read())
  (tmp_path / "empty").mkdir()
  values = {"empty": tmp_path / "empty", "no_checkpoint": tmp_path / "no_checkpoint",
            "run": workdir, "out": tmp_path / "m.onnx"}
  result = run_experiment("export", *[arg.format(**values) for arg in args])
  assert message in one_line(result, status)
  assert not (tmp_path / "m.onnx").exists()
