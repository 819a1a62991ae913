"""MNIST-family data: the IDX reader, where the files come from, sequence views, batching.

Whole splits live in memory as NumPy arrays (MNIST is 47 MB of pixels), so
nothing here streams: :func:`load` returns ``images uint8 [N, 28, 28]`` and
``labels int32 [N]``, :func:`as_sequences` turns images into the float inputs of
a recurrent network, and :func:`batch_indices` gives each epoch's shuffled
batches from a seed, so a run is reproducible step for step and a resumed run
sees exactly the batches an uninterrupted one would.

Datasets are ``mnist`` and ``fashion_mnist``, both as the four IDX files of
their original distribution (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each gzip-compressed or plain).
:func:`find_data_dir` looks for them in this order, taking the first folder
that holds all four:

1. the ``data_dir`` argument (``--data_dir``), as ``data_dir/<dataset>`` or
   ``data_dir`` itself. When given, it is the only place looked at: a wrong
   folder is an error, never silently replaced by another copy;
2. ``$RNN_JAX_DATA_DIR``, a folder holding ``mnist/`` and ``fashion_mnist/``
   subfolders, or holding one dataset's IDX files directly;
3. ``~/.cache/rnn_jax/<dataset>``, where a tensorflow-datasets conversion lands;
4. ``/usr/share/datasets/fashion-mnist`` for ``fashion_mnist`` (Debian/Ubuntu
   package ``dataset-fashion-mnist``);
5. ``../shared/data/<dataset>`` beside the repository (our machines' offline
   copy), relative to the package's source tree and to the working directory;
6. a prepared tensorflow-datasets copy (``$TFDS_DATA_DIR`` or
   ``~/tensorflow_datasets``, array_record format), read with
   ``tfds.data_source`` and converted once to plain IDX files in place 3. No
   TensorFlow needed, but Pillow (or OpenCV) to decode its PNG images; the
   examples keep TFDS's (shuffled) order;
7. a download of the four original ``.gz`` files by tensorflow-datasets'
   download manager, from the URLs and with the SHA-256 checksums it
   registers for the dataset, copied into place 3. Tried only when
   ``tensorflow-datasets`` is installed (``pip install 'rnn_jax[data]'``) and
   the download host answers a 2-second connection attempt. (Preparing a TFDS
   copy with ``tfds.data_source(..., download=True)`` would need TensorFlow:
   tensorflow-datasets 4.9.10 reads the MNIST files with ``tf.io.gfile`` and
   encodes PNGs with ``tf.image``.)

Local folders come before tensorflow-datasets because importing it takes
seconds. If nothing is found, one :class:`DataError` lists every place tried
and why it did not fit, and how to fix it.

Known label files are fingerprinted: loading a folder whose labels are another
dataset's or another split's (say Fashion-MNIST files in a folder used as
MNIST, a likely mix-up with a flat ``$RNN_JAX_DATA_DIR``) is a
:class:`DataError`, not a silently wrong experiment.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import urllib.parse
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "test")
VIEWS = ("rows", "pixels", "permuted_pixels")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
ENV_VAR = "RNN_JAX_DATA_DIR"

# IDX type byte -> big-endian dtype of the payload.
_IDX_DTYPES = {
    0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

# split -> (images file, labels file), without the optional ".gz".
_FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Subfolder names accepted under --data_dir and $RNN_JAX_DATA_DIR.
_SUBFOLDERS = {"mnist": ("mnist",), "fashion_mnist": ("fashion_mnist", "fashion-mnist")}
_SYSTEM_DIRS = {"mnist": (), "fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}
# SHA-256 of the label payload (the bytes after the 8-byte header) of the
# published files, to catch a folder holding another dataset or split.
_LABEL_FINGERPRINTS = {
    "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13": ("mnist", "train"),
    "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5": ("mnist", "test"),
    "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7": ("fashion_mnist", "train"),
    "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9": ("fashion_mnist", "test"),
}
_CONNECT_TIMEOUT_S = 2.0


class DataError(Exception):
  """The data could not be found or read; the message says what is wrong and what to do."""


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


# ----------------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
  """The file's bytes, gunzipped when it is gzip data (decided by content, not name)."""
  try:
    raw = path.read_bytes()
  except OSError as error:
    raise DataError(f"{path}: cannot be read ({error.strerror or error})") from error
  if raw[:2] == _GZIP_MAGIC:
    try:
      return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
      raise DataError(f"{path}: corrupt gzip data ({error}); download the file again") from error
  if path.suffix == ".gz":
    raise DataError(f"{path}: named .gz but is not gzip data (starts with {raw[:2].hex()}, "
                    "not 1f8b); download the file again")
  return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (gzip-compressed or plain) into a NumPy array.

  The format: two zero bytes, a type byte (``0x08`` uint8, ``0x09`` int8,
  ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the
  number of dimensions, then each dimension as a big-endian uint32, then the
  big-endian payload in C order.

  Args:
    path: the file; gzip data is recognised by its content.

  Returns:
    A writable array of the file's shape, in native byte order.

  Raises:
    DataError: naming the file and the problem (unreadable, corrupt gzip, bad
      magic, unknown type byte, no dimensions, payload shorter or longer than
      the dimensions say).
  """
  path = Path(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise DataError(f"{path}: only {len(data)} bytes, too short for an IDX header")
  if data[0] != 0 or data[1] != 0:
    raise DataError(f"{path}: bad magic number 0x{data[:4].hex()} (an IDX file starts with two "
                    "zero bytes); not an IDX file")
  type_byte, ndim = data[2], data[3]
  if type_byte not in _IDX_DTYPES:
    known = ", ".join(f"0x{b:02X}" for b in _IDX_DTYPES)
    raise DataError(f"{path}: unknown IDX type byte 0x{type_byte:02X} (known: {known})")
  if ndim == 0:
    raise DataError(f"{path}: IDX header declares 0 dimensions")
  header_size = 4 + 4 * ndim
  if len(data) < header_size:
    raise DataError(f"{path}: truncated header: {ndim} dimensions need {header_size} bytes, "
                    f"the file has {len(data)}")
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  dtype = _IDX_DTYPES[type_byte]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  payload = len(data) - header_size
  if payload != expected:
    problem = "truncated" if payload < expected else "extra bytes after the data"
    raise DataError(f"{path}: {problem}: dimensions {list(shape)} of {dtype.name} need "
                    f"{expected} payload bytes, the file has {payload}")
  array = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
  return array.astype(dtype.newbyteorder("="))  # A native-order, writable copy.


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

  The write is atomic (a temporary file renamed into place), so a reader never
  sees half a file.

  Args:
    path: destination file.
    array: any shape with at least one dimension, of a dtype IDX has
      (uint8, int8, int16, int32, float32, float64).
  """
  path = Path(path)
  array = np.asarray(array)
  codes = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
  native = array.dtype.newbyteorder("=")
  if native not in codes or array.ndim == 0:
    raise ValueError(f"IDX cannot hold a {array.ndim}-d {array.dtype} array")
  header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  payload = header + np.ascontiguousarray(array, native.newbyteorder(">")).tobytes()
  if path.suffix == ".gz":
    payload = gzip.compress(payload, compresslevel=6, mtime=0)  # Level 9 is ~10x slower.
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_bytes(payload)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------- finding files


def _find_file(directory: Path, stem: str) -> Path | None:
  """``directory/stem.gz`` or ``directory/stem`` (or the ``stem.idxN-ubyte`` spelling)."""
  for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
    candidate = directory / name
    if candidate.is_file():
      return candidate
  return None


def _all_stems() -> list[str]:
  """The four IDX file names, without ``.gz``."""
  return [stem for pair in _FILE_STEMS.values() for stem in pair]


def _missing_files(directory: Path) -> list[str]:
  """Names of the four IDX files that ``directory`` lacks."""
  return [stem for stem in _all_stems() if _find_file(directory, stem) is None]


def default_cache_dir(dataset: str = "mnist") -> Path:
  """``~/.cache/rnn_jax/<dataset>``, where a tensorflow-datasets conversion is written."""
  return Path.home() / ".cache" / "rnn_jax" / dataset


def _tfds_data_dir() -> Path:
  return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def _shared_dirs(dataset: str) -> list[Path]:
  """``../shared/data/<dataset>`` beside the source tree and beside the working directory."""
  repo_root = Path(__file__).resolve().parent.parent
  dirs = []
  for base in (repo_root, Path.cwd()):
    candidate = base.parent / "shared" / "data" / dataset
    if candidate not in dirs:
      dirs.append(candidate)
  return dirs


def _local_candidates(dataset: str, data_dir) -> list[tuple[str, Path | None]]:
  """(where it came from, folder or None when unset) for every local folder, in order."""
  def folder_and_subfolders(origin: str, base: Path):
    return [(origin, base / sub) for sub in _SUBFOLDERS[dataset]] + [(origin, base)]

  if data_dir is not None:
    return folder_and_subfolders("data_dir", Path(data_dir).expanduser())
  candidates = []
  if os.environ.get(ENV_VAR):
    candidates += folder_and_subfolders(f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser())
  else:
    candidates.append((f"${ENV_VAR}", None))
  candidates.append(("cache", default_cache_dir(dataset)))
  candidates += [("system package", Path(d)) for d in _SYSTEM_DIRS[dataset]]
  candidates += [("shared copy", d) for d in _shared_dirs(dataset)]
  return candidates


def _describe(directory: Path | None) -> str | None:
  """Why ``directory`` does not hold a dataset, or ``None`` if it does."""
  if directory is None:
    return "not set"
  if not directory.is_dir():
    return "no such folder"
  missing = _missing_files(directory)
  if missing:
    return "missing " + ", ".join(stem + "[.gz]" for stem in missing)
  return None


def _import_tfds():
  """The ``tensorflow_datasets`` module (raises ImportError when absent)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


def _reachable(host: str, port: int, timeout: float = _CONNECT_TIMEOUT_S) -> bool:
  """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _copy_atomically(source: Path, destination: Path) -> None:
  tmp = destination.with_name(f".{destination.name}.tmp{os.getpid()}")
  shutil.copyfile(source, tmp)
  os.replace(tmp, destination)


def _convert_prepared_tfds(tfds, dataset: str, tfds_dir: Path) -> Path:
  """Reads both splits of a prepared copy with ``tfds.data_source``; writes plain IDX to the cache.

  The examples keep tensorflow-datasets' order (it shuffles when preparing),
  not the original files' order. Decoding its PNG images without TensorFlow
  needs Pillow or OpenCV.
  """
  target = default_cache_dir(dataset)
  target.mkdir(parents=True, exist_ok=True)
  for split, (images_stem, labels_stem) in _FILE_STEMS.items():
    source = tfds.data_source(dataset, split=split, data_dir=os.fspath(tfds_dir), download=False)
    count = len(source)
    images = np.empty((count,) + IMAGE_SHAPE, np.uint8)
    labels = np.empty((count,), np.uint8)
    get_many = getattr(source, "__getitems__", None) or (lambda keys: [source[k] for k in keys])
    for start in range(0, count, 1000):  # Batched reads: ~3x faster than one at a time.
      for index, example in enumerate(get_many(list(range(start, min(start + 1000, count)))),
                                      start):
        images[index] = np.asarray(example["image"]).reshape(IMAGE_SHAPE)
        labels[index] = example["label"]
    write_idx(target / images_stem, images)  # Plain IDX: no gzip time to write or read.
    write_idx(target / labels_stem, labels)
  return target


def _download_with_tfds(tfds, dataset: str, tfds_dir: Path, tried: list[str]) -> Path | None:
  """Downloads the four original .gz files with TFDS's download manager into the cache.

  tensorflow-datasets 4.9.10 needs TensorFlow to *prepare* the MNIST
  datasets (``tf.io.gfile``, PNG encoding), so this fetches only the raw IDX
  files, from the URLs and with the SHA-256 checksums TFDS registers for the
  dataset; that needs no TensorFlow. The download is skipped when the host
  does not answer within 2 s.
  """
  url_infos = tfds.builder_cls(dataset).url_infos or {}
  urls = {stem: url for url in url_infos for stem in _all_stems()
          if url.rsplit("/", 1)[-1] == stem + ".gz"}
  if len(urls) != len(_all_stems()):
    tried.append(f"tensorflow-datasets download: no URLs registered for {dataset}")
    return None
  parts = urllib.parse.urlsplit(next(iter(urls.values())))
  host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
  if not _reachable(host, port):
    tried.append(f"tensorflow-datasets download: no network ({host}:{port} did not answer "
                 f"within {_CONNECT_TIMEOUT_S:g} s)")
    return None
  manager = tfds.download.DownloadManager(download_dir=os.fspath(tfds_dir / "downloads"),
                                          url_infos=url_infos, dataset_name=dataset)
  paths = manager.download(urls)
  target = default_cache_dir(dataset)
  target.mkdir(parents=True, exist_ok=True)
  for stem, path in paths.items():
    _copy_atomically(Path(os.fspath(path)), target / f"{stem}.gz")
  return target


def _try_tfds(dataset: str, tried: list[str]) -> Path | None:
  """Places 6 and 7: a prepared tensorflow-datasets copy, then a download."""
  tfds_dir = _tfds_data_dir()
  try:
    tfds = _import_tfds()
  except ImportError as error:  # Not installed, or a missing dependency (importlib_resources).
    problem = ("not installed" if error.name == "tensorflow_datasets"
               else f"import failed: {error}")
    tried.append(f"tensorflow-datasets: {problem} (prepared copy or download into {tfds_dir})")
    return None
  if not (tfds_dir / dataset).is_dir():
    tried.append(f"tensorflow-datasets prepared copy {tfds_dir / dataset}: no such folder")
  else:
    try:
      return _convert_prepared_tfds(tfds, dataset, tfds_dir)
    except Exception as error:  # pylint: disable=broad-except  # Any failure: report, go on.
      tried.append(f"tensorflow-datasets prepared copy in {tfds_dir}: {_first_line(error)}")
  try:
    return _download_with_tfds(tfds, dataset, tfds_dir, tried)
  except Exception as error:  # pylint: disable=broad-except
    tried.append(f"tensorflow-datasets download into {tfds_dir}: {_first_line(error)}")
    return None


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"


def _how_to_fix(dataset: str, explicit: bool) -> str:
  lines = [
      "To fix: pass --data_dir (data_dir=) a folder holding the four IDX files "
      "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
      "t10k-labels-idx1-ubyte.gz) or a '<dataset>/' subfolder with them",
  ]
  if not explicit:
    lines += [
        f"or set {ENV_VAR} to such a folder (or to one holding mnist/ and fashion_mnist/)",
        "or, with internet, pip install 'rnn_jax[data]' (tensorflow-datasets and "
        "importlib_resources) and rerun: the files are converted once into "
        f"{default_cache_dir(dataset)}",
    ]
    if dataset == "fashion_mnist":
      lines.append("or apt-get install dataset-fashion-mnist (Debian/Ubuntu)")
  return "\n  ".join(lines)


def find_data_dir(dataset: str = "mnist", data_dir: str | os.PathLike | None = None) -> str:
  """The folder holding ``dataset``'s four IDX files, searched in the order of the module doc.

  Args:
    dataset: one of :data:`DATASETS`.
    data_dir: if given, the only place looked at (``data_dir/<dataset>`` or
      ``data_dir`` itself).

  Returns:
    The folder's path.

  Raises:
    DataError: nothing found; the message lists every place tried and how to fix it.
  """
  _check_choice("dataset", dataset, DATASETS)
  tried = []
  for origin, directory in _local_candidates(dataset, data_dir):
    problem = _describe(directory)
    if problem is None:
      return os.fspath(directory)
    tried.append(f"{origin} {directory or ''}".rstrip() + f": {problem}")
  if data_dir is None:
    converted = _try_tfds(dataset, tried)
    if converted is not None:
      return os.fspath(converted)
  raise DataError(f"no {dataset} data found. Tried, in order:\n  - " + "\n  - ".join(tried)
                  + "\n" + _how_to_fix(dataset, explicit=data_dir is not None))


# ----------------------------------------------------------------------------- loading


def load(dataset: str = "mnist", split: str = "train",
         data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of an MNIST-family dataset into memory.

  Args:
    dataset: ``"mnist"`` or ``"fashion_mnist"``.
    split: ``"train"`` (60,000 examples) or ``"test"`` (10,000).
    data_dir: an explicit folder; otherwise :func:`find_data_dir` searches.

  Returns:
    ``(images uint8 [N, 28, 28], labels int32 [N])`` in the files' order.

  Raises:
    DataError: files not found, unreadable or corrupt (see :func:`read_idx`),
      images not ``uint8 [N, 28, 28]``, labels not ``[N]`` integers in 0..9,
      image and label counts differing, or labels that are another dataset's
      or split's published labels.
  """
  _check_choice("dataset", dataset, DATASETS)
  _check_choice("split", split, SPLITS)
  directory = Path(find_data_dir(dataset, data_dir))
  images_path, labels_path = (_find_file(directory, stem) for stem in _FILE_STEMS[split])
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
    raise DataError(f"{images_path}: expected uint8 images [N, 28, 28], found {images.dtype} "
                    f"{list(images.shape)}; is this an MNIST-family images file?")
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{labels_path}: expected integer labels [N], found {labels.dtype} "
                    f"{list(labels.shape)}; is this an MNIST-family labels file?")
  if len(images) != len(labels):
    raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                    f"{len(labels)} labels; both files must come from the same split")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise DataError(f"{labels_path}: labels must be in 0..{NUM_CLASSES - 1}, found "
                    f"{labels.min()}..{labels.max()}")
  known = _LABEL_FINGERPRINTS.get(hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest())
  if known is not None and known != (dataset, split):
    raise DataError(f"{labels_path}: these are the published {known[0]} {known[1]} labels, "
                    f"but {dataset} {split} was asked for; point --data_dir or {ENV_VAR} at "
                    f"the {dataset} files")
  return images, labels.astype(np.int32)


# ----------------------------------------------------------------------------- sequence views


def pixel_permutation(seed: int, num_pixels: int = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]) -> np.ndarray:
  """The fixed pixel order of the ``permuted_pixels`` view: int64 ``[num_pixels]``."""
  return np.random.default_rng(seed).permutation(num_pixels)


def as_sequences(images: np.ndarray, view: str = "rows", permutation_seed: int = 0) -> np.ndarray:
  """Turns images into float32 sequences in [0, 1] (pixel / 255).

  Args:
    images: uint8 ``[..., H, W]`` (``[N, 28, 28]`` from :func:`load`).
    view: ``"rows"``: ``[..., H, W]``, H steps of W pixels (the tutorials' view);
      ``"pixels"``: ``[..., H*W, 1]``, one pixel per step in row-major order;
      ``"permuted_pixels"``: ``[..., H*W, 1]``, the pixels in the fixed order
      :func:`pixel_permutation` (``permutation_seed``) gives, the same for
      every image and every call with the same seed.
    permutation_seed: seed of the ``permuted_pixels`` order.

  Returns:
    float32 sequences, ``[batch..., time, features]``.
  """
  _check_choice("view", view, VIEWS)
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim < 2:
    raise ValueError(f"images must be uint8 [..., H, W]; got {images.dtype} {list(images.shape)}")
  scaled = images.astype(np.float32)
  scaled /= np.float32(255)  # In place: one [N, 784] float32 allocation, not two.
  if view == "rows":
    return scaled
  height, width = images.shape[-2:]
  pixels = scaled.reshape(images.shape[:-2] + (height * width,))
  if view == "permuted_pixels":
    pixels = pixels[..., pixel_permutation(permutation_seed, height * width)]
  return pixels[..., None]


# ----------------------------------------------------------------------------- batching


def _seed_words(key_or_seed) -> list[int]:
  """Non-negative integers seeding NumPy's generator, from an int seed or a JAX key."""
  if isinstance(key_or_seed, (int, np.integer)):
    words = [int(key_or_seed)]
  else:
    import jax  # pylint: disable=import-outside-toplevel
    key = key_or_seed
    if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
      key = jax.random.key_data(key)
    words = [int(word) for word in np.asarray(key).ravel()]
  if any(word < 0 for word in words):
    raise ValueError(f"seed must be non-negative; got {key_or_seed!r}")
  return words


def epoch_permutation(key_or_seed, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the examples in one epoch: a permutation of ``range(num_examples)``.

  Deterministic per ``(seed, epoch)`` on every machine and backend (NumPy's
  PCG64 seeded with ``[*seed, epoch]``), and different for different epochs.

  Args:
    key_or_seed: a non-negative int, or a JAX PRNG key (typed or raw uint32).
    epoch: the epoch number, from 0.
    num_examples: ``N``.

  Returns:
    int64 ``[N]``.
  """
  if epoch < 0:
    raise ValueError(f"epoch must be non-negative; got {epoch}")
  return np.random.default_rng(_seed_words(key_or_seed) + [int(epoch)]).permutation(num_examples)


def _check_batch_size(num_examples: int, batch_size: int) -> None:
  if not 1 <= batch_size <= num_examples:
    raise ValueError(f"batch_size must be in 1..num_examples ({num_examples}); got {batch_size}")


def batch_indices(seed, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The training batches of one epoch: rows of :func:`epoch_permutation`.

  The last ``num_examples % batch_size`` examples of the shuffled order are
  dropped (a different few each epoch), so every step has a full batch and one
  compiled train step. A run resumed at ``(epoch, step)`` uses
  ``batch_indices(seed, epoch, ...)[step]``, exactly what the uninterrupted
  run used.

  Args:
    seed: as ``key_or_seed`` of :func:`epoch_permutation`.
    epoch: the epoch number, from 0.
    num_examples: ``N``.
    batch_size: ``B``, in ``1..N``.

  Returns:
    int64 ``[N // B, B]`` indices into the split.
  """
  _check_batch_size(num_examples, batch_size)
  num_batches = num_examples // batch_size
  order = epoch_permutation(seed, epoch, num_examples)
  return order[:num_batches * batch_size].reshape(num_batches, batch_size)


def iterate_batches(seed, num_examples: int, batch_size: int,
                    start_step: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
  """Endless ``(step, epoch, indices int64 [B])`` from global step ``start_step`` on.

  Step ``s`` is batch ``s % (N // B)`` of epoch ``s // (N // B)`` of
  :func:`batch_indices`, so resuming from a checkpoint's step continues the
  very same sequence of batches.
  """
  _check_batch_size(num_examples, batch_size)
  if start_step < 0:
    raise ValueError(f"start_step must be non-negative; got {start_step}")
  epoch, offset = divmod(start_step, num_examples // batch_size)
  step = start_step
  while True:
    for indices in batch_indices(seed, epoch, num_examples, batch_size)[offset:]:
      yield step, epoch, indices
      step += 1
    epoch, offset = epoch + 1, 0
