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
