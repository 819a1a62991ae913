"""IDX files built byte by byte with ``struct``, independently of rnn_jax.training.idx."""

import gzip
import struct
from pathlib import Path

import numpy as np

BIG_ENDIAN = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array, type_byte=None, dims=None, magic=b"\x00\x00"):
  """An IDX file's bytes, written independently of rnn_jax.training.idx; every field overridable."""
  array = np.asarray(array)
  if type_byte is None:
    type_byte = {np.dtype(v).newbyteorder("="): k for k, v in BIG_ENDIAN.items()}[array.dtype]
  dims = array.shape if dims is None else dims
  header = magic + struct.pack(">BB", type_byte, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
  payload = array.astype(BIG_ENDIAN.get(type_byte, ">u1")).tobytes()
  return header + payload


def write(path, content, compress=None):
  """Writes bytes to ``path``, gzip-compressed when the name ends in .gz (or ``compress``)."""
  path = Path(path)
  if compress if compress is not None else path.suffix == ".gz":
    content = gzip.compress(content)
  path.write_bytes(content)
  return path


def make_dataset(directory, n_train=5, n_test=3, seed=0, gz=True):
  """Writes a tiny MNIST-like dataset (28x28 uint8 images, labels 0..9) and returns its arrays."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  suffix = ".gz" if gz else ""
  arrays = {}
  for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    write(directory / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images))
    write(directory / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels))
    arrays[split] = (images, labels)
  return arrays
