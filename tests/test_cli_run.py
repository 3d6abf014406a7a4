"""`dlexp run` and `dlexp list` end to end: exit codes and the files written under tmp_path.

Most tests go through typer's CliRunner in this process (cheap); the few that need separate processes
(`dlexp list` with a wide terminal, concurrent `dlexp run`s) start real subprocesses.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONF, SMALL, conf_choices, run_dirs

RUN_FILES = {"config.yaml", "meta.json", "metrics.csv", "summary.json", "model.pt"}
METRIC_COLUMNS = ["run_id", "epoch", "step", "split", "metric", "value", "time_s"]
# a run that reliably overflows: linear regression on d2l's synthetic data with lr=1e6 (the MLP on
# digits does not, its ReLUs die first); the loss is inf by the second epoch
DIVERGING = ["dataset=synthetic", "model=linear", "optimizer.lr=1e6", "trainer.epochs=4"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def run_config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_single_run_writes_the_five_files_with_a_tidy_metrics_table(cli, results_dir):
    res = cli("run", *SMALL, f"results_dir={results_dir}")
    assert res.exit_code == 0, res.output
    (run,) = run_dirs(results_dir)
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    with open(run / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [*METRIC_COLUMNS, "examples"]  # examples seen, on every row (dlexp/train.py)
    assert rows and {r["run_id"] for r in rows} == {run.name}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    s = summary(run)
    assert s["status"] == "ok" and s["run_id"] == run.name
    assert run_config(run)["results_dir"] == str(results_dir)
    state = torch.load(run / "model.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())


def test_cfg_prints_the_composed_yaml_and_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short relative results_dir, so no line is near the terminal width
    res = cli("run", "optimizer=adam", "optimizer.lr=0.005", "results_dir=out", "--cfg")
    assert res.exit_code == 0, res.output
    printed = yaml.safe_load(res.stdout)
    assert printed["optimizer"]["name"] == "adam" and printed["optimizer"]["lr"] == 0.005
    assert printed["results_dir"] == "out"
    assert list(tmp_path.iterdir()) == []


def test_cfg_output_is_valid_yaml_for_long_values(cli, results_dir):
    long_dir = results_dir / ("x" * 100)
    res = cli("run", f"results_dir={long_dir}", "--cfg")
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.stdout)["results_dir"] == str(long_dir)
    assert not results_dir.exists()


def yaml_descriptions(group: str) -> dict[str, str]:
    """choice -> the first comment line of its file, after a `# @package` line (what `dlexp list` must show)."""
    out = {}
    for name in conf_choices(group):
        lines = (CONF / group / f"{name}.yaml").read_text().splitlines()
        first = lines[1] if lines[0].startswith("# @package") else lines[0]
        assert first.startswith("# "), f"conf/{group}/{name}.yaml has no one-line description"
        out[name] = first[2:].strip()
    return out


def listed_rows(stdout: str) -> list[list[str]]:
    """The cells of each row of a rich table (box-drawing separators)."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        if len(cells) >= 4 and cells[1:-1] != ["group", "choice", "description"]:
            rows.append(cells[1:-1])
    return rows


