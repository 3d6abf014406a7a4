"""Which runs a report is about: kinds, tasks, config keys, metrics, filters, baselines.

Works on the run table of `dlexp.results.load_runs` (one row per run: flattened config columns such
as `optimizer.lr`, summary fields, `final.<split>/<metric>`, `best.<split>/<metric>`,
`best_epoch.<metric>`). Nothing here prints; what a report leaves out comes back as notes.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

# the runs of one configuration that are replicates of each other, and the keys that pair them
REPLICATE_KEYS = ("seed", "repeat", "fold")
# columns that never name a group by default: where a run was written, its label, hardware knobs,
# and the bookkeeping columns of sweeps and studies
NOISE_KEYS = frozenset({
    "results_dir", "name", "trainer.device", "trainer.eval_batch_size", "trainer.deterministic",
    "study", "trial", "candidate",
})
LOWER_IS_BETTER = ("loss", "rmse", "log_rmse", "mse", "mae", "error", "err")
# run: a plain `dlexp run` (or a kfold refit); fold: one fold of `dlexp kfold`; trial: a sweep trial
KINDS = ("run", "fold", "trial")
KIND_NAMES = {"run": "plain runs", "fold": "kfold fold runs", "trial": "sweep trials"}
MAX_ECHO = 200  # characters of file content an error message may repeat


class ReportError(ValueError):
    """Bad input to the report: the message is one line that says what exists instead."""


def clip(text: Any, limit: int = MAX_ECHO) -> str:
    """`text` on one line, at most `limit` characters: messages that echo file content stay short."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 20] + f"... ({len(s)} chars)"


def listing(items: Iterable[Any], limit: int = 12) -> str:
    """'a, b, c' for at most `limit` items (each clipped), then '... and N more'."""
    items = [clip(i, 60) for i in items]
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f", ... and {more} more" if more > 0 else "")


# ---------------------------------------------------------------- kinds


def run_kinds(runs):
    """`trial` for a sweep trial (also one fold of a --cv trial), `fold` for a kfold fold, else `run`."""
    import pandas as pd

    kinds = pd.Series("run", index=runs.index, dtype=object)
    if "fold" in runs.columns:
        kinds[runs["fold"].notna()] = "fold"
    if "trial" in runs.columns:
        kinds[runs["trial"].notna()] = "trial"
    return kinds


def select_kinds(runs, kind: str | None) -> tuple[Any, list[str]]:
    """The runs of the kinds asked for (comma-separated, or `all`), and a note on what was left out.

    By default one kind only, the first present of run, fold, trial: a kfold study's folds and a
    sweep's trials answer other questions than plain runs do (and folds record no test metrics), so
    pooling them into `--by optimizer` groups would mix unrelated runs.
    """
    runs = runs.assign(kind=run_kinds(runs))
    present = [k for k in KINDS if (runs["kind"] == k).any()]
    if kind is None:
        chosen = present[:1]
    else:
        asked = [k.strip() for k in kind.split(",") if k.strip()]
        if "all" in asked:
            asked = list(KINDS)
        bad = [k for k in asked if k not in KINDS]
        if bad or not asked:
            raise ReportError(f"--kind: expected run, fold, trial or all, got {clip(kind)!r}")
        chosen = [k for k in asked if k in present]
        if not chosen:
            raise ReportError(f"--kind {kind}: no such runs; there are {', '.join(_kind_counts(runs, present))}")
    left = [k for k in present if k not in chosen]
    notes = []
    if left:
        counts = ", ".join(_kind_counts(runs, left))
        how = " or ".join(f"--kind {k}" for k in left)
        notes.append(f"left out {counts}: report them with {how}, or pool every kind with --kind all")
    return runs[runs["kind"].isin(chosen)], notes


def _kind_counts(runs, kinds: Sequence[str]) -> list[str]:
    out = []
    for k in kinds:
        part = runs[runs["kind"] == k]
        studies = sorted(part["study"].dropna().astype(str).unique()) if "study" in part else []
        where = f" ({'study' if len(studies) == 1 else 'studies'} {listing(studies, 4)})" if studies and k != "run" else ""
        out.append(f"{len(part)} {KIND_NAMES[k]}{where}")
    return out


# ---------------------------------------------------------------- keys


def config_keys(runs) -> list[str]:
    """The flattened config columns of the run table (`optimizer.lr`, `seed`, ...).

    load_runs mixes config and summary columns; config keys are the dotted ones plus the
    top-level config keys `seed`, `results_dir`, `name` (summary fields have no dot, and the
    `final.`/`best.`/`best_epoch.` columns are metrics).
    """
    keys = []
    for c in runs.columns:
        if c.startswith(("final.", "best.", "best_epoch.")):
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
    known = sorted(set(config_keys(runs)) | {c for c in ("repeat", "fold", "study", "trial", "candidate") if c in cols})
    raise ReportError(f"unknown key {clip(key, 80)!r}; keys: {listing(known, 30)}")


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


