"""Shared fixtures: a composed config shrunk to a couple of CPU steps, a results folder under tmp_path,
the shared data folder through $DLEXP_DATA, and two ways to run the CLI (in-process and as a real
subprocess).

Every config here writes under `tmp_path` only (`results_dir=<tmp>` is passed as an override), so a
test never touches the working tree's `results/`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("DLEXP_DATA") or REPO / ".." / "shared" / "data").resolve()

# one epoch of large batches on the CPU: a handful of optimizer steps on digits (1293 training rows)
SMALL = ["trainer.epochs=1", "trainer.batch_size=512", "trainer.device=cpu"]


def conf_choices(group: str) -> list[str]:
    """The file stems of `conf/<group>/*.yaml`: a new file there is a new test case automatically."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def run_dirs(results_dir: Path) -> list[Path]:
    """The run folders under `<results_dir>/runs/` (hidden probe or temp files are not runs)."""
    runs = Path(results_dir) / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def data_env(monkeypatch) -> Path:
    """$DLEXP_DATA set to the shared data folder (Fashion-MNIST, MNIST, airfoil, Kaggle house)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is missing; set DLEXP_DATA")
    monkeypatch.setenv("DLEXP_DATA", str(SHARED_DATA))
    monkeypatch.setenv("DLEXP_OFFLINE", "1")  # never reach for the network from the tests
    return SHARED_DATA


@pytest.fixture
def results_dir(tmp_path) -> Path:
    """Where this test's runs go: `<tmp_path>/results` (not created: dlexp must make it)."""
    return tmp_path / "results"


@pytest.fixture
def small_overrides(results_dir) -> list[str]:
    """The overrides that shrink the default config to a few CPU steps writing under tmp_path."""
    return [*SMALL, f"results_dir={results_dir}"]


@pytest.fixture
def make_cfg(small_overrides):
    """make_cfg("optimizer=adam", ...) -> the shrunk config composed with extra overrides."""
    from dlexp.config import compose

    def make(*overrides: str, config_dir=None):
        return compose([*small_overrides, *overrides], config_dir)

    return make


@pytest.fixture
def small_cfg(make_cfg):
    """The default config (mlp on digits with SGD) shrunk to one CPU epoch of batch 512."""
    return make_cfg()


@pytest.fixture
def cli():
    """cli("run", "seed=1", ...) -> CliResult, through typer's CliRunner in this process."""
    from typer.testing import CliRunner

    from dlexp.cli import app

    runner = CliRunner()

    def invoke(*args: str) -> CliResult:
        result = runner.invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            # an escaped exception is a bug in the CLI; keep its traceback visible in the output
            import traceback

            tb = "".join(traceback.format_exception(result.exception))
            return CliResult(result.exit_code, result.stdout, result.stderr + tb)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke


@pytest.fixture
def cli_subprocess(tmp_path):
    """cli_subprocess("run", ...) -> CliResult from `python -m dlexp ...` run with cwd=tmp_path.

    `start=True` returns the Popen instead, so several can be started at the same moment;
    `extra_env` adds environment variables (e.g. COLUMNS for rich's table width).
    """
    env = {**os.environ, "DLEXP_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if SHARED_DATA.is_dir():
        env["DLEXP_DATA"] = str(SHARED_DATA)
    cmd = [sys.executable, "-m", "dlexp"]

    def call(*args: str, start: bool = False, timeout: float = 240, extra_env: dict | None = None):
        full_env = {**env, **(extra_env or {})}
        if start:
            return subprocess.Popen([*cmd, *args], cwd=tmp_path, env=full_env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p = subprocess.run([*cmd, *args], cwd=tmp_path, env=full_env, text=True, capture_output=True, timeout=timeout)
        return CliResult(p.returncode, p.stdout, p.stderr)

    return call


@pytest.fixture
def start(cli_subprocess):
    """start("run", ...) -> Popen of a real `python -m dlexp` (started at once; `extra_env` as
    cli_subprocess); the ones still running are killed in teardown."""
    procs: list[subprocess.Popen] = []

    def call(*args: str, extra_env: dict | None = None) -> subprocess.Popen:
        p = cli_subprocess(*args, start=True, extra_env=extra_env)
        procs.append(p)
        return p

    yield call
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll `predicate()` every 5 ms; fail if `proc` ends first (the fault could not be injected) or
    time runs out."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended (rc {proc.returncode}) before the fault could be injected:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the command to reach the point of the fault")
        time.sleep(0.005)


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test, restored after. Bit-level claims need a fixed thread
    count (a reduction's summation order depends on it); tiny networks also run ~10x faster on one
    thread than on two on a busy 2-core runner. Use: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# the quick subset: `python -m pytest -q -m "not slow"`

SLOW_LIST = Path(__file__).with_name("slow_tests.txt")


def pytest_collection_modifyitems(config, items):
    """Tests listed in tests/slow_tests.txt get the `slow` marker, beside those that carry it in their
    code. The list is measured, not guessed: `python tests/slow_tests.py JUNIT.xml` writes it from a
    full run's `--junitxml` times (every test over 0.3 s on a 2-core machine)."""
    listed = {line.strip() for line in SLOW_LIST.read_text().splitlines() if line.strip() and not line.startswith("#")} \
        if SLOW_LIST.is_file() else set()
    for item in items:
        if item.nodeid in listed:
            item.add_marker(pytest.mark.slow)
