"""`dlexp report`: group finished runs, compare them with statistics, write tables and plots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dlexp.atomic import atomic_write
from dlexp.cli.common import err, fail, out

MAX_ERROR = 400  # characters: an error line that quotes file content stays one readable line


def report(
    results_dir: Annotated[str, typer.Option("--results-dir", help="The folder holding runs/<run_id>/.")] = "results",
    by: Annotated[Optional[str], typer.Option("--by", help="Config keys naming the groups, comma-separated: optimizer (= optimizer.name), optimizer.lr. Default: the keys that vary across runs (seed, repeat and fold excluded).")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="SPLIT/METRIC to compare. Default: test/acc (classification) or test/log_rmse, else test/rmse (regression); val/... without a test split.")] = None,
    at: Annotated[str, typer.Option("--at", help="Value at the end of training (final), or at the best epoch (best), which is chosen on the validation split; test values at best need one.")] = "final",
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="The baseline group, KEY=VALUE[,KEY=VALUE...], e.g. optimizer=sgd or optimizer=sgd,optimizer.momentum=0 (one configuration): paired tests per group over shared seeds (and folds), Holm-corrected.")] = None,
    ci: Annotated[str, typer.Option("--ci", help="95% CI of group means: t (Student t) or bootstrap (seeded studentized bootstrap, from 5 runs). Fold scores always get the corrected t interval.")] = "t",
    target: Annotated[Optional[str], typer.Option("--target", help="SPLIT/METRIC=VALUE, e.g. val/acc=0.85: epochs and seconds until first reached (a miss, diverged runs included, counts as infinite).")] = None,
    plots: Annotated[Optional[str], typer.Option("--plots", help="Comma-separated: curves, lr, sensitivity, final, trajectory (paths over the contours of a 2-D objective), or all. PNG and SVG go to --out (default: a new folder under <results-dir>/reports/).")] = None,
    x: Annotated[Optional[str], typer.Option("--x", help="x axes of the curves, comma-separated: epoch, step, examples, time (default: epoch,time).")] = None,
    out_dir: Annotated[Optional[str], typer.Option("--out", help="Folder of this report (table file and plots); what an earlier report left there is replaced. Default: a new folder under <results-dir>/reports/.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="Table format: md, csv, latex or json; to the report folder as report.<ext>, or to stdout without --out.")] = None,
    html: Annotated[Optional[str], typer.Option("--html", help="Write one self-contained HTML page (answer, tables, every plot embedded) to this file.")] = None,
    where: Annotated[Optional[str], typer.Option("--where", help="Only runs matching KEY=VALUE, comma-separated: dataset=digits, optimizer=adam, study=NAME.")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="Which runs: run (plain runs), fold (kfold folds), trial (sweep trials), comma-separated, or all. Default: the first of these present; the others are named in a note.")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Report a sweep's Optuna study instead: its trials, optimization history, parameter importances and slice plots.")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Where --study lives (default: <results-dir>/sweeps/<study>.db; any Optuna URL or journal file).")] = None,
    include_failed: Annotated[bool, typer.Option("--include-failed", help="Let diverged/pruned/interrupted/failed runs into the statistics (they are always counted).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")] = False,
) -> None:
    """Compare groups of runs: mean, std and 95% CI per group, time to target, paired tests against a baseline, plots.

    Examples: dlexp report; dlexp report --by optimizer --baseline optimizer=sgd;
    dlexp report --by optimizer,optimizer.lr --plots curves,sensitivity --out results/reports/lr
    """
    from dlexp import report as rp

    try:
        if study is not None:
            _study_report(rp, results_dir, study, storage, out_dir, fmt, html)
            return
        _report(rp, results_dir=results_dir, by=by, metric=metric, at=at, baseline=baseline, ci=ci, target=target,
                plots=plots, x=x, out_dir=out_dir, fmt=fmt, html=html, include_failed=include_failed, where=where, kind=kind)
    except rp.ReportError as e:
        if debug:
            raise
        raise fail(rp.clip(str(e), MAX_ERROR)) from None
    except OSError as e:  # --out or --html not writable, a full disk: one line; earlier files stay whole
        if debug:
            raise
        raise fail(rp.clip(f"cannot write {e.filename or (out_dir or html)}: {e.strerror or e}", MAX_ERROR), code=1) from None


def _check_options(rp, at, ci, fmt, html) -> None:
    if at not in ("final", "best"):
        raise rp.ReportError(f"--at: expected final or best, got {rp.clip(at, 40)!r}")
    if ci not in ("t", "bootstrap"):
        raise rp.ReportError(f"--ci: expected t or bootstrap, got {rp.clip(ci, 40)!r}")
    if fmt is not None and fmt not in rp.FORMATS:
        raise rp.ReportError(f"--format: expected md, csv, latex or json, got {rp.clip(fmt, 40)!r}")
    if html is not None and Path(html).is_dir():
        raise rp.ReportError(f"--html: {rp.clip(html)} is a folder; give a file name such as {rp.clip(Path(html) / 'report.html')}")


def _report(rp, *, results_dir, by, metric, at, baseline, ci, target, plots, x, out_dir, fmt, html, include_failed,
            where, kind) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from dlexp.results import load_metrics, load_runs

    _check_options(rp, at, ci, fmt, html)
    kinds = rp.parse_plots(plots)
    if html and not kinds:
        kinds = list(rp.PLOT_KINDS)
    xs = rp.parse_x(x)
    if x is not None and "curves" not in kinds:
        raise rp.ReportError("--x: sets the x axes of the learning curves; add --plots curves")
    folder = rp.ReportFolder(out_dir) if out_dir is not None else None  # refuses a --out that is a file, before any work

    root = Path(results_dir)
    if not (root / "runs").is_dir():
        raise rp.ReportError(f"no results in {rp.clip(root)}: {rp.clip(root / 'runs')} does not exist (run `dlexp run` first, or pass --results-dir)")
    runs = load_runs(root)  # warns on stderr about each unreadable run folder and skips it
    if runs.empty:
        raise rp.ReportError(f"no readable runs under {rp.clip(root / 'runs')}")
    if where:
        runs = rp.filter_runs(runs, where)
    runs, notes = rp.select_kinds(runs, kind)
    runs, more = rp.select_section(runs)
    notes += more
    keys = [rp.resolve_key(k.strip(), runs) for k in by.split(",") if k.strip()] if by else rp.varying_keys(runs)
    keys = list(dict.fromkeys(keys))  # --by optimizer,optimizer.name: one key
    metric = rp.resolve_metric(metric, runs, at)
    runs, more = rp.best_notes(runs, metric, at)
    notes += more

    pooled = rp.pooled_keys(runs, keys)
    if pooled:
        notes.append(f"groups pool runs that differ in {rp.clip(', '.join(pooled))} (not in --by)")
    n_bad = int((runs["status"].fillna("unknown") != "ok").sum()) if "status" in runs else 0
    if n_bad and not include_failed:
        notes.append(f"{n_bad} run(s) not ok (diverged/pruned/interrupted/failed) are counted but left out of the statistics; --include-failed lets them in")
    ratios = rp.fold_ratios(runs, root)
    summary = rp.summarize_groups(runs, keys, metric, at=at, ci=ci, include_failed=include_failed, ratios=ratios)
    notes += rp.interval_notes(summary, ci)
    metrics = None
    if target is not None or kinds:
        metrics = load_metrics(root)
        metrics = metrics[metrics["run_id"].isin(runs["run_id"])]
        if "curves" in kinds:
            xs = rp.parse_x(x, metrics)
    tt = comparison = None
    if target is not None:
        target_name, target_value = rp.parse_target(target)
        tt = rp.time_to_target(runs, metrics, keys, target_name, target_value, include_failed=include_failed)
        notes += rp.target_notes(tt)
    if baseline is not None:
        spec = rp.parse_baseline(baseline, runs, keys)
        comparison, more = rp.compare_to_baseline(runs, keys, metric, spec, at=at, include_failed=include_failed, ratios=ratios)
        notes += more
    answer = rp.answer(summary, comparison, metric, at=at)
    table = rp.report_table(summary, tt, comparison)
    meta = {"metric": metric, "at": at, "ci": ci, "by": keys, "kind": sorted(runs["kind"].unique()), "results_dir": str(root),
            "target": target, "baseline": baseline, "answer": answer, "notes": notes}

    for n in notes:
        err.print(f"note: {n}", markup=False)
    if fmt is not None and out_dir is None:
        sys.stdout.write(rp.format_table(table, fmt, meta))  # plain text for pipes: no rich table
    else:
        _print_tables(rp, summary, tt, comparison, metric, at, target, baseline)
        for line in answer:
            out.print(line, markup=False)

    if folder is None and kinds:
        folder = rp.ReportFolder(rp.default_folder(root))
    if folder is None:
        return
    path = folder.write(f"report.{rp.FORMATS[fmt or 'md']}", rp.format_table(table, fmt or "md", meta))
    err.print(f"wrote {path}", markup=False)
    images = []
    if kinds:
        figs, more = rp.make_plots(kinds, runs, metrics, keys, metric, summary, at=at, include_failed=include_failed, xs=xs)
        for n in more:
            err.print(f"note: {n}", markup=False)
        for plot in figs:
            png, svg = rp.figure_bytes(plot.figure)
            folder.write(f"{rp.safe_name(plot.stem)}.png", png)
            folder.write(f"{rp.safe_name(plot.stem)}.svg", svg)
            images.append((plot.caption, png))
        if figs:
            err.print(f"wrote {len(figs)} plots (PNG and SVG) to {folder.path}/", markup=False)
    if html:
        title = f"dlexp report: {rp.metric_label(metric)} at {at}"
        atomic_write(html, rp.html_page(title, answer, table, notes, images, metric=metric))
        folder.adopt(html)
        err.print(f"wrote {html}", markup=False)
    removed = folder.finish()
    if removed:
        err.print(f"removed {len(removed)} file(s) an earlier report left in {folder.path}: {rp.clip(', '.join(removed))}", markup=False)


SHOWN_TRIALS = 15


def _study_report(rp, results_dir, name, storage, out_dir, fmt, html) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import optuna

    from dlexp import sweep
    from dlexp.errors import ConfigError

    name = rp.check_study_name(name)
    _check_options(rp, "final", "t", fmt, html)
    folder = rp.ReportFolder(out_dir) if out_dir is not None else None
    try:
        kind, target = sweep.storage_target(storage, results_dir, name)
    except ConfigError as e:
        raise rp.ReportError(str(e)) from None
    if kind == "rdb" and target.startswith("sqlite:///") and not Path(target[len("sqlite:///"):]).is_file():
        raise rp.ReportError(f"--study {name}: no study file {rp.clip(target[len('sqlite:///'):])} (run `dlexp sweep` first, or pass --storage)")
    if kind == "journal" and not Path(target).is_file():  # opening it would create an empty journal
        raise rp.ReportError(f"--study {name}: no journal file {rp.clip(target)} (run `dlexp sweep` first, or pass --storage)")
    try:
        st = optuna.load_study(study_name=name, storage=sweep.open_storage(kind, target, heartbeat=None))
    except (KeyError, ConfigError) as e:
        raise rp.ReportError(f"--study {name}: not found in {sweep.mask(target, target)}: {str(e).splitlines()[0] if str(e) else ''}") from None
    trials = rp.study_trials(st)
    if trials.empty:
        raise rp.ReportError(f"--study {name}: has no trials yet")
    minimize = st.direction.name == "MINIMIZE"
    answer = rp.study_answer(trials, name, minimize, st.user_attrs.get("metric", "value"))
    if fmt is not None and out_dir is None:
        sys.stdout.write(rp.format_table(trials, fmt, {"study": name, "answer": answer}))
    else:
        from rich.table import Table

        best = trials.sort_values("value", ascending=minimize, na_position="last").head(SHOWN_TRIALS)
        shown = (f"the best {len(best)} of {len(trials)} trials" if len(best) < len(trials) else f"all {len(trials)} trials")
        states = ", ".join(f"{k} {v}" for k, v in trials["state"].value_counts().items())
        table = Table(title=f"study {name}: {shown} ({states})",
                      caption=(f"{len(trials) - len(best)} more: every trial with --format csv or --out" if len(best) < len(trials) else None))
        for c in trials.columns:
            table.add_column(str(c))
        for _, r in best.iterrows():
            table.add_row(*(rp.num(v) if isinstance(v, float) else str(v) for v in r.values))
        out.print(table)
        for line in answer:
            out.print(line, markup=False)
    folder = folder or rp.ReportFolder(rp.default_folder(results_dir))
    stem = f"study_{rp.safe_name(name)}"
    path = folder.write(f"{stem}.{rp.FORMATS[fmt or 'csv']}", rp.format_table(trials, fmt or "csv", {"study": name, "answer": answer}))
    err.print(f"wrote {path}", markup=False)
    figs, notes = rp.study_plots(st)
    for n in notes:
        err.print(f"note: {n}", markup=False)
    images = []
    for view, fig in figs:
        png, svg = rp.figure_bytes(fig)
        folder.write(f"{rp.safe_name(view)}.png", png)
        folder.write(f"{rp.safe_name(view)}.svg", svg)
        images.append((view, png))
    err.print(f"wrote {len(images)} plots (PNG and SVG) to {folder.path}/", markup=False)
    if html:
        atomic_write(html, rp.html_page(f"dlexp study {name}", answer, trials, notes, images))
        folder.adopt(html)
        err.print(f"wrote {html}", markup=False)
    folder.finish()


def _print_tables(rp, summary, tt, comparison, metric, at, target, baseline) -> None:
    from rich.table import Table

    num, pvalue = rp.num, rp.pvalue
    t = Table(title=f"{metric} at {at} (mean, std, 95% CI over seeds{' and folds' if 'corrected t' in set(summary.get('ci_method', [])) else ''})")
    for c in ("group", "n", "failed", "mean", "std", "95% CI", "time (s)"):
        t.add_column(c, justify="left" if c == "group" else "right")
    if tt is not None:
        t.add_column(f"hits {target}", justify="right")
        t.add_column("epochs to target", justify="right")
        t.add_column("s to target", justify="right")
    tt_rows = {} if tt is None else {r["group"]: r for r in tt.to_dict(orient="records")}
    for r in summary.to_dict(orient="records"):
        row = [r["group"], str(r["n"]), (f"{r['failed']} ({r['failed_detail']})" if r["failed"] else "0"),
               num(r["mean"]), num(r["std"]), f"[{num(r['ci_low'])}, {num(r['ci_high'])}]", num(r["time_s"], 3)]
        if tt is not None:
            x = tt_rows.get(r["group"])
            row += ["-", "-", "-"] if x is None else [
                f"{x['target_hits']}/{x['target_n']}" + (f" ({x['target_diverged']} diverged)" if x["target_diverged"] else ""),
                num(x["epochs_to_target"]), num(x["s_to_target"], 3)]
        t.add_row(*row)
    out.print(t)
    if comparison is not None and len(comparison):
        folds = (comparison["test"] == "corrected paired t").any()
        c = Table(title=f"paired vs {baseline} ({metric}: group - baseline, paired by seed{', repeat and fold' if folds else ''}; p Holm-corrected)")
        for name in ("group", "baseline", "pairs", "mean diff", "95% CI", "test", "p", "p (Wilcoxon)"):
            c.add_column(name, justify="left" if name in ("group", "baseline", "test") else "right")
        for r in comparison.to_dict(orient="records"):
            c.add_row(r["group"], r["baseline"], str(r["n_pairs"]), num(r["diff"]),
                      f"[{num(r['diff_ci_low'])}, {num(r['diff_ci_high'])}]", r["test"], pvalue(r["p_t_holm"]),
                      pvalue(r["p_wilcoxon_holm"]))
        out.print(c)