def pooled_keys(runs, by: Sequence[str]) -> list[str]:
    """The keys (not in `by`) that take two or more values inside at least one group: what a group pools.

    A key that differs between groups only (sgd always at lr 0.1, adam always at 0.001, grouped by
    optimizer) pools nothing.
    """
    from dlexp.report.compare import assign_groups

    grouped = assign_groups(runs, by)
    out = []
    for k in varying_keys(runs):
        if k in by:
            continue
        within = grouped.groupby("group")[k].agg(lambda s: s.dropna().astype(str).nunique())
        if (within > 1).any():
            out.append(k)
    return out


# ---------------------------------------------------------------- tasks and metrics


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
    return runs.apply(lambda r: task_of(c[len("final."):] for c in cols if is_number(r[c])), axis=1)


def select_section(runs) -> tuple[Any, list[str]]:
    """The runs of one data set and task, and a note on the others.

    Metrics of two data sets (or of a classification and a regression) do not mean the same thing,
    so one report compares one of them: the one with the most runs (the first by name among equals,
    so the choice does not depend on the order of folders). The note names the others and the
    --where that reports each.
    """
    import pandas as pd

    if "dataset.name" in runs:
        dataset = runs["dataset.name"].astype(object).where(runs["dataset.name"].notna(), "?").astype(str)
    else:
        dataset = pd.Series("?", index=runs.index)
    task = run_tasks(runs).astype(object) if len(runs) else dataset
    # a run that diverged in its first epoch records no accuracy or rmse: it has its data set's task
    for d in dataset.unique():
        known = task[(dataset == d) & task.notna()].unique()
        if len(known) == 1:
            task[(dataset == d) & task.isna()] = known[0]
    section = dataset + " (" + task.where(task.notna(), "?").astype(str) + ")"
    counts = section.value_counts()
    if len(counts) <= 1:
        return runs, []
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    others = [f"{n} on {s}" for s, n in sorted(counts.items()) if s != top]
    hint = ", ".join(sorted({f"--where dataset={d}" for d in dataset[section != top] if d != "?"})) or "--where"
    note = (f"this report covers the {counts[top]} runs on {top}; left out {listing(others, 6)} "
            f"(metrics of different data sets or tasks are not comparable): report them with {hint}")
    return runs[section == top], [note]


def default_metric(runs, at: str = "final") -> str:
    """test/acc for classification; for regression test/log_rmse where recorded (positive targets, as
    dlexp kfold and Kaggle's house prices use it), else test/rmse; val/... when there is no test split."""
    names = metric_columns(runs, at)
    bases = {"classification": ("acc",), "regression": ("log_rmse", "rmse")}.get(task_of(names), ())
    for base in bases:
        for split in ("test", "val", "train"):
            if f"{split}/{base}" in names:
                return f"{split}/{base}"
    for split in ("test", "val", "train"):
        if f"{split}/loss" in names:
            return f"{split}/loss"
    if not names:
        if at == "best" and metric_columns(runs, "final"):
            raise ReportError("--at best: no run has a validation split to choose its best epoch on; use --at final")
        raise ReportError("the runs record no metrics in their summaries")
    return names[0]


def resolve_metric(metric: str | None, runs, at: str = "final") -> str:
    """Check `split/metric` against the recorded ones (listing them when unknown).

    At `best`, test (and train) values exist only where a validation split chose the epoch: asking for
    them from runs without one is refused rather than answered with an epoch picked on test data.
    """
    names = metric_columns(runs, at)
    if metric is None:
        return default_metric(runs, at)
    if metric not in names:
        if at == "best" and metric in metric_columns(runs, "final") and not metric.startswith("val/"):
            raise ReportError(f"--at best: {clip(metric, 60)} at the best epoch needs a validation split to choose that epoch, "
                              "and these runs have none (dataset.val_fraction=0?); use --at final")
        raise ReportError(f"unknown metric {clip(metric, 60)!r} at {at}; metrics: {listing(names) or 'none'}")
    return metric


def best_notes(runs, metric: str, at: str) -> tuple[Any, list[str]]:
    """At `best`: drop the values of runs whose best epoch was not chosen on validation data.

    Runs written before dlexp chose the best epoch on validation data (no `best_epoch.*` columns)
    stored `best.test/*` as the best test value over epochs: selection on the test set.
    """
    if at != "best":
        return runs, []
    notes = []
    col = f"best_epoch.{metric.split('/')[-1]}"
    chosen = runs[col].notna() if col in runs else runs["run_id"].map(lambda _: False)
    stale = runs[f"best.{metric}"].notna() & ~chosen
    if stale.any() and not metric.startswith("val/"):
        runs = runs.copy()
        runs.loc[stale, f"best.{metric}"] = math.nan
        notes.append(f"{int(stale.sum())} run(s) written by an older dlexp chose best.{metric} on the {metric.split('/')[0]} data "
                     "itself; their values are left out (rerun them, or use --at final)")
    final = f"final.{metric}"
    no_val = runs[final].notna() & runs[f"best.{metric}"].isna() & ~stale if final in runs else runs["run_id"].map(lambda _: False)
    if no_val.any():
        notes.append(f"{int(no_val.sum())} run(s) have no validation split to choose a best epoch on; they have no value at best")
    return runs, notes


