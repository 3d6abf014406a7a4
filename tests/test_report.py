"""dlexp report: statistics against scipy and hand-computed values, grouping, time to target, paired
comparisons, every output format, plots, and the bad inputs. Result folders are written directly
under tmp_path with known values (no training here; see test_report_e2e.py)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import typer
import yaml
from scipy import stats
from typer.testing import CliRunner

from dlexp import report as rp
from dlexp.cli.report import report
from dlexp.results import load_metrics, load_runs

# ---------------------------------------------------------------- helpers


def write_run(root: Path, run_id: str, *, optimizer="sgd", lr=0.1, seed=0, dataset="digits", status="ok",
              final=None, curve=None, metric="acc", extra=None, duration=10.0):
    """One run folder with known values. `curve`: per-epoch values of test/<metric> (and val/<metric>),
    the last one is the final value; time_s of epoch e is 2*e seconds; lr is constant."""
    d = root / "runs" / run_id
    d.mkdir(parents=True)
    cfg = {
        "model": {"name": "mlp", "hidden": [16]},
        "dataset": {"name": dataset, "split_seed": 0},
        "optimizer": {"name": optimizer, "lr": lr, **({"momentum": 0.0} if optimizer == "sgd" else {"betas": [0.9, 0.999]})},
        "trainer": {"epochs": 3, "device": "cpu"},
        "seed": seed, "results_dir": str(root), "name": None,
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    curve = list(curve if curve is not None else [final if final is not None else 0.5])
    rows = []
    for e, v in enumerate(curve, start=1):
        for split in ("val", "test"):
            rows.append(dict(run_id=run_id, epoch=e, step=10 * e, split=split, metric=metric, value=v, time_s=2.0 * e))
            rows.append(dict(run_id=run_id, epoch=e, step=10 * e, split=split, metric="loss", value=1.0 / e, time_s=2.0 * e))
        rows.append(dict(run_id=run_id, epoch=e, step=10 * e, split="train", metric="loss", value=1.0 / e, time_s=2.0 * e))
        rows.append(dict(run_id=run_id, epoch=e, step=10 * e, split="train", metric="lr", value=lr, time_s=2.0 * e))
    for r in rows:
        r.update(extra or {})
    pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    last = {f"{s}/{m}": v for s in ("val", "test") for m, v in ((metric, curve[-1]), ("loss", 1.0 / len(curve)))}
    summary = {"run_id": run_id, "status": status, "reason": None if status == "ok" else "loss is nan",
               "duration_s": duration, "epochs_completed": len(curve), "steps": 10 * len(curve),
               "final": {**last, "train/loss": 1.0 / len(curve), "train/lr": lr},
               "best": {k: (max(curve) if k.endswith(metric) else v) for k, v in last.items()}, **(extra or {})}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def invoke(*args: str):
    """Run `report` through Typer as `dlexp report ...` would (the command is registered in dlexp.cli)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("report")(report)

    @app.callback()
    def _root() -> None:
        pass

    return CliRunner().invoke(app, ["report", *args])


SGD = [0.80, 0.82, 0.79, 0.85, 0.81, 0.83]
ADAM = [0.86, 0.85, 0.88, 0.84, 0.90, 0.87]
RMS = [0.81, 0.80, 0.83, 0.86, 0.80, 0.84]


@pytest.fixture
def three_optimizers(tmp_path) -> Path:
    """sgd, adam, rmsprop at one lr, seeds 0..5, known final test/acc."""
    root = tmp_path / "results"
    for name, values in (("sgd", SGD), ("adam", ADAM), ("rmsprop", RMS)):
        for seed, v in enumerate(values):
            write_run(root, f"{name}-{seed}", optimizer=name, lr=0.01, seed=seed, curve=[v - 0.2, v - 0.1, v])
    return root


# ---------------------------------------------------------------- statistics against scipy / by hand


