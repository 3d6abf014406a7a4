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
              final=None, curve=None, metric="acc", extra=None, duration=10.0, cfg_extra=None, lrs=None, val=True,
              test=True):
    """One run folder with known values. `curve`: per-epoch values of val/<metric> and test/<metric>
    (the last one is the final value); time_s of epoch e is 2*e seconds, step 10*e, examples 100*e;
    lr is constant unless `lrs` gives it per epoch. `extra`: summary and metrics columns (study, fold,
    trial, ...); `cfg_extra`: config keys. Without `val` (`test`), the run has no validation (test) split."""
    d = root / "runs" / run_id
    d.mkdir(parents=True)
    cfg = {
        "model": {"name": "mlp", "hidden": [16]},
        "dataset": {"name": dataset, "split_seed": 0},
        "optimizer": {"name": optimizer, "lr": lr, **({"momentum": 0.0} if optimizer == "sgd" else {"betas": [0.9, 0.999]})},
        "trainer": {"epochs": 3, "device": "cpu"},
        "seed": seed, "results_dir": str(root), "name": None,
    }
    for key, value in (cfg_extra or {}).items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    curve = list(curve if curve is not None else [final if final is not None else 0.5])
    lrs = list(lrs) if lrs is not None else [lr] * len(curve)
    splits = ("val",) * val + ("test",) * test
    rows = []
    for e, v in enumerate(curve, start=1):
        at = dict(run_id=run_id, epoch=e, step=10 * e, time_s=2.0 * e, examples=100 * e)
        for split in splits:
            rows.append(dict(at, split=split, metric=metric, value=v))
            rows.append(dict(at, split=split, metric="loss", value=1.0 / e))
        rows.append(dict(at, split="train", metric=metric, value=v + 0.05))
        rows.append(dict(at, split="train", metric="loss", value=1.0 / e))
        rows.append(dict(at, split="train", metric="lr", value=lrs[e - 1]))
    for r in rows:
        r.update(extra or {})
    pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    from dlexp.train import summarize

    summary = {"run_id": run_id, "status": status, "reason": None if status == "ok" else "loss is nan",
               "duration_s": duration, "epochs_completed": len(curve), "steps": 10 * len(curve),
               **summarize([r for r in rows]), **(extra or {})}
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


# 7 seeds: with Holm over 2 comparisons, Wilcoxon's signed-rank test can reach p < 0.05 from 7 pairs
SGD = [0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.78]
ADAM = [0.86, 0.85, 0.88, 0.84, 0.90, 0.87, 0.89]
RMS = [0.81, 0.80, 0.83, 0.86, 0.80, 0.84, 0.82]


@pytest.fixture
def three_optimizers(tmp_path) -> Path:
    """sgd, adam, rmsprop at one lr, seeds 0..6, known final test/acc."""
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
    # NaN counts in m (a comparison was made) and ranks last: 0.02*3 = 0.06, 0.04*2 = 0.08
    out = rp.holm([0.02, math.nan, 0.04])
    assert out[0] == pytest.approx(0.06) and math.isnan(out[1]) and out[2] == pytest.approx(0.08)
    assert rp.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # clipped at 1


def test_group_statistics_match_numpy_and_scipy(three_optimizers):
    runs = load_runs(three_optimizers)
    s = rp.summarize_groups(runs, ["optimizer.name"], "test/acc").set_index("group")
    for name, values in (("sgd", SGD), ("adam", ADAM), ("rmsprop", RMS)):
        x = np.array(values)
        assert s.loc[name, "n"] == 7 and s.loc[name, "kind"] == "run" and s.loc[name, "ci_method"] == "t"
        assert s.loc[name, "mean"] == pytest.approx(x.mean())
        assert s.loc[name, "std"] == pytest.approx(x.std(ddof=1))
        ref = stats.t.interval(0.95, 6, loc=x.mean(), scale=stats.sem(x))
        assert (s.loc[name, "ci_low"], s.loc[name, "ci_high"]) == pytest.approx(ref)
        assert s.loc[name, "time_s"] == pytest.approx(70.0)


