"""Find a data set's files on disk, or download them from the publishers' mirrors.

Search order for every file (the first copy whose checksum matches wins):

1. `dataset.root` (the folder holding the files),
2. `$DLEXP_DATA/<folder>`,
3. the user cache `${XDG_CACHE_HOME:-~/.cache}/dlexp/<folder>`,
4. `/usr/share/datasets/<folder>` (Debian's `dataset-fashion-mnist` installs there),
5. a download from the mirrors in `MIRRORS[folder]` into the user cache.

A copy whose checksum does not match is refused with a warning and the search goes on; a bad copy in
the cache is replaced by a fresh download. Downloads go to `<file>.part`, are resumed with an HTTP
Range request after a broken transfer, are verified, and only then renamed to `<file>`: a partial
file is never taken for a complete one. A mirror that fails (HTTP error, timeout, short transfer,
wrong checksum) gives way to the next. With no mirror left, one `DataNotFoundError` names the files,
their checksums, the URLs tried and the folders to put them in.

Downloads use HTTPS: the mirrors below that only speak plain HTTP are tried only with
`DLEXP_ALLOW_HTTP=1`, and a redirect from https to http is refused. (The checksum is verified either
way; HTTPS also keeps what is fetched private and the transfer from being tampered with.)
`DLEXP_MIRRORS="http://host/a/{folder}/,http://host/b/"` replaces every mirror list, scheme and all
(tests serve the files from 127.0.0.1 this way); `DLEXP_OFFLINE=1` never downloads.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dlexp.data.cache import cache_dir, file_digest
from dlexp.errors import ConfigError

# Publishers' mirrors, tried in order; `{folder}` is not needed in these, the file name is appended.
MIRRORS: dict[str, list[str]] = {
    # the files in Zalando's repository (HTTPS), then Zalando's S3 mirror (http only; what torchvision uses)
    "fashion-mnist": [
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
    # torchvision's MNIST.mirrors: the PyTorch CI copy first, then LeCun's own site
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    # d2l's DATA_URL (d2l uses http; the same bucket answers on https)
    "airfoil": ["https://d2l-data.s3-accelerate.amazonaws.com/", "http://d2l-data.s3-accelerate.amazonaws.com/"],
    "kaggle-house": [
        "https://d2l-data.s3-accelerate.amazonaws.com/",
        "http://d2l-data.s3-accelerate.amazonaws.com/",
    ],
}
SYSTEM_DIR = Path("/usr/share/datasets")
TIMEOUT_S = 30.0  # per blocking socket operation, not per file
ATTEMPTS_PER_MIRROR = 3  # a broken transfer is resumed this many times before the next mirror


class DataError(ConfigError):
    """A data file is missing, corrupt or cannot be fetched. The message says which and what to do."""


class DataNotFoundError(DataError):
    pass


@dataclass(frozen=True)
class RemoteFile:
    """One published file and its published checksum."""

    name: str
    algo: str  # "md5" | "sha1", as published (torchvision's MD5s, d2l's DATA_HUB SHA-1s)
    digest: str
    size: int
    # MD5 of the decompressed content of a .gz file: Debian re-wrote the gzip headers of
    # dataset-fashion-mnist (new mtime, no stored name), so its .gz bytes differ but the data do not.
    gunzipped_md5: str | None = None


def _say(msg: str) -> None:
    from dlexp.masking import mask

    print(f"dlexp: {mask(msg)}", file=sys.stderr)  # a DLEXP_MIRRORS URL may carry a token


def search_dirs(folder: str, root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """(label, folder) in search order, whether or not they exist."""
    dirs = []
    if root:
        dirs.append(("dataset.root", Path(root).expanduser()))
    if os.environ.get("DLEXP_DATA"):
        dirs.append(("$DLEXP_DATA", Path(os.environ["DLEXP_DATA"]).expanduser() / folder))
    dirs.append(("user cache", cache_dir(folder)))
    dirs.append(("system", SYSTEM_DIR / folder))
    return dirs


def http_allowed() -> bool:
    return os.environ.get("DLEXP_ALLOW_HTTP", "") not in ("", "0")


def mirror_urls(folder: str, name: str) -> list[str]:
    env = os.environ.get("DLEXP_MIRRORS")
    if env:  # the user's own list: taken as written
        bases = [b.strip() for b in env.split(",") if b.strip()]
    else:
        bases = [b for b in MIRRORS.get(folder, []) if b.startswith("https://") or http_allowed()]
    urls = []
    for base in bases:
        base = base.replace("{folder}", folder)
        urls.append(base + ("" if base.endswith("/") else "/") + name)
    return urls


def verify(path: Path, f: RemoteFile) -> bool:
    """True when `path` holds the published bytes (or, for a .gz, the published data)."""
    try:
        if path.stat().st_size == f.size and file_digest(path, f.algo) == f.digest:
            return True
        if f.gunzipped_md5 is None:
            return False
        h = hashlib.md5()
        with gzip.open(path, "rb") as g:
            while block := g.read(1 << 20):
                h.update(block)
        return h.hexdigest() == f.gunzipped_md5
    except (OSError, EOFError, gzip.BadGzipFile):
        return False


def fetch(folder: str, files: Sequence[RemoteFile], root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Path of every file in `files`, found or downloaded (see the module docstring)."""
    found: dict[str, Path] = {}
    missing: list[RemoteFile] = []
    for f in files:
        for label, d in search_dirs(folder, root):
            p = d / f.name
            if not p.is_file():
                continue
            if verify(p, f):
                found[f.name] = p
                break
            _say(f"{p} ({label}): {f.algo} checksum does not match {f.digest}; file refused")
        else:
            missing.append(f)
    failures: dict[str, list[str]] = {}
    offline = os.environ.get("DLEXP_OFFLINE", "") not in ("", "0")
    for f in missing:
        if offline:
            failures[f.name] = [f"{u}: not tried (DLEXP_OFFLINE is set)" for u in mirror_urls(folder, f.name)]
            continue
        path, errors = download(f, mirror_urls(folder, f.name), cache_dir(folder))
        if path is not None:
            found[f.name] = path
        else:
            failures[f.name] = errors
    if failures:
        files = [f for f in missing if f.name in failures]
        raise DataNotFoundError(_not_found_message(folder, files, offline), _not_found_details(folder, files, failures, root))
    return found


