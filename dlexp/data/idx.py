"""A small reader for the IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

Layout: a 4-byte magic number `0x00 0x00 <type> <ndim>` (type 0x08 = unsigned byte), then `ndim`
big-endian uint32 sizes, then the data in C order. Images are magic 0x00000803 (n, rows, cols),
labels 0x00000801 (n,).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from dlexp.data.download import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


class CorruptFileError(DataError):
    """The file is not a valid IDX file: the message names the file and what is wrong."""


def parse_idx(raw: bytes, expected_magic: int, name: str = "<bytes>") -> np.ndarray:
    """The uint8 array stored in the (decompressed) IDX bytes `raw`, shaped as its header says."""
    if len(raw) < 4:
        raise CorruptFileError(f"{name}: not an IDX file ({len(raw)} bytes, shorter than its header)")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise CorruptFileError(f"{name}: IDX magic number is 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(f"{name}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise CorruptFileError(
            f"{name}: header says {'x'.join(map(str, dims))} = {expected} bytes of data, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read a gzipped (name ends in .gz) or plain IDX file; any corruption is a CorruptFileError."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise CorruptFileError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return parse_idx(raw, expected_magic, str(path))
