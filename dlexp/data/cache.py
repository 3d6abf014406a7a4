"""The user cache folder and atomic file writes.

Everything dlexp writes for itself (downloads, decoded arrays) lives under
`${XDG_CACHE_HOME:-~/.cache}/dlexp/<folder>`. Every write goes to a temporary file in the same folder
and is renamed into place, so a reader never sees half a file, even after a crash or Ctrl-C.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from dlexp.atomic import atomic_write


def cache_root() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/dlexp` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dlexp"


def cache_dir(folder: str) -> Path:
    return cache_root() / folder


def file_digest(path: Path, algo: str, chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_arrays(path: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load the arrays saved at `path` (an uncompressed .npz), or build and save them.

    The caller puts a content key into the file name (e.g. the raw files' checksums), so a stale
    cache is never read: new raw files give a new name. An unreadable cache file is rebuilt; a cache
    folder that cannot be written (read-only, or $XDG_CACHE_HOME a file) only costs the speed-up.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (FileNotFoundError, NotADirectoryError):  # not built yet, or a cache "folder" that is a file
        pass
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # truncated or foreign file: rebuild it
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    arrays = build()
    try:
        atomic_write(path, lambda tmp: _save_npz(tmp, arrays))
    except OSError:
        pass
    return arrays


def _save_npz(tmp: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
        np.savez(f, **arrays)
