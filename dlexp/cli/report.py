"""`dlexp report`: group finished runs, compare them with statistics, write tables and plots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dlexp.atomic import atomic_write
from dlexp.cli.common import err, fail, out

FORMAT_SUFFIX = {"md": "md", "csv": "csv", "latex": "tex", "json": "json"}


def report(
    results_dir: Annotated[str, typer.Option("--results-dir", help="The folder holding runs/<run_id>/.")] = "results",
    by: Annotated[Optional[str], typer.Option("--by", help="Config keys naming the groups, comma-separated: optimizer (= optimizer.name), optimizer.lr. Default: the keys that vary across runs (seed and fold excluded).")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="SPLIT/METRIC to compare. Default: test/acc (classification) or test/rmse (regression), val/... without a test split.")] = None,
    at: Annotated[str, typer.Option("--at", help="Value at the end of training (final) or the best over epochs (best).")] = "final",
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="KEY=VALUE naming the baseline group, e.g. optimizer=sgd: paired t-test per group over shared seeds, Holm-corrected (Wilcoxon too from 6 pairs).")] = None,
    ci: Annotated[str, typer.Option("--ci", help="95% CI of group means: t (Student t) or bootstrap (seeded percentile bootstrap).")] = "t",
    target: Annotated[Optional[str], typer.Option("--target", help="SPLIT/METRIC=VALUE, e.g. val/acc=0.85: epochs and seconds until first reached (a miss counts as infinite).")] = None,
    plots: Annotated[Optional[str], typer.Option("--plots", help="Comma-separated: curves, lr, sensitivity, final, trajectory (paths over the contours of a 2-D objective), or all. PNG and SVG go to --out (default report/).")] = None,
    out_dir: Annotated[Optional[str], typer.Option("--out", help="Folder for the table file and the plots (default for plots: report/).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="Table format: md, csv, latex or json; to --out/report.<ext>, or stdout without --out.")] = None,
    html: Annotated[Optional[str], typer.Option("--html", help="Write one self-contained HTML page (tables + every plot embedded) to this file.")] = None,
    where: Annotated[Optional[str], typer.Option("--where", help="Only runs matching KEY=VALUE, comma-separated: dataset=digits, optimizer=adam, study=NAME.")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Report a sweep's Optuna study instead: its trials, optimization history, parameter importances and slice plots.")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Where --study lives (default: <results-dir>/sweeps/<study>.db; any Optuna URL or journal file).")] = None,
    include_failed: Annotated[bool, typer.Option("--include-failed", help="Let diverged/pruned/interrupted/failed runs into the statistics (they are always counted).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")] = False,
) -> None:
    """Compare groups of runs: mean, std and 95% CI per group, time to target, paired tests against a baseline, plots.

    Examples: dlexp report; dlexp report --by optimizer --baseline optimizer=sgd;
    dlexp report --by optimizer,optimizer.lr --plots curves,sensitivity --out report/
    """
    from dlexp import report as rp

    try:
        if study is not None:
            _study_report(rp, results_dir, study, storage, out_dir, fmt, html)
            return
        _report(rp, results_dir, by, metric, at, baseline, ci, target, plots, out_dir, fmt, html, include_failed, where)
    except rp.ReportError as e:
        if debug:
            raise
        raise fail(str(e)) from None
    except OSError as e:  # --out or --html not writable, a full disk: one line; earlier files stay whole
        if debug:
            raise
        raise fail(f"cannot write {e.filename or (out_dir or html)}: {e.strerror or e}", code=1) from None


def _check_destinations(rp, out_dir, html) -> None:
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise rp.ReportError(f"--out: {out_dir} exists and is not a folder")
    if html is not None and Path(html).is_dir():
        raise rp.ReportError(f"--html: {html} is a folder; give a file name such as {Path(html) / 'report.html'}")


def _report(rp, results_dir, by, metric, at, baseline, ci, target, plots, out_dir, fmt, html, include_failed, where) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from dlexp.results import load_metrics, load_runs

    if at not in ("final", "best"):
        raise rp.ReportError(f"--at: expected final or best, got {at!r}")
    if ci not in ("t", "bootstrap"):
        raise rp.ReportError(f"--ci: expected t or bootstrap, got {ci!r}")
    if fmt is not None and fmt not in FORMAT_SUFFIX:
        raise rp.ReportError(f"--format: expected md, csv, latex or json, got {fmt!r}")
    _check_destinations(rp, out_dir, html)
    kinds = rp.parse_plots(plots)
    if html and not kinds:
        kinds = list(rp.PLOT_KINDS)

    root = Path(results_dir)
    if not (root / "runs").is_dir():
        raise rp.ReportError(f"no results in {root}: {root / 'runs'} does not exist (run `dlexp run` first, or pass --results-dir)")
    runs = load_runs(root)  # warns on stderr about each unreadable run folder and skips it
    if runs.empty:
        raise rp.ReportError(f"no readable runs under {root / 'runs'}")
    if where:
        runs = rp.filter_runs(runs, where)
    rp.check_comparable(runs)
    keys = [rp.resolve_key(k.strip(), runs) for k in by.split(",") if k.strip()] if by else rp.varying_keys(runs)
    keys = list(dict.fromkeys(keys))  # --by optimizer,optimizer.name: one key
    metric = rp.resolve_metric(metric, runs, at)

    notes = []
    pooled = [k for k in rp.varying_keys(runs) if k not in keys]
    if pooled:
        notes.append(f"groups pool runs that differ in {', '.join(pooled)} (not in --by)")
    n_bad = int((runs["status"].fillna("unknown") != "ok").sum()) if "status" in runs else 0
    if n_bad and not include_failed:
        notes.append(f"{n_bad} run(s) not ok (diverged/pruned/interrupted/failed) are counted but left out of the statistics; --include-failed lets them in")
    summary = rp.summarize_groups(runs, keys, metric, at=at, ci=ci, include_failed=include_failed)
    need_metrics = target is not None or bool(kinds)
    metrics = None
    if need_metrics:
        metrics = load_metrics(root)
        metrics = metrics[metrics["run_id"].isin(runs["run_id"])]
    tt = comparison = None
    target_name = None
    if target is not None:
        target_name, target_value = rp.parse_target(target)
        tt = rp.time_to_target(runs, metrics, keys, target_name, target_value, include_failed=include_failed)
    if baseline is not None:
        bkey, bvalue = rp.parse_baseline(baseline, runs, keys)
        comparison, more = rp.compare_to_baseline(runs, keys, metric, bkey, bvalue, at=at, include_failed=include_failed)
        notes += more
    table = rp.report_table(summary, tt, comparison)
    meta = {"metric": metric, "at": at, "ci": ci, "by": keys, "results_dir": str(root), "target": target,
            "baseline": baseline, "notes": notes}

    for n in notes:
        err.print(f"note: {n}", markup=False)
    if fmt is not None and out_dir is None:
        sys.stdout.write(rp.format_table(table, fmt, meta))  # plain text for pipes: no rich table
    else:
        _print_tables(summary, tt, comparison, metric, at, target, baseline)
    if out_dir is not None:
        fmt = fmt or "md"
        path = Path(out_dir) / f"report.{FORMAT_SUFFIX[fmt]}"
        atomic_write(path, rp.format_table(table, fmt, meta))
        err.print(f"wrote {path}", markup=False)

    images = []
    if kinds:
        plot_dir = Path(out_dir or "report")
        figs, more = rp.make_plots(kinds, runs, metrics, keys, metric, summary, at=at, include_failed=include_failed)
        for n in more:
            err.print(f"note: {n}", markup=False)
        for stem, fig in figs:
            images.append((stem, rp.save_figure(fig, plot_dir, stem)))
        if figs:
            err.print(f"wrote {len(figs)} plots (PNG and SVG) to {plot_dir}/", markup=False)
    if html:
        page = rp.html_page(f"dlexp report: {metric} at {at}", table, notes, images)
        atomic_write(html, page)
        err.print(f"wrote {html}", markup=False)


def _study_report(rp, results_dir, name, storage, out_dir, fmt, html) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import optuna

    from dlexp import sweep
    from dlexp.errors import ConfigError

    _check_destinations(rp, out_dir, html)
    try:
        kind, target = sweep.storage_target(storage, results_dir, name)
    except ConfigError as e:
        raise rp.ReportError(str(e)) from None
    if kind == "rdb" and target.startswith("sqlite:///") and not Path(target[len("sqlite:///"):]).is_file():
        raise rp.ReportError(f"--study {name}: no study file {target[len('sqlite:///'):]} (run `dlexp sweep` first, or pass --storage)")
    if kind == "journal" and not Path(target).is_file():  # opening it would create an empty journal
        raise rp.ReportError(f"--study {name}: no journal file {target} (run `dlexp sweep` first, or pass --storage)")
    try:
        st = optuna.load_study(study_name=name, storage=sweep.open_storage(kind, target, heartbeat=None))
    except (KeyError, ConfigError) as e:
        raise rp.ReportError(f"--study {name}: not found in {sweep.mask(target, target)}: {str(e).splitlines()[0]}") from None
    trials = rp.study_trials(st)
    if trials.empty:
        raise rp.ReportError(f"--study {name}: has no trials yet")
    if fmt is not None and out_dir is None:
        sys.stdout.write(rp.format_table(trials, fmt, {"study": name}))
    else:
        from rich.table import Table

        table = Table(title=f"study {name}: {len(trials)} trials ({', '.join(f'{k} {v}' for k, v in trials['state'].value_counts().items())})")
        for c in trials.columns:
            table.add_column(str(c))
        best = trials.sort_values("value", ascending=st.direction.name == "MINIMIZE").head(15)
        for _, r in best.iterrows():
            table.add_row(*(_num(v) if isinstance(v, float) else str(v) for v in r.values))
        out.print(table)
    plot_dir = Path(out_dir or "report")
    if out_dir is not None:
        path = plot_dir / f"study_{name}.{FORMAT_SUFFIX[fmt or 'csv']}"
        atomic_write(path, rp.format_table(trials, fmt or "csv", {"study": name}))
        err.print(f"wrote {path}", markup=False)
    figs, notes = rp.study_plots(st)
    for n in notes:
        err.print(f"note: {n}", markup=False)
    images = [(stem, rp.save_figure(fig, plot_dir, stem)) for stem, fig in figs]
    err.print(f"wrote {len(images)} plots (PNG and SVG) to {plot_dir}/", markup=False)
    if html:
        atomic_write(html, rp.html_page(f"dlexp study {name}", trials, notes, images))
        err.print(f"wrote {html}", markup=False)


def _num(v, digits: int = 4) -> str:
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}g}"


def _p(v) -> str:
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


def _print_tables(summary, tt, comparison, metric, at, target, baseline) -> None:
    from rich.table import Table

    t = Table(title=f"{metric} at {at} (mean, std, 95% CI over seeds)")
    for c in ("group", "n", "failed", "mean", "std", "95% CI", "time (s)"):
        t.add_column(c, justify="left" if c == "group" else "right")
    if tt is not None:
        t.add_column(f"hits {target}", justify="right")
        t.add_column("epochs to target", justify="right")
        t.add_column("s to target", justify="right")
    tt_rows = {} if tt is None else {r["group"]: r for r in tt.to_dict(orient="records")}
    for r in summary.to_dict(orient="records"):
        row = [r["group"], str(r["n"]), (f"{r['failed']} ({r['failed_detail']})" if r["failed"] else "0"),
               _num(r["mean"]), _num(r["std"]), f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]", _num(r["time_s"], 3)]
        if tt is not None:
            x = tt_rows.get(r["group"])
            row += ["-", "-", "-"] if x is None else [f"{x['target_hits']}/{x['target_n']}", _num(x["epochs_to_target"]), _num(x["s_to_target"], 3)]
        t.add_row(*row)
    out.print(t)
    if comparison is not None and len(comparison):
        c = Table(title=f"paired vs {baseline} ({metric}: group - baseline, paired by seed and fold; p Holm-corrected)")
        for name in ("group", "baseline", "pairs", "mean diff", "95% CI", "p (t-test)", "p (Wilcoxon)"):
            c.add_column(name, justify="left" if name in ("group", "baseline") else "right")
        for r in comparison.to_dict(orient="records"):
            c.add_row(r["group"], r["baseline"], str(r["n_pairs"]), _num(r["diff"]),
                      f"[{_num(r['diff_ci_low'])}, {_num(r['diff_ci_high'])}]", _p(r["p_t_holm"]), _p(r["p_wilcoxon_holm"]))
        out.print(c)
