"""Claims and heartbeats: which process is running which study point, readable from any machine.

A *claim* says "this process runs point KEY now". It is a file `<results_dir>/.points/<KEY>.claim`
created with O_EXCL, so of two processes that try at once exactly one wins, also on a file system
shared by several machines (NFS v3+ and Lustre honour O_EXCL). Its holder touches it every
`interval()` seconds (a heartbeat thread); a claim whose file was not touched for `stale_after()`
seconds belongs to a process that is gone (killed, or its machine lost), and the next process takes
it over. On the same machine a claim whose process no longer exists is taken over at once.

Ages are measured against the file system's own clock (the mtime of a file just touched there), not
this machine's, so a cluster node whose clock is off does not see live claims as stale.

A run folder carries the same kind of heartbeat (`runs/<id>/heartbeat`, see `runner.execute`), so
`dlexp status` can tell a running run from a killed one without knowing which process had it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

CLAIMS = ".points"


def interval() -> float:
    """Seconds between two heartbeats (DLEXP_HEARTBEAT_S, default 5)."""
    return float(os.environ.get("DLEXP_HEARTBEAT_S", "5"))


def stale_after() -> float:
    """A heartbeat older than this many seconds is a dead holder's: 6 missed beats (30 s by default)."""
    return 6 * interval()


def host_id() -> str:
    """This machine: host name plus boot id, so two containers named alike are still told apart."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}:{boot}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def fs_now(folder: Path) -> float:
    """The current time as the file system holding `folder` sees it (the mtime of a file touched there)."""
    probe = folder / f".now-{os.getpid()}-{threading.get_ident()}"
    try:
        probe.touch()
        now = probe.stat().st_mtime
        probe.unlink(missing_ok=True)
        return now
    except OSError:
        return time.time()


def age(path: Path, now: float | None = None) -> float | None:
    """Seconds since `path` was last touched (None if it does not exist)."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return (now if now is not None else fs_now(path.parent)) - mtime


class Heartbeat:
    """One thread per process that touches every file it is given, every `interval()` seconds."""

    def __init__(self) -> None:
        self._files: set[Path] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self._lock:
            self._files.add(Path(path))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="dlexp-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, path: Path) -> None:
        with self._lock:
            self._files.discard(Path(path))

    def _beat(self) -> None:
        while True:
            time.sleep(interval())
            with self._lock:
                files = list(self._files)
            for f in files:
                try:
                    os.utime(f)
                except OSError:
                    pass  # removed meanwhile (released), or the folder is gone: nothing to keep alive


HEARTBEAT = Heartbeat()


class Claim:
    """A held claim on one point; `release()` when the point's run folder is written."""

    def __init__(self, path: Path, info: dict[str, Any]):
        self.path, self.info = path, info

    def release(self) -> None:
        HEARTBEAT.remove(self.path)
        try:
            if json.loads(self.path.read_text()).get("nonce") == self.info["nonce"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written (created, not yet filled) or damaged: judged by its age alone


def holder(results_dir: str | Path, key: str, now: float | None = None) -> dict[str, Any] | None:
    """Who holds the claim on `key` now (its info), or None when nobody live does."""
    path = Path(results_dir) / CLAIMS / f"{key}.claim"
    info = _read(path)
    if info is None or _is_stale(path, info, now):
        return None
    return info


def _is_stale(path: Path, info: dict[str, Any], now: float | None) -> bool:
    if info.get("host") == host_id() and isinstance(info.get("pid"), int) and not pid_alive(info["pid"]):
        return True  # its process is gone: no need to wait for the heartbeat to age
    a = age(path, now)
    return a is not None and a > stale_after()


def try_claim(results_dir: str | Path, key: str, what: dict[str, Any] | None = None) -> Claim | None:
    """Claim `key` for this process, or None if a live process holds it. A stale claim is taken over."""
    folder = Path(results_dir) / CLAIMS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.claim"
    info = {"host": host_id(), "pid": os.getpid(), "nonce": secrets.token_hex(8), "since": time.time(), **(what or {})}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            old = _read(path)
            if old is None:
                continue  # released meanwhile: try again
            if not _is_stale(path, old, None):
                return None
            _break(path, old)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        HEARTBEAT.add(path)
        return Claim(path, info)
    return None


def _break(path: Path, old: dict[str, Any]) -> None:
    """Remove a stale claim, unless another process replaced it with a live one in the meantime.

    The claim is moved aside (one rename: one winner); if what was moved is not the stale claim we
    judged (a fresh one taken by a faster process), it is put back with link(), which never
    overwrites.
    """
    aside = path.with_name(f"{path.name}.{secrets.token_hex(4)}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read(aside) or {}
    if old and moved.get("nonce") != old.get("nonce"):
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)
