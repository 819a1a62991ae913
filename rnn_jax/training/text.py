"""Text data for character-level language models: the file, the split, the vocabulary, the batches.

* :func:`find_text_file` finds Tiny Shakespeare the way
  :func:`rnn_jax.training.datasets.find_data_dir` finds MNIST (with the same
  search helpers): an explicit ``text_file`` is the only place looked at;
  otherwise ``$RNN_JAX_DATA_DIR/tinyshakespeare/input.txt``,
  ``~/.cache/rnn_jax/tinyshakespeare/input.txt``,
  ``<search dir>/tinyshakespeare/input.txt`` for each of the caller's
  ``search_dirs`` (the scripts' ``../shared/data``), then a download of the
  raw file by tensorflow-datasets' download manager (the URL its ``tiny_shakespeare`` builder reads; no
  TensorFlow needed) into the cache. Nothing found: one :class:`DataError`
  listing every place tried.
* :func:`split_text`: train / validation / test by character offset exactly as
  tensorflow-datasets' ``tiny_shakespeare`` does (first 90%, then half of the
  rest each: 1,003,854 / 55,770 / 55,770 characters of Tiny Shakespeare).
* :class:`Vocabulary`: the characters of the training split, sorted, with one
  extra ``<unk>`` id (the last) for characters outside it; ``strict``
  encoding (prompts) refuses them instead, naming them. Saved as JSON.
* Batches for :mod:`rnn_jax.training.loop`, as :class:`TextBatch`: the token
  rows stay on the device and a step gathers its windows there, so only
  ``2B + 1`` small integers cross from the host per step.
  :class:`StreamWindows` is truncated BPTT over stateful streams (char-rnn and
  the TF PTB tutorial): the text is cut into ``B`` contiguous streams and step
  ``i`` reads window ``i mod W`` of each, so a window continues where the
  previous step's ended; ``reset`` marks the first window of each pass over
  the text, where the carried state starts from zeros again.
  :class:`RandomWindows` draws ``B`` windows at random offsets (seeded by the
  step), each to be read from a zero state.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.training import datasets
from rnn_jax.training.idx import DataError

TINY_SHAKESPEARE = "tinyshakespeare"
TINY_SHAKESPEARE_FILE = "input.txt"
TINY_SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                        "tinyshakespeare/input.txt")
"""The URL tensorflow-datasets' ``tiny_shakespeare`` builder downloads."""
UNKNOWN = "<unk>"
SPLITS = ("train", "validation", "test")

__all__ = ["DataError", "RandomWindows", "StreamWindows", "TextBatch", "Vocabulary",
           "find_text_file", "load_splits", "read_text", "split_text"]


# ----------------------------------------------------------------------------- finding the file


def _candidates(search_dirs: Sequence[str | os.PathLike] = ()) -> list[tuple[str, Path | None]]:
  """(where it came from, file or ``None`` when unset) for every local place, in order."""
  env = os.environ.get(datasets.ENV_VAR)
  candidates = [(f"${datasets.ENV_VAR}",
                 Path(env).expanduser() / TINY_SHAKESPEARE / TINY_SHAKESPEARE_FILE if env
                 else None),
                ("cache", datasets.default_cache_dir(TINY_SHAKESPEARE) / TINY_SHAKESPEARE_FILE)]
  candidates += [("search dir",
                  Path(folder).expanduser() / TINY_SHAKESPEARE / TINY_SHAKESPEARE_FILE)
                 for folder in search_dirs]
  return candidates


