"""Statistics, grouping and plots over the tables of `dlexp.results`: pure functions, no printing.

Inputs are the run table of `load_runs` (one row per run: flattened config columns such as
`optimizer.lr`, summary fields, `final.<split>/<metric>`, `best.<split>/<metric>`) and the tidy
metrics table of `load_metrics` (run_id, epoch, step, split, metric, value, time_s). Outputs are
DataFrames (one row per group) and matplotlib Figures (returned, so tests can count their lines).

A *group* is a set of runs that differ only by their replicate keys (`seed`, `fold`); `by` names
the config keys whose values tell groups apart. Statistics use the runs with status `ok` unless
`include_failed` is set; failed runs are always counted.

Choices, stated once:
- CI of a group mean: Student t interval, mean +- t_{0.975, n-1} s / sqrt(n); or a percentile
  bootstrap of the mean (10,000 resamples, seed 0, so the report is reproducible).
- Paired comparison with a baseline: runs are paired by (seed, fold); the paired t-test
  (scipy.stats.ttest_rel) is the primary test. The Wilcoxon signed-rank test (scipy.stats.wilcoxon)
  is reported as well when there are at least 6 pairs: with 5 pairs or fewer its smallest two-sided
  p-value is 0.0625, so it could never reject at 0.05. Each family of p-values is Holm-corrected
  across the groups compared.
- Time to target (AlgoPerf style): the first epoch at which the metric reaches the target
  (>= for accuracies, <= for losses and errors); a run that never reaches it is a miss and counts as
  infinite time, so a group's median is infinite when half its runs or more miss.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

REPLICATE_KEYS = ("seed", "fold")
# columns that never name a group by default: where a run was written, its label, hardware knobs,
# and the bookkeeping columns of sweeps and studies
NOISE_KEYS = frozenset({
    "results_dir", "name", "trainer.device", "trainer.eval_batch_size", "trainer.deterministic",
    "study", "trial", "candidate",
})
SUMMARY_FIELDS = frozenset({"run_id", "status", "reason", "duration_s", "epochs_completed", "steps"})
LOWER_IS_BETTER = ("loss", "rmse", "log_rmse", "mse", "mae", "error", "err")
PLOT_KINDS = ("curves", "lr", "sensitivity", "final", "trajectory")
N_BOOTSTRAP = 10_000
MIN_WILCOXON_PAIRS = 6


class ReportError(ValueError):
    """Bad input to the report: the message is one line that says what exists instead."""


# ---------------------------------------------------------------- keys, tasks, metrics


def config_keys(runs) -> list[str]:
    """The flattened config columns of the run table (`optimizer.lr`, `seed`, ...).

    load_runs mixes config and summary columns; config keys are the dotted ones plus the
    top-level config keys `seed`, `results_dir`, `name` (summary fields have no dot, and the
    `final.`/`best.` columns are metrics).
    """
    keys = []
    for c in runs.columns:
        if c.startswith(("final.", "best.")):
            continue
        if "." in c or c in ("seed", "results_dir", "name"):
            keys.append(c)
    return keys


def resolve_key(key: str, runs) -> str:
    """`optimizer` -> `optimizer.name` (a group alone means its choice); `optimizer.lr` stays."""
    cols = set(runs.columns)
    if key in cols and key not in ("final", "best"):
        return key
    if f"{key}.name" in cols:
        return f"{key}.name"
    known = sorted(set(config_keys(runs)) | {c for c in REPLICATE_KEYS[1:] + ("study", "trial", "candidate") if c in cols})
    raise ReportError(f"unknown key {key!r}; keys: {', '.join(known)}")


def varying_keys(runs) -> list[str]:
    """Config keys whose defined values differ across runs, minus replicate and noise keys.

    A key present in some runs only (`optimizer.momentum` for sgd, missing for adam) varies only
    if it takes two values where it is defined: its absence is already told by `optimizer.name`.
    """
    keys = []
    for k in config_keys(runs):
        if k in REPLICATE_KEYS or k in NOISE_KEYS or k.endswith(".seed"):
            continue
        if runs[k].dropna().astype(str).nunique() > 1:
            keys.append(k)
    return keys


def metric_columns(runs, at: str = "final") -> list[str]:
    """`split/metric` names recorded in the summaries at `final` or `best` (lr and epoch_s left out)."""
    prefix = f"{at}."
    names = [c[len(prefix):] for c in runs.columns if c.startswith(prefix)]
    return sorted(n for n in names if n.split("/")[-1] not in ("lr", "epoch_s") and runs[prefix + n].notna().any())


def task_of(names: Iterable[str]) -> str | None:
    """'classification' if an accuracy is recorded, 'regression' if an rmse is, else None."""
    metrics = {n.split("/")[-1] for n in names}
    if "acc" in metrics:
        return "classification"
    if "rmse" in metrics:
        return "regression"
    return None


def run_tasks(runs):
    """One task per run (a Series indexed like `runs`), read from the metrics in its summary."""
    cols = [c for c in runs.columns if c.startswith("final.")]
    return runs.apply(lambda r: task_of(c[len("final."):] for c in cols if _is_number(r[c])), axis=1)


def check_comparable(runs) -> None:
    """Refuse runs of several tasks or datasets: their metrics do not mean the same thing."""
    tasks = run_tasks(runs).dropna()
    if tasks.nunique() > 1:
        counts = ", ".join(f"{t}: {n} runs" for t, n in tasks.value_counts().sort_index().items())
        raise ReportError(f"cannot compare runs of different tasks ({counts}); pick one with --where dataset=NAME")
    if "dataset.name" in runs.columns and runs["dataset.name"].dropna().nunique() > 1:
        counts = ", ".join(f"{d}: {n} runs" for d, n in runs["dataset.name"].value_counts().sort_index().items())
        raise ReportError(f"cannot compare runs on different datasets ({counts}); pick one with --where dataset=NAME")


def default_metric(runs, at: str = "final") -> str:
    """test/acc for classification, test/rmse for regression; val/... when there is no test split."""
    names = metric_columns(runs, at)
    base = {"classification": "acc", "regression": "rmse"}.get(task_of(names))
    for split in ("test", "val", "train"):
        if base and f"{split}/{base}" in names:
            return f"{split}/{base}"
    for split in ("test", "val", "train"):
        if f"{split}/loss" in names:
            return f"{split}/loss"
    if not names:
        raise ReportError("the runs record no metrics in their summaries")
    return names[0]


def resolve_metric(metric: str | None, runs, at: str = "final") -> str:
    """Check `split/metric` against the recorded ones (listing them when unknown)."""
    names = metric_columns(runs, at)
    if metric is None:
        return default_metric(runs, at)
    if metric not in names:
        raise ReportError(f"unknown metric {metric!r} at {at}; metrics: {', '.join(names) or 'none'}")
    return metric


def lower_is_better(metric: str) -> bool:
    """Losses and errors go down; accuracies go up."""
    return metric.split("/")[-1] in LOWER_IS_BETTER


def parse_target(text: str) -> tuple[str, float]:
    """'val/acc=0.85' -> ('val/acc', 0.85)."""
    name, sep, value = text.partition("=")
    try:
        if not sep or "/" not in name:
            raise ValueError
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return name.strip(), number
    except ValueError:
        raise ReportError(f"--target: expected SPLIT/METRIC=VALUE such as val/acc=0.85, got {text!r}") from None


# ---------------------------------------------------------------- statistics


def t_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student t interval of the mean: mean +- t_{(1+level)/2, n-1} * s / sqrt(n); NaN for n < 2."""
    import numpy as np
    from scipy import stats

    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 2:
        return (math.nan, math.nan)
    mean, sd = x.mean(), x.std(ddof=1)
    if sd == 0:
        return (float(mean), float(mean))
    half = stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return (float(mean - half), float(mean + half))


