r"""Training-step time of the character LM: rnn_jax's toolkit against an equivalent PyTorch model.

    python -m experiments.bench_char_lm                   # the default model, 20 rounds
    python -m experiments.bench_char_lm --cell=gru --hidden_size=256 --rounds=10

Both sides train embedding -> LSTM/GRU -> dense over the vocabulary on
stateful TBPTT windows (the carry of one step, detached, starts the next),
with the same sizes, window, batch, dropout (embeddings and outputs), Adam and
gradient clipping by global norm. The rnn_jax side is the real training step
of :class:`rnn_jax.training.language_model.CharLMTask`
(:func:`rnn_jax.training.loop.make_train_step` of
:func:`rnn_jax.training.language_model.loss_function`, donated state, the
windows gathered on the device). Steps alternate in one process
(:func:`experiments.benchmarking.time_interleaved`: shuffled order, warm-up
first, medians). Prints one JSON line; ``--output`` also writes it to a file.
"""

from __future__ import annotations

import dataclasses
import json
import os

if __name__ == "__main__":
  from rnn_jax.training import runtime
  runtime.use_fast_allocator()

import jax
import numpy as np

from experiments import benchmarking
from rnn_jax.training import language_model, loop, runtime, text
from rnn_jax.training.config import Config, setting

VOCAB = 66  # Tiny Shakespeare: 65 characters + <unk>.


def build_rnn_jax_step(config: dict, vocab_size: int = VOCAB):
  """``(step, ())``: one training step of the toolkit on fixed random windows (state threaded)."""
  task = language_model.CharLMTask.from_config(config)
  model, optimizer = task.model(vocab_size), task.optimizer()
  state = task.initial_state(vocab_size)
  train_step = loop.make_train_step(
      language_model.loss_function(model, task.window, tbptt=True), optimizer, seed=task.seed)
  ids = np.random.default_rng(0).integers(0, vocab_size - 1, 200_000).astype(np.int32)
  batches = text.StreamWindows(ids, config["batch_size"], config["window"])
  holder = {"state": state, "step": 0}

  def step():
    holder["state"], metrics = train_step(holder["state"], batches(holder["step"]))
    holder["step"] += 1
    return metrics["loss"]

  return step, ()


def build_torch_step(config: dict, vocab_size: int = VOCAB):
  """The same step in PyTorch: ``nn.Embedding`` -> ``nn.LSTM``/``nn.GRU`` -> ``nn.Linear``."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  recurrent = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[config["cell"]]
  embed = torch.nn.Embedding(vocab_size, config["embed_size"])
  core = recurrent(config["embed_size"], config["hidden_size"], config["num_layers"],
                   batch_first=True, dropout=config["dropout"] if config["num_layers"] > 1 else 0)
  dense = torch.nn.Linear(config["hidden_size"], vocab_size)
  dropout = torch.nn.Dropout(config["dropout"])
  parameters = [*embed.parameters(), *core.parameters(), *dense.parameters()]
  optimizer = torch.optim.Adam(parameters, lr=config["learning_rate"])
  ids = np.random.default_rng(0).integers(0, vocab_size - 1, 200_000).astype(np.int64)
  batch, window = config["batch_size"], config["window"]
  length = (len(ids) - 1) // batch
  streams = torch.from_numpy(np.stack([ids[b * length:(b + 1) * length + 1]
                                       for b in range(batch)]))
  holder = {"carry": None, "window": 0}

  def step():
    start = (holder["window"] % (length // window)) * window
    inputs, targets = streams[:, start:start + window], streams[:, start + 1:start + window + 1]
    optimizer.zero_grad(set_to_none=True)
    outputs, carry = core(dropout(embed(inputs)), holder["carry"])
    logits = dense(dropout(outputs))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, config["clip_norm"])
    optimizer.step()
    holder["carry"] = (tuple(c.detach() for c in carry) if isinstance(carry, tuple)
                       else carry.detach())
    holder["window"] += 1
    return None

  return step, ()


def compare(config: dict, rounds: int = 20, warmup: int = 3) -> dict:
  """Interleaved medians of both steps and their ratio (torch time / rnn_jax time)."""
  import torch  # pylint: disable=import-outside-toplevel
  cases = {"rnn_jax": build_rnn_jax_step(config), "torch": build_torch_step(config)}
  timings = benchmarking.time_interleaved(cases, rounds=rounds, warmup=warmup)
  chars = config["batch_size"] * config["window"]
  result = {name: {"median_ms": round(1e3 * t["median_s"], 2),
                   "chars_per_second": round(chars / t["median_s"])}
            for name, t in timings.items()}
  return {
      **result,
      "torch_over_rnn_jax": round(timings["torch"]["median_s"] / timings["rnn_jax"]["median_s"],
                                  3),
      "rounds": rounds, "config": config, "allocator": runtime.allocator_name(),
      "jax_version": jax.__version__, "torch_version": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "device": jax.devices()[0].device_kind, "load_average": [round(v, 2)
                                                               for v in os.getloadavg()],
  }


@dataclasses.dataclass(frozen=True)
class CharLMBenchConfig(Config):
  """The benchmark's settings; each field is a flag."""

  cell: str = setting("lstm", "Recurrent cell (both libraries).", choices=("lstm", "gru"))
  hidden_size: int = setting(language_model.CharLMTask.hidden_size,
                              "Units of the recurrent layer.", lower=1)
  rounds: int = setting(20, "Interleaved rounds (one step of each per round).", lower=1)
  output: str | None = setting(None, "Also write the JSON line to this file.")


def main(argv=None):
  settings = benchmarking.parse(CharLMBenchConfig, argv)
  config = language_model.CharLMTask(cell=settings.cell,
                                     hidden_size=settings.hidden_size).config_values()
  line = json.dumps(compare(config, rounds=settings.rounds))
  if settings.output:
    with open(settings.output, "w") as stream:
      stream.write(line + "\n")
  print(line, flush=True)


if __name__ == "__main__":
  main()
