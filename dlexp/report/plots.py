"""The report's figures: learning curves, the lr each configuration used, lr sensitivity, the final
metric per group, and Optuna's views of a sweep. Each function returns a matplotlib Figure (tests
count its lines); `save_figure` writes PNG and SVG.

Every text that comes from the runs (group labels, metric and parameter names) goes through `plain`,
so that a `$` in it is shown as a dollar sign, never parsed as mathtext.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from dlexp.report.compare import assign_groups, group_label, group_order, statistic_runs
from dlexp.report.runs import ReportError, is_number, listing, lower_is_better, metric_label, varying_keys
from dlexp.report.stats import t_interval

PLOT_KINDS = ("curves", "lr", "sensitivity", "final", "trajectory")
# --x of the curves: the name on the command line -> the metrics.csv column (None: the epoch itself)
X_AXES = {"epoch": "epoch", "step": "step", "examples": "examples", "time": "time_s"}
X_LABELS = {"epoch": "epoch", "step": "optimizer steps", "examples": "training examples seen", "time": "wall time (seconds)"}
DEFAULT_X = ("epoch", "time")


def plain(text: Any) -> str:
    """Text shown as typed: matplotlib reads `$...$` as mathtext, an escaped `\\$` as a dollar sign."""
    return str(text).replace("$", r"\$")


def _spans_decades(values) -> bool:
    import numpy as np

    v = np.asarray([x for x in values if is_number(x) and float(x) > 0], dtype=float)
    return len(v) > 1 and v.max() / v.min() >= 10


def parse_x(text: str | None, metrics=None) -> list[str]:
    """'epoch,time' -> ['epoch', 'time'], each an x the runs record (a one-line error otherwise)."""
    xs = [x.strip() for x in (text.split(",") if text else DEFAULT_X) if x.strip()]
    bad = [x for x in xs if x not in X_AXES]
    if bad or not xs:
        raise ReportError(f"--x: expected epoch, step, examples or time (comma-separated), got {text!r}")
    if metrics is not None:
        for x in xs:
            col = X_AXES[x]
            if col not in metrics.columns or metrics[col].isna().all():
                have = [k for k, c in X_AXES.items() if c in metrics.columns and metrics[c].notna().any()]
                raise ReportError(f"--x {x}: the runs' metrics.csv have no {col!r} column (written by an older dlexp?); "
                                  f"they have: {', '.join(have)}")
    return list(dict.fromkeys(xs))


def _curve_stats(table, x: str):
    """Mean and 95% t band over runs at each epoch; the x of an epoch is the epoch, or the mean over
    runs of its `x` column (steps, examples, seconds at the end of the epoch)."""
    import numpy as np
    from scipy import stats

    by_epoch = table.groupby("epoch")
    mean = by_epoch["value"].mean()
    sd = by_epoch["value"].std(ddof=1)
    n = by_epoch["value"].count()
    half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half = half.where(n > 1)
    xs = mean.index.to_numpy(dtype=float) if x == "epoch" else by_epoch[X_AXES[x]].mean().to_numpy(dtype=float)
    return xs, mean.to_numpy(), (mean - half).to_numpy(), (mean + half).to_numpy(), int(n.max())


def curve_panels(metric: str, metrics) -> list[str]:
    """train/M, val/M, test/M for the metric M asked for: those the runs record, in that order."""
    name = metric.split("/", 1)[-1]
    have = set(metrics["split"].astype(str) + "/" + metrics["metric"].astype(str))
    return [f"{s}/{name}" for s in ("train", "val", "test") if f"{s}/{name}" in have] or [metric]


def plot_curves(runs, metrics, by: Sequence[str], panels: Sequence[str], x: str = "epoch"):
    """Learning curves: one axes per metric in `panels` (sharing the y axis), one line (mean over the
    group's runs) and its 95% band per group. `x`: epoch, step, examples or time."""
    import matplotlib.pyplot as plt
    import numpy as np

    if x == "time_s":
        x = "time"
    runs = assign_groups(runs, by)
    groups = group_order(runs, by)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.4), squeeze=False, sharey=True)
    colors = _colors(len(groups))
    values = []
    for ax, metric in zip(axes[0], panels):
        split, _, name = metric.partition("/")
        part = metrics[(metrics["split"] == split) & (metrics["metric"] == name)]
        n_max = 0
        for g, c in zip(groups, colors):
            t = part[part["run_id"].isin(runs.loc[runs["group"] == g, "run_id"])]
            if x != "epoch":
                t = t[t[X_AXES[x]].notna()] if X_AXES[x] in t else t.iloc[0:0]
            if t.empty:
                continue
            xs, mean, lo, hi, n = _curve_stats(t, x)
            if lower_is_better(metric):  # a wide band of a loss may dip below 0, which a log axis cannot show
                lo = np.maximum(lo, np.nanmin(mean) * 1e-3)
            n_max = max(n_max, n)
            values.extend(mean)
            ax.plot(xs, mean, color=c, label=plain(g), lw=1.8, marker="o" if len(xs) <= 12 else None, ms=3)
            ax.fill_between(xs, lo, hi, color=c, alpha=0.18, lw=0)
        ax.set_xlabel(X_LABELS[x])
        if x in ("epoch", "step", "examples"):
            _integer_ticks(ax.xaxis)
        ax.set_title(plain(f"{metric_label(metric)} (n up to {n_max})"), fontsize=10)
        ax.grid(alpha=0.3)
    log = lower_is_better(panels[0]) and _spans_decades(values)
    label = metric_label(panels[0].split("/", 1)[-1]) + (" (log scale)" if log else "")
    for ax in axes[0]:
        if log:
            ax.set_yscale("log")
    axes[0][0].set_ylabel(plain(label))
    fig.suptitle("learning curves: mean and 95% CI over each group's runs", fontsize=10)
    _legend(fig, axes[0][-1], len(groups))
    fig.tight_layout()
    return fig