def test_list_shows_every_choice_of_every_group_with_its_description(cli_subprocess):
    res = cli_subprocess("list", extra_env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    rows = {(g, c): d for g, c, d in listed_rows(res.stdout)}
    for group in ("model", "dataset", "optimizer", "schedule", "trainer", "experiment", "sweep"):
        for name, description in yaml_descriptions(group).items():
            assert rows.get((group, name)) == description, (group, name)


def test_list_of_one_group_shows_exactly_its_files(cli_subprocess):
    res = cli_subprocess("list", "optimizer", extra_env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    rows = listed_rows(res.stdout)
    assert {g for g, _, _ in rows} == {"optimizer"}
    assert {c: d for _, c, d in rows} == yaml_descriptions("optimizer")


def test_a_choice_in_the_users_config_dir_is_usable(cli, results_dir, tmp_path):
    mine = tmp_path / "myconf" / "optimizer"
    mine.mkdir(parents=True)
    sgd = (CONF / "optimizer" / "sgd.yaml").read_text()
    body = "\n".join(l for l in sgd.splitlines()[1:] if not l.startswith(("lr:", "momentum:")))
    (mine / "mine.yaml").write_text(f"# my tuned SGD\n{body}\nlr: 0.037\nmomentum: 0.5\n")
    res = cli("run", "optimizer=mine", *SMALL, f"results_dir={results_dir}", "--config-dir", str(tmp_path / "myconf"))
    assert res.exit_code == 0, res.output
    (run,) = run_dirs(results_dir)
    opt = run_config(run)["optimizer"]
    assert (opt["lr"], opt["momentum"]) == (0.037, 0.5)
    assert summary(run)["final"]["train/lr"] == 0.037


def test_grid_runs_every_point_with_its_own_config(cli, results_dir):
    from dlexp.results import load_runs

    res = cli("run", "-m", "optimizer=sgd,adam", "seed=0,1", *SMALL, f"results_dir={results_dir}", "-q")
    assert res.exit_code == 0, res.output
    runs = load_runs(results_dir)
    assert len(runs) == 4
    assert sorted(zip(runs["optimizer.name"], runs["seed"])) == [("adam", 0), ("adam", 1), ("sgd", 0), ("sgd", 1)]
    assert set(runs["status"]) == {"ok"}
    # each point carries its own optimizer file, not just a renamed one
    assert sorted(runs["optimizer.lr"]) == [0.001, 0.001, 0.1, 0.1]


def test_range_sweep_expands_to_one_run_per_value(cli, results_dir):
    from dlexp.results import load_runs

    res = cli("run", "-m", "seed=range(0,3)", *SMALL, f"results_dir={results_dir}", "-q")
    assert res.exit_code == 0, res.output
    assert sorted(load_runs(results_dir)["seed"]) == [0, 1, 2]


def test_sweep_without_multirun_is_a_one_line_error(cli, results_dir):
    res = cli("run", "seed=0,1", *SMALL, f"results_dir={results_dir}")
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "seed" in res.stderr and "-m" in res.stderr
    assert run_dirs(results_dir) == []


def test_jobs_2_runs_every_point_once_with_one_thread_each(cli, results_dir):
    # with --jobs 2 this process trains too (it starts at once while the worker imports), so which
    # process ran which point is left open here; test_study's pool tests pin the workers down
    res = cli("run", "-m", "seed=0,1,2", "--jobs", "2", *SMALL, f"results_dir={results_dir}", "-q")
    assert res.exit_code == 0, res.output
    runs = run_dirs(results_dir)
    assert len(runs) == 3
    assert sorted(run_config(r)["seed"] for r in runs) == [0, 1, 2]
    assert all(summary(r)["status"] == "ok" and RUN_FILES <= {p.name for p in r.iterdir()} for r in runs)
    from dlexp.study import default_threads

    assert {json.loads((r / "meta.json").read_text())["threads"] for r in runs} == {default_threads(2)}


def test_concurrent_runs_get_distinct_complete_folders(cli_subprocess, results_dir):
    procs = [cli_subprocess("run", *SMALL, f"seed={i}", f"results_dir={results_dir}", "-q", start=True) for i in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = run_dirs(results_dir)
    assert len(runs) == 2
    assert sorted(run_config(r)["seed"] for r in runs) == [0, 1]
    for r in runs:
        assert RUN_FILES <= {p.name for p in r.iterdir()}
        assert summary(r)["status"] == "ok" and summary(r)["run_id"] == r.name


def test_divergence_is_recorded_as_data_with_exit_code_zero(cli, results_dir):
    res = cli("run", *SMALL, *DIVERGING, f"results_dir={results_dir}")
    assert res.exit_code == 0, res.output
    (run,) = run_dirs(results_dir)
    s = summary(run)
    assert s["status"] == "diverged" and s["reason"]
    assert s["epochs_completed"] < 4  # the run stopped at the first non-finite epoch
    assert RUN_FILES <= {p.name for p in run.iterdir()}


def test_a_diverged_grid_point_does_not_stop_the_others(cli, results_dir):
    from dlexp.results import load_runs

    grid = [o for o in DIVERGING if not o.startswith("optimizer.lr")]
    res = cli("run", "-m", "optimizer.lr=1e6,0.01", *SMALL, *grid, f"results_dir={results_dir}", "-q")
    assert res.exit_code == 0, res.output
    runs = load_runs(results_dir).set_index("optimizer.lr")
    assert runs.loc[1e6, "status"] == "diverged"
    assert runs.loc[0.01, "status"] == "ok" and runs.loc[0.01, "epochs_completed"] == 4


# --- bad input: each through the CLI, exit 2, one line naming the key, nothing written -----------

def bad(override: str, *expected: str, marks=()):
    """A bad-input row: the override and the words its one-line message must contain."""
    return pytest.param(override, list(expected), id=override, marks=marks)


BAD_INPUT = [
    bad("optimizer=adamx", "optimizer", *conf_choices("optimizer")),  # names every allowed choice
    bad("trainer.foo=1", "trainer.foo"),
    bad("trainer.epochs=abc", "trainer.epochs"),
    bad("optimizer.lr=0", "optimizer.lr"),
    bad("optimizer.lr=-1", "optimizer.lr"),
    bad("model.dropout=1.0", "model.dropout"),
    bad("model.dropout=-0.1", "model.dropout"),
    bad("trainer.batch_size=0", "trainer.batch_size"),
    bad("trainer.epochs=0", "trainer.epochs"),
    bad("trainer.device=cuda", "trainer.device", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="CUDA is present here, so trainer.device=cuda is valid")),
    bad("trainer.device=gpu", "trainer.device"),
    bad("model.hidden=[1", "model.hidden"),
]


@pytest.mark.parametrize("override,expected", BAD_INPUT)
def test_bad_input_is_one_line_naming_the_key_and_writes_no_run(cli, results_dir, override, expected):
    res = cli("run", *SMALL, override, f"results_dir={results_dir}")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for word in expected:
        assert word in lines[0]
    assert run_dirs(results_dir) == []


def test_debug_lets_the_traceback_through(cli, results_dir):
    from typer.testing import CliRunner

    from dlexp.cli import app
    from dlexp.errors import ConfigError

    res = CliRunner().invoke(app, ["run", *SMALL, "trainer.epochs=0", f"results_dir={results_dir}", "--debug"])
    assert isinstance(res.exception, ConfigError) and "trainer.epochs" in str(res.exception)
    assert run_dirs(results_dir) == []


def test_a_bad_grid_point_stops_the_grid_before_any_run(cli, results_dir):
    res = cli("run", "-m", "optimizer=sgd,adamx", *SMALL, f"results_dir={results_dir}")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "adamx" in res.stderr
    assert run_dirs(results_dir) == []


def test_jobs_below_one_is_a_one_line_error(cli, results_dir):
    res = cli("run", "--jobs", "0", *SMALL, f"results_dir={results_dir}")
    assert res.exit_code == 2 and "--jobs" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert run_dirs(results_dir) == []


def test_list_of_an_unknown_group_names_the_groups(cli):
    res = cli("list", "optimiser")
    assert res.exit_code == 2 and "optimiser" in res.stderr and "optimizer" in res.stderr


@pytest.mark.parametrize("body", ["name: sgd\nlr: 0.1\nlr: 0.2\n", "name: sgd\nlr: [0.1\n"], ids=["duplicate-key", "unclosed-list"])
def test_a_malformed_yaml_in_the_users_config_dir_is_a_one_line_error(cli, results_dir, tmp_path, body):
    (tmp_path / "myconf" / "optimizer").mkdir(parents=True)
    (tmp_path / "myconf" / "optimizer" / "mine.yaml").write_text("# broken\n" + body)
    res = cli("run", "optimizer=mine", *SMALL, f"results_dir={results_dir}", "--config-dir", str(tmp_path / "myconf"))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "mine.yaml" in res.stderr
    assert run_dirs(results_dir) == []