def test_paired_comparison_matches_ttest_rel_and_wilcoxon_with_holm(three_optimizers):
    runs = load_runs(three_optimizers)
    table, notes = rp.compare_to_baseline(runs, ["optimizer.name"], "test/acc", {"optimizer.name": "sgd"})
    table = table.set_index("group")
    assert set(table.index) == {"adam", "rmsprop"} and notes == []
    p_t, p_w = {}, {}
    for name, values in (("adam", ADAM), ("rmsprop", RMS)):
        x, y = np.array(values), np.array(SGD)
        d = x - y
        assert table.loc[name, "n_pairs"] == 7 and table.loc[name, "test"] == "paired t"
        assert table.loc[name, "diff"] == pytest.approx(d.mean())
        ref = stats.t.interval(0.95, 6, loc=d.mean(), scale=stats.sem(d))
        assert (table.loc[name, "diff_ci_low"], table.loc[name, "diff_ci_high"]) == pytest.approx(ref)
        p_t[name] = stats.ttest_rel(x, y).pvalue
        p_w[name] = stats.wilcoxon(x, y).pvalue
        assert table.loc[name, "p_t"] == pytest.approx(p_t[name])
        assert table.loc[name, "p_wilcoxon"] == pytest.approx(p_w[name])
    # Holm over two tests, written out: smaller p times 2, larger p times 1, running max
    lo, hi = sorted(p_t, key=p_t.get)
    assert table.loc[lo, "p_t_holm"] == pytest.approx(min(1, 2 * p_t[lo]))
    assert table.loc[hi, "p_t_holm"] == pytest.approx(min(1, max(2 * p_t[lo], p_t[hi])))


def test_pairing_drops_unpaired_seeds_with_a_note_and_says_why_wilcoxon_is_left_out(tmp_path):
    root = tmp_path / "results"
    for seed, v in enumerate([0.80, 0.82, 0.79, 0.85]):
        write_run(root, f"sgd-{seed}", optimizer="sgd", seed=seed, final=v)
    for seed, v in zip([0, 1, 2, 7], [0.86, 0.85, 0.88, 0.99]):  # seed 7 has no sgd partner, sgd seed 3 none either
        write_run(root, f"adam-{seed}", optimizer="adam", seed=seed, final=v)
    table, notes = rp.compare_to_baseline(load_runs(root), ["optimizer.name"], "test/acc", {"optimizer.name": "sgd"})
    row = table.iloc[0]
    assert row["n_pairs"] == 3
    assert row["p_t"] == pytest.approx(stats.ttest_rel([0.86, 0.85, 0.88], [0.80, 0.82, 0.79]).pvalue)
    assert math.isnan(row["p_wilcoxon"])
    pairing = [n for n in notes if "without a partner" in n]
    assert len(pairing) == 1 and "seed 7" in pairing[0] and "seed 3" in pairing[0]
    # 3 pairs: the signed-rank test's smallest p is 2/2^3 = 0.25, so it is not printed; the note says why
    assert any("Wilcoxon" in n and "adam (3)" in n and "below 6 pairs" in n for n in notes)


def test_wilcoxon_is_left_out_where_holm_makes_it_unreachable_and_shown_where_it_is_not(tmp_path):
    root = tmp_path / "results"
    for seed in range(6):  # 6 pairs: alone the smallest p is 0.03125, under Holm over 2 tests 0.0625
        for name, base in (("sgd", 0.80), ("adam", 0.85), ("rmsprop", 0.83)):
            write_run(root, f"{name}-{seed}", optimizer=name, seed=seed, final=base + 0.01 * seed + (0.003 * seed if name != "sgd" else 0))
    runs = load_runs(root)
    both, notes = rp.compare_to_baseline(runs, ["optimizer.name"], "test/acc", {"optimizer.name": "sgd"})
    assert both["p_wilcoxon"].isna().all() and both["p_t"].notna().all()
    assert any("Holm over 2 comparison(s)" in n and "below 7 pairs" in n for n in notes)
    one, notes = rp.compare_to_baseline(runs[runs["optimizer.name"] != "rmsprop"], ["optimizer.name"], "test/acc",
                                        {"optimizer.name": "sgd"})
    assert one["p_wilcoxon"].tolist() == pytest.approx([0.03125]) and not any("Wilcoxon" in n for n in notes)


