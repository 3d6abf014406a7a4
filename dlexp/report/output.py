"""Where a report's files go: one folder per report, only names dlexp made, and nothing stale left.

Without `--out`, each report gets a fresh folder `<results_dir>/reports/<time>-<hex>/` (made by
os.mkdir, so two reports never share one). With `--out DIR`, a report rewrites DIR: each file is
replaced atomically, and the files that an earlier report wrote there (listed in DIR's manifest,
`.dlexp-report.json`) and this one did not are removed once every new file is written, so a
re-run never leaves an older report.md or plot beside fresh ones. Files dlexp did not write are
never touched. A file name is built from a user-given name (a study, a metric) only through
`safe_name`, and is checked to land inside the folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
from pathlib import Path

from dlexp.atomic import atomic_write
from dlexp.report.runs import ReportError, clip

MANIFEST = ".dlexp-report.json"


def safe_name(name: str) -> str:
    """A file name from text: letters, digits, '.', '_', '-' only (others become '-'), no leading dot, at most 150 characters."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).lstrip(".-")[:150]
    return s or "unnamed"


def default_folder(results_dir: str | Path) -> Path:
    """A new folder `<results_dir>/reports/<YYYYmmdd-HHMMSS>-<hex>/` (created; unique across processes)."""
    base = Path(results_dir) / "reports"
    base.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = base / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise OSError(f"could not create a fresh report folder under {base}")


class ReportFolder:
    """The files of one report in one folder; `finish()` removes what an earlier report left there."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ReportError(f"--out: {clip(self.path)} exists and is not a folder")
        self.previous = self._manifest()
        self.written: list[str] = []

    def _manifest(self) -> set[str]:
        try:
            data = json.loads((self.path / MANIFEST).read_text())
            files = data.get("files", []) if isinstance(data, dict) else []
            return {f for f in files if isinstance(f, str) and _plain_file_name(f)}
        except (OSError, ValueError, RecursionError):
            return set()  # no earlier report here (or a manifest we cannot read: then we remove nothing)

    def file(self, name: str) -> Path:
        """The path of `name` in the folder; refused unless it is a plain file name inside it."""
        if not _plain_file_name(name):
            raise ReportError(f"report file name {clip(name, 80)!r} would leave the folder {clip(self.path, 80)}")
        return self.path / name

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.file(name)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        self.written.append(name)
        return path

    def adopt(self, path: str | Path) -> None:
        """Count a file written into the folder by other means (the --html page) as this report's."""
        path = Path(path)
        if path.parent.resolve() == self.path.resolve() and _plain_file_name(path.name):
            self.written.append(path.name)

    def finish(self) -> list[str]:
        """Remove the earlier report's files that this one did not write; record this one's. Returns the removed names."""
        removed = []
        for name in sorted(self.previous - set(self.written)):
            p = self.path / name
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(name)
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = {"written_by": "dlexp report", "at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "files": sorted(set(self.written))}
        atomic_write(self.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return removed


def _plain_file_name(name: str) -> bool:
    return (bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}", name)) and name != MANIFEST)
