"""The downloader against a real HTTP server on 127.0.0.1 that serves the shared data folder.

The server (`DataServer`) can inject faults: a path prefix that answers 404, a prefix that serves
corrupted bytes, transfers cut short after n bytes, and Range requests ignored.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from dlexp.data import download
from dlexp.data.download import DataNotFoundError, fetch

SHARED = Path(os.environ.get("DLEXP_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} not found")

from dlexp.data import airfoil, mnist  # noqa: E402

LABELS = mnist.FILES["fashion-mnist"][1]  # train-labels-idx1-ubyte.gz, 29515 bytes
AIRFOIL = airfoil.FILES[0]


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv: DataServer = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = self.path
        if path.startswith("/corrupt/"):
            path, corrupt = path[len("/corrupt"):], True
        else:
            corrupt = False
        file = srv.root / path.lstrip("/")
        if path.startswith("/gone/") or not file.is_file():
            self.send_error(404)
            return
        data = bytearray(file.read_bytes())
        if corrupt:
            data[len(data) // 2] ^= 0xFF
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = bytes(data[start:])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cuts:  # send only the first n bytes of the body, then hang up
            n = srv.cuts.pop(0)
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class DataServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.cuts: list[int] = []  # one entry per response to cut short
        self.honour_range = True

    def url(self, prefix: str = "") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{prefix}/{{folder}}/"


@pytest.fixture
def server():
    srv = DataServer(SHARED)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh user cache, no $DLEXP_DATA, no system folder, and no real mirror ever contacted."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DLEXP_DATA", raising=False)
    monkeypatch.delenv("DLEXP_OFFLINE", raising=False)
    monkeypatch.setenv("DLEXP_MIRRORS", "http://127.0.0.1:9/")  # discard port: refused at once
    monkeypatch.setattr(download, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(download, "TIMEOUT_S", 5.0)
    return tmp_path


def _sha1(p: Path) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()


def test_download_is_verified_and_lands_in_the_cache(server, monkeypatch, tmp_path):
    monkeypatch.setenv("DLEXP_MIRRORS", server.url())
    path = fetch("airfoil", [AIRFOIL])[AIRFOIL.name]
    assert path == tmp_path / "cache" / "dlexp" / "airfoil" / AIRFOIL.name
    assert _sha1(path) == AIRFOIL.digest
    assert not list(path.parent.glob("*.part"))
    n = len(server.requests)
    assert fetch("airfoil", [AIRFOIL])[AIRFOIL.name] == path  # second time: found in the cache
    assert len(server.requests) == n


def test_a_cache_folder_that_is_a_file_only_costs_the_cache(server, monkeypatch, tmp_path, capsys):
    not_a_folder = tmp_path / "xdg"
    not_a_folder.write_text("XDG_CACHE_HOME points at a file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_folder))
    monkeypatch.setenv("DLEXP_MIRRORS", server.url())
    path = fetch("airfoil", [AIRFOIL])[AIRFOIL.name]
    assert _sha1(path) == AIRFOIL.digest and not path.is_relative_to(not_a_folder)  # a temporary folder instead
    assert "cache folder unusable" in capsys.readouterr().err
    assert not_a_folder.read_text() == "XDG_CACHE_HOME points at a file"


def test_corrupt_cache_file_is_refused_and_fetched_again(server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DLEXP_MIRRORS", server.url())
    cached = tmp_path / "cache" / "dlexp" / "airfoil" / AIRFOIL.name
    cached.parent.mkdir(parents=True)
    good = (SHARED / "airfoil" / AIRFOIL.name).read_bytes()
    cached.write_bytes(good[:-10] + b"0123456789")  # same size, wrong bytes
    path = fetch("airfoil", [AIRFOIL])[AIRFOIL.name]
    assert path == cached and _sha1(path) == AIRFOIL.digest
    assert "checksum does not match" in capsys.readouterr().err
    assert len(server.requests) == 1


def test_truncated_transfer_is_resumed_with_a_range_request(server, monkeypatch):
    monkeypatch.setenv("DLEXP_MIRRORS", server.url())
    server.cuts = [10000]
    path = fetch("fashion-mnist", [LABELS])[LABELS.name]
    assert hashlib.md5(path.read_bytes()).hexdigest() == LABELS.digest
    assert [r for _, r in server.requests] == [None, "bytes=10000-"]


def test_truncated_transfers_never_leave_a_complete_looking_file(server, monkeypatch, tmp_path):
    monkeypatch.setenv("DLEXP_MIRRORS", server.url())
    server.cuts = [5000] * download.ATTEMPTS_PER_MIRROR
    with pytest.raises(DataNotFoundError):
        fetch("fashion-mnist", [LABELS])
    folder = tmp_path / "cache" / "dlexp" / "fashion-mnist"
    assert not (folder / LABELS.name).exists()
    part = folder / (LABELS.name + ".part")
    assert 0 < part.stat().st_size < LABELS.size
    # the next run resumes from the partial file and completes it
    server.requests.clear()
    path = fetch("fashion-mnist", [LABELS])[LABELS.name]
    assert hashlib.md5(path.read_bytes()).hexdigest() == LABELS.digest
    assert server.requests[0][1] == f"bytes={download.ATTEMPTS_PER_MIRROR * 5000}-"
    assert not part.exists()


def test_server_ignoring_range_restarts_the_file_cleanly(server, monkeypatch):
    monkeypatch.setenv("DLEXP_MIRRORS", server.url())
    server.honour_range = False
    server.cuts = [7000]
    path = fetch("fashion-mnist", [LABELS])[LABELS.name]
    assert hashlib.md5(path.read_bytes()).hexdigest() == LABELS.digest
    assert path.stat().st_size == LABELS.size


def test_404_falls_through_to_the_next_mirror(server, monkeypatch):
    monkeypatch.setenv("DLEXP_MIRRORS", f"{server.url('/gone')},{server.url()}")
    path = fetch("airfoil", [AIRFOIL])[AIRFOIL.name]
    assert _sha1(path) == AIRFOIL.digest
    assert [p for p, _ in server.requests] == [f"/gone/airfoil/{AIRFOIL.name}", f"/airfoil/{AIRFOIL.name}"]


def test_wrong_checksum_falls_through_to_the_next_mirror(server, monkeypatch):
    monkeypatch.setenv("DLEXP_MIRRORS", f"{server.url('/corrupt')},{server.url()}")
    path = fetch("airfoil", [AIRFOIL])[AIRFOIL.name]
    assert _sha1(path) == AIRFOIL.digest
    assert len(server.requests) == 2


def test_offline_error_names_files_checksums_urls_and_folders(server, monkeypatch, tmp_path):
    monkeypatch.setenv("DLEXP_MIRRORS", f"{server.url('/gone')},http://127.0.0.1:9/{{folder}}/")
    files = mnist.FILES["fashion-mnist"][1::2]  # the two label files
    with pytest.raises(DataNotFoundError) as e:
        fetch("fashion-mnist", files, root=tmp_path / "mine")
    line, details = str(e.value), e.value.details
    assert "\n" not in line and len(line) < 300  # the CLI prints one short line, then the details as a list
    msg = "\n".join([line, *details])
    for f in files:
        assert f.name in msg and f.digest in msg
        assert f"{server.url('/gone').format(folder='fashion-mnist')}{f.name}: HTTP 404" in msg
        assert f"http://127.0.0.1:9/fashion-mnist/{f.name}" in msg
    assert str(tmp_path / "cache" / "dlexp" / "fashion-mnist") in msg
    assert str(tmp_path / "mine") in msg and "dataset.root" in line and "DLEXP_DATA" in line


def test_dlexp_offline_never_downloads(server, monkeypatch):
    monkeypatch.setenv("DLEXP_MIRRORS", server.url())
    monkeypatch.setenv("DLEXP_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="DLEXP_OFFLINE"):
        fetch("airfoil", [AIRFOIL])
    assert server.requests == []


def test_search_order_root_then_dlexp_data_then_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DLEXP_DATA", str(SHARED))
    assert fetch("airfoil", [AIRFOIL])[AIRFOIL.name] == SHARED / "airfoil" / AIRFOIL.name
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / AIRFOIL.name).write_bytes((SHARED / "airfoil" / AIRFOIL.name).read_bytes())
    assert fetch("airfoil", [AIRFOIL], root=mine)[AIRFOIL.name] == mine / AIRFOIL.name


def test_debian_regzipped_file_is_accepted_by_its_decompressed_checksum(monkeypatch, tmp_path):
    """Debian's dataset-fashion-mnist rewrote the gzip headers: other .gz bytes, same data."""
    raw = gzip.decompress((SHARED / "fashion-mnist" / LABELS.name).read_bytes())
    system = tmp_path / "system" / "fashion-mnist"
    system.mkdir(parents=True)
    (system / LABELS.name).write_bytes(gzip.compress(raw, mtime=1590000000))
    assert hashlib.md5((system / LABELS.name).read_bytes()).hexdigest() != LABELS.digest
    assert fetch("fashion-mnist", [LABELS])[LABELS.name] == system / LABELS.name