def test_t_interval_matches_scipy():
    x = np.array([0.91, 0.93, 0.90, 0.95, 0.92])
    lo, hi = rp.t_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (lo, hi) == pytest.approx(ref, rel=1e-12)
    assert all(math.isnan(v) for v in rp.t_interval([0.5]))


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    x = np.array([0.91, 0.93, 0.90, 0.95, 0.92, 0.88, 0.97])
    a, b = rp.bootstrap_interval(x), rp.bootstrap_interval(x)
    assert a == b
    assert x.min() <= a[0] < x.mean() < a[1] <= x.max()
    # percentile bootstrap of the mean is narrower than the data range, close to the t interval
    t = rp.t_interval(x)
    assert abs((a[1] - a[0]) - (t[1] - t[0])) < 0.5 * (t[1] - t[0])


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert rp.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN does not count in m: 0.02*2 = 0.04, 0.04*1 = 0.04
    out = rp.holm([0.02, math.nan, 0.04])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert rp.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # clipped at 1


def test_group_statistics_match_numpy_and_scipy(three_optimizers):
    runs = load_runs(three_optimizers)
    s = rp.summarize_groups(runs, ["optimizer.name"], "test/acc").set_index("group")
    for name, values in (("sgd", SGD), ("adam", ADAM), ("rmsprop", RMS)):
        x = np.array(values)
        assert s.loc[name, "n"] == 6
        assert s.loc[name, "mean"] == pytest.approx(x.mean())
        assert s.loc[name, "std"] == pytest.approx(x.std(ddof=1))
        ref = stats.t.interval(0.95, 5, loc=x.mean(), scale=stats.sem(x))
        assert (s.loc[name, "ci_low"], s.loc[name, "ci_high"]) == pytest.approx(ref)
        assert s.loc[name, "time_s"] == pytest.approx(60.0)


def test_paired_comparison_matches_ttest_rel_and_wilcoxon_with_holm(three_optimizers):
    runs = load_runs(three_optimizers)
    table, notes = rp.compare_to_baseline(runs, ["optimizer.name"], "test/acc", "optimizer.name", "sgd")
    table = table.set_index("group")
    assert set(table.index) == {"adam", "rmsprop"} and notes == []
    p_t, p_w = {}, {}
    for name, values in (("adam", ADAM), ("rmsprop", RMS)):
        x, y = np.array(values), np.array(SGD)
        d = x - y
        assert table.loc[name, "n_pairs"] == 6
        assert table.loc[name, "diff"] == pytest.approx(d.mean())
        ref = stats.t.interval(0.95, 5, loc=d.mean(), scale=stats.sem(d))
        assert (table.loc[name, "diff_ci_low"], table.loc[name, "diff_ci_high"]) == pytest.approx(ref)
        p_t[name] = stats.ttest_rel(x, y).pvalue
        p_w[name] = stats.wilcoxon(x, y).pvalue
        assert table.loc[name, "p_t"] == pytest.approx(p_t[name])
        assert table.loc[name, "p_wilcoxon"] == pytest.approx(p_w[name])
    # Holm over two tests, written out: smaller p times 2, larger p times 1, running max
    lo, hi = sorted(p_t, key=p_t.get)
    assert table.loc[lo, "p_t_holm"] == pytest.approx(min(1, 2 * p_t[lo]))
    assert table.loc[hi, "p_t_holm"] == pytest.approx(min(1, max(2 * p_t[lo], p_t[hi])))


def test_pairing_drops_unpaired_seeds_with_a_note_and_skips_wilcoxon_below_six_pairs(tmp_path):
    root = tmp_path / "results"
    for seed, v in enumerate([0.80, 0.82, 0.79, 0.85]):
        write_run(root, f"sgd-{seed}", optimizer="sgd", seed=seed, final=v)
    for seed, v in zip([0, 1, 2, 7], [0.86, 0.85, 0.88, 0.99]):  # seed 7 has no sgd partner, sgd seed 3 none either
        write_run(root, f"adam-{seed}", optimizer="adam", seed=seed, final=v)
    table, notes = rp.compare_to_baseline(load_runs(root), ["optimizer.name"], "test/acc", "optimizer.name", "sgd")
    row = table.iloc[0]
    assert row["n_pairs"] == 3
    assert row["p_t"] == pytest.approx(stats.ttest_rel([0.86, 0.85, 0.88], [0.80, 0.82, 0.79]).pvalue)
    assert math.isnan(row["p_wilcoxon"])
    assert len(notes) == 1 and "seed 7" in notes[0] and "seed 3" in notes[0]


