"""`--vectorize` from the command line: the grouping line, ordinary run folders, the study engine
(claims, skip / resume / run, `dlexp status`), Ctrl-C and `--resume` of a group, K-fold studies, and
the one-line refusals. Faults are real: SIGINT goes to a real `python -m dlexp` process.

Runs here use one torch thread (`trainer.threads=1`, and OMP_NUM_THREADS=1 in subprocesses), so a
vectorized run and the same run alone can be compared to the parity tolerance (tests/test_vectorize.py).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import SMALL, run_dirs, wait_for

ONE = ["trainer.threads=1"]


def meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def by_seed(results_dir: Path) -> dict[tuple, Path]:
    """Run folders keyed by (seed, lr, impl) from their config.yaml."""
    from dlexp.config import load_run_config

    out = {}
    for d in run_dirs(results_dir):
        c = load_run_config(d / "config.yaml")
        out[(int(c.seed), float(c.optimizer.lr), c.optimizer.impl)] = d
    return out


def test_a_vectorized_grid_says_how_it_groups_and_writes_ordinary_run_folders(cli, results_dir, tmp_path):
    grid = ["-m", "seed=0,1,2", "optimizer.lr=0.1,0.05", "optimizer.impl=dlexp,torch", *SMALL, *ONE]
    res = cli("run", *grid, f"results_dir={results_dir}", "--vectorize")
    assert res.exit_code == 0, res.output
    assert "12 runs in 1 vectorized group of 6; alone: 6 (optimizer.impl=torch)" in res.stderr
    plain_dir = tmp_path / "plain"
    assert cli("run", *grid, f"results_dir={plain_dir}").exit_code == 0
    vec, plain = by_seed(results_dir), by_seed(plain_dir)
    assert vec.keys() == plain.keys() and len(vec) == 12
    for key, d in vec.items():
        p = plain[key]
        assert sorted(f.name for f in d.iterdir()) == sorted(f.name for f in p.iterdir())
        stacked = meta(d).get("group")
        assert (stacked is not None) == (key[2] == "dlexp")
        if stacked:
            assert stacked["members"] == 6 and len(stacked["runs"]) == 6 and d.name in stacked["runs"]
        a, b = pd.read_csv(p / "metrics.csv"), pd.read_csv(d / "metrics.csv")
        assert list(a.columns) == list(b.columns)
        keep = a.metric != "epoch_s"
        assert a[keep][["epoch", "step", "split", "metric"]].equals(b[keep][["epoch", "step", "split", "metric"]])
        assert ((a[keep].value - b[keep].value).abs() <= 1e-5 * a[keep].value.abs().clip(lower=1e-12)).all()
        sa, sb = summary(p), summary(d)
        assert sa.keys() == sb.keys() and sa["status"] == sb["status"] == "ok"
        wa, wb = torch.load(p / "model.pt", weights_only=True), torch.load(d / "model.pt", weights_only=True)
        assert wa.keys() == wb.keys() and all(wa[k].shape == wb[k].shape for k in wa)
    from dlexp.results import load_runs

    runs = load_runs(results_dir)
    assert len(runs) == 12 and set(runs.status) == {"ok"}
    # the same command again: every point is done
    again = cli("run", *grid, f"results_dir={results_dir}", "--vectorize")
    assert again.exit_code == 0 and "12 points: 12 done" in again.stderr and len(run_dirs(results_dir)) == 12


def test_a_diverging_member_is_recorded_diverged_and_the_others_finish(cli, results_dir):
    res = cli("run", "-m", "seed=0,1,2", "optimizer.lr=0.1,1e10", "trainer.epochs=3", "trainer.batch_size=256",
              "trainer.device=cpu", *ONE, f"results_dir={results_dir}", "--vectorize")
    assert res.exit_code == 0, res.output  # a diverged run is a result
    statuses = {k: summary(d)["status"] for k, d in by_seed(results_dir).items()}
    assert {k: s for k, s in statuses.items() if k[1] > 1} == {(s, 1e10, "dlexp"): "diverged" for s in range(3)}
    assert {k: s for k, s in statuses.items() if k[1] < 1} == {(s, 0.1, "dlexp"): "ok" for s in range(3)}
    for k, d in by_seed(results_dir).items():
        epochs = pd.read_csv(d / "metrics.csv").epoch.max()
        assert epochs == (3 if k[1] < 1 else summary(d)["epochs_completed"])


@pytest.mark.parametrize("args, message", [
    (["--vectorize"], "--vectorize: stacks the points of a study; it needs -m"),
    (["-m", "seed=0,1", "--vectorize", "--jobs", "2"], "--vectorize: trains its groups in this process; use it without --jobs"),
    (["-m", "seed=0,1", "--vectorize", "--vectorize-max", "0"], "--vectorize-max: must be >= 1, got 0"),
    (["-m", "seed=0,1", "--vectorize-max", "4"], "--vectorize-max: goes with --vectorize"),
])
def test_bad_vectorize_options_are_one_line_exit_2_with_nothing_written(cli, results_dir, args, message):
    res = cli("run", *args, *SMALL, f"results_dir={results_dir}")
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {message}"
    assert not run_dirs(results_dir)


def test_vectorize_max_splits_the_group(cli, results_dir):
    res = cli("run", "-m", "seed=range(0,5)", *SMALL, *ONE, f"results_dir={results_dir}", "--vectorize", "--vectorize-max", "2")
    assert res.exit_code == 0, res.output
    assert "5 runs in 2 vectorized groups of 2; alone: 1 (left over at the group size limit)" in res.stderr
    sizes = sorted(meta(d).get("group", {}).get("members", 1) for d in run_dirs(results_dir))
    assert sizes == [1, 2, 2, 2, 2]


def _digits_mlp_params(hidden: int) -> int:
    return 64 * hidden + hidden + hidden * 10 + 10  # digits: 64 inputs, 10 classes


# Beyond either measured limit of vectorize.pays (a member's parameters, its multiply-adds a step), on
# a CPU: the points run alone and the grouping line says why. Each case crosses one limit only.
@pytest.mark.parametrize("too_large", ["parameters", "step"])
def test_a_shape_stacking_does_not_pay_for_runs_alone_and_the_line_says_so(cli, results_dir, too_large):
    from dlexp import vectorize as vz

    if too_large == "parameters":
        hidden, batch = vz.CPU_MAX_PARAMS // 64 + 1, 16
        assert _digits_mlp_params(hidden) > vz.CPU_MAX_PARAMS and (_digits_mlp_params(hidden) - hidden - 10) * batch <= vz.CPU_MAX_STEP_WORK
    else:
        hidden = 256
        batch = vz.CPU_MAX_STEP_WORK // (_digits_mlp_params(hidden) - hidden - 10) + 1
        assert _digits_mlp_params(hidden) <= vz.CPU_MAX_PARAMS
    res = cli("run", "-m", "seed=0,1", f"model.hidden=[{hidden}]", f"trainer.batch_size={batch}", "trainer.epochs=1",
              "trainer.device=cpu", *ONE, f"results_dir={results_dir}", "--vectorize")
    assert res.exit_code == 0, res.output
    assert "2 runs, none vectorized; alone: 2 (mlp on digits: stacking does not pay on a CPU for this model and batch size)" in res.stderr
    runs = run_dirs(results_dir)
    assert len(runs) == 2 and all("group" not in meta(d) and summary(d)["status"] == "ok" for d in runs)


def test_kfold_vectorized_gives_the_fold_scores_of_kfold_alone(cli, tmp_path):
    args = ["--folds", "3", "-m", "optimizer.lr=0.1,0.05", "trainer.epochs=2", "trainer.batch_size=128", "trainer.device=cpu", *ONE]
    vec, plain = tmp_path / "vec", tmp_path / "plain"
    res = cli("kfold", *args, f"results_dir={vec}", "--vectorize")
    assert res.exit_code == 0, res.output
    assert "6 runs in 1 vectorized group of 6" in res.stderr
    assert cli("kfold", *args, f"results_dir={plain}").exit_code == 0
    fa = pd.read_csv(next((plain / "kfold").iterdir()) / "folds.csv").sort_values(["candidate", "fold"])
    fb = pd.read_csv(next((vec / "kfold").iterdir()) / "folds.csv").sort_values(["candidate", "fold"])
    assert list(fa.status) == list(fb.status) == ["ok"] * 6
    assert ((fa.score.values - fb.score.values) == 0).all() or (abs(fa.score.values - fb.score.values) <= 1e-5).all()
    sizes = {meta(d)["group"]["members"] for d in run_dirs(vec)}
    assert sizes == {6}


# ---- faults --------------------------------------------------------------------------------------




LONG = ["trainer.epochs=40", "trainer.batch_size=16", "model.hidden=[32]", "trainer.device=cpu"]


def test_ctrl_c_marks_every_member_interrupted_and_the_rerun_resumes_the_group(start, cli_subprocess, results_dir):
    grid = ["run", "-m", "seed=range(0,4)", *LONG, f"results_dir={results_dir}", "--vectorize"]
    proc = start(*grid, "--quiet")
    wait_for(lambda: len(list(results_dir.glob("runs/*/checkpoint.pt"))) == 4, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    runs = run_dirs(results_dir)
    assert len(runs) == 4
    assert {summary(d)["status"] for d in runs} == {"interrupted"}
    epochs = {torch.load(d / "checkpoint.pt", weights_only=True)["epoch"] for d in runs}
    assert len(epochs) == 1 and min(epochs) < 40  # the group checkpoints as one
    res = cli_subprocess(*grid)
    assert res.exit_code == 0, res.stderr
    assert "4 points: 0 done, 4 to resume, 0 to run" in res.stderr and "4 runs in 1 vectorized group of 4" in res.stderr
    assert run_dirs(results_dir) == runs  # resumed in their own folders: nothing run twice
    for d in runs:
        assert summary(d)["status"] == "ok" and summary(d)["epochs_completed"] == 40
        assert len(meta(d)["resumed"]) == 1
        m = pd.read_csv(d / "metrics.csv")
        assert sorted(set(m.epoch)) == list(range(1, 41)) and not m.duplicated(["epoch", "split", "metric"]).any()


def test_resume_of_one_member_continues_the_whole_group(start, cli_subprocess, results_dir):
    proc = start("run", "-m", "seed=range(0,3)", *LONG, f"results_dir={results_dir}", "--vectorize", "--quiet")
    wait_for(lambda: len(list(results_dir.glob("runs/*/checkpoint.pt"))) == 3, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    runs = run_dirs(results_dir)
    res = cli_subprocess("run", "--resume", runs[1].name, f"results_dir={results_dir}")
    assert res.exit_code == 0, res.stderr
    assert "resuming group" in res.stderr and "3 of 3 members" in res.stderr
    assert all(summary(d)["status"] == "ok" and summary(d)["epochs_completed"] == 40 for d in runs)
    again = cli_subprocess("run", "--resume", runs[0].name, f"results_dir={results_dir}")
    assert again.exit_code == 0 and "no member left to resume (3 finished)" in again.stdout


def test_status_shows_a_group_s_runs_like_any_others(cli, results_dir):
    assert cli("run", "-m", "seed=0,1,2", *SMALL, *ONE, f"results_dir={results_dir}", "--vectorize").exit_code == 0
    res = cli("status", str(results_dir))
    assert res.exit_code == 0, res.output
    assert "grid" in res.stdout and " 3 " in res.stdout


# ---- sweeps --------------------------------------------------------------------------------------


def test_a_vectorized_sweep_asks_n_trials_at_once_and_keeps_the_meaning_of_trials(cli, results_dir):
    args = ["sweep", "sweep=lr_wd", "trainer.epochs=2", "trainer.batch_size=128", "trainer.device=cpu", *ONE,
            f"results_dir={results_dir}", "--pruner", "none", "--vectorize", "3"]
    res = cli(*args, "--trials", "7")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(next((results_dir / "sweeps").glob("*.trials.csv")))
    assert len(table) == 7 and set(table.state) == {"COMPLETE"} and table.value.notna().all()
    sizes = sorted(meta(d).get("group", {}).get("members", 1) for d in run_dirs(results_dir))
    assert sizes == [1, 3, 3, 3, 3, 3, 3]  # 3 + 3 + the 1 still needed
    assert {summary(d)["trial"] for d in run_dirs(results_dir)} == set(range(7))
    again = cli(*args, "--trials", "9")  # --trials is the study's total: 2 more, one group of 2
    assert again.exit_code == 0, again.output
    table = pd.read_csv(next((results_dir / "sweeps").glob("*.trials.csv")))
    assert len(table) == 9 and len(run_dirs(results_dir)) == 9


def test_a_pruned_member_of_a_sweep_group_is_frozen_and_the_others_are_their_single_runs(tmp_path):
    """Trial 1's lr is too small to reach val/acc 0.2 by epoch 1: the threshold pruner stops it there,
    its run folder says pruned; trials 0 and 2 train all their epochs and get the values the same
    trials get trained alone."""
    import optuna

    from dlexp import sweep as sw
    from dlexp.cli.sweep import _objective

    torch.set_num_threads(1)
    values = []
    for vectorize in (3, 1):
        results = tmp_path / f"v{vectorize}"
        plan = dict(argv=["dlexp", "sweep"], study="p", space=sw.load_space("lr_wd"), target="sqlite:///x.db", metric="val/acc",
                    direction="maximize", trials=3, fixed=[*SMALL, "trainer.epochs=3", "trainer.batch_size=64", *ONE,
                                                           f"results_dir={results}"],
                    config_dir=None, cv=None, pruner="median")
        study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.2))
        for lr in (0.1, 1e-4, 0.3):
            study.enqueue_trial({"optimizer.lr": lr, "decay": "off"})
        assert sw.work(study, _objective(plan), 3, vectorize=vectorize) == "done"
        trials = sorted(study.trials, key=lambda t: t.number)
        assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
        pruned = summary(results / "runs" / trials[1].user_attrs["run_id"])
        assert pruned["status"] == "pruned" and pruned["epochs_completed"] == 1
        values.append([trials[0].value, trials[2].value])
        if vectorize == 3:
            assert meta(results / "runs" / trials[0].user_attrs["run_id"])["group"]["members"] == 3
    assert values[0] == pytest.approx(values[1], rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--vectorize", "0"], "--vectorize: the trials asked at once, must be >= 1, got 0"),
    (["--vectorize", "4", "--cv", "3"], "--vectorize: not with --cv (a trial's folds train one after another); "
                                        "use dlexp kfold --vectorize to stack folds"),
])
def test_bad_sweep_vectorize_options_are_one_line_exit_2(cli, results_dir, args, message):
    res = cli("sweep", "sweep=lr_wd", *SMALL, f"results_dir={results_dir}", *args)
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {message}"
    assert not run_dirs(results_dir)
