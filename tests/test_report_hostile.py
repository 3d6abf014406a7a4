"""dlexp report against hostile input and its own earlier output (issues 13 and 19): names that would
leave a folder, spreadsheet formulas, run folders nested too deep to read, a status that is not a
string, `$...$` in labels, file content echoed into errors, stale files beside fresh ones.

Each case is put on disk for real (files written, folders made) and the command is run through Typer.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from test_report import invoke, write_run  # tests/ is on sys.path (pytest's rootdir-relative import)

from dlexp import report as rp
from dlexp.results import load_metrics, load_runs


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def four_runs(tmp_path) -> Path:
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, f"sgd-{seed}", optimizer="sgd", seed=seed, curve=[0.5, 0.8 + 0.01 * seed])
        write_run(root, f"adam-{seed}", optimizer="adam", seed=seed, curve=[0.6, 0.85 + 0.01 * seed])
    return root


# ---------------------------------------------------------------- paths built from names


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "s1\n", "", "x" * 101, "/tmp/abs"])
def test_a_study_name_that_would_leave_its_folder_is_refused_in_one_line(four_runs, tmp_path, name):
    before = files_under(tmp_path)
    r = invoke("--results-dir", str(four_runs), "--study", name, "--out", str(tmp_path / "rep"))
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and "--study: use 1-100 letters" in r.stderr
    assert files_under(tmp_path) == before


def test_file_names_built_from_metric_names_stay_inside_the_report_folder(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        d = write_run(root, f"r{seed}", seed=seed, final=0.8)
        summary = json.loads((d / "summary.json").read_text())
        summary["final"]["test/../../../escaped"] = 0.5 + seed  # a metric name from a hand-edited summary
        (d / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "deep" / "rep"
    r = invoke("--results-dir", str(root), "--metric", "test/../../../escaped", "--plots", "final", "--out", str(out))
    assert r.exit_code == 0, r.output
    outside = {p for p in files_under(tmp_path) if out not in p.parents and root not in p.parents}
    assert outside == set()
    assert {p.suffix for p in out.iterdir()} == {".md", ".png", ".svg", ".json"}


def test_report_folder_refuses_a_file_name_with_a_path_in_it(tmp_path):
    folder = rp.ReportFolder(tmp_path / "rep")
    for bad in ("../x.png", "a/b.png", ".hidden", "/etc/passwd", ""):
        with pytest.raises(rp.ReportError):
            folder.write(bad, b"x")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "rep").exists()
    assert rp.safe_name("study_../../x y$z") == "study_..-..-x-y-z" and rp.safe_name("..") == "unnamed"


# ---------------------------------------------------------------- spreadsheet formulas


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_escaped_and_numbers_are_not(tmp_path):
    root = tmp_path / "results"
    evil = ['=HYPERLINK("http://x","y")', "+1+2", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
    for i, value in enumerate(evil):
        for seed in range(2):
            write_run(root, f"r{i}-{seed}", seed=seed, lr=-0.5, final=0.8, cfg_extra={"model.activation": value, "=x.y": "=1"})
    r = invoke("--results-dir", str(root), "--by", "model.activation,=x.y,optimizer.lr", "--format", "csv")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(io.StringIO(r.stdout), keep_default_na=False)
    assert sorted(table["model.activation"]) == sorted("'" + v for v in evil)
    assert "'=x.y" in table.columns and set(table["'=x.y"]) == {"'=1"}
    assert set(table["optimizer.lr"]) == {-0.5}  # a number, not text
    for cell in [*table.columns, *table.astype(str).to_numpy().ravel()]:
        assert not str(cell).startswith(("=", "+", "@", "\t", "\r")), cell
    assert rp.spreadsheet_safe(-3.0) == -3.0 and rp.spreadsheet_safe("-x") == "'-x" and rp.spreadsheet_safe("ok") == "ok"


# ---------------------------------------------------------------- run folders a report must skip


def test_run_folders_nested_too_deep_or_with_a_status_that_is_not_a_string_are_skipped_with_a_warning(four_runs):
    bad = {}
    d = write_run(four_runs, "deep-summary", seed=7)
    (d / "summary.json").write_text('{"status": "ok", "final": ' + "[" * 100_000 + "]" * 100_000 + "}")
    bad["deep-summary"] = "RecursionError"
    d = write_run(four_runs, "deep-config", seed=8)
    (d / "config.yaml").write_text("seed: 8\nmodel: " + "[" * 5000 + "]" * 5000 + "\n")
    bad["deep-config"] = "RecursionError"
    for name, status in (("status-int", 5), ("status-dict", {"ok": 1}), ("status-list", ["ok"]), ("status-null", None)):
        d = write_run(four_runs, name, seed=9)
        summary = json.loads((d / "summary.json").read_text())
        summary["status"] = status
        (d / "summary.json").write_text(json.dumps(summary))
        bad[name] = "status is not a string"
    d = write_run(four_runs, "fold-list", seed=10, extra={"fold": [1, 2]})
    bad["fold-list"] = "fold is not a plain value"
    r = invoke("--results-dir", str(four_runs), "--format", "csv", "--plots", "curves,lr,final", "--out",
               str(four_runs.parent / "rep"), "--baseline", "optimizer=sgd")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    warnings = [l for l in r.stderr.splitlines() if l.startswith("warning: skipping run")]
    for name, why in bad.items():
        assert any(name in l and why in l for l in warnings), (name, warnings)
    assert all(len(l) < 400 for l in warnings)
    assert (pd.read_csv(four_runs.parent / "rep" / "report.csv")["n"] == 2).all()


def test_echoes_of_file_content_in_warnings_and_errors_are_short(four_runs):
    d = write_run(four_runs, "huge", seed=3)
    summary = json.loads((d / "summary.json").read_text())
    summary["final"]["test/acc"] = "x" * 1_000_000
    (d / "summary.json").write_text(json.dumps(summary))
    d = write_run(four_runs, "many-metrics", seed=4)
    summary = json.loads((d / "summary.json").read_text())
    summary["final"].update({f"test/m{i}_{'y' * 200}": 0.1 for i in range(300)})
    (d / "summary.json").write_text(json.dumps(summary))
    r = invoke("--results-dir", str(four_runs), "--metric", "test/nope")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert any("huge" in l and "not a number" in l for l in lines)
    assert all(len(l) <= 420 for l in lines) and lines[-1].startswith("error: unknown metric")
    r = invoke("--results-dir", str(four_runs), "--by", "optimizer", "--baseline", "optimizer=" + "z" * 100_000)
    assert r.exit_code == 2 and all(len(l) <= 420 for l in r.stderr.splitlines())


# ---------------------------------------------------------------- mathtext


def test_dollar_signs_in_group_labels_are_drawn_as_typed_not_parsed_as_mathtext(tmp_path):
    root = tmp_path / "results"
    labels = [r"$\frac{$", "$x^2$", "cost $5"]
    for label in labels:
        for seed in range(2):
            write_run(root, f"{labels.index(label)}-{seed}", seed=seed, lr=0.01 * (1 + labels.index(label)),
                      curve=[0.5, 0.7 + 0.01 * seed], cfg_extra={"model.activation": label})
    out = tmp_path / "rep"
    r = invoke("--results-dir", str(root), "--by", "model.activation", "--plots", "all", "--out", str(out),
               "--html", str(out / "index.html"))
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("*.png"))) == 5
    runs, metrics = load_runs(root), load_metrics(root)
    fig = rp.plot_curves(runs, metrics, ["model.activation"], ["test/acc"])
    texts = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert sorted(texts) == sorted("activation=" + label.replace("$", r"\$") for label in labels)
    rp.figure_bytes(fig)  # draws: a mathtext parse error would raise here


# ---------------------------------------------------------------- report folders: one per report, nothing stale


def test_a_rerun_into_the_same_folder_leaves_nothing_stale_and_keeps_the_users_files(four_runs, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "curves_mine.png").write_bytes(b"mine")  # a name like dlexp's, but not written by it
    r = invoke("--results-dir", str(four_runs), "--out", str(out), "--plots", "all", "--format", "md",
               "--html", str(out / "index.html"))
    assert r.exit_code == 0, r.output
    first = {p.name for p in out.iterdir()}
    assert {"report.md", "index.html", "curves_test-acc_vs_epoch.png", "final_test-acc_per_group.svg"} <= first
    r = invoke("--results-dir", str(four_runs), "--out", str(out), "--plots", "final", "--format", "csv")
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {"notes.txt", "curves_mine.png", ".dlexp-report.json", "report.csv",
                                               "final_test-acc_per_group.png", "final_test-acc_per_group.svg"}
    assert (out / "notes.txt").read_text() == "mine" and (out / "curves_mine.png").read_bytes() == b"mine"
    assert "removed" in r.stderr and "report.md" in r.stderr


def test_without_out_each_report_gets_its_own_folder_under_the_results(four_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        r = invoke("--results-dir", str(four_runs), "--plots", "final")
        assert r.exit_code == 0, r.output
    folders = sorted((four_runs / "reports").iterdir())
    assert len(folders) == 2 and all((f / "final_test-acc_per_group.png").is_file() and (f / "report.md").is_file() for f in folders)
    assert not (tmp_path / "report").exists()  # nothing in the working directory
    r = invoke("--results-dir", str(four_runs), "--out", str(four_runs / "runs" / "sgd-0" / "config.yaml"), "--plots", "final")
    assert r.exit_code == 2 and "exists and is not a folder" in r.stderr


def test_a_study_report_says_how_many_trials_it_shows(tmp_path):
    import optuna

    sweeps = tmp_path / "results" / "sweeps"
    sweeps.mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="big", storage=f"sqlite:///{sweeps / 'big.db'}", direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    for i in range(20):
        study.add_trial(optuna.trial.create_trial(params={"lr": 10 ** (-i / 5)}, distributions=dist, value=0.5 + i / 100))
    out = tmp_path / "rep"
    r = invoke("--results-dir", str(tmp_path / "results"), "--study", "big", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "the best 15 of 20 trials" in " ".join(r.stdout.split()) and "5 more" in r.stdout
    assert "Best: trial 19, value 0.69" in r.stdout
    assert len(pd.read_csv(out / "study_big.csv")) == 20
