"""Two sweep workers sharing one study in a real PostgreSQL server (Optuna's RDB storage, psycopg 3).

The test starts a throwaway server on 127.0.0.1 (initdb in tmp_path, a free port, password auth) and
stops it afterwards. It skips only where the server binaries are absent and $CI is unset; in CI a
missing server is a failure (.ci/run installs it).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# the sweep command in a separate process, as in test_sweep.py
HARNESS = "import typer; from dlexp.cli.sweep import sweep; app = typer.Typer(add_completion=False); app.command()(sweep); app()"

PASSWORD = "pg-s3cret-pw"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user there."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str]) -> None:
    res = subprocess.run(_as_server_user(cmd), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed: {res.stdout}{res.stderr}")


@pytest.fixture
def postgres_url():
    bindir = _bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are missing in CI; .ci/run installs them")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql); CI runs this test")
    # under /tmp itself: pytest's tmp folders are private to root, and the server runs as `postgres`
    base = Path(tempfile.mkdtemp(prefix="dlexp-pg-"))
    data, pwfile, log = base / "data", base / "pw", base / "server.log"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(pwfile, "postgres")
        os.chmod(base, 0o700)
    port = _free_port()
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "dlexp", f"--pwfile={pwfile}", "--auth=scram-sha-256",
              "-E", "UTF8", "--no-sync"])
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
              "-o", f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} -c fsync=off"])
        yield f"postgresql+psycopg://dlexp:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_postgres_study_and_finish_exactly_n_trials(postgres_url, tmp_path):
    import optuna

    args = ["sweep=lr_wd", "trainer.epochs=2", "trainer.batch_size=512", "model.hidden=[16]", f"results_dir={tmp_path}",
            "--trials", "6", "--study", "pg", "--storage", postgres_url, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", HARNESS, *args, "--seed", str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outputs):
        assert p.returncode == 0, o + e
        assert PASSWORD not in o + e  # the URL is printed masked
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 6
    assert "RUNNING" not in states and "WAITING" not in states
    # one run folder per finished trial, none twice, none lost; each carries the study and trial number
    finished = sorted(t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED"))
    runs = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    summaries = [json.loads((d / "summary.json").read_text()) for d in runs]
    assert sorted(s["trial"] for s in summaries if s["status"] != "failed") == finished
    assert {t.user_attrs["run_id"] for t in study.trials if t.state.name == "COMPLETE"} <= {d.name for d in runs}
    # the password is nowhere in what dlexp recorded
    for d in runs:
        for f in d.iterdir():
            if f.suffix in (".json", ".yaml", ".csv", ".txt"):
                assert PASSWORD not in f.read_text(), f
        meta = json.loads((d / "meta.json").read_text())
        assert ":***@127.0.0.1" in meta["sweep"]["storage"]
        assert any(":***@" in a for a in meta["command"])
    for f in (tmp_path / "sweeps").rglob("*"):
        if f.is_file():
            assert PASSWORD not in f.read_text(), f
