"""rnn_jax: recurrent networks as pure JAX functions.

Cells (:mod:`rnn_jax.cells`) are immutable values of hyperparameters and pure
functions; parameters are plain dicts of arrays; :func:`rnn` unrolls any cell
or composite (:mod:`rnn_jax.compose`) over time with ``jax.lax.scan``.

    import jax, jax.numpy as jnp, rnn_jax
    cell = rnn_jax.lstm(128)
    params = cell.init(jax.random.key(0), input_size=28)
    outputs, (h, c) = rnn_jax.rnn(cell, params, jnp.zeros((32, 28, 28)))
"""

from rnn_jax.cells import Cell, LSTMState, gru, lstm, simple_rnn
from rnn_jax.compose import Bidirectional, Stack, bidirectional, stack
from rnn_jax.linear_rnn import LinearRNN, lru, mingru, minlstm
from rnn_jax.unroll import last_output, reverse_padded, rnn

__all__ = [
    "Bidirectional", "Cell", "LSTMState", "LinearRNN", "Stack", "bidirectional", "gru",
    "last_output", "lru", "lstm", "mingru", "minlstm",
    "reverse_padded", "rnn", "simple_rnn", "stack",
]
__version__ = "0.1.0"


def __getattr__(name):
  """Imports the optional submodules ``rnn_jax.interop`` and ``rnn_jax.linen`` on first use."""
  if name in ("interop", "linen"):
    import importlib  # pylint: disable=g-import-not-at-top
    return importlib.import_module(f"rnn_jax.{name}")
  raise AttributeError(f"module 'rnn_jax' has no attribute {name!r}")
