"""Tests of rnn_jax.training.datasets: loading, the search order, the sequence views.

Datasets are tiny IDX files written by idx_files.py; the real shared MNIST is
checked against the figures of its README and its SHA256SUMS in one ``slow``
test.
"""

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from rnn_jax.training import datasets
from idx_files import idx_bytes, make_dataset, write

SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


# ----------------------------------------------------------------------------- load


@pytest.mark.parametrize("gz", [True, False])
def test_load_tiny_dataset(tmp_path, gz):
  arrays = make_dataset(tmp_path / "mnist", gz=gz)
  for split in datasets.SPLITS:
    images, labels = datasets.load("mnist", split, data_dir=tmp_path)
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, arrays[split][0])
    np.testing.assert_array_equal(labels, arrays[split][1])


def test_load_accepts_dotted_file_names(tmp_path):
  """The ``train-images.idx3-ubyte`` spelling of some copies."""
  make_dataset(tmp_path, gz=False)
  for name in os.listdir(tmp_path):
    os.rename(tmp_path / name, tmp_path / name.replace("-idx", ".idx"))
  assert datasets.load("mnist", "test", data_dir=tmp_path)[0].shape == (3, 28, 28)


@pytest.mark.parametrize("file, content, message", [
    ("train-images-idx3-ubyte.gz", idx_bytes(np.zeros((5, 27, 28), np.uint8)),
     "expected uint8 images [N, 28, 28], found uint8 [5, 27, 28]"),
    ("train-images-idx3-ubyte.gz", idx_bytes(np.zeros((5, 28, 28), np.int16)),
     "expected uint8 images [N, 28, 28], found int16"),
    ("train-labels-idx1-ubyte.gz", idx_bytes(np.zeros((5, 1), np.uint8)),
     "expected integer labels [N], found uint8 [5, 1]"),
    ("train-labels-idx1-ubyte.gz", idx_bytes(np.array([0, 1, 2, 10, 3], np.uint8)),
     "labels must be in 0..9, found 0..10"),
    ("train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(4, np.uint8)),
     "holds 5 images but"),
], ids=["image-size", "image-dtype", "label-rank", "label-range", "label-count"])
def test_load_wrong_contents(tmp_path, file, content, message):
  make_dataset(tmp_path)
  write(tmp_path / file, content)
  with pytest.raises(datasets.DataError) as error:
    datasets.load("mnist", "train", data_dir=tmp_path)
  assert message in str(error.value) and file in str(error.value)


def test_load_count_mismatch_names_both_files(tmp_path):
  make_dataset(tmp_path)
  write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(2, np.uint8)))
  with pytest.raises(datasets.DataError, match=r"t10k-images.*holds 3 images but .*t10k-labels.*holds 2"):
    datasets.load("mnist", "test", data_dir=tmp_path)


def test_load_refuses_another_datasets_labels(tmp_path, monkeypatch):
  """A folder whose labels carry another dataset's fingerprint is refused."""
  arrays = make_dataset(tmp_path)
  digest = hashlib.sha256(arrays["train"][1].tobytes()).hexdigest()
  monkeypatch.setitem(datasets._LABEL_FINGERPRINTS, digest, ("fashion_mnist", "train"))
  with pytest.raises(datasets.DataError, match="published fashion_mnist train labels, but mnist train"):
    datasets.load("mnist", "train", data_dir=tmp_path)
  assert len(datasets.load("fashion_mnist", "train", data_dir=tmp_path)[0]) == 5


def test_load_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="dataset must be one of mnist, fashion_mnist; got 'cifar'"):
    datasets.load("cifar")
  with pytest.raises(ValueError, match="split must be one of train, test; got 'valid'"):
    datasets.load("mnist", "valid", data_dir=tmp_path)


# ----------------------------------------------------------------------------- search order


def test_search_order(isolated, monkeypatch):
  """Each place wins over every later one; removing it uncovers the next."""
  places = {
      "env_sub": isolated / "env" / "mnist",
      "env_flat": isolated / "env",
      "cache": isolated / "home" / ".cache" / "rnn_jax" / "mnist",
      "shared": isolated / "shared" / "mnist",
  }
  for place in places.values():
    make_dataset(place)
  monkeypatch.setenv(datasets.ENV_VAR, str(isolated / "env"))
  explicit = isolated / "explicit"
  make_dataset(explicit)
  assert datasets.find_data_dir("mnist", data_dir=explicit) == str(explicit)
  assert datasets.find_data_dir("mnist", data_dir=str(isolated / "env")) == str(places["env_sub"])
  for name in ("env_sub", "env_flat", "cache", "shared"):
    assert datasets.find_data_dir("mnist", search_dirs=[isolated / "shared"]) == str(places[name])
    (places[name] / "train-images-idx3-ubyte.gz").unlink()


