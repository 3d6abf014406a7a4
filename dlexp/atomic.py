"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The data goes to a temporary file in the same folder (same file system), is flushed to disk, and is
renamed onto the target with os.replace, which is atomic on POSIX. If anything fails, the temporary
file is removed and the old file is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

_UMASK = os.umask(0)
os.umask(_UMASK)

Content = Union[str, bytes, Callable[[Path], None]]


def atomic_write(path: str | Path, content: Content, *, parents: bool = True) -> Path:
    """Write `content` (text, bytes, or a function that writes to the temporary path it is given).
    With `parents=False` a missing folder is an error (FileNotFoundError), not made again: a run
    folder deleted mid-run must not come back half-empty."""
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any file
        if callable(content):
            os.close(fd)
            content(Path(tmp))
        else:
            mode = "wb" if isinstance(content, bytes) else "w"
            with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
