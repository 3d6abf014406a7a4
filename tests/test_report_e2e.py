"""dlexp report end to end: train a 2x2 grid of tiny runs on digits, then report on them."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from test_report import invoke  # tests/ is on sys.path (pytest's default rootdir-relative import)


def test_report_on_real_runs(cli, results_dir, tmp_path):
    r = cli("run", "-m", "optimizer=sgd,adam", "seed=0,1", "trainer.epochs=2", "trainer.batch_size=512",
            "trainer.device=cpu", f"results_dir={results_dir}", "-q")
    assert r.exit_code == 0, r.output
    out = tmp_path / "report"
    r = invoke("--results-dir", str(results_dir), "--baseline", "optimizer=sgd", "--target", "val/acc=0.5",
               "--format", "json", "--out", str(out), "--plots", "curves,lr,final", "--html", str(out / "index.html"))
    assert r.exit_code == 0, r.output
    data = json.loads((out / "report.json").read_text())
    # sgd and adam come with different default lrs, so the lr varies too and names the groups
    assert data["by"] == ["optimizer.name", "optimizer.lr"] and data["metric"] == "test/acc"
    groups = {g["optimizer.name"]: g for g in data["groups"]}
    assert set(groups) == {"adam", "sgd"}
    assert all(g["n"] == 2 and 0 <= g["mean"] <= 1 for g in groups.values())
    assert groups["adam"]["n_pairs"] == 2
    assert len(list(out.glob("*.png"))) == 4 and "data:image/png;base64," in (out / "index.html").read_text()
    r = invoke("--results-dir", str(results_dir), "--format", "csv")
    assert pd.read_csv(io.StringIO(r.stdout))["optimizer.name"].tolist() == ["adam", "sgd"]


def test_an_unwritable_out_is_one_line_exit_1_and_an_earlier_report_stays_whole(cli, results_dir, tmp_path):
    r = cli("run", "trainer.epochs=1", "trainer.batch_size=512", "trainer.device=cpu", f"results_dir={results_dir}", "-q")
    assert r.exit_code == 0, r.output
    out = tmp_path / "report"
    r = invoke("--results-dir", str(results_dir), "--out", str(out), "--format", "csv")
    assert r.exit_code == 0, r.output
    before = (out / "report.csv").read_bytes()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = invoke("--results-dir", str(results_dir), "--out", str(blocker / "sub"), "--format", "csv")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and str(blocker) in r.stderr
    assert (out / "report.csv").read_bytes() == before  # the earlier report is untouched


def test_user_input_in_an_error_is_shown_as_typed_not_as_markup(cli):
    r = cli("run", "[red]x=1")
    assert r.exit_code == 2 and "[red]x" in r.stderr


def test_sweep_trials_and_kfold_folds_keep_their_curves(cli, results_dir, tmp_path, capsys):
    """Their metrics.csv carry extra columns (study, trial / candidate, fold, repeat): all are loaded."""
    from dlexp.results import load_metrics, load_runs

    small = ["trainer.epochs=2", "trainer.batch_size=512", "trainer.device=cpu", f"results_dir={results_dir}"]
    r = cli("sweep", "sweep=lr_wd", "--trials", "3", "--pruner", "none", "-q", *small)
    assert r.exit_code == 0, r.output
    r = cli("kfold", "--folds", "2", "-q", *small)
    assert r.exit_code == 0, r.output
    capsys.readouterr()
    runs, metrics = load_runs(results_dir), load_metrics(results_dir)
    assert "warning" not in capsys.readouterr().err
    assert len(runs) == 5 and set(metrics["run_id"]) == set(runs["run_id"])
    assert {"study", "trial", "fold"} <= set(metrics.columns)
    r = invoke("--results-dir", str(results_dir), "--metric", "val/acc", "--target", "val/acc=0.05", "--format", "csv",
               "--kind", "all")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(io.StringIO(r.stdout))
    assert table["n"].sum() == 5 and "warning" not in r.stderr
    # by default the two kinds are kept apart: the kfold folds (the first kind present), and a note on the trials
    r = invoke("--results-dir", str(results_dir), "--format", "csv")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(io.StringIO(r.stdout))
    assert table["n"].sum() == 2 and set(table["kind"]) == {"fold"} and "3 sweep trials" in r.stderr


def test_a_repeated_kfold_study_is_paired_by_repeat_and_fold_and_agrees_with_kfolds_own_ranking(cli, results_dir):
    """2 candidates x 2 repeats x 2 folds, trained for real: the report pairs 4 folds (not 2 averaged
    ones), and its corrected 95% CI per candidate is the one `dlexp kfold` printed in its ranking."""
    small = ["trainer.epochs=1", "trainer.batch_size=512", "trainer.device=cpu", f"results_dir={results_dir}"]
    r = cli("kfold", "--folds", "2", "--repeats", "2", "--study", "rep", "-q", "-m", "optimizer.lr=0.01,0.1", *small)
    assert r.exit_code == 0, r.output
    r = invoke("--results-dir", str(results_dir), "--baseline", "optimizer.lr=0.01", "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["kind"] == ["fold"] and data["metric"] == "val/acc" and data["by"] == ["optimizer.lr"]
    groups = {g["optimizer.lr"]: g for g in data["groups"]}
    assert groups[0.1]["n_pairs"] == 4 and groups[0.1]["test"] == "corrected paired t"
    ranking = pd.read_csv(results_dir / "kfold" / "rep" / "summary.csv")
    for _, row in ranking.iterrows():
        lr = 0.01 if "0.01" in row["label"] else 0.1
        g = groups[lr]
        assert g["n"] == 4 and g["ci_method"] == "corrected t"
        assert (g["ci_low"], g["ci_high"]) == (pytest.approx(row["ci_low"], rel=1e-12), pytest.approx(row["ci_high"], rel=1e-12))