def test_baseline_is_matched_within_the_other_grouping_keys(tmp_path):
    root = tmp_path / "results"
    for opt in ("sgd", "adam"):
        for lr in (0.01, 0.1):
            for seed in range(3):
                write_run(root, f"{opt}-{lr}-{seed}", optimizer=opt, lr=lr, seed=seed,
                          final=0.5 + (0.2 if opt == "adam" else 0) + lr + 0.01 * seed)
    by = ["optimizer.name", "optimizer.lr"]
    table, _ = rp.compare_to_baseline(load_runs(root), by, "test/acc", "optimizer.name", "sgd")
    assert dict(zip(table["group"], table["baseline"])) == {"adam lr=0.01": "sgd lr=0.01", "adam lr=0.1": "sgd lr=0.1"}
    assert table["diff"].tolist() == pytest.approx([0.2, 0.2])


# ---------------------------------------------------------------- grouping


def test_seeds_form_one_group_and_default_keys_skip_seed_noise_and_optimizer_specific_keys(tmp_path):
    root = tmp_path / "results"
    for opt in ("sgd", "adam"):
        for lr in (0.01, 0.1):
            for seed in range(3):
                write_run(root, f"{opt}-{lr}-{seed}", optimizer=opt, lr=lr, seed=seed, final=0.9)
    runs = load_runs(root)
    assert set(rp.varying_keys(runs)) == {"optimizer.lr", "optimizer.name"}  # not seed, momentum, betas, results_dir
    s = rp.summarize_groups(runs, ["optimizer.name", "optimizer.lr"], "test/acc")
    assert s["group"].tolist() == ["adam lr=0.01", "adam lr=0.1", "sgd lr=0.01", "sgd lr=0.1"]
    assert s["n"].tolist() == [3, 3, 3, 3]
    assert rp.resolve_key("optimizer", runs) == "optimizer.name"


def test_folds_group_together_and_pair_by_seed_and_fold(tmp_path):
    root = tmp_path / "results"
    for opt, base in (("sgd", 0.8), ("adam", 0.9)):
        for fold in range(3):
            write_run(root, f"{opt}-f{fold}", optimizer=opt, seed=0, final=base + 0.01 * fold, extra={"fold": fold})
    runs = load_runs(root)
    assert "fold" not in rp.varying_keys(runs)
    s = rp.summarize_groups(runs, rp.varying_keys(runs), "test/acc")
    assert s["n"].tolist() == [3, 3]
    table, notes = rp.compare_to_baseline(runs, ["optimizer.name"], "test/acc", "optimizer.name", "sgd")
    assert table["n_pairs"].tolist() == [3] and table["diff"].tolist() == pytest.approx([0.1]) and notes == []


def test_failed_runs_are_counted_and_left_out_unless_included(tmp_path):
    root = tmp_path / "results"
    for seed, v in enumerate([0.8, 0.9]):
        write_run(root, f"ok-{seed}", seed=seed, final=v)
    write_run(root, "bad-2", seed=2, final=0.1, status="diverged")
    runs = load_runs(root)
    s = rp.summarize_groups(runs, [], "test/acc").iloc[0]
    assert (s["n"], s["failed"], s["failed_detail"], s["mean"]) == (2, 1, "1 diverged", pytest.approx(0.85))
    s = rp.summarize_groups(runs, [], "test/acc", include_failed=True).iloc[0]
    assert (s["n"], s["mean"]) == (3, pytest.approx(0.6))


# ---------------------------------------------------------------- time to target


