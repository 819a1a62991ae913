"""Fixtures shared by the toolkit's data tests (test_datasets.py, test_text.py)."""

import pytest

from rnn_jax.training import datasets


@pytest.fixture
def isolated(tmp_path, monkeypatch):
  """No real data reachable: HOME, the env vars, the system folders and TFDS all redirected (the
  library searches no other place unless given ``search_dirs``)."""
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.delenv(datasets.ENV_VAR, raising=False)
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.setattr(datasets, "_SYSTEM_DIRS", {"mnist": (), "fashion_mnist": (str(tmp_path / "usr"),)})

  def no_tfds():
    raise ModuleNotFoundError("No module named 'tensorflow_datasets'", name="tensorflow_datasets")

  monkeypatch.setattr(datasets, "import_tfds", no_tfds)
  return tmp_path
