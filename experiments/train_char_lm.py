r"""Trains a character-level language model with truncated BPTT over stateful streams.

    python -m experiments.train_char_lm                     # Tiny Shakespeare, the README's model
    python -m experiments.train_char_lm --text_file=my.txt --cell=gru --hidden_size=256
    python -m experiments.train_char_lm --tbptt=false       # random windows from a zero state
    python -m experiments.train_char_lm --preset=best       # our best Tiny Shakespeare model

Presets (explicit flags override their values):
  best       an LSTM 768 trained for 8000 steps with dropout 0.3 (Tiny Shakespeare:
             last10_loss 1.417 against the default's 1.437, in 18 minutes on 2 CPU cores;
             the char-LM guide's Results)

The text (``--text_file``, or Tiny Shakespeare found as
:func:`rnn_jax.training.text.find_text_file` says) is split 90/5/5 by
character offset as tensorflow-datasets splits it; the vocabulary is the
training split's characters plus ``<unk>``. The model is embedding -> the
recurrent core (``--cell`` x ``--num_layers``) -> dense; ``--dropout`` drops
the embeddings, the core's outputs and, in a stack, between layers, with a
fresh mask per step (``--variational_dropout``: one per window). The LM kit:
``--proj_size`` and ``--layer_norm`` (LSTM only), ``--zoneout`` and
``--weight_drop`` (the recurrent connections, in training). With
``--tbptt`` (the default) the training text is cut into ``--batch_size``
contiguous streams and step ``i`` trains on window ``i`` of ``--window``
characters of each, from the carry the previous window ended with (part of
the checkpointed state); ``--tbptt=false``: random windows from a zero state.

The task is :class:`rnn_jax.training.language_model.CharLMTask`, run by
:func:`rnn_jax.training.task.train_and_evaluate`; the char-LM guide says what a
run writes (``--workdir``, default ``runs/char_lm-<config hash>``, with a preset
``runs/char_lm_<preset>-<config hash>``: checkpoints,
``vocabulary.json``, ``metrics.jsonl``, ``curves.png``, ``sample.txt``), how it
resumes bitwise, runs data-parallel, and its exit statuses. The last line is
one JSON object (``val_loss``, ``test_loss`` in nats/char, ``last10_loss``
(validation and test together: nanoGPT's "val" split), ``val_bpc``,
``test_bpc``, ``chars_per_second``, ...). Sample from a trained run with
``python -m experiments.generate --workdir=DIR``. From Python:
``train_char_lm.run({"steps": 100}, "runs/x", train_char_lm.Options())``
(``preset="best"`` for a preset's values under the given ones).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from rnn_jax.training import runtime  # Standard library only: safe before the extras.

if __name__ == "__main__":
  runtime.use_fast_allocator()  # Re-executes with tcmalloc before JAX allocates anything.

try:
  from absl import app

  import experiments
  from rnn_jax.layer import VJPS
  from rnn_jax.training import cores, language_model, script
  from rnn_jax.training import task as task_lib
  from rnn_jax.training.config import Config, setting
except ImportError as missing:  # The `train` extra is not installed.
  runtime.exit_for_missing_extra(missing, __name__, "the training toolkit")

UsageError = script.UsageError
WEIGHT_DROP_CELLS = ("gru", "irnn", "lstm", "rnn")
"""The cells of ``--cell`` with a recurrent matrix ``w_hh`` for ``--weight_drop``."""


@dataclasses.dataclass(frozen=True)
class CharLMConfig(Config):
  """What a run trains: its identity (``config.json``, the default workdir's hash), the
  README's Tiny Shakespeare model by default; each field is a flag. ``vjp`` is ``backward``
  in ``config.json`` (``--backward``: a deprecated alias)."""

  PRESETS = {
      "best": dict(hidden_size=768, steps=8000, dropout=0.3),
  }

  text_file: str | None = setting(None, "UTF-8 text to train on (default: Tiny Shakespeare).",
                                  path=True)
  cell: str = setting("lstm", "Recurrent cell (rnn_jax.training.cores.CELLS).",
                      choices=lambda: sorted(cores.CELLS))
  hidden_size: int = setting(512, "Units per layer.", lower=1)
  num_layers: int = setting(1, "Stacked layers.", lower=1)
  embed_size: int = setting(64, "Embedding width.", lower=1)
  dropout: float = setting(0.1, "Drop rate of the embeddings, between layers and of the "
                           "core's outputs, in training.", lower=0.0, below=1.0)
  batch_size: int = setting(32, "Streams (windows per step).", lower=1)
  window: int = setting(64, "Characters per window (the truncation length K of BPTT).",
                        lower=1)
  steps: int = setting(4000, "Training steps.", lower=1)
  learning_rate: float = setting(3e-3, "Peak Adam learning rate (warmup, then cosine decay "
                                 "to 0).", above=0.0)
  warmup_steps: int = setting(100, "Linear warmup steps.", lower=0)
  clip_norm: float = setting(1.0, "Clip gradients to this global norm; 0 disables.", lower=0.0)
  tbptt: bool = setting(True, "Truncated BPTT over stateful streams; false: random windows "
                        "from a zero state.")
  seed: int = setting(0, "Seed of the initialisation, data and dropout.", lower=0)
  unroll: int | None = setting(None, "Time steps per scan iteration (default: the cell's "
                               "tuned value).", lower=1)
  vjp: str = setting("auto", "Gradient of the scan (rnn_jax.rnn's vjp=); auto: the cell's "
                     "tuned choice.", choices=("auto", *VJPS), key="backward",
                     aliases=("backward",))
  remat_every: int = setting(0, "Keep the carry only every K steps of a window in the backward "
                             "pass and recompute each chunk (for long --window); 0: off.",
                             lower=0, added=True)
  compute_dtype: str = setting("float32", "Operands of the core's matrix products: float32, or "
                               "bfloat16 with float32 accumulation, carries, gates and "
                               "parameters (rnn_jax.rnn's compute_dtype).",
                               choices=tuple(cores.COMPUTE_DTYPES), added=True)
  proj_size: int = setting(0, "LSTM only: project each layer's output and recurrent input to "
                           "this many units (rnn_jax.lstm(proj_size=...)); 0: none.", lower=0,
                           added=True)
  layer_norm: bool = setting(False, "LSTM only: the layer-normalised LSTM (Ba et al. 2016).",
                             added=True)
  zoneout: float = setting(0.0, "Zoneout rate of every layer's carry in training "
                           "(rnn_jax.zoneout; Krueger et al. 2017).", lower=0.0, below=1.0,
                           added=True)
  weight_drop: float = setting(0.0, "DropConnect rate of every layer's recurrent matrix w_hh in "
                               "training, one mask per step's windows (rnn_jax.weight_drop; "
                               "AWD-LSTM).", lower=0.0, below=1.0, added=True)
  variational_dropout: bool = setting(False, "Draw the --dropout masks once per window, shared "
                                      "by all its time steps (variational/locked dropout), "
                                      "instead of afresh at every step.", added=True)

  def check(self) -> None:
    """The cell options that only some cells have."""
    for name in ("proj_size", "layer_norm"):
      if getattr(self, name) and self.cell != "lstm":
        raise UsageError(f"flag --{name}={getattr(self, name)}: an option of --cell=lstm, not "
                         f"--cell={self.cell}")
    if self.weight_drop and self.cell not in WEIGHT_DROP_CELLS:
      raise UsageError(f"flag --weight_drop={self.weight_drop}: --cell={self.cell} has no "
                       f"recurrent matrix w_hh; use one of {', '.join(WEIGHT_DROP_CELLS)}")


@dataclasses.dataclass(frozen=True)
class Options(task_lib.RunSettings):
  """How a run is carried out and reported (not its identity): where it computes, how often
  it logs, saves and evaluates (:class:`~rnn_jax.training.task.RunSettings`), and these."""

  eval_every: int = setting(1000, "Steps between validation evaluations (0: only at the end).",
                            lower=0)
  eval_streams: int = setting(32, "Streams a split is cut into for evaluation (each character "
                              "predicted once, the carry passed along each stream).", lower=1)
  eval_window: int = setting(256, "Characters per evaluation window.", lower=1)
  sample_length: int = setting(300, "Characters of the final sample (0: none).", lower=0)
  sample_temperature: float = setting(0.8, "Temperature of the final sample (0: greedy).",
                                      lower=0.0)
  plots: bool = setting(True, "Write curves.png (needs matplotlib).")


def workdir_prefix(preset: str | None = None) -> str:
  """The default workdir's name before ``-<config hash>``: ``char_lm``, or
  ``char_lm_<preset>`` for a preset."""
  return "char_lm" if preset is None else f"char_lm_{preset}"


def run(config: Mapping | CharLMConfig, workdir: str | None = None,
        options: Options = Options(), *, preset: str | None = None,
        say: Callable[[str], None] = script.say) -> dict:
  """Trains and evaluates; returns the summary the script prints last (``val_loss``, ...,
  and ``preset``).

  ``config``: a :class:`CharLMConfig`, or field values over the defaults and ``preset``'s.
  Raises what :func:`rnn_jax.training.task.train_and_evaluate` raises.
  """
  config = CharLMConfig.resolve(config, preset)
  task = language_model.CharLMTask.from_config(
      config.to_dict(), search_dirs=experiments.data_search_dirs(),
      **{name: getattr(options, name) for name in (
          "eval_streams", "eval_window", "sample_length", "sample_temperature", "plots")})
  summary = task_lib.train_and_evaluate(task, config, workdir, options,
                                        name=workdir_prefix(preset), say=say)
  return {**summary, "preset": preset}


parse_flags = script.flags_parser(CharLMConfig, Options, workdir_help="Run directory (default "
                                  "runs/char_lm-<config hash>; with --preset, "
                                  "runs/char_lm_<preset>-<config hash>).")
main_with_exit_codes = script.main_of(run, CharLMConfig, Options)


if __name__ == "__main__":
  app.run(main_with_exit_codes, flags_parser=parse_flags)
