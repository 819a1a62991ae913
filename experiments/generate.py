r"""Samples text from a character language model trained by ``experiments.train_char_lm``.

    python -m experiments.generate --workdir=runs/char_lm-04d5ed9a --prompt="ROMEO:" \
        --length=300 --temperature=0.8 --top_k=0 --top_p=0.95 --seed=0

Prints the prompt followed by the generated characters on stdout, and nothing
else there (notes go to stderr). The prompt is read by one ``rnn`` call, then
all ``--length`` characters are drawn inside one compiled loop
(:func:`rnn_jax.training.language_model.generate`); ``--temperature=0`` is
greedy; equal ``--seed``\ s give equal text. The newest readable checkpoint of
the workdir is used, with the vocabulary saved beside it. From Python, the same
text comes from ``rnn_jax.training.language_model.load(workdir).generate(...)``.

Bad input is one line on stderr and a non-zero status, no traceback: a prompt
with characters outside the model's vocabulary (named), a negative length, an
out-of-range sampling setting (status 2); a missing workdir or one that is not
a character LM's (status 1).
"""

from __future__ import annotations

import sys

from rnn_jax.training import runtime  # Standard library only: safe before the extras.

if __name__ == "__main__":
  runtime.use_fast_allocator()

try:
  from absl import app, flags, logging

  from rnn_jax.training import language_model, runs, script, text
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


def sample(workdir: str, prompt: str, length: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0) -> str:
  """The prompt followed by ``length`` generated characters
  (:meth:`rnn_jax.training.language_model.TrainedCharLM.generate` of the loaded run).

  Raises:
    UsageError: a bad prompt (empty, or characters outside the vocabulary) or setting,
      named as its flag; the settings are checked before the run is read.
    rnn_jax.training.text.DataError: see :func:`rnn_jax.training.language_model.load`.
  """
  try:
    language_model.check_generation(prompt, length, temperature, top_k, top_p)
    trained = language_model.load(workdir)
    print(f"sampling {length} characters from the checkpoint at step {trained.step} of "
          f"{workdir}", file=sys.stderr)
    return trained.generate(prompt, length, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed)
  except ValueError as error:  # The Python API names the argument; here it is a flag.
    raise UsageError(f"--{error}") from error
  except text.DataError as error:  # Likewise the workdir.
    raise runs.naming_the_flag(error, workdir) from error


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