def test_time_to_target_counts_hits_and_misses(tmp_path):
    root = tmp_path / "results"
    write_run(root, "a0", optimizer="adam", seed=0, curve=[0.5, 0.86, 0.9])  # hit at epoch 2, 4 s
    write_run(root, "a1", optimizer="adam", seed=1, curve=[0.85, 0.86, 0.9])  # hit at epoch 1, 2 s (>= target)
    write_run(root, "a2", optimizer="adam", seed=2, curve=[0.5, 0.6, 0.87])  # epoch 3, 6 s
    write_run(root, "s0", optimizer="sgd", seed=0, curve=[0.5, 0.6, 0.9])  # epoch 3
    write_run(root, "s1", optimizer="sgd", seed=1, curve=[0.5, 0.6, 0.7])  # miss
    write_run(root, "s2", optimizer="sgd", seed=2, curve=[0.5, 0.6, 0.7])  # miss
    runs, metrics = load_runs(root), load_metrics(root)
    t = rp.time_to_target(runs, metrics, ["optimizer.name"], "val/acc", 0.85).set_index("group")
    assert (t.loc["adam", "target_hits"], t.loc["adam", "target_n"]) == (3, 3)
    assert t.loc["adam", "epochs_to_target"] == 2 and t.loc["adam", "s_to_target"] == 4.0
    assert t.loc["sgd", "target_hits"] == 1 and math.isinf(t.loc["sgd", "epochs_to_target"])
    # losses count down: val/loss = 1/epoch reaches 0.5 at epoch 2
    t = rp.time_to_target(runs, metrics, ["optimizer.name"], "val/loss", 0.5).set_index("group")
    assert t["epochs_to_target"].tolist() == [2.0, 2.0]


# ---------------------------------------------------------------- plots


def test_plots_have_one_line_per_group_and_log_lr_axis(tmp_path):
    root = tmp_path / "results"
    for opt in ("sgd", "adam"):
        for lr in (0.001, 0.01, 0.1):
            for seed in range(2):
                write_run(root, f"{opt}-{lr}-{seed}", optimizer=opt, lr=lr, seed=seed, curve=[0.3, 0.5 + lr, 0.6 + lr + 0.01 * seed])
    runs, metrics = load_runs(root), load_metrics(root)
    by = ["optimizer.name", "optimizer.lr"]
    summary = rp.summarize_groups(runs, by, "test/acc")
    fig = rp.plot_curves(runs, metrics, by, ["test/acc", "train/loss"], x="epoch")
    assert [len(ax.get_lines()) for ax in fig.axes] == [6, 6]
    assert fig.axes[0].get_xlabel() == "epoch" and fig.axes[0].get_legend() is None and fig.axes[1].get_legend() is not None
    fig = rp.plot_curves(runs, metrics, by, ["test/acc"], x="time_s")
    assert fig.axes[0].get_xlabel() == "wall time (seconds)"
    assert fig.axes[0].get_lines()[0].get_xdata().tolist() == [2.0, 4.0, 6.0]
    fig = rp.plot_lr(runs, metrics, by)
    assert len(fig.axes[0].get_lines()) == 6 and fig.axes[0].get_yscale() == "log"
    fig = rp.plot_sensitivity(runs, by, "test/acc")
    ax = fig.axes[0]
    assert len(ax.containers) == 2 and ax.get_xscale() == "log" and "log scale" in ax.get_xlabel()
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["adam", "sgd"]
    fig = rp.plot_final(summary, "test/acc")
    assert len(fig.axes[0].get_yticklabels()) == 6
    png = rp.save_figure(fig, tmp_path / "out", "final")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "out" / "final.svg").stat().st_size > 1000


# ---------------------------------------------------------------- the command


