"""The IDX file format of MNIST-family datasets: a checked reader and an atomic writer.

An IDX file is two zero bytes, a type byte (``0x08`` uint8, ``0x09`` int8,
``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the
number of dimensions, each dimension as a big-endian uint32, then the
big-endian payload in C order. Files may be gzip-compressed; :func:`read_idx`
recognises gzip data by its content, not its name. Every way a file can be
wrong (unreadable, corrupt gzip, bad magic, unknown type byte, a payload
shorter or longer than its dimensions) is a :class:`DataError` naming the file
and the problem.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

# IDX type byte -> big-endian dtype of the payload.
_IDX_DTYPES = {
    0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(Exception):
  """The data could not be found or read; the message says what is wrong and what to do."""


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
  """Reads an IDX file (gzip-compressed or plain, see the module doc) into a NumPy array.

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

