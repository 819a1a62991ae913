"""Tests of rnn_jax.training.text: finding and splitting the text, the vocabulary, the batches."""

import os
from pathlib import Path

import numpy as np
import pytest

from rnn_jax.training import datasets, text

# ../shared/data beside the repository, wherever the repository is checked out.
SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def test_split_is_tensorflow_datasets_split():
  sample = "".join(chr(ord("a") + i % 26) for i in range(1001))
  splits = text.split_text(sample)
  # TFDS: i = int(0.9 n) -> train; the rest halved at int(0.5 len(rest)).
  assert [len(splits[name]) for name in text.SPLITS] == [900, 50, 51]
  assert "".join(splits[name] for name in text.SPLITS) == sample


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason="no offline Tiny Shakespeare")
def test_tiny_shakespeare_is_found_and_split_as_tfds_does():
  path, vocabulary, splits = text.load_splits(search_dirs=[os.path.dirname(
      os.path.dirname(SHAKESPEARE))])
  assert os.path.samefile(path, SHAKESPEARE)
  assert [len(splits[name]) for name in text.SPLITS] == [1003854, 55770, 55770]
  assert len(vocabulary.chars) == 65 and vocabulary.size == 66
  assert not any((ids == vocabulary.unknown_id).any() for ids in splits.values())
  assert vocabulary.decode(splits["train"][:14]) == "First Citizen:"


def test_env_var_and_cache_are_searched(isolated, monkeypatch):
  folder = isolated / "data" / "tinyshakespeare"
  folder.mkdir(parents=True)
  (folder / "input.txt").write_text("to be or not to be")
  monkeypatch.setenv(datasets.ENV_VAR, str(isolated / "data"))
  assert text.find_text_file() == str(folder / "input.txt")


def test_nothing_found_lists_every_place(isolated):
  with pytest.raises(text.DataError) as error:
    text.find_text_file(search_dirs=[isolated / "shared"])
  message = str(error.value)
  assert message.startswith("no Tiny Shakespeare found. Tried, in order:")
  assert f"${datasets.ENV_VAR}: not set" in message
  assert str(isolated / "shared" / "tinyshakespeare" / "input.txt") + ": no such file" in message
  assert "tensorflow-datasets download: not installed" in message
  assert "--text_file" in message


def test_explicit_file_is_the_only_place(tmp_path):
  with pytest.raises(text.DataError, match="--text_file=.*missing.txt: no such file"):
    text.find_text_file(tmp_path / "missing.txt")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  with pytest.raises(text.DataError, match="not UTF-8"):
    text.read_text(tmp_path / "latin1.txt")


def test_vocabulary_encodes_unknown_characters_explicitly(tmp_path):
  vocabulary = text.Vocabulary.from_text("hello world")
  assert vocabulary.chars == (" ", "d", "e", "h", "l", "o", "r", "w")
  assert vocabulary.size == 9 and vocabulary.unknown_id == 8
  np.testing.assert_array_equal(vocabulary.encode("hold!"), [3, 5, 4, 1, 8])
  assert vocabulary.decode(vocabulary.encode("world hello")) == "world hello"
  with pytest.raises(ValueError, match=r"not in the model's vocabulary: '!' '\\t'"):
    vocabulary.encode("he!\t!", strict=True)
  vocabulary.save(tmp_path / "vocabulary.json")
  assert text.Vocabulary.load(tmp_path / "vocabulary.json") == vocabulary
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(text.DataError, match="not a vocabulary file"):
    text.Vocabulary.load(tmp_path / "bad.json")


def test_stream_windows_continue_each_stream():
  ids = np.arange(103, dtype=np.int32)  # 3 streams of (103 - 1) // 3 = 34 targets, windows of 8.
  batches = text.StreamWindows(ids, batch_size=3, window=8)
  assert batches.windows_per_pass == 4
  for step in range(9):
    batch = batches(step)
    inputs, targets = (np.asarray(a) for a in batch.windows(8))
    w = step % 4
    expected = np.stack([ids[b * 34 + 8 * w:b * 34 + 8 * w + 8] for b in range(3)])
    np.testing.assert_array_equal(inputs, expected)
    np.testing.assert_array_equal(targets, expected + 1)
    assert bool(batch.reset) == (w == 0)


def test_random_windows_are_seeded_substrings():
  ids = np.random.default_rng(0).integers(0, 50, 500).astype(np.int32)
  batches = text.RandomWindows(ids, batch_size=4, window=10, seed=3)
  first, again = batches(7), text.RandomWindows(ids, 4, 10, seed=3)(7)
  np.testing.assert_array_equal(first.starts, again.starts)
  assert not np.array_equal(first.starts, batches(8).starts)
  inputs, targets = (np.asarray(a) for a in first.windows(10))
  for row, start in enumerate(first.starts):
    np.testing.assert_array_equal(inputs[row], ids[start:start + 10])
    np.testing.assert_array_equal(targets[row], ids[start + 1:start + 11])
  assert bool(first.reset)


def test_too_short_for_a_window_is_refused():
  with pytest.raises(ValueError, match="shorter than one window of 8"):
    text.StreamWindows(np.arange(20, dtype=np.int32), batch_size=4, window=8)


def test_tfds_download_lands_in_the_cache(isolated, monkeypatch):
  """A fake tensorflow-datasets: its download manager's file is copied to the cache and used."""
  downloaded = isolated / "downloaded.txt"
  downloaded.write_text("First Citizen:\n")
  calls = []

  class FakeManager:
    def __init__(self, download_dir, dataset_name, url_infos):
      calls.append((download_dir, dataset_name, url_infos))

    def download(self, url):
      calls.append(url)
      return str(downloaded)

  class FakeTfds:
    download = type("download", (), {"DownloadManager": FakeManager})

    @staticmethod
    def builder_cls(name):
      return type("Builder", (), {"url_infos": {name: "checksum"}})

  monkeypatch.setattr(datasets, "import_tfds", lambda: FakeTfds)
  monkeypatch.setattr(datasets, "reachable", lambda host, port: True)
  path = text.find_text_file()
  cached = datasets.default_cache_dir("tinyshakespeare") / "input.txt"
  assert path == str(cached) and cached.read_text() == "First Citizen:\n"
  assert calls[0][1:] == ("tiny_shakespeare", {"tiny_shakespeare": "checksum"})
  assert calls[1] == text.TINY_SHAKESPEARE_URL