def bootstrap_interval(x: Sequence[float], level: float = 0.95, n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, seeded (same data, same interval); NaN for n < 2."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)  # (n_resamples,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: sort ascending, p_(i) * (m - i + 1), running max, clip at 1.

    NaN p-values are kept as NaN and do not count in m.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def _is_number(v: Any) -> bool:
    try:
        return v is not None and not math.isnan(float(v))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- groups


def _short(key: str) -> str:
    return key[: -len(".name")] if key.endswith(".name") else key.rsplit(".", 1)[-1]


def _fmt_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def group_label(by: Sequence[str], values: Sequence[Any]) -> str:
    """'sgd lr=0.01': a group choice (`optimizer.name`) by its value, other keys as short=value."""
    if not by:
        return "all runs"
    shorts = [_short(k) for k in by]
    parts = []
    for k, s, v in zip(by, shorts, values):
        name = s if shorts.count(s) == 1 else k
        parts.append(_fmt_value(v) if k.endswith(".name") else f"{name}={_fmt_value(v)}")
    return " ".join(parts)


def assign_groups(runs, by: Sequence[str]):
    """A copy of `runs` with a `group` label column; groups ordered by their key values."""
    runs = runs.copy()
    if not by:
        runs["group"] = group_label([], [])
        return runs
    keys = runs[list(by)].astype(object).where(runs[list(by)].notna(), None)
    runs["group"] = [group_label(by, tuple(row)) for row in keys.itertuples(index=False)]
    return runs


def _group_order(runs, by: Sequence[str]) -> list[str]:
    if not by:
        return list(dict.fromkeys(runs["group"]))
    order = runs.sort_values(list(by), na_position="last", kind="stable")
    return list(dict.fromkeys(order["group"]))


def _statistic_runs(runs, include_failed: bool):
    status = runs["status"].fillna("unknown") if "status" in runs.columns else None
    if include_failed or status is None:
        return runs
    return runs[status == "ok"]


def summarize_groups(runs, by: Sequence[str], metric: str, *, at: str = "final", ci: str = "t",
                     include_failed: bool = False):
    """One row per group: key values, group, n, failed, mean, std, ci_low, ci_high, time_s.

    `n` counts the runs whose value enters the statistics; `failed` counts runs with a status
    other than ok (left out unless include_failed), `failed_detail` says which; `time_s` is the
    total wall time of all the group's runs.
    """
    import numpy as np
    import pandas as pd

    if ci not in ("t", "bootstrap"):
        raise ReportError(f"--ci: expected t or bootstrap, got {ci!r}")
    col = f"{at}.{metric}"
    runs = assign_groups(runs, by)
    used = _statistic_runs(runs, include_failed)
    rows = []
    for g in _group_order(runs, by):
        members = runs[runs["group"] == g]
        status = members["status"].fillna("unknown") if "status" in members else pd.Series(["ok"] * len(members))
        bad = status[status != "ok"].value_counts().sort_index()
        values = used.loc[used["group"] == g, col].astype(float).dropna().to_numpy() if col in used else np.array([])
        interval = t_interval(values) if ci == "t" else bootstrap_interval(values)
        row = {k: members[k].iloc[0] for k in by}
        row.update(
            group=g,
            n=int(len(values)),
            failed=int(bad.sum()),
            failed_detail=", ".join(f"{c} {s}" for s, c in bad.items()),
            mean=float(values.mean()) if len(values) else math.nan,
            std=float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            ci_low=interval[0],
            ci_high=interval[1],
            time_s=float(members["duration_s"].astype(float).sum()) if "duration_s" in members else math.nan,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def time_to_target(runs, metrics, by: Sequence[str], target: str, value: float, *, include_failed: bool = False):
    """Per group: target_hits, target_n, epochs_to_target, s_to_target (medians, inf = a miss).

    Per run: the first epoch (and its `time_s`) at which `target` (split/metric) is >= value for
    accuracies, <= value for losses and errors; never reaching it is a miss, infinite time.
    """
    import numpy as np
    import pandas as pd

    split, _, name = target.partition("/")
    rows = metrics[(metrics["split"] == split) & (metrics["metric"] == name)]
    if rows.empty:
        known = sorted(set(metrics["split"].astype(str) + "/" + metrics["metric"].astype(str)))
        raise ReportError(f"--target: unknown metric {target!r}; metrics: {', '.join(known)}")
    runs = _statistic_runs(assign_groups(runs, by), include_failed)
    reached = rows["value"] <= value if lower_is_better(target) else rows["value"] >= value
    first = rows[reached].sort_values(["run_id", "epoch"]).groupby("run_id").first()
    per_run = runs[["run_id", "group"]].copy()
    per_run["epochs"] = per_run["run_id"].map(first["epoch"]).astype(float).fillna(np.inf)
    per_run["seconds"] = per_run["run_id"].map(first["time_s"]).astype(float).fillna(np.inf)
    out = []
    for g, part in per_run.groupby("group", sort=False):
        out.append({
            "group": g,
            "target_hits": int(np.isfinite(part["epochs"]).sum()),
            "target_n": int(len(part)),
            "epochs_to_target": float(np.median(part["epochs"])),
            "s_to_target": float(np.median(part["seconds"])),
        })
    return pd.DataFrame(out, columns=["group", "target_hits", "target_n", "epochs_to_target", "s_to_target"])


def filter_runs(runs, where: str):
    """Keep the runs matching every KEY=VALUE of a comma-separated `where` (optimizer=adam means optimizer.name)."""
    for cond in (c.strip() for c in where.split(",") if c.strip()):
        key, sep, value = cond.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"--where: expected KEY=VALUE such as dataset=digits, got {cond!r}")
        if key.strip() in ("study", "candidate", "trial", "fold") and key.strip() not in runs.columns:
            raise ReportError(f"--where: no run has a {key.strip()!r} column")
        col = key.strip() if key.strip() in runs.columns else resolve_key(key.strip(), runs)
        runs = runs[runs[col].map(lambda v: _matches(v, value.strip()))]
    if runs.empty:
        raise ReportError(f"--where: no run matches {where}")
    return runs


def parse_baseline(text: str, runs, by: Sequence[str]) -> tuple[str, str]:
    """'optimizer=sgd' -> ('optimizer.name', 'sgd'); the key must be one of the grouping keys."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ReportError(f"--baseline: expected KEY=VALUE such as optimizer=sgd, got {text!r}")
    key = resolve_key(key.strip(), runs)
    if key not in by:
        raise ReportError(f"--baseline: {key} is not a grouping key; groups are by {', '.join(by) or 'nothing'} (add it to --by)")
    return key, value.strip()


def _matches(v: Any, value: str) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    if str(v) == value or _fmt_value(v) == value:
        return True
    try:
        return float(v) == float(value)
    except (TypeError, ValueError):
        return False


def compare_to_baseline(runs, by: Sequence[str], metric: str, key: str, value: str, *, at: str = "final",
                        include_failed: bool = False):
    """Paired comparison of every group with its baseline group. Returns (table, notes).

    The baseline of a group is the group with `key == value` and the same values of the other
    grouping keys (so `--by optimizer,optimizer.lr --baseline optimizer=sgd` compares adam at
    lr=0.1 with sgd at lr=0.1); with a single baseline group every group is compared with it.
    Runs are paired by seed (and fold); runs without a partner are dropped and named in a note;
    several runs with the same seed in one group are averaged first.
    Columns: group, baseline, n_pairs, diff (group - baseline), diff_ci_low, diff_ci_high,
    p_t, p_t_holm, p_wilcoxon, p_wilcoxon_holm.
    """
    import numpy as np
    import pandas as pd
    from scipy import stats

    col = f"{at}.{metric}"
    runs = assign_groups(runs, by)
    base_mask = runs[key].map(lambda v: _matches(v, value))
    if not base_mask.any():
        values = sorted({_fmt_value(v) for v in runs[key]})
        raise ReportError(f"--baseline: no group has {key}={value}; {key} takes {', '.join(values)}")
    used = _statistic_runs(runs, include_failed)
    pair_keys = [k for k in REPLICATE_KEYS if k in used.columns and used[k].notna().any()]
    if not pair_keys:
        raise ReportError("--baseline: the runs have no seed or fold to pair them by")
    others = [k for k in by if k != key]
    base_groups = list(dict.fromkeys(runs.loc[base_mask, "group"]))
    order = _group_order(runs, by)

    def values_of(g):
        part = used[used["group"] == g]
        v = part.groupby(pair_keys, dropna=False)[col].mean().astype(float).dropna()
        return v

    def _same(a, b):
        return (a is None and b is None) or _fmt_value(a) == _fmt_value(b)

    rows, notes = [], []
    for g in order:
        if g in base_groups:
            continue
        first = runs[runs["group"] == g].iloc[0]
        if len(base_groups) == 1:
            ref = base_groups[0]
        else:
            cands = [b for b in base_groups
                     if all(_same(runs[runs["group"] == b].iloc[0][k], first[k]) for k in others)]
            if len(cands) != 1:
                notes.append(f"{g}: no baseline group with {key}={value} and the same {', '.join(others)}; not compared")
                continue
            ref = cands[0]
        a, b = values_of(g), values_of(ref)
        shared = a.index.intersection(b.index)
        lone_a, lone_b = a.index.difference(shared), b.index.difference(shared)
        if len(lone_a) or len(lone_b):
            def names(ix):
                return ", ".join(_fmt_value(i) if not isinstance(i, tuple) else "/".join(map(_fmt_value, i)) for i in ix)
            what = "/".join(pair_keys)
            parts = []
            if len(lone_a):
                parts.append(f"{len(lone_a)} run(s) of {g} ({what} {names(lone_a)})")
            if len(lone_b):
                parts.append(f"{len(lone_b)} run(s) of {ref} ({what} {names(lone_b)})")
            notes.append(f"{g} vs {ref}: {' and '.join(parts)} without a partner, dropped from the pairing")
        x, y = a.loc[shared].to_numpy(), b.loc[shared].to_numpy()
        d = x - y
        n = len(d)
        p_t = p_w = math.nan
        if n >= 2 and np.std(d) > 0:
            p_t = float(stats.ttest_rel(x, y).pvalue)
        if n >= MIN_WILCOXON_PAIRS and np.any(d != 0):
            p_w = float(stats.wilcoxon(x, y).pvalue)
        lo, hi = t_interval(d)
        rows.append({"group": g, "baseline": ref, "n_pairs": n, "diff": float(d.mean()) if n else math.nan,
                     "diff_ci_low": lo, "diff_ci_high": hi, "p_t": p_t, "p_wilcoxon": p_w})
    table = pd.DataFrame(rows, columns=["group", "baseline", "n_pairs", "diff", "diff_ci_low", "diff_ci_high", "p_t", "p_wilcoxon"])
    table["p_t_holm"] = holm(table["p_t"].tolist())
    table["p_wilcoxon_holm"] = holm(table["p_wilcoxon"].tolist())
    return table, notes


def report_table(summary, target=None, comparison=None):
    """The one wide table written out: group statistics, then time to target, then the comparison."""
    table = summary
    if target is not None:
        table = table.merge(target, on="group", how="left")
    if comparison is not None:
        table = table.merge(comparison, on="group", how="left")
    return table


# ---------------------------------------------------------------- table formats


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return ""
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == int(f) and abs(f) < 1e6 and not isinstance(v, float):
        return str(int(f))
    return f"{f:.4g}"


def to_markdown(table) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b) if a != "\\" else s.replace(a, "\x00")
    return s.replace("\x00", r"\textbackslash{}")


def to_latex(table, caption: str = "") -> str:
    cols = list(table.columns)
    align = "".join("r" if table[c].dtype.kind in "iuf" else "l" for c in cols)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\begin{{tabular}}{{{align}}}", r"\hline",
             " & ".join(_latex_escape(c) for c in cols) + r" \\", r"\hline"]
    for row in table.itertuples(index=False):
        lines.append(" & ".join(_latex_escape(_cell(v)) for v in row) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _json_value(v: Any) -> Any:
    import numpy as np

    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; a miss in time to target shows in target_hits
    return v


def to_json(table, meta: dict[str, Any]) -> str:
    import json

    rows = [{k: _json_value(v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    return json.dumps({**{k: _json_value(v) for k, v in meta.items()}, "groups": rows}, indent=2, default=str) + "\n"


def format_table(table, fmt: str, meta: dict[str, Any]) -> str:
    """The report table as md, csv, latex or json text."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "md":
        head = f"## {meta.get('metric', '')} at {meta.get('at', 'final')}\n\n"
        notes = "".join(f"- {n}\n" for n in meta.get("notes", []))
        return head + to_markdown(table) + ("\n" + notes if notes else "")
    if fmt == "latex":
        return to_latex(table, caption=f"{meta.get('metric', '')} at {meta.get('at', 'final')}: mean, std and 95% CI per group")
    if fmt == "json":
        return to_json(table, meta)
    raise ReportError(f"--format: expected md, csv, latex or json, got {fmt!r}")


def html_page(title: str, table, notes: Sequence[str], images: Sequence[tuple[str, bytes]]) -> str:
    """One self-contained page: the table, the notes, and PNG images as base64 data URIs."""
    import base64
    import html

    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "img{max-width:100%;margin:1em 0;display:block}</style>",
        "</head><body>", f"<h1>{html.escape(title)}</h1>",
        "<table><thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns) + "</tr></thead><tbody>",
    ]
    for row in table.itertuples(index=False):
        parts.append("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>")
    parts.append("</tbody></table>")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for name, png in images:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- plots


