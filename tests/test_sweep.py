"""dlexp sweep: search-space parsing, the objective end to end on digits, resume, seeding, crash
recovery (SIGKILL mid-trial), concurrent SQLite workers, password masking and the bad-input table.

The sweep command is run through a Typer app of its own (this file does not depend on how the main
app registers it); `dlexp run` goes through the real app. Everything writes under tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlexp import sweep as sw
from dlexp.errors import ConfigError

FAST = ["trainer.epochs=2", "trainer.batch_size=256", "trainer.device=cpu", "model.hidden=[32]"]
# the same command in a separate process (for kill and concurrency tests)
HARNESS = "import typer; from dlexp.cli.sweep import sweep; app = typer.Typer(add_completion=False); app.command()(sweep); app()"


def _app() -> typer.Typer:
    from dlexp.cli.sweep import sweep

    app = typer.Typer(add_completion=False)
    app.command()(sweep)
    return app


def invoke(*args: str):
    return CliRunner().invoke(_app(), list(args))


def study_trials(db: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    except sqlite3.OperationalError as e:  # the first worker has not created the tables yet
        if "no such table" in str(e):
            return []
        raise
    finally:
        con.close()


def finished(rows) -> int:
    return sum(state in ("COMPLETE", "PRUNED") for _, state in rows)


# --------------------------------------------------------------------------------------------------
# search spaces


def test_shipped_spaces_parse_and_describe_themselves():
    spaces = sw.available()
    assert {"lr_wd", "optimizers"} <= set(spaces)
    for name, path in spaces.items():
        assert path.read_text().startswith("# "), name
        space = sw.load_space(name)
        assert space.description and space.params


def test_conditional_parameter_is_sampled_only_when_its_condition_holds():
    import optuna

    space = sw.load_space("optimizers")
    adam = sw.suggest(space, optuna.trial.FixedTrial({"optimizer": "adam", "optimizer.lr": 0.01}))
    assert adam == {"optimizer": "adam", "optimizer.lr": 0.01}
    sgd = sw.suggest(space, optuna.trial.FixedTrial({"optimizer": "sgd", "optimizer.lr": 0.1, "optimizer.momentum": 0.9}))
    assert sgd["optimizer.momentum"] == 0.9
    # the group choice comes before the fixed keys and the sampled keys
    assert sw.overrides(space, ["optimizer.nesterov=true", "model=mlp"], sgd) == [
        "model=mlp", "optimizer=sgd", "optimizer.nesterov=true", "optimizer.lr=0.1", "optimizer.momentum=0.9"]


def test_otherwise_fixes_the_key_when_the_switch_is_off():
    import optuna

    space = sw.load_space("lr_wd")
    off = sw.suggest(space, optuna.trial.FixedTrial({"optimizer.lr": 0.1, "decay": "off"}))
    assert sw.overrides(space, [], off) == ["optimizer.lr=0.1", "optimizer.weight_decay=0.0"]
    on = sw.suggest(space, optuna.trial.FixedTrial({"optimizer.lr": 0.1, "decay": "on", "optimizer.weight_decay": 1e-4}))
    assert sw.overrides(space, [], on) == ["optimizer.lr=0.1", "optimizer.weight_decay=0.0001"]


def test_int_step_and_list_choices_become_overrides():
    import optuna

    space = sw.parse_space({"params": {"trainer.batch_size": {"int": [32, 128], "step": 32},
                                       "model.hidden": [[64], [128, 128]]}}, "t")
    values = sw.suggest(space, optuna.trial.FixedTrial({"trainer.batch_size": 96, "model.hidden": "[128,128]"}))
    assert sw.overrides(space, [], values) == ["trainer.batch_size=96", "model.hidden=[128,128]"]
    assert sw.grid(space) == {"trainer.batch_size": [32, 64, 96, 128], "model.hidden": ["[64]", "[128,128]"]}


@pytest.mark.parametrize("name, fixed, params", [
    ("optimizers", ["model.hidden=[16]"], {"optimizer": "sgd", "optimizer.lr": 0.3, "optimizer.momentum": 0.9}),
    ("optimizers", ["trainer.epochs=3"], {"optimizer": "rmsprop", "optimizer.lr": 1e-3}),
    ("lr_wd", ["optimizer=adamw"], {"optimizer.lr": 0.1, "decay": "off"}),
    ("lr_wd", [], {"optimizer.lr": 0.1, "decay": "on", "optimizer.weight_decay": 1e-5}),
])
def test_the_fast_composer_gives_what_config_compose_gives(name, fixed, params):
    import optuna
    from omegaconf import OmegaConf

    from dlexp import config

    space = sw.load_space(name)
    values = sw.suggest(space, optuna.trial.FixedTrial(params))
    fast = sw.Composer(space, fixed, None)(values)
    assert OmegaConf.to_container(fast) == OmegaConf.to_container(config.compose(sw.overrides(space, fixed, values)))
    assert OmegaConf.is_struct(fast)


def test_the_fast_composer_checks_types_and_ranges():
    space = sw.parse_space({"params": {"trainer.epochs": {"float": [0.5, 2.0]}, "optimizer.lr": {"float": [-1.0, 1.0]}}}, "t")
    with pytest.raises(ConfigError, match="trainer.epochs: expected an integer"):
        sw.Composer(space, [], None)({"trainer.epochs": 1.5, "optimizer.lr": 0.1})
    with pytest.raises(ConfigError, match="optimizer.lr: must be > 0"):
        sw.Composer(space, [], None)({"trainer.epochs": 2, "optimizer.lr": -0.5})
    space = sw.parse_space({"params": {"trainer.epochz": [1, 2]}}, "t")
    with pytest.raises(ConfigError, match="trainer.epochz: unknown key"):
        sw.Composer(space, [], None)({"trainer.epochz": 1})


@pytest.mark.parametrize("params, expected", [
    ({"optimizer": ["sgd", "lbfgs"]}, "unknown choice 'lbfgs'"),
    ({"optimizer.momentum": {"float": [0, 1], "when": {"optimizer": "sgd"}}}, "not a parameter declared before it"),
    ({"optimizer": ["sgd"], "optimizer.momentum": {"float": [0, 1], "when": {"optimizer": "adam"}}}, "is not one of optimizer's choices"),
    ({"optimizer.lr": {"float": [0.0, 1.0], "log": True}}, "log scale needs low > 0"),
    ({"optimizer.lr": {"float": [1.0, 0.1]}}, "low must be < high"),
    ({"optimizer.lr": {"float": [0.1, 1.0], "otherwise": 0.1}}, "`otherwise` needs a `when`"),
    ({"optimizer.lr": {"uniform": [0.1, 1.0]}}, "exactly one of"),
    ({"optimizer": {"float": [0.1, 1.0]}}, "a config group takes a list"),
])
def test_bad_space_names_the_parameter(params, expected):
    with pytest.raises(ConfigError, match=expected):
        sw.parse_space({"params": params}, "bad")


def test_grid_refuses_a_continuous_parameter():
    with pytest.raises(ConfigError, match="optimizer.lr is continuous"):
        sw.grid(sw.load_space("lr_wd"))


def test_passwords_are_masked():
    url = "postgresql+psycopg://alice:s3cret@db.example:5432/dlexp"
    assert sw.mask(url) == "postgresql+psycopg://alice:***@db.example:5432/dlexp"
    assert "s3cret" not in sw.mask(f"could not connect: password s3cret refused for {url}", url)
    assert sw.mask("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_storage_conventions(tmp_path):
    assert sw.storage_target(None, tmp_path, "s") == ("rdb", f"sqlite:///{tmp_path.resolve()}/sweeps/s.db")
    assert sw.storage_target(f"journal:{tmp_path}/j", tmp_path, "s") == ("journal", f"{tmp_path.resolve()}/j")
    assert sw.storage_target(f"{tmp_path}/j.jsonl", tmp_path, "s")[0] == "journal"
    assert sw.storage_target(f"{tmp_path}/x.db", tmp_path, "s") == ("rdb", f"sqlite:///{tmp_path.resolve()}/x.db")
    assert sw.storage_target("postgresql+psycopg://u:p@h/d", tmp_path, "s") == ("rdb", "postgresql+psycopg://u:p@h/d")


# --------------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit 2, before any trial


@pytest.mark.parametrize("args, expected", [
    (["sweep=nope"], "sweep=nope: unknown search space; choose one of: "),
    ([], "sweep=NAME: give one search space; choose one of: "),
    (["sweep=lr_wd", "--sampler", "bayes"], "--sampler bayes: unknown; choose one of: tpe, random, grid, cmaes, qmc"),
    (["sweep=lr_wd", "--pruner", "asha"], "--pruner asha: unknown"),
    (["sweep=lr_wd", "--pruner", "wilcoxon"], "--pruner wilcoxon: compares per-fold scores, so it needs --cv K"),
    (["sweep=lr_wd", "--metric", "val/rmse"], "--metric val/rmse: not a metric of digits (classification); choose one of: val/loss, val/acc"),
    (["sweep=lr_wd", "--trials", "0"], "--trials: must be >= 1, got 0"),
    (["sweep=lr_wd", "--cv", "3", "--pruner", "wilcoxon"], "--pruner wilcoxon: needs --cv 5 or more to ever prune (got --cv 3)"),
    (["sweep=lr_wd", "--cv", "5000"], "--cv: 5000 folds need at least 5000 samples"),
    (["sweep=lr_wd", "--storage", "journal:/proc/no/x.log"], "--storage journal:/proc/no/x.log: "),
    (["sweep=lr_wd", "--seed", "-1"], "--seed: must be in [0, 2**32), got -1"),
    (["sweep=lr_wd", "--seed", "4294967296"], "--seed: must be in [0, 2**32), got 4294967296"),
    (["sweep=lr_wd", "--sampler", "grid"], "--sampler grid: optimizer.lr is continuous"),
    (["sweep=lr_wd", "optimizer.lr=0.1"], "optimizer.lr: fixed on the command line (optimizer.lr=0.1) and searched by sweep=lr_wd"),
    (["sweep=lr_wd", "trainer.epochz=3"], "trainer.epochz: unknown key"),
    (["sweep=lr_wd", "--storage", "postgresql+psycopg://bob:hunter22@127.0.0.1:1/x"], "bob:***@127.0.0.1:1/x"),
    (["sweep=lr_wd", "--storage", "sqlite://"], "--storage sqlite://: give a SQLite file"),
    (["sweep=lr_wd", "--storage", "sqlite:///:memory:"], "give a SQLite file"),
    (["sweep=lr_wd", "--storage", "sqlite:////dev/null/x.db"], "cannot make the folder of /dev/null/x.db"),
    (["sweep=lr_wd", "--storage", "/dev/null/x.db"], "cannot make the folder of /dev/null/x.db"),
    (["sweep=lr_wd", "--storage", "journal:/dev/null/x.log"], "cannot make the folder of /dev/null/x.log"),
    (["sweep=lr_wd", "--storage", "postgresql+psycopg://bob:hun@ter22@127.0.0.1:1/x"], "bob:***@127.0.0.1:1/x: the password holds an unencoded '@'"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, tmp_path):
    res = invoke(*args, f"results_dir={tmp_path}", "--quiet")
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], res.output
    assert "hunter22" not in res.output and "ter22" not in res.output
    assert not [d for d in (tmp_path / "runs").glob("*") if d.is_dir()]


# --------------------------------------------------------------------------------------------------
# end to end


def test_small_sweep_writes_runs_trials_table_and_a_best_config_dlexp_run_accepts(tmp_path):
    import pandas as pd

    from dlexp.cli import app as main_app

    res = invoke("sweep=lr_wd", *FAST, f"results_dir={tmp_path}", "--trials", "4", "--study", "e2e", "--seed", "1")
    assert res.exit_code == 0, res.output
    sweeps = tmp_path / "sweeps"
    table = pd.read_csv(sweeps / "e2e.trials.csv")
    assert list(table.columns[:3]) == ["study", "trial", "state"]
    assert {"optimizer.lr", "decay", "value", "duration_s"} <= set(table.columns)
    assert len(table) == 4 and set(table.state) == {"COMPLETE"}
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 4
    metrics = pd.read_csv(runs[0] / "metrics.csv")
    assert set(metrics.study) == {"e2e"} and metrics.trial.nunique() == 1
    meta = json.loads((runs[0] / "meta.json").read_text())
    assert meta["sweep"]["study"] == "e2e"

    best = sw.best_trial(__import__("optuna").load_study(study_name="e2e", storage=f"sqlite:///{sweeps / 'e2e.db'}"))
    assert best.value == table.value.max()
    import yaml

    summary = yaml.safe_load((sweeps / "e2e.best.yaml").read_text())
    assert summary["trial"] == best.number and summary["command"].startswith("dlexp run ")
    # the experiment file reproduces the best trial's config exactly, with no other override
    rerun = CliRunner().invoke(main_app, ["run", "--config-dir", str(sweeps), "experiment=e2e", "--cfg"])
    assert rerun.exit_code == 0, rerun.output
    best_cfg = (tmp_path / "runs" / summary["run_id"] / "config.yaml").read_text()
    assert yaml.safe_load(rerun.stdout) == yaml.safe_load(best_cfg)
    again = CliRunner().invoke(main_app, ["run", "--config-dir", str(sweeps), "experiment=e2e", "--quiet"])
    assert again.exit_code == 0, again.output
    rows = pd.read_csv(sorted((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)[-1] / "metrics.csv")
    final = rows[(rows.split == "val") & (rows.metric == "acc")].value.iloc[-1]
    assert final == pytest.approx(best.value, abs=1e-6)

    # resume: the same command with --trials 6 adds exactly two
    res = invoke("sweep=lr_wd", *FAST, f"results_dir={tmp_path}", "--trials", "6", "--study", "e2e", "--seed", "1", "--quiet")
    assert res.exit_code == 0, res.output
    assert finished(study_trials(sweeps / "e2e.db")) == 6
    res = invoke("sweep=lr_wd", *FAST, f"results_dir={tmp_path}", "--trials", "6", "--study", "e2e", "--quiet")
    assert res.exit_code == 0 and len(study_trials(sweeps / "e2e.db")) == 6


def test_cv_optimizes_the_mean_over_folds_with_one_run_per_fold(tmp_path):
    import pandas as pd

    res = invoke("sweep=lr_wd", "trainer.epochs=1", "trainer.batch_size=512", "model.hidden=[16]", f"results_dir={tmp_path}",
                 "--trials", "2", "--cv", "2", "--pruner", "median", "--study", "cv", "--quiet")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "sweeps" / "cv.trials.csv")
    assert len(table) == 2 and set(table.state) == {"COMPLETE"}
    runs = [json.loads((d / "summary.json").read_text()) for d in (tmp_path / "runs").iterdir()]
    assert sorted(r["trial"] for r in runs) == [0, 0, 1, 1]


def test_a_journal_file_storage_works(tmp_path):
    import optuna

    journal = tmp_path / "study.jsonl"
    res = invoke("sweep=lr_wd", "trainer.epochs=1", "trainer.batch_size=512", "model.hidden=[16]", f"results_dir={tmp_path}",
                 "--trials", "2", "--storage", str(journal), "--study", "j", "--quiet")
    assert res.exit_code == 0, res.output
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    assert [t.state.name for t in optuna.load_study(study_name="j", storage=storage).trials] == ["COMPLETE"] * 2


def test_same_seed_gives_the_same_sequence_of_trials(tmp_path):
    import optuna

    def params(study: str, seed: str):
        res = invoke("sweep=optimizers", "trainer.epochs=1", "trainer.batch_size=512", "model.hidden=[16]",
                     f"results_dir={tmp_path}", "--trials", "3", "--study", study, "--seed", seed, "--quiet")
        assert res.exit_code == 0, res.output
        s = optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path / 'sweeps' / (study + '.db')}")
        return [t.params for t in s.trials]

    first, second, other = params("a", "7"), params("b", "7"), params("c", "8")
    assert first == second
    assert first != other


def test_diverged_trials_are_pruned_and_bad_values_fail_with_their_reason_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    # every value composes (the probes before the first trial pass), but Nesterov without momentum is
    # refused by the optimizer itself, inside the trial
    (tmp_path / "conf" / "sweep" / "wild.yaml").write_text(
        "# lr so large that SGD diverges, or sane; momentum 0 is invalid with nesterov\nparams:\n"
        "  optimizer.lr: [1.0e+12, 0.1]\n  optimizer.momentum: [0.0, 0.9]\n  optimizer.nesterov: [true]\n")
    res = invoke("sweep=wild", *FAST, f"results_dir={tmp_path}", "--config-dir", str(tmp_path / "conf"),
                 "--trials", "5", "--sampler", "grid", "--study", "wild", "--pruner", "none")
    assert res.exit_code == 0, res.output
    import pandas as pd

    table = pd.read_csv(tmp_path / "sweeps" / "wild.trials.csv")
    failed = table[table["optimizer.momentum"] == 0]
    assert list(failed.state) == ["FAIL", "FAIL"] and failed.reason.str.contains("Nesterov momentum requires a momentum").all()
    assert set(failed.status) == {"failed"}
    diverged = table[(table["optimizer.lr"] > 1) & (table["optimizer.momentum"] > 0)]
    assert len(diverged) == 1 and set(diverged.state) == {"PRUNED"}
    assert diverged.reason.str.contains("train loss became nan").all()
    assert list(table[(table["optimizer.lr"] == 0.1) & (table["optimizer.momentum"] > 0)].state) == ["COMPLETE"]
    assert len(table) == 4  # the grid has four points: the sweep stops there, short of --trials 5
    assert "grid is exhausted" in res.output


def test_a_pruned_run_says_pruned_in_its_summary(tmp_path):
    import optuna

    from dlexp import config
    from dlexp.cli.sweep import _objective

    space = sw.load_space("lr_wd")
    plan = dict(argv=["dlexp", "sweep"], study="p", space=space, target="sqlite:///x.db", metric="val/acc", direction="maximize",
                trials=1, fixed=[*FAST, f"results_dir={tmp_path}"], config_dir=None, cv=None, pruner="median")
    objective = _objective(plan)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # prunes every epoch
    study.enqueue_trial({"optimizer.lr": 0.1, "decay": "off"})
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state.name == "PRUNED" and trial.user_attrs["epochs"] == 1
    summary = json.loads((tmp_path / "runs" / trial.user_attrs["run_id"] / "summary.json").read_text())
    assert summary["status"] == "pruned" and "pruned after epoch 1" in summary["reason"]
    assert config.compose(trial.user_attrs["overrides"]).optimizer.lr == 0.1


# --------------------------------------------------------------------------------------------------
# several processes


def _spawn(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", HARNESS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def test_concurrent_sqlite_workers_finish_exactly_n_trials_without_lock_errors(tmp_path):
    args = ["sweep=lr_wd", "trainer.epochs=1", "trainer.batch_size=512", "model.hidden=[16]", f"results_dir={tmp_path}",
            "--trials", "6", "--study", "conc", "--quiet"]
    # three workers in two commands: one with --jobs 2 (two processes), one plain
    procs = [_spawn(args + ["--seed", str(i)] + (["--jobs", "2"] if i == 0 else [])) for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (o, e) in zip(procs, outputs):
        assert p.returncode == 0, o + e
        assert "locked" not in (o + e).lower()
    rows = study_trials(tmp_path / "sweeps" / "conc.db")
    assert finished(rows) == 6
    assert not [r for r in rows if r[1] in ("RUNNING", "WAITING")]
    runs = [json.loads((d / "summary.json").read_text()) for d in (tmp_path / "runs").iterdir()]
    numbers = sorted(r["trial"] for r in runs if r["status"] in ("ok", "pruned", "diverged"))
    assert numbers == sorted({n for n, s in rows if s in ("COMPLETE", "PRUNED")})  # one run per finished trial


def test_a_killed_worker_s_trial_is_retried_and_the_study_finishes(tmp_path):
    args = ["sweep=lr_wd", "trainer.epochs=40", "trainer.batch_size=128", "model.hidden=[32]", f"results_dir={tmp_path}",
            "--trials", "2", "--study", "kill", "--heartbeat", "1", "--pruner", "none", "--quiet"]
    db = tmp_path / "sweeps" / "kill.db"
    proc = _spawn(args)
    deadline = time.time() + 60
    # wait until a trial is running and has trained an epoch or two: a run folder with metrics and no
    # summary yet (a finished first trial's folder would not do: the kill could fall between two trials)
    in_progress = lambda: [d for d in (tmp_path / "runs").glob("*") if (d / "metrics.csv").exists() and not (d / "summary.json").exists()]
    while time.time() < deadline:
        if db.exists() and any(s == "RUNNING" for _, s in study_trials(db)) and in_progress():
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("no trial started: " + "".join(proc.communicate()))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(s == "RUNNING" for _, s in study_trials(db))
    # the same command again (the same study): waits out the dead trial's 3 s grace, retries it, runs the second
    rerun = subprocess.run([sys.executable, "-c", HARNESS, *args], capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = study_trials(db)
    assert finished(rows) == 2
    assert [s for _, s in rows].count("FAIL") == 1 and "RUNNING" not in [s for _, s in rows]


def test_the_command_module_imports_neither_torch_nor_optuna():
    code = "import sys, dlexp.cli.sweep; print(sorted(m for m in ('torch', 'optuna') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("param, expected", [
    ("optimizer.bogus: {float: [0.1, 1]}", "optimizer.bogus: unknown key"),
    ("optimizer.lr: {categorical: [a, b]}", "optimizer.lr: expected a number, got 'a'"),
    ("model.hidden: [[64], [0]]", "model.hidden: expected a list of positive integers"),
    ("optimizer.lr: {float: [.nan, 1]}", "optimizer.lr: float bounds must be finite"),
    ("trainer.batch_size: {int: [0, 64]}", "trainer.batch_size: must be >= 1"),
])
def test_a_space_whose_values_a_config_refuses_is_refused_before_any_trial(param, expected, tmp_path):
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    (tmp_path / "conf" / "sweep" / "mine.yaml").write_text(f"params:\n  {param}\n")
    res = invoke("sweep=mine", "--config-dir", str(tmp_path / "conf"), "trainer.epochs=1", f"results_dir={tmp_path / 'r'}", "--quiet")
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], res.output
    assert not (tmp_path / "r" / "runs").exists() or not list((tmp_path / "r" / "runs").iterdir())


def test_probes_touch_every_bound_and_choice_with_when_conditions_met():
    space = sw.parse_space({"params": {
        "optimizer": ["sgd", "adam"],
        "optimizer.momentum": {"float": [0.0, 0.9], "when": {"optimizer": "sgd"}},
        "optimizer.lr": {"float": [1e-4, 1.0], "log": True},
    }}, "t")
    got = sw.probes(space)
    seen = {(k, v) for values in got for k, v in values.items()}
    assert {("optimizer", "sgd"), ("optimizer", "adam"), ("optimizer.momentum", 0.0), ("optimizer.momentum", 0.9),
            ("optimizer.lr", 1e-4), ("optimizer.lr", 1.0)} <= seen
    assert all("optimizer.momentum" not in v or v["optimizer"] == "sgd" for v in got)


# --------------------------------------------------------------------------------------------------
# round two: secrets, huge spaces, a storage that fills up, orphaned workers


@pytest.mark.parametrize("url, secret", [
    ("postgresql+psycopg://alice:s3cret@db.example:5432/dlexp", "s3cret"),
    ("postgresql+psycopg://alice:p@ss:w/rd@db.example/dlexp", "p@ss:w/rd"),  # unencoded: up to the last '@'
    ("postgresql+psycopg://alice:p%40ss%2Fw@db.example/dlexp", "p%40ss%2Fw"),
    ("postgresql+psycopg://db.example/dlexp?user=alice&password=hunter2x&sslmode=require", "hunter2x"),
    ("mysql+pymysql://db.example/dlexp?passwd=hunter2x", "hunter2x"),
    ("postgresql+psycopg://db.example/dlexp?sslpassword=hunter2x", "hunter2x"),
    ("postgresql+psycopg://db.example/dlexp?PWD=hunter2x", "hunter2x"),
    ("postgresql+psycopg://db.example/dlexp?token=hunter2x&x=1", "hunter2x"),
    ("mssql+pyodbc://?odbc_connect=DRIVER%3D%7BODBC%7D%3BUID%3Dsa%3BPWD%3Dhunter2x%3B", "hunter2x"),
])
def test_every_form_of_a_secret_in_a_storage_url_is_masked(url, secret):
    from urllib.parse import unquote

    masked = sw.mask(url)
    assert secret not in masked and "***" in masked and "db.example" in masked or "odbc" in url
    # a driver's message that repeats the secret, raw or decoded, is masked where the URL is known
    said = f"connection to {url} failed: password {unquote(secret)} rejected ({secret})"
    assert secret not in sw.mask(said, url) and unquote(secret) not in sw.mask(said, url)


def test_a_password_in_the_storage_url_is_neither_printed_nor_written_anywhere(tmp_path):
    secret = "hunter2xyz"
    url = f"sqlite:///{tmp_path / 'study.db'}?password={secret}"  # the sqlite driver ignores it, with a warning
    proc = subprocess.run([sys.executable, "-m", "dlexp", "sweep", "sweep=lr_wd", *FAST, f"results_dir={tmp_path / 'r'}",
                           "--trials", "2", "--storage", url, "--study", "masked"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert secret not in proc.stdout + proc.stderr
    written = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert len(written) >= 10  # two run folders and the sweep outputs
    assert not [p for p in written if secret.encode() in p.read_bytes()]
    meta = json.loads(next((tmp_path / "r" / "runs").glob("*/meta.json")).read_text())
    assert "password=***" in " ".join(meta["command"]) and meta["sweep"]["storage"].endswith("password=***")


def test_a_huge_categorical_or_grid_is_refused_at_once(tmp_path):
    def space(name: str, body: str) -> str:
        folder = tmp_path / name
        (folder / "sweep").mkdir(parents=True)
        (folder / "sweep" / f"{name}.yaml").write_text(f"# {name}\nparams:\n  seed: {body}\n")
        return str(folder)

    res = invoke("sweep=huge", *FAST, f"results_dir={tmp_path}", "--config-dir",
                 space("huge", "[" + ",".join(map(str, range(10**6))) + "]"))
    assert res.exit_code == 2 and "huge.yaml: larger than 1 MiB" in res.output, res.output  # 6.9 MB of YAML
    res = invoke("sweep=many", *FAST, f"results_dir={tmp_path}", "--config-dir",
                 space("many", "[" + ",".join(map(str, range(10**4))) + "]"))
    assert res.exit_code == 2 and "10,000 choices, more than 1,000" in res.output, res.output
    res = invoke("sweep=wide", *FAST, f"results_dir={tmp_path}", "--config-dir", space("wide", "{int: [0, 1000000000]}"),
                 "--sampler", "grid")
    assert res.exit_code == 2 and "more than 100,000 points" in res.output, res.output


@pytest.mark.slow
def test_a_storage_disk_that_fills_up_is_one_line_and_exit_1(tmp_path):
    point = tmp_path / "disk"
    point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], capture_output=True).returncode:
        pytest.skip("mount is not permitted here")
    try:
        args = ["sweep=lr_wd", "trainer.epochs=1", "trainer.batch_size=512", "model.hidden=[8]", f"results_dir={tmp_path / 'r'}",
                "--storage", str(point / "s.db"), "--pruner", "none", "--sampler", "random"]
        first = subprocess.run([sys.executable, "-m", "dlexp", "sweep", *args, "--trials", "1"], capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # the rest of the disk but 160 KiB: the study opens, then its writes run out of room
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            os.ftruncate(fd, os.fstat(fd).st_size - 160 * 1024)
        finally:
            os.close(fd)
        full = subprocess.run([sys.executable, "-m", "dlexp", "sweep", *args, "--trials", "200", "--quiet"],
                              capture_output=True, text=True, timeout=600)
        assert full.returncode == 1, full.stdout + full.stderr
        lines = [l for l in full.stderr.splitlines() if l.strip() and "Warning" not in l and not l.startswith(" ")]
        assert len(lines) == 1 and "storage" in lines[0] and "full" in lines[0] and "Traceback" not in full.stderr, full.stderr
        assert finished(study_trials(point / "s.db")) >= 1  # what was written stays
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_the_workers_of_a_sweep_die_with_their_parent_even_after_kill_9(tmp_path):
    args = ["sweep=lr_wd", "trainer.epochs=200", "trainer.batch_size=64", "model.hidden=[32]", f"results_dir={tmp_path}",
            "--trials", "4", "--jobs", "2", "--pruner", "none", "--quiet"]
    parent = subprocess.Popen([sys.executable, "-m", "dlexp", "sweep", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    runs = lambda: [d for d in (tmp_path / "runs").glob("*") if (d / "metrics.csv").exists()]
    deadline = time.time() + 180
    while len(runs()) < 2:
        assert parent.poll() is None and time.time() < deadline, "two trials never started"
        time.sleep(0.2)
    # the pool's processes: two workers (and, with spawn, multiprocessing's resource tracker)
    workers = [c for c in _children(parent.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.communicate()
    deadline = time.time() + 60
    while any(Path(f"/proc/{w}").exists() and "spawn_main" in Path(f"/proc/{w}/cmdline").read_text(errors="ignore")
              for w in workers):
        if time.time() > deadline:
            for w in workers:
                os.kill(w, signal.SIGKILL)
            pytest.fail("a worker outlived its parent by a minute")
        time.sleep(0.2)
    # their trials ended as interrupted, each run folder with a summary saying so
    statuses = [json.loads((d / "summary.json").read_text())["status"] for d in runs() if (d / "summary.json").exists()]
    assert statuses.count("interrupted") == 2



def test_the_live_view_shows_each_running_trials_epoch_and_an_eta_from_the_finished_ones():
    import datetime as dt

    import optuna
    from optuna.trial import TrialState, create_trial

    from dlexp.cli.sweep import running_line, sweep_eta

    study = optuna.create_study()
    t0 = dt.datetime(2026, 1, 1, 12, 0, 0)
    for i, seconds in enumerate([30, 50]):  # two finished trials: 40 s on average
        done = create_trial(state=TrialState.COMPLETE, value=0.1 * i, params={"lr": 0.1}, distributions={
            "lr": optuna.distributions.FloatDistribution(0.01, 1.0)})
        done.datetime_start, done.datetime_complete = t0, t0 + dt.timedelta(seconds=seconds)
        study.add_trial(done)
    running = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 1.0)})
    running.set_user_attr("planned", ["epoch", 20])
    running.report(0.5, 1)
    running.report(0.4, 3)
    trials = study.get_trials(deepcopy=False)
    line = running_line(next(t for t in trials if t.state == TrialState.RUNNING))
    assert line.startswith("epoch 3/20") and "lr=" in line
    # 5 left, one running at a time: 5 rounds of the 40 s mean
    assert sweep_eta(trials, 5) == "about 3 min"  # 200 s
    assert sweep_eta(trials, 1) == "about 40 s"
    assert sweep_eta(trials, 0) is None
    folds = study.ask()
    folds.set_user_attr("planned", ["fold", 5])
    folds.report(0.3, 0)
    folds.report(0.3, 1)  # folds are reported from 0: two of five done
    assert running_line(study.get_trials(deepcopy=False)[-1]).startswith("fold 2/5")
    # two running at once: ceil(5 / 2) = 3 rounds of 40 s
    assert sweep_eta(study.get_trials(deepcopy=False), 5) == "about 2 min"


def test_without_heartbeats_a_worker_waits_for_a_peers_running_trial_but_not_for_an_older_one():
    # journal storages have no heartbeat: a RUNNING trial may be a live peer's (a Slurm or --jobs worker
    # started with this one) or a dead process's. A worker that stopped at once on a peer's last
    # trial exited 1 while its peer was finishing the study (tests/test_slurm.py saw it).
    import datetime as dt

    import optuna

    from dlexp.sweep import _peers_running

    study = optuna.create_study()
    before = dt.datetime.now() - dt.timedelta(seconds=1)
    study.ask()  # RUNNING from now on
    after = dt.datetime.now() + dt.timedelta(seconds=1)
    assert _peers_running(study, began=before, waited_s=0.0)  # started after this worker: a peer's, wait
    assert not _peers_running(study, began=after, waited_s=0.0)  # older than this worker: maybe dead, stop
    assert not _peers_running(study, began=before, waited_s=61.0)  # a peer that never ends: stop after 60 s
