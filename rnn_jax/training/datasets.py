"""MNIST-family datasets: where their files are, loading a split, images as sequences.

Whole splits live in memory as NumPy arrays (MNIST is 47 MB of pixels), so
nothing here streams: :func:`load` returns ``images uint8 [N, 28, 28]`` and
``labels int32 [N]`` (read with :mod:`rnn_jax.training.idx`), and
:func:`as_sequences` turns images into the float inputs of a recurrent network
(the :data:`VIEWS`). Batch orders are :mod:`rnn_jax.training.batching`'s.

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
5. ``<search dir>/<dataset>`` for each folder of the ``search_dirs``
   argument, which the caller's configuration gives (the experiment scripts
   pass ``../shared/data`` beside their checkout and beside the working
   directory, see :func:`experiments.data_search_dirs`); the library itself
   knows no such place;
6. a prepared tensorflow-datasets copy (``$TFDS_DATA_DIR`` or
   ``~/tensorflow_datasets``, array_record format), read with
   ``tfds.data_source`` and converted once to plain IDX files in place 3. No
   TensorFlow needed, but Pillow (or OpenCV) to decode its PNG images; the
   examples keep TFDS's (shuffled) order;
7. a download of the four original ``.gz`` files by tensorflow-datasets'
   download manager, from the URLs and with the SHA-256 checksums it
   registers for the dataset, copied into place 3. Tried only when
   ``tensorflow-datasets`` is installed (``pip install -e '.[data]'``) and
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

import hashlib
import os
import shutil
import socket
import urllib.parse
from pathlib import Path
from typing import Sequence

import numpy as np

from rnn_jax.training.idx import DataError, read_idx, write_idx

DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "test")
VIEWS = ("rows", "pixels", "permuted_pixels")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
ENV_VAR = "RNN_JAX_DATA_DIR"

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
CONNECT_TIMEOUT_S = 2.0


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


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


def tfds_data_dir() -> Path:
  """tensorflow-datasets' folder: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
  return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def _local_candidates(dataset: str, data_dir, search_dirs: Sequence[str | os.PathLike] = ()
                      ) -> list[tuple[str, Path | None]]:
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
  candidates += [("search dir", Path(d).expanduser() / dataset) for d in search_dirs]
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


def import_tfds():
  """The ``tensorflow_datasets`` module (raises ImportError when absent)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


def reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> bool:
  """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def copy_atomically(source: Path, destination: Path) -> None:
  """Copies ``source`` to ``destination`` through a temporary file and a rename (no half file)."""
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
  if not reachable(host, port):
    tried.append(f"tensorflow-datasets download: no network ({host}:{port} did not answer "
                 f"within {CONNECT_TIMEOUT_S:g} s)")
    return None
  manager = tfds.download.DownloadManager(download_dir=os.fspath(tfds_dir / "downloads"),
                                          url_infos=url_infos, dataset_name=dataset)
  paths = manager.download(urls)
  target = default_cache_dir(dataset)
  target.mkdir(parents=True, exist_ok=True)
  for stem, path in paths.items():
    copy_atomically(Path(os.fspath(path)), target / f"{stem}.gz")
  return target


def _try_tfds(dataset: str, tried: list[str]) -> Path | None:
  """Places 6 and 7: a prepared tensorflow-datasets copy, then a download."""
  tfds_dir = tfds_data_dir()
  try:
    tfds = import_tfds()
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
      tried.append(f"tensorflow-datasets prepared copy in {tfds_dir}: {first_line(error)}")
  try:
    return _download_with_tfds(tfds, dataset, tfds_dir, tried)
  except Exception as error:  # pylint: disable=broad-except
    tried.append(f"tensorflow-datasets download into {tfds_dir}: {first_line(error)}")
    return None


def first_line(error: Exception) -> str:
  """``"<error type>: <first line of its message>"``, for the one-line list of places tried."""
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
        "or, with internet, pip install -e '.[data]' (tensorflow-datasets and "
        "importlib_resources) and rerun: the files are converted once into "
        f"{default_cache_dir(dataset)}",
    ]
    if dataset == "fashion_mnist":
      lines.append("or apt-get install dataset-fashion-mnist (Debian/Ubuntu)")
  return "\n  ".join(lines)


def find_data_dir(dataset: str = "mnist", data_dir: str | os.PathLike | None = None,
                  search_dirs: Sequence[str | os.PathLike] = ()) -> str:
  """The folder holding ``dataset``'s four IDX files, searched in the order of the module doc.

  Args:
    dataset: one of :data:`DATASETS`.
    data_dir: if given, the only place looked at (``data_dir/<dataset>`` or
      ``data_dir`` itself).
    search_dirs: folders whose ``<dataset>`` subfolder is tried after the
      cache and the system package (place 5 of the module doc).

  Returns:
    The folder's path.

  Raises:
    DataError: nothing found; the message lists every place tried and how to fix it.
  """
  _check_choice("dataset", dataset, DATASETS)
  tried = []
  for origin, directory in _local_candidates(dataset, data_dir, search_dirs):
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


def load(dataset: str = "mnist", split: str = "train", data_dir: str | os.PathLike | None = None,
         search_dirs: Sequence[str | os.PathLike] = ()) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of an MNIST-family dataset into memory.

  Args:
    dataset: ``"mnist"`` or ``"fashion_mnist"``.
    split: ``"train"`` (60,000 examples) or ``"test"`` (10,000).
    data_dir: an explicit folder; otherwise :func:`find_data_dir` searches,
      ``search_dirs`` included.

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
  directory = Path(find_data_dir(dataset, data_dir, search_dirs))
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
