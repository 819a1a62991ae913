"""Tests of rnn_jax.training.idx: the reader against hand-built files (corrupt ones too), the writer.

IDX files are built byte by byte with ``struct`` (idx_files.py, an
independent writer).
"""

import gzip
import os

import numpy as np
import pytest

from rnn_jax.training import idx
from idx_files import BIG_ENDIAN, idx_bytes, write


# ----------------------------------------------------------------------------- read_idx


def test_read_idx_literal_bytes(tmp_path):
  """Three labels 7, 0, 9: magic 0x00000801, one dimension of 3."""
  path = write(tmp_path / "labels", b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x00\x09")
  np.testing.assert_array_equal(idx.read_idx(path), [7, 0, 9])


@pytest.mark.parametrize("type_byte", sorted(BIG_ENDIAN))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_every_dtype(tmp_path, type_byte, gz):
  rng = np.random.default_rng(type_byte)
  expected = (rng.standard_normal((2, 3, 4)) * 100).astype(np.dtype(BIG_ENDIAN[type_byte]).newbyteorder("="))
  path = write(tmp_path / ("x.gz" if gz else "x"), idx_bytes(expected, type_byte))
  array = idx.read_idx(path)
  assert array.dtype == expected.dtype and array.dtype.isnative and array.flags.writeable
  np.testing.assert_array_equal(array, expected)


def test_gzip_detected_by_content(tmp_path):
  """A gzip file without .gz in its name is still read (e.g. a renamed download)."""
  path = write(tmp_path / "plain-name", idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3)), True)
  np.testing.assert_array_equal(idx.read_idx(path), [[0, 1, 2], [3, 4, 5]])


def test_write_idx_bytes(tmp_path):
  array = np.arange(-3, 3, dtype=np.int16).reshape(3, 2)
  idx.write_idx(tmp_path / "a.gz", array)
  idx.write_idx(tmp_path / "a", array)
  assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == idx_bytes(array)
  assert (tmp_path / "a").read_bytes() == idx_bytes(array)
  assert sorted(os.listdir(tmp_path)) == ["a", "a.gz"]  # No temporary files left behind.
  with pytest.raises(ValueError, match="uint64"):
    idx.write_idx(tmp_path / "b", np.zeros(2, np.uint64))


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
CORRUPT = {
    "truncated payload": (GOOD[:-1], "truncated: dimensions [2, 3, 4] of uint8 need 24 payload bytes, the file has 23"),
    "extra bytes": (GOOD + b"\x00", "extra bytes after the data"),
    "bad magic": (b"\x01" + GOOD[1:], "bad magic number 0x01000803"),
    "unknown dtype byte": (GOOD[:2] + b"\x0a" + GOOD[3:], "unknown IDX type byte 0x0A"),
    "dims claim more": (idx_bytes(np.zeros(24, np.uint8), dims=(2, 3, 5)), "truncated: dimensions [2, 3, 5]"),
    "zero dims": (b"\x00\x00\x08\x00", "0 dimensions"),
    "truncated header": (GOOD[:9], "truncated header: 3 dimensions need 16 bytes"),
    "too short": (b"\x00\x00", "too short for an IDX header"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_corrupt(tmp_path, case, gz):
  content, message = CORRUPT[case]
  path = write(tmp_path / ("bad-file.gz" if gz else "bad-file"), content)
  with pytest.raises(idx.DataError, match="bad-file") as error:
    idx.read_idx(path)
  assert message in str(error.value)


@pytest.mark.parametrize("damage, message", [
    (lambda z: z[:len(z) // 2], "corrupt gzip data"),                         # Cut mid-stream.
    (lambda z: z[:-8] + bytes(8), "corrupt gzip data"),                       # CRC and size zeroed.
    (lambda z: z[:12] + bytes(b ^ 0xFF for b in z[12:30]) + z[30:], "corrupt gzip data"),
    (lambda z: GOOD, "named .gz but is not gzip data"),                       # Plain data named .gz.
], ids=["cut", "crc", "flipped", "not-gzip"])
def test_read_idx_bad_gzip(tmp_path, damage, message):
  compressed = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)))
  path = write(tmp_path / "images.gz", damage(compressed), compress=False)
  with pytest.raises(idx.DataError, match="images.gz") as error:
    idx.read_idx(path)
  assert message in str(error.value)


def test_read_idx_missing_file(tmp_path):
  with pytest.raises(idx.DataError, match="nothing-here.*cannot be read"):
    idx.read_idx(tmp_path / "nothing-here")
