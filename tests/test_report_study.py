"""dlexp report --study: a sweep's trials table and Optuna's history, importance and slice plots."""

from __future__ import annotations

import pandas as pd

from conftest import SMALL


def test_report_of_a_real_sweep_study_writes_table_and_three_plots(cli, tmp_path):
    results = tmp_path / "results"
    res = cli("sweep", "sweep=lr_wd", "--trials", "4", "--study", "s1", "--quiet", *SMALL, f"results_dir={results}")
    assert res.exit_code == 0, res.output
    out = tmp_path / "rep"
    res = cli("report", "--results-dir", str(results), "--study", "s1", "--out", str(out), "--html", str(tmp_path / "s.html"))
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "study_s1.csv")
    assert len(table) == 4 and set(table["state"]) <= {"COMPLETE", "PRUNED"}
    assert {"trial", "value", "optimizer.lr"} <= set(table.columns)
    for view in ("history", "importances", "slice"):
        assert (out / f"study_s1_{view}.png").stat().st_size > 1000
        assert (out / f"study_s1_{view}.svg").is_file()
    assert (tmp_path / "s.html").read_text().count("data:image/png;base64") == 3


def test_report_of_a_missing_study_is_a_one_line_error(cli, tmp_path):
    res = cli("report", "--results-dir", str(tmp_path), "--study", "nope")
    assert res.exit_code == 2 and "nope" in res.stderr and len(res.stderr.strip().splitlines()) == 1