_METRIC_NAMES = {"acc": "accuracy", "loss": "loss", "rmse": "RMSE", "log_rmse": "log RMSE", "lr": "learning rate"}


def metric_label(metric: str) -> str:
    """'test/acc' -> 'test accuracy'."""
    split, _, name = metric.rpartition("/")
    return f"{split} {_METRIC_NAMES.get(name, name)}".strip()


def _spans_decades(values) -> bool:
    import numpy as np

    v = np.asarray([x for x in values if _is_number(x) and float(x) > 0], dtype=float)
    return len(v) > 1 and v.max() / v.min() >= 10


def _curve_stats(table, x: str):
    """Mean and 95% t band over runs at each epoch; `x` is epoch or the mean time_s at that epoch."""
    import numpy as np
    from scipy import stats

    by_epoch = table.groupby("epoch")
    mean = by_epoch["value"].mean()
    sd = by_epoch["value"].std(ddof=1)
    n = by_epoch["value"].count()
    half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half = half.where(n > 1)
    xs = mean.index.to_numpy(dtype=float) if x == "epoch" else by_epoch["time_s"].mean().to_numpy(dtype=float)
    return xs, mean.to_numpy(), (mean - half).to_numpy(), (mean + half).to_numpy(), int(n.max())


def plot_curves(runs, metrics, by: Sequence[str], panels: Sequence[str], x: str = "epoch"):
    """Learning curves: one axes per metric in `panels`, one line (mean) + 95% band per group.

    x='epoch', or x='time_s' (wall time: the mean over the group's runs of the seconds at
    which each epoch ended).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    runs = assign_groups(runs, by)
    groups = _group_order(runs, by)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    colors = _colors(len(groups))
    for ax, metric in zip(axes[0], panels):
        split, _, name = metric.partition("/")
        part = metrics[(metrics["split"] == split) & (metrics["metric"] == name)]
        n_max = 0
        values = []
        for g, c in zip(groups, colors):
            ids = runs.loc[runs["group"] == g, "run_id"]
            t = part[part["run_id"].isin(ids)]
            if t.empty:
                continue
            xs, mean, lo, hi, n = _curve_stats(t, x)
            if lower_is_better(metric):  # a wide band of a loss may dip below 0, which a log axis cannot show
                lo = np.maximum(lo, np.nanmin(mean) * 1e-3)
            n_max = max(n_max, n)
            values.extend(mean)
            ax.plot(xs, mean, color=c, label=g, lw=1.8, marker="o" if len(xs) <= 12 else None, ms=3)
            ax.fill_between(xs, lo, hi, color=c, alpha=0.18, lw=0)
        ax.set_xlabel("epoch" if x == "epoch" else "wall time (seconds)")
        if x == "epoch":
            _integer_ticks(ax.xaxis)
        ax.set_ylabel(metric_label(metric))
        if lower_is_better(metric) and _spans_decades(values):
            ax.set_yscale("log")
            ax.set_ylabel(metric_label(metric) + " (log scale)")
        ax.set_title(f"{metric_label(metric)}: mean and 95% CI over runs (up to n={n_max})", fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0][-1], len(groups))
    fig.tight_layout()
    return fig


def plot_lr(runs, metrics, by: Sequence[str]):
    """The learning rate actually used (metric train/lr), per epoch, one line per group."""
    import matplotlib.pyplot as plt

    runs = assign_groups(runs, by)
    groups = _group_order(runs, by)
    part = metrics[(metrics["split"] == "train") & (metrics["metric"] == "lr")]
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    values = []
    styles = ["-", "--", "-.", ":"]
    for i, (g, c) in enumerate(zip(groups, _colors(len(groups)))):
        t = part[part["run_id"].isin(runs.loc[runs["group"] == g, "run_id"])]
        if t.empty:
            continue
        s = t.groupby("epoch")["value"].mean()
        values.extend(s)
        # groups often share a schedule: thinner and dashed lines drawn later keep the earlier ones visible
        lw = max(1.0, 3.2 - 0.5 * i)
        ax.plot(s.index, s.to_numpy(), color=c, label=g, lw=lw, ls=styles[i % len(styles)],
                marker="o" if len(s) <= 12 else None, ms=lw + 1.5, drawstyle="steps-post")
    ax.set_xlabel("epoch")
    _integer_ticks(ax.xaxis)
    ax.set_ylabel("learning rate")
    if _spans_decades(values):
        ax.set_yscale("log")
        ax.set_ylabel("learning rate (log scale)")
    ax.set_title("learning rate used (value at the end of each epoch)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(fig, ax, len(groups))
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
    used = assign_groups(_statistic_runs(runs, include_failed), line_keys)
    lines = _group_order(used, line_keys)
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
        ax.errorbar(xs, mean, yerr=err, color=c, label=g, lw=1.8, marker="o", ms=4, capsize=3)
    if _spans_decades(used[lr_key]):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
    else:
        ax.set_xlabel("learning rate")
    ax.set_ylabel(f"{at} {metric_label(metric)}")
    ax.set_title(f"lr sensitivity: {at} {metric} (mean and 95% CI over seeds)", fontsize=10)
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
    ax.set_yticks(ys, [f"{g} (n={n})" for g, n in zip(s["group"], s["n"])])
    ax.set_xlabel(f"{at} {metric_label(metric)} (mean, 95% CI)")
    ax.set_title(f"{at} {metric} per group", fontsize=10)
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
    if n <= 8:
        ax.legend(fontsize=8, framealpha=0.85)
    else:  # many groups: beside the axes, not over the curves
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def plot_name(kind: str, metric: str, x: str = "epoch") -> str:
    """File stem saying what a plot shows: curves_test-acc_vs_epoch, sensitivity_test-acc_vs_lr, ..."""
    m = metric.replace("/", "-")
    return {"curves": f"curves_{m}_vs_{'epoch' if x == 'epoch' else 'time'}", "lr": "lr_schedule_vs_epoch",
            "sensitivity": f"sensitivity_{m}_vs_lr", "final": f"final_{m}_per_group"}[kind]


def save_figure(fig, out_dir, stem: str) -> bytes:
    """Save `fig` as <stem>.png and <stem>.svg under out_dir; return the PNG bytes (for --html)."""
    import io
    from pathlib import Path

    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    png = buf.getvalue()
    from dlexp.atomic import atomic_write

    atomic_write(out_dir / f"{stem}.png", png)
    atomic_write(out_dir / f"{stem}.svg", lambda tmp: fig.savefig(tmp, format="svg", bbox_inches="tight"))
    plt.close(fig)
    return png


def make_plots(kinds: Sequence[str], runs, metrics, by: Sequence[str], metric: str, summary, *, at: str = "final",
               include_failed: bool = False) -> tuple[list[tuple[str, Any]], list[str]]:
    """The figures asked for, as (file stem, Figure), and notes on those that could not be drawn."""
    figs, notes = [], []
    for kind in kinds:
        if kind == "curves":
            panels = [metric] + (["train/loss"] if metric != "train/loss" else [])
            for x in ("epoch", "time_s"):
                figs.append((plot_name("curves", metric, x), plot_curves(_statistic_runs(runs, include_failed), metrics, by, panels, x)))
        elif kind == "lr":
            if ((metrics["split"] == "train") & (metrics["metric"] == "lr")).any():
                figs.append((plot_name("lr", metric), plot_lr(runs, metrics, by)))
            else:
                notes.append("lr plot skipped: no run records train/lr")
        elif kind == "sensitivity":
            if "optimizer.lr" in runs and runs["optimizer.lr"].dropna().nunique() > 1:
                figs.append((plot_name("sensitivity", metric), plot_sensitivity(runs, by, metric, at=at, include_failed=include_failed)))
            else:
                notes.append("sensitivity plot skipped: optimizer.lr takes a single value")
        elif kind == "final":
            figs.append((plot_name("final", metric), plot_final(summary, metric, at=at)))
        elif kind == "trajectory":  # 2-D objectives: contour lines and paths (dlexp/trajectory.py)
            from dlexp import trajectory

            # every run's path is drawn: a diverging one is what d2l's eta = 0.6 figure shows
            more_figs, more_notes = trajectory.figures(runs, metrics, by)
            figs += more_figs
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
        raise ReportError(f"--plots: unknown plot {bad[0]!r}; plots: {', '.join(PLOT_KINDS)}, all")
    return kinds


# ---- a sweep's Optuna study -----------------------------------------------------------------------


def study_trials(study):
    """The study's trials as a table: trial, state, value, params, duration (s)."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration"))
    df = df.rename(columns={"number": "trial"})
    df.columns = [c.replace("params_", "") for c in df.columns]
    if "duration" in df:
        df["duration_s"] = df.pop("duration").dt.total_seconds()
    return df


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
            notes.append(f"{stem} plot skipped: {str(e).splitlines()[0]}")
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        fig = first.figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 4.5))
        figs.append((f"study_{study.study_name}_{stem}", fig))
    return figs, notes