def test_cli_writes_every_format_parseably(three_optimizers, tmp_path):
    base = ["--results-dir", str(three_optimizers), "--by", "optimizer", "--baseline", "optimizer=sgd", "--target", "val/acc=0.8"]
    r = invoke(*base, "--format", "csv")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(io.StringIO(r.stdout))
    assert table["group"].tolist() == ["adam", "rmsprop", "sgd"]
    assert {"mean", "ci_low", "ci_high", "p_t_holm", "target_hits"} <= set(table.columns)
    r = invoke(*base, "--format", "json")
    data = json.loads(r.stdout)
    assert data["metric"] == "test/acc" and len(data["groups"]) == 3
    r = invoke(*base, "--format", "latex")
    assert r"\begin{tabular}" in r.stdout and r"p\_t\_holm" in r.stdout
    out = tmp_path / "rep"
    r = invoke(*base, "--format", "md", "--out", str(out), "--plots", "all", "--html", str(out / "r.html"))
    assert r.exit_code == 0, r.output
    assert (out / "report.md").read_text().count("\n| ") >= 3
    page = (out / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # curves x2, final, lr (sensitivity: single lr, skipped)
    assert {p.name for p in out.glob("*.png")} == {"curves_test-acc_vs_epoch.png", "curves_test-acc_vs_time.png",
                                                   "final_test-acc_per_group.png", "lr_schedule_vs_epoch.png"}


def test_cli_default_terminal_table(three_optimizers):
    r = invoke("--results-dir", str(three_optimizers))
    assert r.exit_code == 0, r.output
    assert "adam" in r.stdout and "rmsprop" in r.stdout and "95% CI" in r.stdout


def test_corrupt_run_folders_are_skipped_with_a_warning_naming_them(three_optimizers):
    bad = write_run(three_optimizers, "zz-garbage", optimizer="sgd", seed=9)
    (bad / "summary.json").write_text('{"status": "ok", "fin')
    half = write_run(three_optimizers, "zz-half", optimizer="sgd", seed=10)
    (half / "config.yaml").unlink()
    r = invoke("--results-dir", str(three_optimizers), "--format", "csv")
    assert r.exit_code == 0, r.output
    assert "zz-garbage" in r.stderr and "zz-half" in r.stderr
    assert pd.read_csv(io.StringIO(r.stdout))["n"].tolist() == [6, 6, 6]


@pytest.mark.parametrize("args, expected", [
    (["--metric", "test/f1"], ["unknown metric", "test/acc", "val/loss"]),
    (["--by", "optimizer.gamma"], ["unknown key", "optimizer.lr"]),
    (["--by", "optimizer", "--baseline", "optimizer=adagrad"], ["no group has optimizer.name=adagrad", "adam, rmsprop, sgd"]),
    (["--target", "val/acc"], ["--target"]),
    (["--plots", "violin"], ["unknown plot", "curves"]),
    (["--format", "xlsx"], ["--format"]),
])
def test_bad_options_exit_2_and_list_what_exists(three_optimizers, args, expected):
    r = invoke("--results-dir", str(three_optimizers), *args)
    assert r.exit_code == 2, r.output
    for e in expected:
        assert e in r.stderr


def test_missing_or_empty_results_dir_exits_2(tmp_path):
    r = invoke("--results-dir", str(tmp_path / "nope"))
    assert r.exit_code == 2 and "no results" in r.stderr
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    r = invoke("--results-dir", str(tmp_path / "empty"))
    assert r.exit_code == 2 and "no readable runs" in r.stderr


def test_mixing_tasks_or_datasets_is_refused(tmp_path):
    root = tmp_path / "results"
    write_run(root, "cls", dataset="digits", final=0.9)
    write_run(root, "reg", dataset="airfoil", metric="rmse", final=3.2)
    r = invoke("--results-dir", str(root))
    assert r.exit_code == 2 and "different tasks" in r.stderr and "regression" in r.stderr
    root = tmp_path / "results2"
    write_run(root, "d", dataset="digits", final=0.9)
    write_run(root, "m", dataset="mnist", final=0.95)
    r = invoke("--results-dir", str(root))
    assert r.exit_code == 2 and "different datasets" in r.stderr and "mnist" in r.stderr


def test_regression_runs_default_to_test_rmse_and_lower_is_better(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, f"r{seed}", dataset="airfoil", metric="rmse", seed=seed, curve=[9.0, 5.0, 3.0 + seed])
    runs = load_runs(root)
    assert rp.default_metric(runs) == "test/rmse"
    t = rp.time_to_target(runs, load_metrics(root), [], "val/rmse", 5.0)
    assert t["epochs_to_target"].tolist() == [2.0]