def test_a_tie_is_a_nan_p_that_still_counts_in_holms_m(tmp_path):
    root = tmp_path / "results"
    for seed in range(4):
        write_run(root, f"sgd-{seed}", optimizer="sgd", seed=seed, final=0.80 + 0.01 * seed)
        write_run(root, f"adam-{seed}", optimizer="adam", seed=seed, final=0.80 + 0.01 * seed)  # identical to sgd
        write_run(root, f"rmsprop-{seed}", optimizer="rmsprop", seed=seed, final=0.83 + 0.012 * seed + 0.002 * (seed % 2))
    table, notes = rp.compare_to_baseline(load_runs(root), ["optimizer.name"], "test/acc", {"optimizer.name": "sgd"})
    table = table.set_index("group")
    assert math.isnan(table.loc["adam", "p_t"]) and math.isnan(table.loc["adam", "p_t_holm"])
    p = table.loc["rmsprop", "p_t"]
    assert table.loc["rmsprop", "p_t_holm"] == pytest.approx(min(1.0, 2 * p))  # m = 2, not 1
    assert any("adam vs sgd: the same score on every pair: a tie" in n and "Holm's m" in n for n in notes)


def test_baseline_is_matched_within_the_other_grouping_keys(tmp_path):
    root = tmp_path / "results"
    for opt in ("sgd", "adam"):
        for lr in (0.01, 0.1):
            for seed in range(3):
                write_run(root, f"{opt}-{lr}-{seed}", optimizer=opt, lr=lr, seed=seed,
                          final=0.5 + (0.2 if opt == "adam" else 0) + lr + 0.01 * seed)
    by = ["optimizer.name", "optimizer.lr"]
    table, _ = rp.compare_to_baseline(load_runs(root), by, "test/acc", {"optimizer.name": "sgd"})
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


