"""A sweep's Optuna study in the report: its trials as a table, Optuna's matplotlib views, the best trial."""

from __future__ import annotations

import re
from typing import Any

from dlexp.report.plots import plain_figure
from dlexp.report.runs import ReportError, clip

# the names `dlexp sweep --study` accepts; the report builds file names from them
STUDY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def check_study_name(name: str) -> str:
    """`--study NAME` as `dlexp sweep --study` takes it: 1-100 letters, digits, '.', '_' or '-' (not '.' or '..')."""
    if not STUDY_NAME.fullmatch(name) or name in (".", ".."):
        raise ReportError(f"--study: use 1-100 letters, digits, '.', '_' or '-', got {clip(name, 80)!r}")
    return name


def study_trials(study):
    """The study's trials as a table: trial, state, value, params, duration (s)."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration"))
    df = df.rename(columns={"number": "trial"})
    df.columns = [c.replace("params_", "") for c in df.columns]
    if "duration" in df:
        df["duration_s"] = df.pop("duration").dt.total_seconds()
    return df


def study_answer(trials, name: str, minimize: bool, metric: str) -> list[str]:
    """The best trial and how many trials the table holds, in two sentences."""
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=["value"]) if "value" in trials else trials.iloc[0:0]
    counts = ", ".join(f"{n} {s.lower()}" for s, n in trials["state"].value_counts().items())
    if done.empty:
        return [f"study {name}: no complete trial yet ({len(trials)} trials: {counts})"]
    best = done.sort_values("value", ascending=minimize, kind="stable").iloc[0]
    params = [c for c in trials.columns if c not in ("trial", "state", "value", "duration_s")]
    shown = ", ".join(f"{p}={best[p]:.4g}" if isinstance(best[p], float) else f"{p}={best[p]}" for p in params)
    return [f"Best: trial {best['trial']}, {metric} {best['value']:.4g} ({'lowest' if minimize else 'highest'} of "
            f"{len(done)} complete){': ' + shown if shown else ''}", f"{len(trials)} trials: {counts}"]


def study_plots(study) -> tuple[list[tuple[str, Any]], list[str]]:
    """Optuna's matplotlib views of a study: optimization history, parameter importances, slices.
    Returns [(stem, figure)] and notes for the views that cannot be drawn (too few trials, say)."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ov

    figs, notes = [], []
    views = (("history", ov.plot_optimization_history), ("importances", ov.plot_param_importances), ("slice", ov.plot_slice))
    for stem, plot in views:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # label the value axis with the metric the sweep recorded (Optuna's default: "Objective Value")
                axes = plot(study, target_name=study.user_attrs.get("metric", "Objective Value"))
        except (ValueError, RuntimeError) as e:
            notes.append(f"{stem} plot skipped: {clip(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        fig = first.figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 4.5))
        plain_figure(fig)
        figs.append((f"study_{study.study_name}_{stem}", fig))
    return figs, notes
