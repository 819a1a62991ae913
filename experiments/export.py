r"""Exports a trained run (MNIST classifier or character LM) as one ONNX model.

    python -m experiments.export --workdir=runs/mnist-04d5ed9a --out=model.onnx

Writes the whole model of the run directory's newest checkpoint (the parameters
its loader gives: :func:`rnn_jax.training.classification.load` or
:func:`rnn_jax.training.language_model.load`) and prints the model's inputs and
outputs, one per line (``input xs float32 [batch, time, 28]``):

* a ``train_mnist`` run (:func:`rnn_jax.export.classifier_to_onnx`): input
  ``xs [batch, time, features]`` float32, the images read as sequences as the
  run read them (``datasets.as_sequences`` with the run's ``--view``); output
  ``logits [batch, classes]``;
* a ``train_char_lm`` run (:func:`rnn_jax.export.char_lm_to_onnx`): input
  ``ids [batch, time]`` int64 and the optional initial carry ``initial_<leaf>``;
  outputs ``logits [batch, time, vocab]`` and the final carry, to serve it step
  by step or chunk by chunk; the vocabulary is the model's metadata.

It needs the ``export`` extra (``onnx``). Bad input is one line on stderr and a
non-zero status, no traceback: a missing flag, an unwritable ``--out`` or a
missing extra (status 2); a missing workdir, one that is not a run of these
scripts, or a run without a checkpoint yet (status 1).
"""

from __future__ import annotations

import os
import sys

from rnn_jax.training import runtime  # Standard library only: safe before the extras.

try:
  from absl import app, flags, logging

  from rnn_jax import export
  from rnn_jax.training import classification, language_model, runs, script
except ImportError as missing:  # The `train` extra is not installed.
  runtime.exit_for_missing_extra(missing, __name__, "the export")

UsageError = script.UsageError


def define_flags() -> None:
  """The script's absl flags."""
  flags.DEFINE_string("workdir", None, "A run directory of experiments.train_mnist or "
                      "experiments.train_char_lm.")
  flags.DEFINE_string("out", None, "The .onnx file to write.")
  flags.DEFINE_integer("opset", None, f"The ONNX opset (default {export.DEFAULT_OPSET}).")


def export_run(workdir: str, out: str, opset: int | None = None):
  """Writes the model of the run in ``workdir`` to ``out``; returns its ``onnx.ModelProto``.

  Raises:
    UsageError: no ``--workdir`` or ``--out``, an unwritable ``--out``, a bad opset, or no
      ``onnx`` package.
    rnn_jax.training.idx.DataError: no such directory, not a run of ``train_mnist`` or
      ``train_char_lm``, or no checkpoint yet.
  """
  for flag, value in (("workdir", workdir), ("out", out)):
    if not value:
      raise UsageError(f"--{flag} is required")
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):
    raise UsageError(f"--out={out}: no such folder {folder}")
  try:  # A character LM's config names its text; a classifier's never does.
    if "text_file" in runs.read_config(workdir, "train_mnist or experiments.train_char_lm"):
      trained, write = language_model.load(workdir), export.char_lm_to_onnx
    else:
      trained, write = classification.load(workdir), export.classifier_to_onnx
  except runs.DataError as error:  # The loaders name the workdir; here it is a flag.
    raise runs.naming_the_flag(error, workdir) from error
  try:
    model = write(trained, out, opset=opset)
  except OSError as error:
    raise UsageError(f"--out={out}: cannot write it ({error.strerror or error})") from error
  except (ValueError, ImportError) as error:  # A bad opset, a model with no ONNX mapping, or
    raise UsageError(str(error)) from error   # no onnx package (the message names the extra).
  print(f"exported the checkpoint at step {trained.step} of {workdir}", file=sys.stderr)
  return model


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}; all settings are --flags")
  logging.set_verbosity(logging.WARNING)
  values = flags.FLAGS
  model = export_run(values.workdir, values.out, values.opset)
  print(f"wrote {os.path.abspath(values.out)}")
  for line in export.describe(model):
    print(line)
  sys.stdout.flush()


main_with_exit_codes = script.with_exit_codes(main)


if __name__ == "__main__":
  define_flags()
  app.run(main_with_exit_codes, flags_parser=script.parse_flags)