def _not_found_message(folder: str, files: list[RemoteFile], offline: bool) -> str:
    """The one error line: which data set, how many files, what to do. The details follow as a list."""
    why = "DLEXP_OFFLINE is set" if offline else "no mirror delivered them"
    return (f"data set {folder!r}: {len(files)} file(s) not found and not downloadable ({why}); put them in "
            f"{cache_dir(folder)}, or set dataset.root=<folder with the files> or DLEXP_DATA=<folder holding {folder}/>")


def _not_found_details(folder: str, files: list[RemoteFile], failures: dict[str, list[str]], root) -> list[str]:
    """The lines under the error: each file with its size and checksum and the URLs tried, the folders
    looked in, and the plain-HTTP mirrors that were not tried."""
    lines = []
    for f in files:
        lines.append(f"{f.name}: {f.size} bytes, {f.algo} {f.digest}")
        lines += [f"  {attempt}" for attempt in failures[f.name]] or ["  no mirror to try"]
    lines.append("looked in: " + ", ".join(f"{label} {d}" for label, d in search_dirs(folder, root)))
    http_only = [] if os.environ.get("DLEXP_MIRRORS") or http_allowed() else [
        b for b in MIRRORS.get(folder, []) if not b.startswith("https://")]
    if http_only:
        lines.append(f"plain-HTTP mirrors not tried ({', '.join(http_only)}): set DLEXP_ALLOW_HTTP=1 to use them")
    return lines


def download(f: RemoteFile, urls: Sequence[str], dest_dir: Path) -> tuple[Path | None, list[str]]:
    """Download `f` from the first mirror that delivers the published bytes.

    Returns (path, []) or (None, one error line per URL tried).
    """
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        # the cache cannot hold it ($XDG_CACHE_HOME a file, a read-only home): this process downloads
        # into a temporary folder instead, and the next one downloads again
        dest_dir = _scratch_dir()
        _say(f"cache folder unusable ({e.strerror or e}); downloading into {dest_dir} for this run only")
    dest = dest_dir / f.name
    part = dest_dir / (f.name + ".part")
    errors: list[str] = []
    for url in urls:
        error = None
        for _ in range(ATTEMPTS_PER_MIRROR):
            try:
                _transfer(url, part, f.size)
            except urllib.error.HTTPError as e:
                error = f"{url}: HTTP {e.code} {e.reason}"
                break  # the mirror answered: retrying will not help
            except (OSError, http.client.HTTPException) as e:  # timeout, refused, reset, short read
                error = f"{url}: {type(e).__name__}: {e}"
                continue  # resume from what `part` holds
            have = part.stat().st_size if part.exists() else 0
            if have < f.size:
                error = f"{url}: transfer ended after {have} of {f.size} bytes"
                continue
            if verify(part, f):
                os.replace(part, dest)
                return dest, errors
            error = f"{url}: {f.algo} checksum does not match {f.digest}"
            part.unlink(missing_ok=True)  # do not resume onto bad bytes
            break
        errors.append(error or f"{url}: failed")
        _say(f"download failed: {errors[-1]}")
    return None, errors


_SCRATCH: list[Path] = []


def _scratch_dir() -> Path:
    """A temporary download folder for this process, removed at exit."""
    if not _SCRATCH:
        import atexit
        import shutil
        import tempfile

        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="dlexp-download-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


def _transfer(url: str, part: Path, size: int) -> None:
    """Append the rest of `url` to `part` (Range request), or start it over if the server ignores Range."""
    have = part.stat().st_size if part.exists() else 0
    if have >= size:  # longer than the published file: nothing in it can be trusted
        part.unlink()
        have = 0
    headers = {"User-Agent": "dlexp"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.build_opener(_NoDowngrade).open(req, timeout=TIMEOUT_S) as resp:
        resumed = have > 0 and resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        if not resumed:
            have = 0
        with open(part, "ab" if resumed else "wb") as out, _progress(part.name[: -len(".part")], size, have) as advance:
            while block := resp.read(1 << 16):
                out.write(block)
                advance(len(block))


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects, except from https to plain http (unless DLEXP_ALLOW_HTTP is set)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if req.full_url.startswith("https://") and not newurl.startswith("https://") and not http_allowed():
            raise urllib.error.HTTPError(req.full_url, code, f"redirect to plain HTTP refused ({newurl})", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _progress:
    """A rich progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, name: str, total: int, done: int):
        self.args = (name, total, done)
        self.bar = None

    def __enter__(self):
        name, total, done = self.args
        if not sys.stderr.isatty():
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=Console(stderr=True), transient=True,
        )
        self.bar.start()
        task = self.bar.add_task(f"downloading {name}", total=total, completed=done)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
