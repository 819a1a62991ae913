"""The recurrent cores the training tasks build by name: one table of cell builders.

:data:`CELLS` maps the names the scripts' ``--cell`` accepts to builders
``CELLS[name](hidden_size, sequence_length) -> cell``; ``sequence_length`` is
the longest stretch of steps the task asks the cell to remember (MNIST: 784
pixels; the character LM: its BPTT window), which sets up the minGRU/minLSTM
gate biases (chrono initialisation, ``max_timescale``); the other cells ignore
it. A cell of your own joins it with :func:`register_cell` (then
``--cell=<name>``, ``build_core`` and the tasks build it like the others; the
Extending guide trains an IndRNN this way), and :func:`build_core` stacks and
rematerialises them.

Rematerialisation (``remat=True``, ``rnn_jax.remat``) puts each cell's whole
time step under ``jax.checkpoint``: the backward pass keeps only each step's
carry and input and recomputes the step's gate activations from them, so the
saved residuals shrink from all gate activations to the carry, at the price
of running each step's forward once more (up to ~1/3 more compute); the
Performance guide has a measurement. Use it for long sequences at large batch,
where memory binds. ``remat_every=k`` keeps the carry only every ``k`` steps and
recomputes each chunk of ``k`` steps: with ``k`` near ``sqrt(T)``, memory grows
as ``sqrt(T)`` (``python -m experiments.bench_memory``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax

import rnn_jax

# The IRNN of Le, Jaitly & Hinton (2015): relu, identity recurrence, input
# weights from N(0, 0.001^2).
_irnn_input_init = jax.nn.initializers.normal(0.001)

CELLS: dict[str, Callable[[int, int | None], Any]] = {
    "lstm": lambda hidden_size, sequence_length=None: rnn_jax.lstm(hidden_size),
    "gru": lambda hidden_size, sequence_length=None: rnn_jax.gru(hidden_size),
    "rnn": lambda hidden_size, sequence_length=None: rnn_jax.simple_rnn(hidden_size, "tanh"),
    "irnn": lambda hidden_size, sequence_length=None: rnn_jax.simple_rnn(
        hidden_size, "relu", kernel_init=_irnn_input_init, recurrent_init="identity"),
    "mingru": lambda hidden_size, sequence_length=None: rnn_jax.mingru(
        hidden_size, max_timescale=sequence_length),
    "minlstm": lambda hidden_size, sequence_length=None: rnn_jax.minlstm(
        hidden_size, max_timescale=sequence_length),
    # The LRU with the paper's long-sequence radii and a dense skip (any input size works).
    "lru": lambda hidden_size, sequence_length=None: rnn_jax.lru(
        hidden_size, hidden_size, r_min=0.9, r_max=0.999, skip="dense"),
}
"""Cell builders by name: ``CELLS[name](hidden_size, sequence_length=None) -> cell``
(``None``: the cell's own default initialisation)."""


def register_cell(name: str, builder: Callable[[int, int | None], Any]) -> None:
  """Adds a cell builder to :data:`CELLS`: the scripts' ``--cell=<name>``, :func:`build_core`
  and the training tasks then build that cell like the built-in ones.

  Register before the flags are checked (in the module that defines the cell,
  imported by your script or notebook before it calls a script's ``run``).

  Args:
    name: the ``--cell`` value.
    builder: ``builder(hidden_size, sequence_length) -> cell``, ``sequence_length``
      being the longest stretch of steps the task asks the cell to remember
      (``None``: the cell's own default; see the module doc).

  Raises:
    ValueError: ``name`` already names another builder (registering the same
      builder again does nothing).
  """
  if CELLS.get(name, builder) is not builder:
    raise ValueError(f"register_cell: {name!r} already names a cell builder; choose another name")
  CELLS[name] = builder


def build_core(cell_name: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
               variational: bool = False, remat: bool = False, *,
               sequence_length: int | None = None, remat_every: int = 0):
  """A task's recurrent core, by name.

  Args:
    cell_name: a key of :data:`CELLS`.
    hidden_size: ``H`` of every layer.
    num_layers: 1 gives a bare cell; more give ``rnn_jax.stack`` of that many.
    dropout: drop rate between stacked layers.
    variational: one dropout mask for all time steps.
    remat: rematerialise every cell's time step (``rnn_jax.remat``).
    sequence_length: the task's sequence length, passed to the builders
      (see the module doc); ``None``: the cells' own defaults.
    remat_every: if positive, keep the carry only every this many steps in the
      backward pass and recompute each chunk (``rnn_jax.remat(core, every=...)``:
      memory that grows as ``sqrt(T)`` for ``remat_every`` near ``sqrt(T)``);
      it replaces ``remat``.

  Returns:
    A cell (``num_layers == 1``) or a ``rnn_jax.Stack``, possibly under ``rnn_jax.remat``.

  Raises:
    ValueError: an unknown ``cell_name`` or ``num_layers < 1``.
  """
  if cell_name not in CELLS:
    raise ValueError(f"cell_name must be one of {sorted(CELLS)}, got {cell_name!r}")
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}")
  cells = [CELLS[cell_name](hidden_size, sequence_length) for _ in range(num_layers)]
  core = cells[0] if num_layers == 1 else rnn_jax.stack(cells, dropout=dropout,
                                                         variational=variational)
  if remat_every:
    return rnn_jax.remat(core, every=remat_every)
  return rnn_jax.remat(core) if remat else core