def _download_with_tfds(tried: list[str]) -> Path | None:
  """Fetches the raw file with tensorflow-datasets' download manager into the cache."""
  try:
    tfds = datasets.import_tfds()
  except ImportError as error:
    problem = ("not installed" if error.name == "tensorflow_datasets"
               else f"import failed: {error}")
    tried.append(f"tensorflow-datasets download: {problem}")
    return None
  parts = urllib.parse.urlsplit(TINY_SHAKESPEARE_URL)
  if not datasets.reachable(parts.hostname, 443):
    tried.append(f"tensorflow-datasets download: no network ({parts.hostname}:443 did not "
                 f"answer within {datasets.CONNECT_TIMEOUT_S:g} s)")
    return None
  try:
    tfds_dir = datasets.tfds_data_dir()
    # The checksum tensorflow-datasets registers for the file, when it has one, is checked.
    url_infos = getattr(tfds.builder_cls("tiny_shakespeare"), "url_infos", None)
    manager = tfds.download.DownloadManager(download_dir=os.fspath(tfds_dir / "downloads"),
                                            dataset_name="tiny_shakespeare", url_infos=url_infos)
    downloaded = Path(os.fspath(manager.download(TINY_SHAKESPEARE_URL)))
    target = datasets.default_cache_dir(TINY_SHAKESPEARE) / TINY_SHAKESPEARE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    datasets.copy_atomically(downloaded, target)
    return target
  except Exception as error:  # pylint: disable=broad-except  # Any failure: report it.
    tried.append(f"tensorflow-datasets download: {datasets.first_line(error)}")
    return None


def find_text_file(text_file: str | os.PathLike | None = None,
                   search_dirs: Sequence[str | os.PathLike] = ()) -> str:
  """The text to train on: ``text_file`` if given, else Tiny Shakespeare (see the module doc;
  ``search_dirs``: folders whose ``tinyshakespeare/input.txt`` is tried after the cache).

  Raises:
    DataError: nothing found; the message lists every place tried and how to fix it.
  """
  if text_file is not None:
    path = Path(text_file).expanduser()
    if not path.is_file():
      raise DataError(f"--text_file={text_file}: no such file")
    return os.fspath(path)
  tried = []
  for origin, path in _candidates(search_dirs):
    if path is not None and path.is_file():
      return os.fspath(path)
    tried.append(f"{origin} {path or ''}".rstrip() + (": not set" if path is None
                                                       else ": no such file"))
  downloaded = _download_with_tfds(tried)
  if downloaded is not None:
    return os.fspath(downloaded)
  raise DataError("no Tiny Shakespeare found. Tried, in order:\n  - " + "\n  - ".join(tried)
                  + "\nTo fix: pass --text_file (any UTF-8 text), or put input.txt in "
                  f"{datasets.default_cache_dir(TINY_SHAKESPEARE)}, or with internet pip "
                  "install -e '.[data]' and rerun")


def read_text(path: str | os.PathLike) -> str:
  """The file's text, decoded as UTF-8; :class:`DataError` if unreadable, not UTF-8 or empty."""
  try:
    with open(path, encoding="utf-8") as stream:
      text = stream.read()
  except UnicodeDecodeError as error:
    raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
  except OSError as error:
    raise DataError(f"{path}: cannot read it ({error.strerror or error})") from error
  if not text:
    raise DataError(f"{path}: the file is empty")
  return text


def split_text(text: str) -> dict[str, str]:
  """``{"train", "validation", "test"}`` by character offset, as tensorflow-datasets splits.

  ``train = text[:int(0.9 n)]``; the rest is halved at ``int(0.5 len(rest))``
  into validation then test.
  """
  cut = int(len(text) * 0.9)
  train, rest = text[:cut], text[cut:]
  half = int(len(rest) * 0.5)
  return {"train": train, "validation": rest[:half], "test": rest[half:]}


# ----------------------------------------------------------------------------- vocabulary