def plot_lr(runs, metrics, by: Sequence[str]):
    """The learning rate each configuration used (metric train/lr), per epoch: one line per configuration.

    A configuration is one set of values of the keys that vary across `runs` (seeds and folds aside);
    its runs share one schedule, so one run (the longest) draws it. Lines are coloured by group; a
    group that pools several configurations draws each, labelled by what tells them apart.
    """
    import matplotlib.pyplot as plt

    runs = assign_groups(runs, by)
    groups = group_order(runs, by)
    configs = varying_keys(runs)
    others = [k for k in configs if k not in by]
    part = metrics[(metrics["split"] == "train") & (metrics["metric"] == "lr")]
    lengths = part.groupby("run_id").size()
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    values, lines = [], 0
    styles = ["-", "--", "-.", ":"]
    for g, c in zip(groups, _colors(len(groups))):
        members = runs[runs["group"] == g]
        keyed = members.assign(_config=[group_label(configs, tuple(r)) for r in
                                        members[configs].astype(object).itertuples(index=False)]) if configs else members.assign(_config="")
        for j, (_, cfg_runs) in enumerate(keyed.groupby("_config", sort=True)):
            ids = [i for i in cfg_runs["run_id"] if i in lengths.index]
            if not ids:
                continue
            longest = max(ids, key=lambda i: lengths[i])
            s = part[part["run_id"] == longest].sort_values("epoch")
            values.extend(s["value"])
            label = g
            if others and keyed["_config"].nunique() > 1:
                label = f"{g} ({group_label(others, tuple(cfg_runs[others].astype(object).iloc[0]))})"
            # configurations often share a schedule: thinner, dashed lines drawn later keep earlier ones visible
            lw = max(1.0, 3.2 - 0.5 * lines)
            ax.plot(s["epoch"].to_numpy(), s["value"].to_numpy(), color=c, label=plain(label), lw=lw,
                    ls=styles[(lines + j) % len(styles)], marker="o" if len(s) <= 12 else None, ms=lw + 1.5,
                    drawstyle="steps-post")
            lines += 1
    ax.set_xlabel("epoch")
    _integer_ticks(ax.xaxis)
    ax.set_ylabel("learning rate")
    if _spans_decades(values):
        ax.set_yscale("log")
        ax.set_ylabel("learning rate (log scale)")
    ax.set_title("learning rate of each configuration (value at the end of each epoch)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(fig, ax, lines)
    fig.tight_layout()
    return fig


def plot_sensitivity(runs, by: Sequence[str], metric: str, *, at: str = "final", include_failed: bool = False,
                     lr_key: str = "optimizer.lr"):
    """Final metric against the learning rate, one line per optimizer (DeepOBS style): mean and 95% CI.

    Lines are told apart by the grouping keys other than the lr (by optimizer.name when `by` holds
    nothing else); the x-axis is logarithmic when the lr spans a decade or more.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    line_keys = [k for k in by if k != lr_key] or (["optimizer.name"] if "optimizer.name" in runs else [])
    col = f"{at}.{metric}"
    used = assign_groups(statistic_runs(runs, include_failed), line_keys)
    lines = group_order(used, line_keys)
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for g, c in zip(lines, _colors(len(lines))):
        part = used[used["group"] == g]
        xs, mean, lo, hi = [], [], [], []
        for lr, t in part.groupby(lr_key):
            v = t[col].astype(float).dropna().to_numpy()
            if not len(v):
                continue
            a, b = t_interval(v)
            xs.append(float(lr)); mean.append(v.mean()); lo.append(a); hi.append(b)
        if not xs:
            continue
        mean, lo, hi = np.array(mean), np.array(lo), np.array(hi)
        err = np.vstack([mean - lo, hi - mean])
        err = np.where(np.isnan(err), 0, err)
        ax.errorbar(xs, mean, yerr=err, color=c, label=plain(g), lw=1.8, marker="o", ms=4, capsize=3)
    if _spans_decades(used[lr_key]):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
    else:
        ax.set_xlabel("learning rate")
    ax.set_ylabel(plain(f"{at} {metric_label(metric)}"))
    ax.set_title(plain(f"lr sensitivity: {at} {metric} (mean and 95% CI over seeds)"), fontsize=10)
    ax.grid(alpha=0.3)
    _legend(fig, ax, len(lines))
    fig.tight_layout()
    return fig


def plot_final(summary, metric: str, *, at: str = "final"):
    """The metric per group with its 95% CI as error bars, one row per group (best at the top)."""
    import matplotlib.pyplot as plt
    import numpy as np

    s = summary[summary["n"] > 0].sort_values("mean", ascending=lower_is_better(metric), kind="stable")
    s = s.iloc[::-1]  # barh draws bottom-up: put the best group at the top
    fig, ax = plt.subplots(figsize=(6.8, 1.2 + 0.42 * max(len(s), 1)))
    ys = np.arange(len(s))
    mean = s["mean"].to_numpy(dtype=float)
    err = np.vstack([mean - s["ci_low"].to_numpy(dtype=float), s["ci_high"].to_numpy(dtype=float) - mean])
    err = np.where(np.isnan(err), 0, err)
    ax.errorbar(mean, ys, xerr=err, fmt="o", color="C0", ecolor="C0", capsize=4, ms=5, lw=1.5)
    ax.set_yticks(ys, [plain(f"{g} (n={n})") for g, n in zip(s["group"], s["n"])])
    ax.set_xlabel(plain(f"{at} {metric_label(metric)} (mean, 95% CI)"))
    ax.set_title(plain(f"{at} {metric} per group" + (" (best at the top)" if len(s) > 1 else "")), fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.margins(y=0.5 / max(len(s), 1) + 0.05)
    fig.tight_layout()
    return fig


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(fig, ax, n: int) -> None:
    if n == 0:
        return
    if n <= 8:
        ax.legend(fontsize=8, framealpha=0.85)
    else:  # many lines: beside the axes, not over the curves
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def plot_name(kind: str, metric: str, x: str = "epoch") -> str:
    """File stem saying what a plot shows: curves_test-acc_vs_epoch, sensitivity_test-acc_vs_lr, ..."""
    m = metric.replace("/", "-")
    return {"curves": f"curves_{m}_vs_{'time' if x == 'time_s' else x}", "lr": "lr_schedule_vs_epoch",
            "sensitivity": f"sensitivity_{m}_vs_lr", "final": f"final_{m}_per_group"}[kind]


def figure_bytes(fig) -> tuple[bytes, bytes]:
    """(PNG, SVG) of `fig`, then the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    png, svg = io.BytesIO(), io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=130, bbox_inches="tight")
        fig.savefig(svg, format="svg", bbox_inches="tight")
    finally:
        plt.close(fig)
    return png.getvalue(), svg.getvalue()


