"""The entry point itself (`dlexp` / `python -m dlexp`): `--version`, and the OpenMP wait policy it sets
before torch is imported. Both through real subprocesses, since both are about process start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from conftest import SMALL, run_dirs


def test_version_prints_dlexp_and_torch_versions_without_importing_torch(tmp_path):
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "dlexp", "--version"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # the installed distributions' own metadata (pyproject.toml's version, torch's wheel), not dlexp's code
    assert p.stdout.strip() == f"dlexp {version('dlexp')} (torch {version('torch')})"
    imported = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "dlexp" in imported and "torch" not in imported  # fast: the torch part is read from metadata


@pytest.mark.parametrize("users, recorded", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_sets_a_passive_omp_wait_policy_unless_the_user_chose_one(tmp_path, results_dir, users, recorded):
    """PASSIVE is the documented default (README, "Threads"); a value in the environment is kept as is."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if users is not None:
        env["OMP_WAIT_POLICY"] = users
    p = subprocess.run([sys.executable, "-m", "dlexp", "run", *SMALL, f"results_dir={results_dir}", "--quiet"],
                       cwd=tmp_path, env={**env, "DLEXP_OFFLINE": "1"}, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    meta = json.loads((run_dirs(results_dir)[0] / "meta.json").read_text())
    assert meta["omp_wait_policy"] == recorded
    assert meta["threads"] >= 1  # recorded beside it