class Vocabulary:
  """Characters <-> ids: ``0 .. len(chars) - 1`` for ``chars``, then ``<unk>``.

  Args:
    chars: the known characters, in id order (no duplicates).
  """

  def __init__(self, chars: Sequence[str]):
    self.chars = tuple(chars)
    if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
      raise ValueError("Vocabulary: chars must be distinct single characters")
    self._ids = {char: index for index, char in enumerate(self.chars)}
    self.unknown_id = len(self.chars)

  @classmethod
  def from_text(cls, text: str) -> Vocabulary:
    """The sorted distinct characters of ``text`` (the training split)."""
    return cls(sorted(set(text)))

  @property
  def size(self) -> int:
    """The number of ids, ``<unk>`` included (the model's output size)."""
    return len(self.chars) + 1

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.chars == other.chars

  def __repr__(self) -> str:
    return f"Vocabulary({len(self.chars)} characters + {UNKNOWN})"

  def unknown(self, text: str) -> list[str]:
    """The distinct characters of ``text`` outside the vocabulary, in order of appearance."""
    return list(dict.fromkeys(char for char in text if char not in self._ids))

  def encode(self, text: str, strict: bool = False) -> np.ndarray:
    """``int32 [len(text)]`` ids; unknown characters become ``<unk>``, or with ``strict`` raise.

    Raises:
      ValueError: ``strict`` and characters outside the vocabulary; the
        message names them (as Python literals, so that control characters show).
    """
    if strict:
      unknown = self.unknown(text)
      if unknown:
        raise ValueError(f"characters not in the model's vocabulary: "
                         f"{' '.join(repr(char) for char in unknown)}")
    return np.fromiter((self._ids.get(char, self.unknown_id) for char in text), np.int32,
                       count=len(text))

  def decode(self, ids) -> str:
    """The text of ``ids``; ``<unk>`` ids show as U+FFFD."""
    return "".join(self.chars[i] if i < len(self.chars) else "\ufffd"
                   for i in np.asarray(ids).tolist())

  def save(self, path: str | os.PathLike) -> None:
    """Writes ``{"chars": [...], "unknown": "<unk>"}`` to ``path`` atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as stream:
      json.dump({"chars": list(self.chars), "unknown": UNKNOWN}, stream, ensure_ascii=True)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> Vocabulary:
    """Reads what :meth:`save` wrote; :class:`DataError` if missing or not a vocabulary file."""
    try:
      with open(path, encoding="utf-8") as stream:
        saved = json.load(stream)
      return cls(saved["chars"])
    except FileNotFoundError as error:
      raise DataError(f"{path}: no such file") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
      raise DataError(f"{path}: not a vocabulary file ({type(error).__name__}: {error})") from error


def load_splits(text_file: str | os.PathLike | None = None,
                search_dirs: Sequence[str | os.PathLike] = ()
                ) -> tuple[str, Vocabulary, dict[str, np.ndarray]]:
  """Finds (:func:`find_text_file`), reads and splits the text; returns ``(path, vocabulary,
  {split: ids})``.

  The vocabulary is the training split's characters; validation and test
  characters outside it become ``<unk>``.

  Raises:
    DataError: no file, unreadable, or a training split too short to learn from.
  """
  path = find_text_file(text_file, search_dirs)
  splits = split_text(read_text(path))
  if len(splits["train"]) < 2 or len(splits["validation"]) < 2 or len(splits["test"]) < 2:
    raise DataError(f"{path}: {len(''.join(splits.values()))} characters is too short to split "
                    "90/5/5 into train, validation and test (need at least 40)")
  vocabulary = Vocabulary.from_text(splits["train"])
  return path, vocabulary, {name: vocabulary.encode(text) for name, text in splits.items()}


# ----------------------------------------------------------------------------- batches


class TextBatch(NamedTuple):
  """Windows of ``window + 1`` tokens read on the device: ``tokens[rows[b], starts[b] + 0..K]``.

  Attributes:
    tokens: ``int32 [R, N]``, token rows (streams, or the whole text as one row).
    rows: ``int32 [B]``, the row of each window.
    starts: ``int32 [B]``, the offset of each window in its row.
    reset: bool scalar: the carried state starts from zeros at this window.
  """

  tokens: Any
  rows: Any
  starts: Any
  reset: Any

  def windows(self, window: int) -> tuple[jax.Array, jax.Array]:
    """``(inputs [B, K], targets [B, K])``: each window's tokens and the ones that follow them."""
    offsets = self.starts[:, None] + jnp.arange(window + 1)
    tokens = self.tokens[self.rows[:, None], offsets]
    return tokens[:, :-1], tokens[:, 1:]