def test_fashion_mnist_places(isolated, monkeypatch):
  """fashion_mnist: a fashion-mnist/ subfolder of the env folder; the Debian folder."""
  make_dataset(isolated / "usr")
  assert datasets.find_data_dir("fashion_mnist") == str(isolated / "usr")
  make_dataset(isolated / "env" / "fashion-mnist")
  monkeypatch.setenv(datasets.ENV_VAR, str(isolated / "env"))
  assert datasets.find_data_dir("fashion_mnist") == str(isolated / "env" / "fashion-mnist")


def test_explicit_data_dir_is_the_only_place(isolated, monkeypatch):
  """A wrong --data_dir is an error even when other places hold the datasets."""
  make_dataset(isolated / "shared" / "mnist")
  make_dataset(isolated / "env")
  monkeypatch.setenv(datasets.ENV_VAR, str(isolated / "env"))
  with pytest.raises(datasets.DataError) as error:
    datasets.load("mnist", data_dir=isolated / "wrong", search_dirs=[isolated / "shared"])
  message = str(error.value)
  assert f"data_dir {isolated / 'wrong' / 'mnist'}: no such folder" in message
  assert str(isolated / "env") not in message and "shared" not in message
  assert "--data_dir" in message


def test_nothing_found_lists_every_place(isolated):
  partial = isolated / "home" / ".cache" / "rnn_jax" / "mnist"
  make_dataset(partial)
  (partial / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(datasets.DataError) as error:
    datasets.find_data_dir("mnist", search_dirs=[isolated / "shared"])
  lines = str(error.value).splitlines()
  assert lines[0] == "no mnist data found. Tried, in order:"
  assert lines[1:5] == [
      f"  - ${datasets.ENV_VAR}: not set",
      f"  - cache {partial}: missing t10k-labels-idx1-ubyte[.gz]",
      f"  - search dir {isolated / 'shared' / 'mnist'}: no such folder",
      f"  - tensorflow-datasets: not installed (prepared copy or download into "
      f"{isolated / 'home' / 'tensorflow_datasets'})",
  ]
  fixes = "\n".join(lines[5:])
  for hint in ("--data_dir", f"set {datasets.ENV_VAR}", "pip install -e '.[data]'"):
    assert hint in fixes


def test_tfds_broken_install_is_reported(isolated, monkeypatch):
  """tensorflow-datasets 4.9.10 without TensorFlow fails to import without importlib_resources."""
  def broken():
    raise ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

  monkeypatch.setattr(datasets, "import_tfds", broken)
  with pytest.raises(datasets.DataError, match=r"tensorflow-datasets: import failed: No module named "
                     r"'importlib_resources' \(prepared copy"):
    datasets.find_data_dir("mnist")


def test_tfds_offline_is_listed_and_not_downloaded(isolated, monkeypatch):
  """tensorflow-datasets installed, its copy unreadable, no network: listed, no download tried."""
  tfds_dir = isolated / "tfds"
  (tfds_dir / "fashion_mnist").mkdir(parents=True)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
  host = "http://fashion-mnist.example/"
  calls = []

  class FakeTfds:  # No ``download`` attribute: constructing a DownloadManager would fail loudly.

    @staticmethod
    def data_source(name, split, data_dir, download):
      calls.append(("data_source", name, split, data_dir, download))
      raise NotImplementedError("file format not supported\nsecond line")

    @staticmethod
    def builder_cls(name):
      calls.append(("builder_cls", name))
      return type("Builder", (), {"url_infos": {host + stem + ".gz": None
                                                for stem in datasets._all_stems()}})

  def unreachable(host, port):
    calls.append(("reachable", host, port))
    return False

  monkeypatch.setattr(datasets, "import_tfds", lambda: FakeTfds)
  monkeypatch.setattr(datasets, "reachable", unreachable)
  with pytest.raises(datasets.DataError) as error:
    datasets.find_data_dir("fashion_mnist")
  message = str(error.value)
  assert (f"tensorflow-datasets prepared copy in {tfds_dir}: NotImplementedError: file format "
          "not supported\n") in message
  assert ("tensorflow-datasets download: no network (fashion-mnist.example:80 did not answer "
          "within 2 s)") in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert calls == [("data_source", "fashion_mnist", "train", str(tfds_dir), False),
                   ("builder_cls", "fashion_mnist"), ("reachable", "fashion-mnist.example", 80)]


def test_reachable_refused_quickly(tmp_path):
  """A closed local port: refused at once (loopback only, never the network)."""
  import socket
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]  # Bound but not listening: connections are refused.
    start = time.perf_counter()
    assert not datasets.reachable("127.0.0.1", port)
  assert time.perf_counter() - start < 2