def test_fold_runs_pair_by_study_repeat_and_fold_with_the_corrected_test_and_interval(tmp_path):
    """A 2x5 repeated K-fold study: 10 pairs, not the 5 that pairing by (seed, fold) would average into."""
    root = tmp_path / "results"
    rng = np.random.default_rng(0)
    scores = {"sgd": 0.80 + 0.02 * rng.standard_normal((2, 5)), "adam": 0.84 + 0.02 * rng.standard_normal((2, 5))}
    for opt, table in scores.items():
        for repeat in range(2):
            for fold in range(5):
                write_run(root, f"{opt}-r{repeat}-f{fold}", optimizer=opt, seed=0, curve=[table[repeat, fold]], test=False,
                          extra={"study": "cv", "candidate": 0 if opt == "sgd" else 1, "repeat": repeat, "fold": fold})
    # the study's folds: 1000 samples, 200 per fold, so n_val / n_train = 200 / 800
    study = root / "kfold" / "cv"
    study.mkdir(parents=True)
    (study / "study.json").write_text(json.dumps({"repeats": 2, "fold_indices": [{"val_idx": list(range(200))}] * 10}))
    runs = rp.select_kinds(load_runs(root), None)[0]
    assert set(runs["kind"]) == {"fold"} and "fold" not in rp.varying_keys(runs) and "repeat" not in rp.varying_keys(runs)
    ratios = rp.fold_ratios(runs, root)
    assert ratios == {"cv": pytest.approx(0.25)}
    summary = rp.summarize_groups(runs, ["optimizer.name"], "val/acc", ratios=ratios).set_index("group")
    x = scores["adam"].ravel()
    half = stats.t.ppf(0.975, 9) * math.sqrt((1 / 10 + 0.25) * x.var(ddof=1))
    assert summary.loc["adam", "n"] == 10 and summary.loc["adam", "ci_method"] == "corrected t"
    assert (summary.loc["adam", "ci_low"], summary.loc["adam", "ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half))
    table, notes = rp.compare_to_baseline(runs, ["optimizer.name"], "val/acc", {"optimizer.name": "sgd"}, ratios=ratios)
    row = table.iloc[0]
    d = (scores["adam"] - scores["sgd"]).ravel()  # paired repeat by repeat, fold by fold
    t = d.mean() / math.sqrt((1 / 10 + 0.25) * d.var(ddof=1))
    assert row["n_pairs"] == 10 and row["diff"] == pytest.approx(d.mean()) and row["test"] == "corrected paired t"
    assert row["p_t"] == pytest.approx(2 * stats.t.sf(abs(t), 9), rel=1e-9)
    assert math.isnan(row["p_wilcoxon"]) and any("Nadeau" in n for n in notes)
    # without study.json the ratio is 1 / (K - 1) from the fold numbers
    (study / "study.json").unlink()
    assert rp.fold_ratios(runs, root) == {"cv": pytest.approx(0.25)}


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
    panels = rp.plots.curve_panels("test/acc", metrics)
    assert panels == ["train/acc", "val/acc", "test/acc"]
    fig = rp.plot_curves(runs, metrics, by, panels, x="epoch")
    assert [len(ax.get_lines()) for ax in fig.axes] == [6, 6, 6]
    assert fig.axes[0].get_xlabel() == "epoch" and fig.axes[0].get_legend() is None and fig.axes[2].get_legend() is not None
    for x, label, first in (("time", "wall time (seconds)", [2.0, 4.0, 6.0]), ("step", "optimizer steps", [10.0, 20.0, 30.0]),
                            ("examples", "training examples seen", [100.0, 200.0, 300.0])):
        fig = rp.plot_curves(runs, metrics, by, ["test/acc"], x=x)
        assert fig.axes[0].get_xlabel() == label
        assert fig.axes[0].get_lines()[0].get_xdata().tolist() == first
    fig = rp.plot_lr(runs, metrics, by)
    assert len(fig.axes[0].get_lines()) == 6 and fig.axes[0].get_yscale() == "log"
    fig = rp.plot_sensitivity(runs, by, "test/acc")
    ax = fig.axes[0]
    assert len(ax.containers) == 2 and ax.get_xscale() == "log" and "log scale" in ax.get_xlabel()
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["adam", "sgd"]
    fig = rp.plot_final(summary, "test/acc")
    assert len(fig.axes[0].get_yticklabels()) == 6
    png, svg = rp.figure_bytes(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg[:1000]


def test_the_lr_plot_draws_each_configurations_own_schedule_and_no_pruned_trial(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):  # one group (sgd) pooling two schedules: a decaying one and a constant one
        write_run(root, f"decay-{seed}", lr=0.1, seed=seed, curve=[0.5, 0.6, 0.7], lrs=[0.1, 0.05, 0.025],
                  cfg_extra={"schedule.name": "exponential"})
        write_run(root, f"const-{seed}", lr=0.1, seed=seed, curve=[0.5, 0.6, 0.7], cfg_extra={"schedule.name": "constant"})
    write_run(root, "pruned", lr=0.1, seed=5, curve=[0.1], lrs=[9.0], status="pruned", cfg_extra={"schedule.name": "constant"})
    runs, metrics = load_runs(root), load_metrics(root)
    fig = rp.make_plots(["lr"], runs, metrics, ["optimizer.name"], "test/acc", None)[0][0][1]
    lines = fig.axes[0].get_lines()
    assert sorted(tuple(l.get_ydata()) for l in lines) == [(0.1, 0.05, 0.025), (0.1, 0.1, 0.1)]  # no average, no 9.0
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["sgd (constant)", "sgd (exponential)"]


def test_curves_against_an_x_the_runs_do_not_record_is_a_one_line_error(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, f"r{seed}", seed=seed, curve=[0.5, 0.6])
    path = root / "runs" / "r0" / "metrics.csv"
    for d in (root / "runs").iterdir():  # metrics.csv as a dlexp without the examples column wrote them
        m = pd.read_csv(d / "metrics.csv")
        m.drop(columns=["examples"]).to_csv(d / "metrics.csv", index=False)
    r = invoke("--results-dir", str(root), "--plots", "curves", "--x", "examples", "--out", str(tmp_path / "rep"))
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--x examples" in r.stderr and "epoch, step, time" in r.stderr
    r = invoke("--results-dir", str(root), "--plots", "curves", "--x", "step", "--out", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.output
    assert [p.name for p in sorted((tmp_path / "rep").glob("*.png"))] == ["curves_test-acc_vs_step.png"]
    r = invoke("--results-dir", str(root), "--x", "step")
    assert r.exit_code == 2 and "--plots curves" in r.stderr
    r = invoke("--results-dir", str(root), "--plots", "curves", "--x", "epochs")
    assert r.exit_code == 2 and "epoch, step, examples or time" in r.stderr


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
    assert pd.read_csv(io.StringIO(r.stdout))["n"].tolist() == [7, 7, 7]


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


def test_a_folder_of_several_tasks_and_datasets_reports_the_largest_and_names_the_others(tmp_path):
    root = tmp_path / "results"
    for seed in range(3):
        write_run(root, f"cls-{seed}", dataset="digits", seed=seed, final=0.9)
    write_run(root, "reg", dataset="airfoil", metric="rmse", final=3.2)
    write_run(root, "fm", dataset="fashion_mnist", final=0.8)
    r = invoke("--results-dir", str(root), "--format", "csv")
    assert r.exit_code == 0, r.output
    assert pd.read_csv(io.StringIO(r.stdout))["n"].tolist() == [3]
    note = [l for l in r.stderr.splitlines() if "left out" in l]
    assert len(note) == 1 and "3 runs on digits (classification)" in note[0]
    assert "1 on airfoil (regression)" in note[0] and "--where dataset=airfoil" in note[0] and "--where dataset=fashion_mnist" in note[0]
    r = invoke("--results-dir", str(root), "--where", "dataset=airfoil", "--format", "csv")
    assert r.exit_code == 0 and "rmse" in r.stdout and "left out" not in r.stderr


def test_regression_runs_default_to_test_rmse_and_lower_is_better(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, f"r{seed}", dataset="airfoil", metric="rmse", seed=seed, curve=[9.0, 5.0, 3.0 + seed])
    runs = load_runs(root)
    assert rp.default_metric(runs) == "test/rmse"
    t = rp.time_to_target(runs, load_metrics(root), [], "val/rmse", 5.0)
    assert t["epochs_to_target"].tolist() == [2.0]


# ---------------------------------------------------------------- kinds: plain runs, kfold folds, sweep trials


@pytest.fixture
def three_kinds(tmp_path) -> Path:
    """3 plain sgd runs, a kfold study of sgd and adam (3 folds each), 4 sweep trials of sgd (one pruned)."""
    root = tmp_path / "results"
    for seed in range(3):
        write_run(root, f"run-{seed}", seed=seed, final=0.80 + 0.01 * seed)
    for c, opt in enumerate(("sgd", "adam")):
        for fold in range(3):
            write_run(root, f"fold-{opt}-{fold}", optimizer=opt, curve=[0.85 + 0.05 * c + 0.01 * fold], test=False,
                      extra={"study": "cv", "candidate": c, "repeat": 0, "fold": fold}, duration=40.0)
    for trial in range(4):
        write_run(root, f"trial-{trial}", lr=10.0 ** -trial, curve=[0.5, 0.7 + 0.01 * trial],
                  status="pruned" if trial == 3 else "ok", extra={"study": "sw", "trial": trial}, duration=50.0)
    return root


def test_plain_runs_folds_and_trials_are_kept_apart_by_default_with_a_note(three_kinds):
    r = invoke("--results-dir", str(three_kinds), "--by", "optimizer", "--format", "csv", "--target", "val/acc=0.5")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(io.StringIO(r.stdout))
    # the sgd row holds the 3 plain runs only: not "hits 10/10" and 330 s of pooled folds and trials
    assert table[["group", "kind", "n", "target_n", "time_s"]].values.tolist() == [["sgd", "run", 3, 3, 30.0]]
    note = [l for l in r.stderr.splitlines() if "left out" in l]
    assert len(note) == 1
    assert "6 kfold fold runs (study cv)" in note[0] and "4 sweep trials (study sw)" in note[0]
    assert "--kind fold or --kind trial" in note[0] and "--kind all" in note[0]


def test_kfold_candidates_report_their_validation_scores_with_kind_fold(three_kinds):
    r = invoke("--results-dir", str(three_kinds), "--kind", "fold", "--format", "csv", "--baseline", "optimizer=sgd")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(io.StringIO(r.stdout)).set_index("group")
    assert table["metric"].iloc[0] == "val/acc"  # folds record no test split; the default follows
    assert table.loc["adam", "n"] == 3 and table.loc["sgd", "n"] == 3 and set(table["ci_method"]) == {"corrected t"}
    assert table.loc["adam", "test"] == "corrected paired t" and table.loc["adam", "n_pairs"] == 3
    r = invoke("--results-dir", str(three_kinds), "--kind", "all", "--by", "optimizer", "--format", "csv")
    assert r.exit_code == 0 and "--kind" not in r.stderr
    assert pd.read_csv(io.StringIO(r.stdout)).set_index("group").loc["sgd", "kind"] == "fold+run+trial"
    r = invoke("--results-dir", str(three_kinds), "--kind", "all", "--by", "kind,optimizer", "--metric", "val/acc", "--format", "csv")
    assert r.exit_code == 0, r.output
    assert pd.read_csv(io.StringIO(r.stdout))[["group", "n"]].values.tolist() == [
        ["kind=fold adam", 3], ["kind=fold sgd", 3], ["kind=run sgd", 3], ["kind=trial sgd", 3]]
    r = invoke("--results-dir", str(three_kinds), "--kind", "trials")
    assert r.exit_code == 2 and "run, fold, trial or all" in r.stderr


# ---------------------------------------------------------------- baselines, pooling notes


@pytest.fixture
def momentum_grid(tmp_path) -> Path:
    root = tmp_path / "results"
    for seed in range(3):
        write_run(root, f"sgd0-{seed}", optimizer="sgd", seed=seed, final=0.80 + 0.01 * seed)
        write_run(root, f"sgd9-{seed}", optimizer="sgd", seed=seed, final=0.84 + 0.01 * seed + 0.002 * seed**2,
                  cfg_extra={"optimizer.momentum": 0.9})
        write_run(root, f"adam-{seed}", optimizer="adam", seed=seed, final=0.86 + 0.012 * seed)
    return root


def test_a_baseline_naming_one_configuration_compares_every_other_group_with_it(momentum_grid):
    runs = load_runs(momentum_grid)
    by = ["optimizer.name", "optimizer.momentum"]
    spec = rp.parse_baseline("optimizer=sgd,optimizer.momentum=0", runs, by)
    assert spec == {"optimizer.name": "sgd", "optimizer.momentum": "0"}
    table, notes = rp.compare_to_baseline(runs, by, "test/acc", spec)
    assert dict(zip(table["group"], table["baseline"])) == {"adam": "sgd momentum=0", "sgd momentum=0.9": "sgd momentum=0"}
    assert notes == [n for n in notes if "Wilcoxon" in n]  # nothing skipped
    # naming only the optimizer picks two sgd groups: adam has no partner with its momentum, and says so
    table, notes = rp.compare_to_baseline(runs, by, "test/acc", {"optimizer.name": "sgd"})
    assert table.empty
    assert any("not compared: adam:" in n and "--baseline optimizer=VALUE,optimizer.momentum=VALUE" in n for n in notes)
    r = invoke("--results-dir", str(momentum_grid), "--by", "optimizer,optimizer.momentum", "--baseline",
               "optimizer=sgd,optimizer.momentum=0", "--format", "csv")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(io.StringIO(r.stdout)).set_index("group")
    assert table["baseline"].dropna().to_dict() == {"adam": "sgd momentum=0", "sgd momentum=0.9": "sgd momentum=0"}
    assert table["n_pairs"].dropna().tolist() == [3, 3]
    r = invoke("--results-dir", str(momentum_grid), "--by", "optimizer", "--baseline", "optimizer=sgd,optimizer.momentum=0")
    assert r.exit_code == 2 and "optimizer.momentum is not a grouping key" in r.stderr


def test_the_pooling_note_appears_only_when_a_group_pools_configurations(momentum_grid, tmp_path):
    r = invoke("--results-dir", str(momentum_grid), "--by", "optimizer", "--format", "csv")
    assert "groups pool runs that differ in optimizer.momentum" in r.stderr  # sgd pools momentum 0 and 0.9
    root = tmp_path / "results2"  # the lr differs between groups but is one value within each
    for seed in range(2):
        write_run(root, f"sgd-{seed}", optimizer="sgd", lr=0.1, seed=seed, final=0.8)
        write_run(root, f"adam-{seed}", optimizer="adam", lr=0.001, seed=seed, final=0.9)
    r = invoke("--results-dir", str(root), "--by", "optimizer", "--format", "csv")
    assert r.exit_code == 0 and "pool" not in r.stderr


# ---------------------------------------------------------------- best epoch chosen on validation


def test_summarize_takes_every_split_at_the_epoch_the_validation_split_chose():
    from dlexp.train import summarize

    rows = []
    for epoch, (val, test, train) in enumerate([(0.70, 0.95, 0.6), (0.80, 0.75, 0.7), (0.80, 0.60, 0.8), (0.78, 0.99, 0.9)], 1):
        rows += [dict(epoch=epoch, split=s, metric="acc", value=v) for s, v in (("val", val), ("test", test), ("train", train))]
        rows += [dict(epoch=epoch, split="val", metric="loss", value=[0.5, 0.4, 0.45, 0.3][epoch - 1]),
                 dict(epoch=epoch, split="test", metric="loss", value=[0.6, 0.5, 0.55, 0.35][epoch - 1])]
    s = summarize(rows)
    # best val/acc 0.80 first at epoch 2: test/acc is taken there (0.75), not its own best (0.99)
    assert s["best_epoch"] == {"acc": 2, "loss": 4}
    assert s["best"] == {"val/acc": 0.80, "test/acc": 0.75, "train/acc": 0.7, "val/loss": 0.3, "test/loss": 0.35}
    assert s["final"]["test/acc"] == 0.99
    no_val = summarize([r for r in rows if r["split"] != "val"])
    assert no_val["best"] == {} and no_val["best_epoch"] == {} and no_val["best_on"] is None and s["best_on"] == "val"


def test_at_best_uses_the_validation_choice_and_refuses_test_values_without_a_validation_split(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, f"r{seed}", seed=seed, curve=[0.6, 0.9, 0.7])  # val and test share the curve here
    r = invoke("--results-dir", str(root), "--at", "best", "--format", "csv")
    assert r.exit_code == 0 and pd.read_csv(io.StringIO(r.stdout))["mean"].tolist() == [0.9]
    root2 = tmp_path / "noval"
    for seed in range(2):
        write_run(root2, f"r{seed}", seed=seed, curve=[0.6, 0.9, 0.7], val=False)
    r = invoke("--results-dir", str(root2), "--at", "best", "--metric", "test/acc")
    assert r.exit_code == 2 and "needs a validation split" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = invoke("--results-dir", str(root2), "--at", "best")
    assert r.exit_code == 2 and "validation split" in r.stderr
    root3 = tmp_path / "mixed"  # one run with a validation split, one without: the second has no best value
    write_run(root3, "with", seed=0, curve=[0.6, 0.9, 0.7])
    write_run(root3, "without", seed=1, curve=[0.6, 0.9, 0.7], val=False)
    r = invoke("--results-dir", str(root3), "--at", "best", "--metric", "test/acc", "--format", "csv")
    assert r.exit_code == 0 and pd.read_csv(io.StringIO(r.stdout))["n"].tolist() == [1]
    assert "1 run(s) have no validation split to choose a best epoch on" in r.stderr
    # a run from before: best.test/acc chosen on test itself, no best_epoch; its value is left out and said so
    old = root / "runs" / "r0" / "summary.json"
    data = json.loads(old.read_text())
    data.pop("best_epoch")
    old.write_text(json.dumps(data))
    r = invoke("--results-dir", str(root), "--at", "best", "--format", "csv")
    assert r.exit_code == 0 and pd.read_csv(io.StringIO(r.stdout))["n"].tolist() == [1]
    assert "1 run(s) written by an older dlexp chose best.test/acc on the test data" in r.stderr


# ---------------------------------------------------------------- time to target, intervals, the answer


def test_diverged_runs_count_as_misses_in_time_to_target(tmp_path):
    root = tmp_path / "results"
    write_run(root, "s0", seed=0, curve=[0.9, 0.9])  # reaches 0.85 at epoch 1
    write_run(root, "s1", seed=1, curve=[0.5, float("nan")], status="diverged")  # never: a miss
    write_run(root, "s2", seed=2, curve=[0.9, float("nan")], status="diverged")  # reached before diverging
    write_run(root, "s3", seed=3, curve=[0.5], status="failed")  # a crash is not a result: left out
    runs, metrics = load_runs(root), load_metrics(root)
    t = rp.time_to_target(runs, metrics, [], "val/acc", 0.85).iloc[0]
    assert (t["target_hits"], t["target_n"], t["target_diverged"]) == (2, 3, 2)
    assert t["epochs_to_target"] == 1.0  # median of 1, 1, inf
    r = invoke("--results-dir", str(root), "--target", "val/acc=0.85")
    assert r.exit_code == 0 and "2/3 (2 diverged)" in r.stdout
    assert "time to target counts 2 diverged run(s)" in r.stderr


def test_bootstrap_intervals_need_five_runs_and_warn_below_ten(tmp_path):
    root = tmp_path / "results"
    for seed in range(4):
        write_run(root, f"sgd-{seed}", optimizer="sgd", seed=seed, final=0.8 + 0.01 * seed)
    for seed in range(6):
        write_run(root, f"adam-{seed}", optimizer="adam", seed=seed, final=0.85 + 0.01 * seed * (-1) ** seed)
    runs = load_runs(root)
    s = rp.summarize_groups(runs, ["optimizer.name"], "test/acc", ci="bootstrap").set_index("group")
    assert s.loc["sgd", "ci_method"] == "t (n<5)" and s.loc["adam", "ci_method"] == "bootstrap-t"
    x = runs[runs["optimizer.name"] == "adam"]["final.test/acc"].to_numpy()
    assert (s.loc["adam", "ci_low"], s.loc["adam", "ci_high"]) == rp.bootstrap_interval(x)
    notes = rp.interval_notes(s.reset_index(), "bootstrap")
    assert any("needs 5 runs per group; sgd" in n for n in notes) and any("fewer than 10 runs (adam)" in n for n in notes)


def test_the_answer_names_the_best_group_the_difference_and_how_sure(three_optimizers):
    runs = load_runs(three_optimizers)
    summary = rp.summarize_groups(runs, ["optimizer.name"], "test/acc")
    table, _ = rp.compare_to_baseline(runs, ["optimizer.name"], "test/acc", {"optimizer.name": "sgd"})
    lines = rp.answer(summary, table, "test/acc")
    adam = table.set_index("group").loc["adam"]
    assert lines[0].startswith(f"Best: adam, test accuracy (final epoch) {np.mean(ADAM):.4g} (95% CI ")
    assert lines[1].startswith(f"adam vs sgd: {adam['diff']:+.4g}") and f"p = {rp.pvalue(adam['p_t_holm'])} after Holm" in lines[1]
    assert "excludes 0" in lines[1]
    lines = rp.answer(summary, None, "test/acc")
    assert lines[1].startswith("Runner-up: rmsprop") and "--baseline" in lines[1]


def test_kfold_says_tie_for_an_exact_tie_and_labels_its_test_one_sided_after_selection():
    from dlexp.cli.kfold import _best_line
    from dlexp.kfold import corrected_paired_test

    best = {"candidate": 0, "label": "lr=0.1", "mean": 0.9,
            "vs_runner_up": {"candidate": 1, **corrected_paired_test([0.9, 0.8, 1.0], [0.9, 0.8, 1.0], 800, 400, "maximize")}}
    line = _best_line(best, None, "val/acc")
    assert "a tie with runner-up 1: the same score on all 3 folds" in line and "better by" not in line and "wins 0%" not in line
    best["vs_runner_up"] = {"candidate": 1, **corrected_paired_test([0.9, 0.85, 1.0], [0.88, 0.8, 0.97], 800, 400, "maximize")}
    line = _best_line(best, None, "val/acc")
    assert "better by 0.03333" in line and "one-sided p = " in line and "post-selection" in line