_METRIC_NAMES = {"acc": "accuracy", "loss": "loss", "rmse": "RMSE", "log_rmse": "log RMSE", "lr": "learning rate"}


def metric_label(metric: str) -> str:
    """'test/acc' -> 'test accuracy'."""
    split, _, name = metric.rpartition("/")
    return f"{split} {_METRIC_NAMES.get(name, name)}".strip()


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
        raise ReportError(f"--target: expected SPLIT/METRIC=VALUE such as val/acc=0.85, got {clip(text, 80)!r}") from None


# ---------------------------------------------------------------- filters and the baseline


def _pairs(text: str) -> list[str]:
    """'optimizer=sgd,model.hidden=[16,16]' -> ['optimizer=sgd', 'model.hidden=[16,16]']: a comma
    starts a new pair only where a KEY= follows it, so values may hold commas."""
    return [p.strip() for p in re.split(r",(?=\s*[A-Za-z_][\w.]*\s*=)", text) if p.strip()]


def filter_runs(runs, where: str):
    """Keep the runs matching every KEY=VALUE of a comma-separated `where` (optimizer=adam means optimizer.name)."""
    for cond in _pairs(where):
        key, sep, value = cond.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"--where: expected KEY=VALUE such as dataset=digits, got {clip(cond, 80)!r}")
        if key.strip() in ("study", "candidate", "trial", "fold", "repeat") and key.strip() not in runs.columns:
            raise ReportError(f"--where: no run has a {key.strip()!r} column")
        col = key.strip() if key.strip() in runs.columns else resolve_key(key.strip(), runs)
        runs = runs[runs[col].map(lambda v: matches(v, value.strip()))]
    if runs.empty:
        raise ReportError(f"--where: no run matches {clip(where, 80)}")
    return runs


def parse_baseline(text: str, runs, by: Sequence[str]) -> dict[str, str]:
    """'optimizer=sgd,optimizer.momentum=0' -> {'optimizer.name': 'sgd', 'optimizer.momentum': '0'}.

    Each key must be a grouping key; naming every `--by` key names one configuration.
    """
    spec: dict[str, str] = {}
    for pair in _pairs(text):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"--baseline: expected KEY=VALUE[,KEY=VALUE...] such as optimizer=sgd, got {clip(text, 80)!r}")
        k = resolve_key(key.strip(), runs)
        if k not in by:
            raise ReportError(f"--baseline: {k} is not a grouping key; groups are by {', '.join(by) or 'nothing'} (add it to --by)")
        spec[k] = value.strip()
    if not spec:
        raise ReportError(f"--baseline: expected KEY=VALUE such as optimizer=sgd, got {clip(text, 80)!r}")
    return spec


def fmt_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def matches(v: Any, value: str) -> bool:
    """Does a table cell equal a value typed on the command line (`0.1` = `1e-1`, `-` = missing)?"""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return value in ("-", "null", "none")
    if str(v) == value or fmt_value(v) == value or str(v).replace(" ", "") == value.replace(" ", ""):
        return True
    try:
        return float(v) == float(value)
    except (TypeError, ValueError):
        return False


def is_number(v: Any) -> bool:
    try:
        return v is not None and not math.isnan(float(v))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- fold studies


def fold_ratios(runs, results_dir: str | Path) -> dict[str, float]:
    """n_val / n_train of each kfold study among `runs` (study name -> ratio), for the corrected variance.

    Read from `<results_dir>/kfold/<study>/study.json` (the mean fold size over the study's folds, as
    `dlexp kfold` computes it); a study without a readable one gets 1 / (K - 1), K from its fold numbers.
    """
    out: dict[str, float] = {}
    if "fold" not in runs or "study" not in runs:
        return out
    folds = runs[runs["fold"].notna() & runs["study"].notna()]
    for study, part in folds.groupby(folds["study"].astype(str)):
        ratio = _study_ratio(Path(results_dir) / "kfold" / study / "study.json") if _safe_name(study) else None
        if ratio is None:
            k = int(max(float(f) for f in part["fold"])) + 1
            ratio = 1.0 / (k - 1) if k >= 2 else math.nan
        out[study] = ratio
    return out


def _study_ratio(path: Path) -> float | None:
    try:
        data = json.loads(path.read_text())
        sizes = [len(f["val_idx"]) for f in data["fold_indices"]]
        n = sum(sizes) // int(data.get("repeats", 1))  # every sample is validated once per repeat
        n_val = int(sum(sizes) / len(sizes))  # as dlexp kfold: the mean fold size, truncated
        return n_val / (n - n_val) if n > n_val > 0 else None
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError, RecursionError):
        return None


def _safe_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name)) and name not in (".", "..")
