r"""Samples text from a character language model trained by ``experiments.train_char_lm``.

    python -m experiments.generate --workdir=runs/char_lm-04d5ed9a --prompt="ROMEO:" \
        --length=300 --temperature=0.8 --top_k=0 --top_p=0.95 --seed=0

Prints the prompt followed by the generated characters on stdout, and nothing
else there (notes go to stderr). The prompt is read by one ``rnn`` call, then
all ``--length`` characters are drawn inside one compiled loop
(:func:`rnn_jax.training.language_model.generate`); ``--temperature=0`` is
greedy; equal ``--seed``\ s give equal text. The newest readable checkpoint of
the workdir is used, with the vocabulary saved beside it.

Bad input is one line on stderr and a non-zero status, no traceback: a prompt
with characters outside the model's vocabulary (named), a negative length, an
out-of-range sampling setting (status 2); a missing workdir or one that is not
a character LM's (status 1).
"""

from __future__ import annotations

import json
import os
import sys

from rnn_jax.training import runtime  # Standard library only: safe before the extras.

if __name__ == "__main__":
  runtime.use_fast_allocator()

try:
  import jax
  import numpy as np
  from absl import app, flags, logging

  from rnn_jax.training import language_model, script, text
except ImportError as missing:  # The `train` extra is not installed.
  runtime.exit_for_missing_extra(missing, __name__, "generation")

UsageError = script.UsageError


def define_flags() -> None:
  """The script's absl flags."""
  flags.DEFINE_string("workdir", None, "A run directory of experiments.train_char_lm.")
  flags.DEFINE_string("prompt", "\n", "Text to continue (at least one character).")
  flags.DEFINE_integer("length", 300, "Characters to generate.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0: greedy (argmax).")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely characters (0: all).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set of most likely "
                     "characters with this much probability (1: all).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


def load_run(workdir: str) -> tuple[language_model.CharLM, dict, text.Vocabulary, int]:
  """``(model, params, vocabulary, step)`` of a train_char_lm workdir's newest checkpoint.

  Raises:
    rnn_jax.training.text.DataError: no such workdir, not a character LM's, or no checkpoint.
  """
  if not workdir or not os.path.isdir(workdir):
    raise text.DataError(f"--workdir={workdir}: no such directory")
  try:
    with open(os.path.join(workdir, "config.json")) as stream:
      config = json.load(stream)
  except (OSError, ValueError) as error:
    raise text.DataError(f"--workdir={workdir}: no readable config.json; is it a run of "
                         "experiments.train_char_lm?") from error
  if set(config) != set(language_model.CharLMTask().config_values()):
    raise text.DataError(f"--workdir={workdir}: not a run of experiments.train_char_lm (its "
                         "config.json has other settings)")
  task = language_model.CharLMTask.from_config(config)
  vocabulary = text.Vocabulary.load(os.path.join(workdir, "vocabulary.json"))
  model = task.model(vocabulary.size)
  from rnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel  # Orbax.
  template = task.initial_state(vocabulary.size)
  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                     log=lambda line: print(line, file=sys.stderr))
  restored = store.restore_latest(template)
  store.close()
  if restored is None:
    raise text.DataError(f"--workdir={workdir}: no checkpoint to sample from")
  step, state = restored
  return model, state.params, vocabulary, step


def sample(workdir: str, prompt: str, length: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0) -> str:
  """The prompt followed by ``length`` generated characters.

  Raises:
    UsageError: a bad prompt (empty, or characters outside the vocabulary) or setting.
    rnn_jax.training.text.DataError: see :func:`load_run`.
  """
  if length < 0:
    raise UsageError(f"--length={length}: must be >= 0")
  if temperature < 0:
    raise UsageError(f"--temperature={temperature}: must be >= 0")
  if top_k < 0:
    raise UsageError(f"--top_k={top_k}: must be >= 0")
  if not 0.0 < top_p <= 1.0:
    raise UsageError(f"--top_p={top_p}: must be in (0, 1]")
  if not prompt:
    raise UsageError("--prompt is empty: give at least one character to start from")
  model, params, vocabulary, step = load_run(workdir)
  try:
    prompt_ids = vocabulary.encode(prompt, strict=True)
  except ValueError as error:
    raise UsageError(f"--prompt: {error}") from error
  print(f"sampling {length} characters from the checkpoint at step {step} of {workdir}",
        file=sys.stderr)
  if length == 0:
    return prompt
  tokens = language_model.generate(model, params, prompt_ids, jax.random.key(seed),
                                   length=length, temperature=temperature, top_k=top_k,
                                   top_p=top_p, exclude=vocabulary.unknown_id)
  return prompt + vocabulary.decode(np.asarray(tokens))


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}; all settings are --flags")
  logging.set_verbosity(logging.WARNING)
  values = flags.FLAGS
  sys.stdout.write(sample(values.workdir, values.prompt, values.length, values.temperature,
                          values.top_k, values.top_p, values.seed))
  sys.stdout.write("\n")
  sys.stdout.flush()


main_with_exit_codes = script.with_exit_codes(main)


if __name__ == "__main__":
  define_flags()
  app.run(main_with_exit_codes, flags_parser=script.parse_flags)
