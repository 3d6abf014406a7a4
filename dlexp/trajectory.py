"""Trajectory plots of runs on 2-D objectives (`dataset=objective`): the contour lines of f with each
run's path over them, as d2l's `show_trace_2d` draws (12.3-12.8). Pure functions from the tidy tables
of `dlexp.results` (runs: one row per run with `dataset.function`; metrics: the `train/x1`,
`train/x2` rows, epoch 0 being the start) to matplotlib Figures; `dlexp report --plots trajectory`
saves them.

Two views: one panel per group (every run of the group drawn, so the seeds of a noisy path show their
spread), and all groups on one panel per function with a legend. The window is d2l's for the function
widened to hold the paths, up to one window's width on each side: a diverging path leaves the plot as
it leaves the book's figure.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from dlexp.data.objective import FUNCTIONS

FUNCTION_KEY = "dataset.function"


def paths(metrics) -> dict[str, Any]:
    """run_id -> (epochs, 2) float array of the points x1, x2 in epoch order (epoch 0 = the start)."""
    import numpy as np

    rows = metrics[(metrics["split"] == "train") & metrics["metric"].isin(["x1", "x2"])]
    out = {}
    for run_id, part in rows.groupby("run_id", sort=False):
        wide = part.pivot_table(index="epoch", columns="metric", values="value", aggfunc="last").sort_index()
        if {"x1", "x2"} <= set(wide.columns):
            out[run_id] = wide[["x1", "x2"]].to_numpy(dtype=float)
    return out


def objective_runs(runs):
    """The runs on `dataset=objective` (those with a known `dataset.function`)."""
    if FUNCTION_KEY not in runs.columns or "dataset.name" not in runs.columns:
        return runs.iloc[0:0]
    return runs[(runs["dataset.name"] == "objective") & runs[FUNCTION_KEY].isin(list(FUNCTIONS))]


def window(function: str, points: Sequence[Any]) -> tuple[tuple[float, float], tuple[float, float]]:
    """d2l's window for `function`, widened to hold `points` ((k, 2) arrays) up to one width a side."""
    import numpy as np

    (a1, b1), (a2, b2) = FUNCTIONS[function].window
    finite = [p[np.isfinite(p).all(axis=1)] for p in points]
    finite = [p for p in finite if len(p)]
    if finite:
        allp = np.concatenate(finite)
        w1, w2 = b1 - a1, b2 - a2
        lo1, hi1 = np.clip([allp[:, 0].min(), allp[:, 0].max()], a1 - w1, b1 + w1)
        lo2, hi2 = np.clip([allp[:, 1].min(), allp[:, 1].max()], a2 - w2, b2 + w2)
        pad1, pad2 = 0.05 * max(hi1 - lo1, 1e-9), 0.05 * max(hi2 - lo2, 1e-9)
        a1, b1 = min(a1, lo1 - pad1), max(b1, hi1 + pad1)
        a2, b2 = min(a2, lo2 - pad2), max(b2, hi2 + pad2)
    return (float(a1), float(b1)), (float(a2), float(b2))


def draw_contours(ax, function: str, win) -> None:
    """Contour lines of f over `win`, on a log-spaced set of levels when f spans decades (rosenbrock)."""
    import numpy as np
    import torch

    (a1, b1), (a2, b2) = win
    g1, g2 = np.meshgrid(np.linspace(a1, b1, 240), np.linspace(a2, b2, 240), indexing="xy")
    with torch.no_grad():
        z = FUNCTIONS[function].f(torch.from_numpy(g1), torch.from_numpy(g2)).numpy()
    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    if lo >= 0 and hi > 0 and hi / max(lo, hi * 1e-6) > 1e3:
        levels = np.geomspace(max(lo, hi * 1e-6), hi, 18)
    else:
        levels = 18
    ax.contour(g1, g2, z, levels=levels, colors="#1f77b4", linewidths=0.7, alpha=0.55)
    for m in FUNCTIONS[function].minima:
        if a1 <= m[0] <= b1 and a2 <= m[1] <= b2:
            ax.plot(*m, marker="*", color="k", ms=9, ls="none", zorder=5)
    ax.set_xlim(a1, b1)
    ax.set_ylim(a2, b2)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")


def _grouped(runs, by: Sequence[str]):
    """The objective runs with report's `group` labels, and the groups in order of their key values."""
    from dlexp.report import assign_groups

    runs = assign_groups(objective_runs(runs), by)
    ordered = runs.sort_values(list(by), na_position="last", kind="stable") if by else runs
    return runs, list(dict.fromkeys(ordered["group"]))


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _draw_path(ax, p, color, label=None, lw=1.4) -> None:
    ax.plot(p[:, 0], p[:, 1], "-o", color=color, ms=2.8, lw=lw, label=label, zorder=4)
    ax.plot(p[0, 0], p[0, 1], marker="s", color=color, ms=5, ls="none", zorder=6)  # the start


def plot_panels(runs, metrics, by: Sequence[str]):
    """One panel per group (and function): contours of f and the path of every run of the group."""
    import matplotlib.pyplot as plt

    runs, groups = _grouped(runs, by)
    ps = paths(metrics)
    panels = [(g, f) for g in groups for f in sorted(runs.loc[runs["group"] == g, FUNCTION_KEY].unique())]
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    colors = _colors(len(panels))
    for ax, (g, f), c in zip(axes.flat, panels, colors):
        ids = runs.loc[(runs["group"] == g) & (runs[FUNCTION_KEY] == f), "run_id"]
        mine = [ps[i] for i in ids if i in ps]
        draw_contours(ax, f, window(f, mine))
        for p in mine:
            _draw_path(ax, p, c, lw=1.2 if len(mine) > 1 else 1.5)
        end = mine[0][-1] if len(mine) == 1 else None
        where = f", end ({end[0]:.3g}, {end[1]:.3g})" if end is not None else f", {len(mine)} runs"
        ax.set_title(f"{g}\n{f}{where}", fontsize=8.5)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_overlay(runs, metrics, by: Sequence[str]):
    """One panel per function with every group's paths on it, told apart by colour in a legend."""
    import matplotlib.pyplot as plt

    runs, groups = _grouped(runs, by)
    ps = paths(metrics)
    functions = sorted(runs[FUNCTION_KEY].unique())
    fig, axes = plt.subplots(1, len(functions), figsize=(6.4 * len(functions), 4.8), squeeze=False)
    for ax, f in zip(axes[0], functions):
        here = runs[runs[FUNCTION_KEY] == f]
        draw_contours(ax, f, window(f, [ps[i] for i in here["run_id"] if i in ps]))
        for g, c in zip(groups, _colors(len(groups))):
            ids = [i for i in here.loc[here["group"] == g, "run_id"] if i in ps]
            for k, i in enumerate(ids):
                _draw_path(ax, ps[i], c, label=g if k == 0 else None)
        ax.set_title(f"{f}: {FUNCTIONS[f].formula}", fontsize=9)
        if len(groups) <= 8:
            ax.legend(fontsize=7.5, framealpha=0.85)
        else:  # many groups: beside the axes, not over the paths
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def figures(runs, metrics, by: Sequence[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """The trajectory figures as (file stem, Figure), and a note when no run is on an objective."""
    obj = objective_runs(runs)
    if obj.empty or not paths(metrics[metrics["run_id"].isin(obj["run_id"])]):
        return [], ["trajectory plot skipped: no run minimizes a 2-D objective (dataset=objective model=point)"]
    return [("trajectory_per_group", plot_panels(runs, metrics, by)), ("trajectory_overlay", plot_overlay(runs, metrics, by))], []