class StreamWindows:
  """Truncated-BPTT batches: ``B`` contiguous streams, one window of ``K`` of each per step.

  The ``N`` training tokens give ``B`` streams of ``L = (N - 1) // B`` targets
  each (stream ``b`` reads tokens ``b L .. (b + 1) L``, its last token only as
  a target); ``W = L // K`` windows per pass (the rest of each stream is not
  read). Step ``s`` reads window ``s mod W``; ``reset`` is true when that is
  window 0.

  Args:
    ids: ``int32 [N]`` training tokens.
    batch_size: ``B``, the number of streams.
    window: ``K``.

  Raises:
    ValueError: fewer than one window per stream.
  """

  def __init__(self, ids: np.ndarray, batch_size: int, window: int):
    self.window = window
    length = (len(ids) - 1) // batch_size
    self.windows_per_pass = length // window
    if self.windows_per_pass < 1:
      raise ValueError(f"{len(ids)} training characters give {batch_size} streams of "
                       f"{length} characters, shorter than one window of {window}; use a "
                       "smaller --batch_size or --window")
    used = self.windows_per_pass * window
    streams = np.stack([ids[b * length:b * length + used + 1] for b in range(batch_size)])
    self._streams = streams.astype(np.int32)
    self.tokens = jax.device_put(self._streams)
    self._rows = np.arange(batch_size, dtype=np.int32)

  def __call__(self, step: int) -> TextBatch:
    position = step % self.windows_per_pass
    starts = np.full(len(self._rows), position * self.window, np.int32)
    return TextBatch(self.tokens, self._rows, starts, np.bool_(position == 0))

  def window_tokens(self, step: int, rows: np.ndarray) -> np.ndarray:
    """``int32 [len(rows), K + 1]`` on the host: windows ``rows`` of step ``step``'s batch.

    What ``TextBatch.windows`` reads for those rows (inputs and targets), for a
    batch sharded over devices where each process loads only its own rows.
    """
    start = (step % self.windows_per_pass) * self.window
    return self._streams[np.asarray(rows), start:start + self.window + 1]

  def reset(self, step: int) -> bool:
    """Whether step ``step``'s windows start from a zero carry (window 0 of the streams)."""
    return step % self.windows_per_pass == 0


class RandomWindows:
  """Batches of ``B`` windows at random offsets of the text, drawn from ``(seed, step)``.

  Args:
    ids: ``int32 [N]`` training tokens.
    batch_size: ``B``.
    window: ``K``.
    seed: with the step, fixes the offsets (so a resumed run reads the same batches).
  """

  def __init__(self, ids: np.ndarray, batch_size: int, window: int, seed: int):
    if len(ids) < window + 1:
      raise ValueError(f"{len(ids)} training characters are shorter than one window of "
                       f"{window} + 1; use a smaller --window")
    self.window, self.batch_size, self.seed = window, batch_size, seed
    self.num_starts = len(ids) - window
    self._ids = np.asarray(ids, np.int32)
    self.tokens = jax.device_put(self._ids[None])
    self._rows = np.zeros(batch_size, np.int32)
    self.windows_per_pass = max(1, self.num_starts // (batch_size * window))

  def _starts(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, step])
    return rng.integers(0, self.num_starts, self.batch_size).astype(np.int32)

  def __call__(self, step: int) -> TextBatch:
    return TextBatch(self.tokens, self._rows, self._starts(step), np.bool_(True))

  def window_tokens(self, step: int, rows: np.ndarray) -> np.ndarray:
    """``int32 [len(rows), K + 1]`` on the host: windows ``rows`` of step ``step``'s batch."""
    starts = self._starts(step)[np.asarray(rows)]
    return self._ids[starts[:, None] + np.arange(self.window + 1)]

  def reset(self, step: int) -> bool:  # pylint: disable=unused-argument
    """Always: every window starts from a zero carry."""
    return True