class Plot(NamedTuple):
    stem: str  # the file name without suffix
    figure: Any
    caption: str  # what it shows, for people (the HTML page's heading)


def make_plots(kinds: Sequence[str], runs, metrics, by: Sequence[str], metric: str, summary, *, at: str = "final",
               include_failed: bool = False, xs: Sequence[str] = DEFAULT_X) -> tuple[list[Plot], list[str]]:
    """The figures asked for, and notes on those that could not be drawn; the final metric per group
    (the answer at a glance) comes first.

    Curves and lr plots show the runs that enter the statistics (a pruned trial's short schedule or a
    diverged run's curve would misdraw its group), as the tables do.
    """
    figs, notes = [], []
    used = statistic_runs(runs, include_failed)
    what = f"{at} {metric_label(metric)}"
    for kind in sorted(kinds, key=lambda k: k != "final"):
        if kind == "curves":
            panels = curve_panels(metric, metrics)
            for x in xs:
                figs.append(Plot(plot_name("curves", metric, x), plot_curves(used, metrics, by, panels, x),
                                 f"Learning curves ({', '.join(p.split('/')[0] for p in panels)}) against {X_LABELS[x]}"))
        elif kind == "lr":
            if ((metrics["split"] == "train") & (metrics["metric"] == "lr")).any():
                figs.append(Plot(plot_name("lr", metric), plot_lr(used, metrics, by), "Learning rate each configuration used"))
            else:
                notes.append("lr plot skipped: no run records train/lr")
        elif kind == "sensitivity":
            if "optimizer.lr" in runs and runs["optimizer.lr"].dropna().nunique() > 1:
                figs.append(Plot(plot_name("sensitivity", metric), plot_sensitivity(runs, by, metric, at=at, include_failed=include_failed),
                                 f"Sensitivity of the {what} to the learning rate"))
            else:
                notes.append("sensitivity plot skipped: optimizer.lr takes a single value")
        elif kind == "final":
            figs.append(Plot(plot_name("final", metric), plot_final(summary, metric, at=at), f"The {what} per group, with 95% CIs"))
        elif kind == "trajectory":  # 2-D objectives: contour lines and paths (dlexp/trajectory.py)
            from dlexp import trajectory

            # every run's path is drawn, not only those in the statistics: a diverging one is what
            # d2l's eta = 0.6 figure shows
            more, more_notes = trajectory.figures(runs, metrics, by)
            captions = {"trajectory_per_group": "Paths over the contour lines of the objective, one panel per group",
                        "trajectory_overlay": "Paths of every group over the contour lines of the objective"}
            for stem, fig in more:
                plain_figure(fig)
                figs.append(Plot(stem, fig, captions.get(stem, stem)))
            notes += more_notes
    return figs, notes


def parse_plots(text: str | None) -> list[str]:
    """'curves,sensitivity' -> ['curves', 'sensitivity']; 'all' -> every kind."""
    if not text:
        return []
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if "all" in kinds:
        return list(PLOT_KINDS)
    bad = [k for k in kinds if k not in PLOT_KINDS]
    if bad:
        raise ReportError(f"--plots: unknown plot {listing(bad[:1])!r}; plots: {', '.join(PLOT_KINDS)}, all")
    return list(dict.fromkeys(kinds))


def plain_figure(fig) -> None:
    """Escape `$` in the explicit texts of a figure made elsewhere (Optuna's: parameter names)."""
    import matplotlib.text

    for t in fig.findobj(matplotlib.text.Text):
        s = t.get_text()
        if "$" in s and "\\$" not in s and not s.startswith("$\\mathdefault"):
            t.set_text(plain(s))
