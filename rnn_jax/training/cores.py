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
import jax.numpy as jnp

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


COMPUTE_DTYPES: dict[str, Any] = {"float32": None, "bfloat16": jnp.bfloat16}
"""The scripts' ``--compute_dtype`` values -> ``rnn_jax.RunOptions.compute_dtype``: ``float32``
is ``None``, the parameters' dtype (bitwise the runs before the flag existed)."""


def run_options(values: dict[str, Any]) -> rnn_jax.RunOptions:
  """How a task's core runs, from a config's values (``config.json``'s keys): removes
  ``unroll``, ``backward`` (``"auto"``: the tuned choice) and ``compute_dtype`` (a key of
  :data:`COMPUTE_DTYPES`; absent: ``"float32"``) from ``values`` and returns their
  ``rnn_jax.RunOptions``."""
  vjp, unroll = values.pop("backward", "auto"), values.pop("unroll", None)
  compute_dtype = COMPUTE_DTYPES[values.pop("compute_dtype", "float32")]
  return rnn_jax.RunOptions(unroll=unroll, vjp=None if vjp == "auto" else vjp,
                            compute_dtype=compute_dtype)


def compute_dtype_name(options: rnn_jax.RunOptions) -> str:
  """The ``--compute_dtype`` value of ``options`` (the inverse of :func:`run_options`'s)."""
  return next(name for name, dtype in COMPUTE_DTYPES.items() if dtype == options.compute_dtype)


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
               sequence_length: int | None = None, remat_every: int = 0, proj_size: int = 0,
               layer_norm: bool = False, zoneout: float = 0.0, weight_drop: float = 0.0):
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
      backward pass and recompute each chunk (``rnn_jax.remat(cell, every=...)``:
      memory that grows as ``sqrt(T)`` for ``remat_every`` near ``sqrt(T)``);
      it replaces ``remat``.
    proj_size: ``"lstm"`` only: ``rnn_jax.lstm(H, proj_size=proj_size)``, each
      layer's output and recurrent input projected to ``proj_size`` units (0: none).
    layer_norm: ``"lstm"`` only: the layer-normalised LSTM (``rnn_jax.lstm(H,
      layer_norm=True)``).
    zoneout: each layer under ``rnn_jax.zoneout(cell, zoneout)`` (0: none).
    weight_drop: each layer under ``rnn_jax.weight_drop(cell, weight_drop)``,
      outside the zoneout (0: none; cells with ``w_hh`` only).

  Each layer is ``weight_drop(zoneout(remat(cell)))``, the parts asked for.

  Returns:
    A cell or its wrappers (``num_layers == 1``) or a ``rnn_jax.Stack`` of them.

  Raises:
    ValueError: an unknown ``cell_name``, ``num_layers < 1``, ``proj_size`` or
      ``layer_norm`` for a cell other than ``"lstm"``, ``weight_drop`` for a cell
      without ``w_hh``.
  """
  if cell_name not in CELLS:
    raise ValueError(f"cell_name must be one of {sorted(CELLS)}, got {cell_name!r}")
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}")
  if (proj_size or layer_norm) and cell_name != "lstm":
    raise ValueError(f"proj_size and layer_norm are options of the lstm cell, not {cell_name!r}")

  def build_layer():
    if proj_size or layer_norm:
      layer = rnn_jax.lstm(hidden_size, proj_size=proj_size, layer_norm=layer_norm)
    else:
      layer = CELLS[cell_name](hidden_size, sequence_length)
    if remat_every:
      layer = rnn_jax.remat(layer, every=remat_every)
    elif remat:
      layer = rnn_jax.remat(layer)
    if zoneout:
      layer = rnn_jax.zoneout(layer, zoneout)
    if weight_drop:
      layer = rnn_jax.weight_drop(layer, weight_drop)
    return layer

  layers = [build_layer() for _ in range(num_layers)]
  if num_layers == 1:
    return layers[0]
  return rnn_jax.stack(layers, dropout=dropout, variational=variational)
