"""Command-line experiments built on rnn_jax (training scripts), and where they look for data.

The library searches ``--data_dir``, ``$RNN_JAX_DATA_DIR`` and its cache
(:func:`rnn_jax.training.datasets.find_data_dir`); the scripts add the folders of
:func:`data_search_dirs`, the offline copy our machines keep beside a checkout.
"""

from __future__ import annotations

from pathlib import Path


def data_search_dirs() -> tuple[Path, ...]:
  """``../shared/data`` beside this checkout (whatever the working directory), then beside the
  working directory: the ``search_dirs`` the scripts pass to the toolkit's data search."""
  dirs = []
  for base in (Path(__file__).resolve().parents[1], Path.cwd()):
    candidate = base.parent / "shared" / "data"
    if candidate not in dirs:
      dirs.append(candidate)
  return tuple(dirs)
