"""rnn_jax: recurrent networks as pure JAX functions.

Layers (:mod:`rnn_jax.layer`) are immutable values of hyperparameters with
pure methods: cells (:mod:`rnn_jax.cells`), linear recurrences
(:mod:`rnn_jax.linear_rnn`), their compositions (:mod:`rnn_jax.compose`) and
regularisers (:mod:`rnn_jax.regularizers`).
Parameters are plain pytrees of arrays; :func:`rnn` unrolls any layer over
time with ``jax.lax.scan``. This package needs only jax and numpy; the Flax
layers (``rnn_jax.linen``, ``rnn_jax.nnx``) need flax, ``rnn_jax.interop``
needs torch, and the training toolkit (``rnn_jax.training``) its ``train`` extra.

    import jax, jax.numpy as jnp, rnn_jax
    cell = rnn_jax.lstm(128)
    params = cell.init(jax.random.key(0), input_size=28)
    outputs, (h, c) = rnn_jax.rnn(cell, params, jnp.zeros((32, 28, 28)))
"""

import rnn_jax.onednn  # Registers the "onednn" kernels (the extension itself loads lazily).
import rnn_jax.cpu_loop  # Registers the "cpu_loop" kernel (likewise).
from rnn_jax.cells import GRU, LSTM, Cell, LSTMState, SimpleRNN, gru, lstm, simple_rnn
from rnn_jax.compose import Bidirectional, Remat, Stack, bidirectional, remat, stack
from rnn_jax.gradient_flow import carry_gradient_norms
from rnn_jax.layer import Layer, RunOptions, uses_dropout, with_compute_dtype
from rnn_jax.linear_rnn import LRU, LinearRNN, MinGRU, MinLSTM, lru, mingru, minlstm
from rnn_jax.regularizers import WeightDrop, Zoneout, weight_drop, zoneout
from rnn_jax._scan import reverse_padded
from rnn_jax.summary import last_output, summary
from rnn_jax.unroll import reset_carry, rnn

__all__ = [
    "Bidirectional", "Cell", "GRU", "LRU", "LSTM", "LSTMState", "Layer", "LinearRNN", "MinGRU",
    "MinLSTM", "Remat", "RunOptions", "SimpleRNN", "Stack", "WeightDrop", "Zoneout",
    "bidirectional", "carry_gradient_norms", "gru",
    "last_output", "lru", "lstm", "mingru", "minlstm", "remat", "reset_carry", "reverse_padded",
    "rnn", "simple_rnn", "stack", "summary", "uses_dropout", "weight_drop", "with_compute_dtype",
    "zoneout",
]
__version__ = "0.1.0"

_OPTIONAL = ("export", "hopfield", "interop", "linen", "nnx", "training")


def __getattr__(name):
  """Imports the optional submodules (``export``, ``hopfield``, ``interop``, ``linen``, ``nnx``,
  ``training``) on first use."""
  if name in _OPTIONAL:
    import importlib  # pylint: disable=g-import-not-at-top
    return importlib.import_module(f"rnn_jax.{name}")
  raise AttributeError(f"module 'rnn_jax' has no attribute {name!r}")