def test_fashion_mnist_downloads_end_to_end(server, monkeypatch):
    from omegaconf import OmegaConf

    from dlexp.data import load_source

    monkeypatch.setenv("DLEXP_MIRRORS", server.url())
    source = load_source(OmegaConf.create({"name": "fashion_mnist", "root": None}))
    assert source.x.shape == (60000, 1, 28, 28) and source.x_test.shape == (10000, 1, 28, 28)
    assert len(server.requests) == 4


def test_default_mirrors_are_https_unless_plain_http_is_allowed(monkeypatch):
    monkeypatch.delenv("DLEXP_MIRRORS")
    monkeypatch.delenv("DLEXP_ALLOW_HTTP", raising=False)
    for folder in download.MIRRORS:
        urls = download.mirror_urls(folder, "f.gz")
        assert urls and all(u.startswith("https://") for u in urls), (folder, urls)
    monkeypatch.setenv("DLEXP_ALLOW_HTTP", "1")
    assert any(u.startswith("http://") for u in download.mirror_urls("fashion-mnist", "f.gz"))


def test_a_redirect_from_https_to_http_is_refused(monkeypatch):
    import urllib.error
    import urllib.request

    monkeypatch.delenv("DLEXP_ALLOW_HTTP", raising=False)
    handler = download._NoDowngrade()
    req = urllib.request.Request("https://example.org/a.gz")
    with pytest.raises(urllib.error.HTTPError, match="plain HTTP refused"):
        handler.redirect_request(req, None, 302, "Found", {}, "http://example.org/a.gz")
    assert handler.redirect_request(req, None, 302, "Found", {}, "https://mirror.example.org/a.gz").full_url.startswith("https://")
    monkeypatch.setenv("DLEXP_ALLOW_HTTP", "1")
    assert handler.redirect_request(req, None, 302, "Found", {}, "http://example.org/a.gz") is not None


def test_the_offline_error_says_how_to_allow_the_plain_http_mirrors(monkeypatch):
    monkeypatch.delenv("DLEXP_MIRRORS")
    monkeypatch.delenv("DLEXP_ALLOW_HTTP", raising=False)
    monkeypatch.setenv("DLEXP_OFFLINE", "1")
    with pytest.raises(download.DataNotFoundError) as e:
        download.fetch("fashion-mnist", [download.RemoteFile("x.gz", "md5", "0" * 32, 1)])
    assert len(str(e.value).splitlines()) == 1
    message = "\n".join(e.value.details)
    assert "DLEXP_ALLOW_HTTP=1" in message and "raw.githubusercontent.com" in message