# ----------------------------------------------------------------------------- views


def test_views_shapes_and_values():
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
  images[0, 0, 0], images[0, 0, 1] = 0, 255
  rows = datasets.as_sequences(images, "rows")
  pixels = datasets.as_sequences(images, "pixels")
  assert rows.shape == (3, 28, 28) and pixels.shape == (3, 784, 1)
  assert rows.dtype == pixels.dtype == np.float32
  assert rows[0, 0, 0] == 0.0 and rows[0, 0, 1] == 1.0
  np.testing.assert_allclose(rows, images / 255.0, rtol=1e-7)
  for n, r, c in ((0, 0, 5), (1, 3, 27), (2, 27, 0)):
    assert pixels[n, 28 * r + c, 0] == rows[n, r, c]
  assert datasets.as_sequences(images[0], "pixels").shape == (784, 1)  # Any leading batch shape.


def test_permuted_pixels_fixed_per_seed():
  """Images with distinct pixel values reveal the order: the same for every image and call."""
  grid = np.arange(16, dtype=np.uint8).reshape(4, 4)
  images = np.stack([grid, 15 - grid])
  order = np.rint(datasets.as_sequences(images, "permuted_pixels", 7)[..., 0] * 255).astype(int)
  assert order.shape == (2, 16)
  assert sorted(order[0]) == list(range(16)) and not np.array_equal(order[0], np.arange(16))
  np.testing.assert_array_equal(order[1], 15 - order[0])  # Same permutation on both images.
  again = datasets.as_sequences(images, "permuted_pixels", 7)
  np.testing.assert_array_equal(np.rint(again[..., 0] * 255), order)
  other = np.rint(datasets.as_sequences(images, "permuted_pixels", 8)[..., 0] * 255)
  assert not np.array_equal(other, order)
  np.testing.assert_array_equal(order[0], datasets.pixel_permutation(7, 16))


def test_views_bad_input():
  with pytest.raises(ValueError, match="view must be one of rows, pixels, permuted_pixels"):
    datasets.as_sequences(np.zeros((1, 28, 28), np.uint8), "columns")
  with pytest.raises(ValueError, match="images must be uint8"):
    datasets.as_sequences(np.zeros((1, 28, 28), np.float32))


def test_the_scripts_search_the_shared_copy_beside_the_checkout_first(tmp_path, monkeypatch):
  """``../shared/data`` next to the repository, whatever the working directory; then beside the
  cwd. The library itself searches it only when given it."""
  from experiments import data_search_dirs  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  assert data_search_dirs() == (SHARED_MNIST.parent, tmp_path.parent / "shared" / "data")


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"shared MNIST not found at {SHARED_MNIST}")
def test_real_mnist(tmp_path):
  """Counts, pixel statistics and class counts of the shared README; SHA256SUMS; speed."""
  for line in (SHARED_MNIST / "SHA256SUMS").read_text().splitlines():
    digest, name = line.split()
    assert hashlib.sha256((SHARED_MNIST / name).read_bytes()).hexdigest() == digest, name
  start = time.perf_counter()
  train_images, train_labels = datasets.load("mnist", "train", data_dir=SHARED_MNIST)
  test_images, test_labels = datasets.load("mnist", "test", data_dir=SHARED_MNIST)
  seconds = time.perf_counter() - start
  assert seconds < 10, f"loading both splits took {seconds:.1f} s"  # About 0.5 s on our CPU.
  assert train_images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
  for images, mean, std in ((train_images, 0.1307, 0.3081), (test_images, 0.1325, 0.3105)):
    counts = np.bincount(images.ravel(), minlength=256)  # Exact statistics from the histogram.
    values = np.arange(256) / 255.0
    actual_mean = counts @ values / counts.sum()
    actual_std = np.sqrt(counts @ (values - actual_mean) ** 2 / counts.sum())
    assert abs(actual_mean - mean) < 5e-5 and abs(actual_std - std) < 5e-5  # README rounds to 4.
    np.testing.assert_allclose(datasets.as_sequences(images[:100]), images[:100] / 255.0, rtol=1e-7)
  np.testing.assert_array_equal(np.bincount(train_labels),
                                [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
  # The test split's labels under train's names are recognised by their fingerprint.
  for kind in ("images-idx3", "labels-idx1"):
    os.symlink(SHARED_MNIST / f"t10k-{kind}-ubyte.gz", tmp_path / f"train-{kind}-ubyte.gz")
    os.symlink(SHARED_MNIST / f"t10k-{kind}-ubyte.gz", tmp_path / f"t10k-{kind}-ubyte.gz")
  with pytest.raises(datasets.DataError, match="published mnist test labels, but mnist train"):
    datasets.load("mnist", "train", data_dir=tmp_path)
