"""The README's commands, run as printed: every ```bash block line by line through bash (so quoting
and globs are checked as a user's shell sees them), in one scratch folder, in order, shortened only
where a command would train for minutes. Every `dlexp ...` example in the tables is parsed by bash,
and every `$ command` example whose output the README prints is run and its output compared.

A README command that this file neither runs nor lists under NOT_RUN makes the test fail: a new
example is checked from the day it is written.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA

README = REPO / "README.md"

# Commands that are not run here, each with the reason (matched against the start of the command).
NOT_RUN = {
    "python3 -m venv": "sets up the environment this test runs in (.ci/run does it in a fresh clone)",
    ". .venv/bin/activate": "sets up the environment this test runs in",
    "pip install": "installs packages (.ci/run installs the project and its extras)",
    "python -m pytest": "is this test suite",
    "tensorboard --logdir": "starts a server that never exits (tests/test_loggers.py reads the event files)",
    "mlflow ui": "starts a server that never exits (tests/test_loggers.py reads the runs with MlflowClient)",
    "python benchmarks/": "a benchmark that runs for minutes; its figures are in the README",
}
# Commands that need something this machine's tests cannot give them.
NEEDS = {
    "--launcher slurm": "a Slurm cluster: tests/test_slurm_study.py runs these options on a real one-node cluster",
    "postgresql+psycopg://": "a PostgreSQL server named db: tests/test_sweep_postgres.py runs a sweep on a real server",
}

# Shortening: what a command trains is cut, never what it does. Counts go down, epochs to 1 (an
# objective's to 5 updates), and image data sets to their first 512 training images.
SHORTER = [
    (re.compile(r"--trials \d+"), "--trials 2"),
    (re.compile(r"'seed=range\(0,\d+\)'"), "'seed=range(0,2)'"),
    (re.compile(r"\bseed=0,1,2\b"), "seed=0,1"),
    (re.compile(r"\btrainer\.epochs=\d+"), "trainer.epochs=1"),
]
TRAINING = ("dlexp run", "dlexp kfold", "dlexp sweep")
IMAGES = ("d2l_softmax", "d2l_mlp", "d2l_dropout", "d2l_lenet", "fashion_mnist", "mnist")


def shorten(command: str) -> str:
    for pattern, repl in SHORTER:
        command = pattern.sub(repl, command)
    if without_env(command).startswith(TRAINING) and "--cfg" not in command and "--resume" not in command:
        extra = ["trainer.epochs=5" if "d2l_2d" in command else "trainer.epochs=1"]
        if any(name in command for name in IMAGES):
            extra += ["dataset.num_train=512", "dataset.num_test=256"]
        if "trainer.epochs=" in command:
            extra = extra[1:]
        command = _insert(command, extra)
    return command


def _insert(command: str, extra: list[str]) -> str:
    """`extra` overrides added before a trailing comment and a following `&& ...`."""
    head, sep, tail = command.partition(" && ")
    return f"{head} {' '.join(extra)}{sep}{tail}"


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every command line of every ```bash block, comments removed."""
    out = []
    for m in re.finditer(r"```bash\n(.*?)```", text, re.S):
        first = text[: m.start()].count("\n") + 2
        for i, line in enumerate(m.group(1).splitlines()):
            command = _strip_comment(line).strip()
            if command:
                out.append((first + i, command))
    return out


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment`: a # that starts a word outside quotes (bash's rule)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def parts(command: str) -> list[str]:
    return [p.strip() for p in command.split(" && ")]


def without_env(command: str) -> str:
    """The command after its leading VAR=value assignments (`DLEXP_DATA=../shared/data dlexp run ...`)."""
    return re.sub(r"^(\w+=\S*\s+)+", "", command)


def reason_not_run(part: str) -> str | None:
    command = without_env(part)
    for start, why in NOT_RUN.items():
        if command.startswith(start):
            return why
    for marker, why in NEEDS.items():
        if marker in part:
            return f"needs {why}"
    return None


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DLEXP_DATA=str(SHARED_DATA), DLEXP_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200",
               XDG_CACHE_HOME=str(tmp / "cache"))
    return env


def _bash(command: str, cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    command = command.replace("../shared/data", str(SHARED_DATA))
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_shortening_only_lowers_counts_and_adds_limits():
    """What the slow test runs is the README's command with its counts lowered and limits appended:
    every word of the printed command is still there, or is a count that SHORTER rewrote."""
    commands = bash_blocks(README.read_text())
    assert len(commands) > 20
    counts = re.compile(r"\d+|seed=range\(0,\d+\)|seed=0,1,2|trainer\.epochs=\d+")
    for _, command in commands:
        for part in parts(command):
            short = shlex.split(shorten(part), comments=True)
            for word in shlex.split(part, comments=True):
                assert word in short or counts.fullmatch(word), (part, word)


@pytest.mark.slow
def test_every_readme_bash_block_runs_as_printed(tmp_path, data_env):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the README's commands use the shared data folder {SHARED_DATA}")
    env = _env(tmp_path)
    ran, skipped = [], []
    for line, command in bash_blocks(README.read_text()):
        for part in parts(command):
            why = reason_not_run(part)
            if why is not None:
                skipped.append(f"README:{line} `{part}`: {why}")
                continue
            short = shorten(part)
            t0 = time.perf_counter()
            res = _bash(short, tmp_path, env)
            assert res.returncode == 0, f"README:{line}: `{short}` exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            ran.append(f"{time.perf_counter() - t0:6.1f} s  README:{line} `{short}`")
    print("\n".join(["ran (seconds each):"] + ran))
    assert len(ran) >= 20, ran
    print("\n".join(["not run here:"] + skipped))
    # nothing the README's examples wrote lands outside the results folder of the scratch checkout
    stray = sorted(p.name for p in tmp_path.iterdir() if p.name not in {"results", "cache", "test-artifacts"})
    assert not stray, f"README commands left {stray} beside results/"


def test_every_dlexp_example_in_the_readme_parses_in_bash():
    """The `dlexp ...` examples inside tables and text (not in blocks) parse in bash as printed: an
    unquoted `range(0,3)` or `glob(ada*)` is a syntax error there."""
    text = README.read_text()
    spans = re.findall(r"`(dlexp [^`]+)`", text)
    assert len(spans) > 20
    for span in spans:
        span = re.sub(r"<[a-z_]+>", "PLACEHOLDER", span)  # <study>, <run_id>: the reader fills them in
        res = subprocess.run(["bash", "-n", "-c", span], capture_output=True, text=True)
        assert res.returncode == 0, f"`{span}`: {res.stderr.strip()}"
        assert "(" not in re.sub(r"'[^']*'|\"[^\"]*\"", "", span), f"`{span}`: parentheses outside quotes"


def test_the_readme_s_printed_errors_are_what_dlexp_prints(tmp_path):
    """The `$ dlexp ...` examples followed by an `error:` line: run, exit 2, that line on stderr."""
    text = README.read_text()
    examples = re.findall(r"^\$ (dlexp [^\n]+)\n(error: [^\n]+)$", text, re.M)
    assert examples
    env = _env(tmp_path)
    for command, expected in examples:
        res = _bash(command + f" results_dir={tmp_path / 'results'}", tmp_path, env, timeout=120)
        assert res.returncode == 2, (command, res.stderr)
        assert res.stderr.strip() == expected, (command, res.stderr)
