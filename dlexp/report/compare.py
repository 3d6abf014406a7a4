"""Groups of runs and what the report says about them: statistics per group, time to target, paired
comparisons with a baseline, and the answer in a few sentences. Tables in, tables out; no printing.

A *group* is a set of runs that differ only by their replicate keys (`seed`, `repeat`, `fold`); `by`
names the config keys whose values tell groups apart. Statistics use the runs with status `ok`
unless `include_failed` is set; the others are always counted.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from dlexp.report import stats
from dlexp.report.runs import REPLICATE_KEYS, ReportError, fmt_value, listing, lower_is_better, matches, metric_label

CI_METHODS = ("t", "bootstrap")


# ---------------------------------------------------------------- groups


def _short(key: str) -> str:
    return key[: -len(".name")] if key.endswith(".name") else key.rsplit(".", 1)[-1]


def group_label(by: Sequence[str], values: Sequence[Any]) -> str:
    """'sgd lr=0.01': a group choice (`optimizer.name`) by its value, other keys as short=value.

    A key the group does not have (adam has no `optimizer.momentum`) is left out of its label: the
    other values already tell the groups apart ('adam' beside 'sgd momentum=0.9').
    """
    if not by:
        return "all runs"
    shorts = [_short(k) for k in by]
    parts = []
    for k, s, v in zip(by, shorts, values):
        if fmt_value(v) == "-" and not k.endswith(".name"):
            continue
        name = s if shorts.count(s) == 1 else k
        parts.append(fmt_value(v) if k.endswith(".name") else f"{name}={fmt_value(v)}")
    return " ".join(parts) or "(no value)"


def assign_groups(runs, by: Sequence[str]):
    """A copy of `runs` with a `group` label column."""
    runs = runs.copy()
    if not by:
        runs["group"] = group_label([], [])
        return runs
    keys = runs[list(by)].astype(object).where(runs[list(by)].notna(), None)
    runs["group"] = [group_label(by, tuple(row)) for row in keys.itertuples(index=False)]
    return runs


def group_order(runs, by: Sequence[str]) -> list[str]:
    """Group labels ordered by their key values (missing values last)."""
    if not by:
        return list(dict.fromkeys(runs["group"]))
    order = runs.sort_values(list(by), na_position="last", kind="stable")
    return list(dict.fromkeys(order["group"]))


def statistic_runs(runs, include_failed: bool, also: Sequence[str] = ()):
    """The runs whose values enter the statistics: status ok (and `also`), or every run."""
    if include_failed or "status" not in runs.columns:
        return runs
    return runs[runs["status"].fillna("unknown").isin(("ok", *also))]


def fold_based(members) -> bool:
    """Do these runs hold fold scores (kfold folds, or a --cv trial's folds)? They share training data."""
    return "fold" in members.columns and bool(members["fold"].notna().any())


def test_train_ratio(members, ratios: Mapping[str, float] | None) -> float:
    """n_val / n_train for the corrected variance of fold runs: the largest of their studies' ratios
    (the most cautious), else 1 / (K - 1) with K from the fold numbers."""
    values = []
    if ratios and "study" in members.columns:
        values = [ratios[s] for s in members["study"].dropna().astype(str).unique() if s in ratios]
    values = [v for v in values if not math.isnan(v)]
    if values:
        return max(values)
    k = int(members["fold"].dropna().astype(float).max()) + 1
    return 1.0 / (k - 1) if k >= 2 else math.nan


def summarize_groups(runs, by: Sequence[str], metric: str, *, at: str = "final", ci: str = "t",
                     include_failed: bool = False, ratios: Mapping[str, float] | None = None):
    """One row per group: key values, group, kind, n, failed, mean, std, ci_low, ci_high, ci_method, time_s.

    `n` counts the runs whose value enters the statistics; `failed` counts runs with a status other
    than ok (left out unless include_failed), `failed_detail` says which; `time_s` is the total wall
    time of all the group's runs. The interval (`ci_method`): `t`; `bootstrap-t` with ci='bootstrap'
    (the t interval below stats.MIN_BOOTSTRAP_N runs: `t (n<5)`); for fold scores always
    `corrected t`, Nadeau & Bengio's variance with the group's n_val/n_train (`ratios` by study).
    """
    import numpy as np
    import pandas as pd

    if ci not in CI_METHODS:
        raise ReportError(f"--ci: expected t or bootstrap, got {ci!r}")
    col = f"{at}.{metric}"
    runs = assign_groups(runs, by)
    used = statistic_runs(runs, include_failed)
    rows = []
    for g in group_order(runs, by):
        members = runs[runs["group"] == g]
        status = members["status"].fillna("unknown") if "status" in members else pd.Series(["ok"] * len(members))
        bad = status[status != "ok"].value_counts().sort_index()
        values = used.loc[used["group"] == g, col].astype(float).dropna().to_numpy() if col in used else np.array([])
        if fold_based(members):
            method, interval = "corrected t", stats.corrected_t_interval(values, test_train_ratio(members, ratios))
        elif ci == "bootstrap" and len(values) >= stats.MIN_BOOTSTRAP_N:
            method, interval = "bootstrap-t", stats.bootstrap_interval(values)
        else:
            method = "t" if ci == "t" else f"t (n<{stats.MIN_BOOTSTRAP_N})"
            interval = stats.t_interval(values)
        row = {k: members[k].iloc[0] for k in by}
        row.update(
            group=g,
            kind="+".join(sorted(members["kind"].unique())) if "kind" in members else "run",
            n=int(len(values)),
            failed=int(bad.sum()),
            failed_detail=", ".join(f"{c} {s}" for s, c in bad.items()),
            mean=float(values.mean()) if len(values) else math.nan,
            std=float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            ci_low=interval[0],
            ci_high=interval[1],
            ci_method=method,
            time_s=float(members["duration_s"].astype(float).sum()) if "duration_s" in members else math.nan,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def interval_notes(summary, ci: str) -> list[str]:
    """What the intervals of a summary rest on, where that is not the plain t interval."""
    notes = []
    method = summary["ci_method"] if "ci_method" in summary else []
    corrected = summary.loc[method == "corrected t", "group"].tolist() if len(summary) else []
    if corrected:
        notes.append(f"fold scores ({listing(corrected, 6)}): 95% CI with Nadeau & Bengio's corrected variance, "
                     "since folds share training data")
    if ci == "bootstrap" and len(summary):
        few = summary.loc[method.str.startswith("t ("), "group"].tolist()
        if few:
            notes.append(f"--ci bootstrap needs {stats.MIN_BOOTSTRAP_N} runs per group; {listing(few, 6)} show(s) the t interval")
        small = summary.loc[(method == "bootstrap-t") & (summary["n"] < stats.FEW_RUNS), "group"].tolist()
        if small:
            notes.append(f"bootstrap-t intervals from fewer than {stats.FEW_RUNS} runs ({listing(small, 6)}) are approximate: "
                         "in simulation they cover about 95% on normal data but about 90% on skewed data")
    return notes


# ---------------------------------------------------------------- time to target


def time_to_target(runs, metrics, by: Sequence[str], target: str, value: float, *, include_failed: bool = False):
    """Per group: target_hits, target_n, target_diverged, epochs_to_target, s_to_target (medians, inf = a miss).

    Per run: the first epoch (and its `time_s`) at which `target` (split/metric) is >= value for
    accuracies, <= value for losses and errors. A run that never reaches it is a miss, infinite time.
    Diverged runs are results, not errors (as in AlgoPerf): they count, and miss unless they reached
    the target before diverging; leaving them out would make an optimizer that diverges look faster.
    """
    import numpy as np
    import pandas as pd

    split, _, name = target.partition("/")
    rows = metrics[(metrics["split"] == split) & (metrics["metric"] == name)]
    if rows.empty:
        known = sorted(set(metrics["split"].astype(str) + "/" + metrics["metric"].astype(str)))
        raise ReportError(f"--target: unknown metric {target!r}; metrics: {listing(known)}")
    runs = statistic_runs(assign_groups(runs, by), include_failed, also=("diverged",))
    reached = rows["value"] <= value if lower_is_better(target) else rows["value"] >= value
    first = rows[reached].sort_values(["run_id", "epoch"]).groupby("run_id").first()
    per_run = runs[["run_id", "group"]].copy()
    per_run["diverged"] = runs["status"].eq("diverged") if "status" in runs else False
    per_run["epochs"] = per_run["run_id"].map(first["epoch"]).astype(float).fillna(np.inf)
    per_run["seconds"] = per_run["run_id"].map(first["time_s"]).astype(float).fillna(np.inf)
    out = []
    for g, part in per_run.groupby("group", sort=False):
        out.append({
            "group": g,
            "target_hits": int(np.isfinite(part["epochs"]).sum()),
            "target_n": int(len(part)),
            "target_diverged": int(part["diverged"].sum()),
            "epochs_to_target": float(np.median(part["epochs"])),
            "s_to_target": float(np.median(part["seconds"])),
        })
    return pd.DataFrame(out, columns=["group", "target_hits", "target_n", "target_diverged", "epochs_to_target", "s_to_target"])


def target_notes(tt) -> list[str]:
    n = int(tt["target_diverged"].sum()) if len(tt) else 0
    if not n:
        return []
    return [f"time to target counts {n} diverged run(s) ({listing(tt.loc[tt['target_diverged'] > 0, 'group'], 6)}): "
            "a miss unless the target was reached before the divergence"]


# ---------------------------------------------------------------- comparison with a baseline


def compare_to_baseline(runs, by: Sequence[str], metric: str, baseline: Mapping[str, str], *, at: str = "final",
                        include_failed: bool = False, ratios: Mapping[str, float] | None = None):
    """Paired comparison of every group with its baseline group. Returns (table, notes).

    `baseline` maps grouping keys to values (`{"optimizer.name": "sgd"}`). When it picks out one
    group, every other group is compared with it; when it picks out several (it names fewer keys than
    `by`), each group is compared with the one that shares its values of the keys it does not name
    (`--by optimizer,optimizer.lr --baseline optimizer=sgd` compares adam at lr=0.1 with sgd at
    lr=0.1), and the groups without such a partner are named in a note.

    Runs are paired by seed, repeat and fold (and, for fold runs, study: only within one kfold study
    are the partitions known to be the same); runs without a partner are dropped and named in a note;
    several runs with one pairing key in a group are averaged first. Plain runs: paired t-test, t
    interval of the mean difference, and Wilcoxon's signed-rank test where it can reach p < 0.05 after
    Holm. Fold runs: Nadeau & Bengio's corrected resampled t-test and interval (no Wilcoxon: it too
    assumes independent pairs). Each family of p-values is Holm-corrected over the comparisons made.
    Columns: group, baseline, n_pairs, diff (group - baseline), diff_ci_low, diff_ci_high, test,
    p_t, p_t_holm, p_wilcoxon, p_wilcoxon_holm.
    """
    import numpy as np
    import pandas as pd

    col = f"{at}.{metric}"
    runs = assign_groups(runs, by)
    base_mask = np.ones(len(runs), dtype=bool)
    for k, v in baseline.items():
        base_mask &= runs[k].map(lambda x: matches(x, v)).to_numpy(dtype=bool)
    if not base_mask.any():
        what = " and ".join(f"{k}={v}" for k, v in baseline.items())
        takes = "; ".join(f"{k} takes {listing(sorted({fmt_value(x) for x in runs[k]}))}" for k in baseline)
        raise ReportError(f"--baseline: no group has {what}; {takes}")
    used = statistic_runs(runs, include_failed)
    pair_keys = [k for k in REPLICATE_KEYS if k in used.columns and used[k].notna().any()]
    if not pair_keys:
        raise ReportError("--baseline: the runs have no seed or fold to pair them by")
    others = [k for k in by if k not in baseline]
    base_groups = list(dict.fromkeys(runs.loc[base_mask, "group"]))
    first = {g: part.iloc[0] for g, part in runs.groupby("group", sort=False)}

    def values_of(g, keys):
        part = used[used["group"] == g]
        return part.groupby(keys, dropna=False)[col].mean().astype(float).dropna()

    pairs, notes, unmatched = [], [], []
    for g in group_order(runs, by):
        if g in base_groups:
            continue
        if len(base_groups) == 1:
            ref = base_groups[0]
        else:
            cands = [b for b in base_groups if all(fmt_value(first[b][k]) == fmt_value(first[g][k]) for k in others)]
            if len(cands) != 1:
                unmatched.append(g)
                continue
            ref = cands[0]
        folds = fold_based(runs[runs["group"] == g]) or fold_based(runs[runs["group"] == ref])
        keys = pair_keys + (["study"] if folds and "study" in used.columns else [])
        a, b = values_of(g, keys), values_of(ref, keys)
        shared = a.index.intersection(b.index)
        lone_a, lone_b = a.index.difference(shared), b.index.difference(shared)
        if len(lone_a) or len(lone_b):
            what = "/".join(keys)
            parts = []
            if len(lone_a):
                parts.append(f"{len(lone_a)} run(s) of {g} ({what} {_names(lone_a)})")
            if len(lone_b):
                parts.append(f"{len(lone_b)} run(s) of {ref} ({what} {_names(lone_b)})")
            notes.append(f"{g} vs {ref}: {' and '.join(parts)} without a partner, dropped from the pairing")
        ratio = test_train_ratio(pd.concat([runs[runs["group"] == g], runs[runs["group"] == ref]]), ratios) if folds else 0.0
        pairs.append((g, ref, a.loc[shared].to_numpy(), b.loc[shared].to_numpy(), folds, ratio))
    if unmatched:
        named = ",".join(f"{_short(k) if k.endswith('.name') else k}=VALUE" for k in by)
        notes.append(f"not compared: {listing(unmatched, 8)}: no baseline group with "
                     f"{' and '.join(f'{k}={v}' for k, v in baseline.items())} and the same {', '.join(others)}; "
                     f"name one configuration to compare every group with it: --baseline {named}")

    m = len(pairs)
    needed = stats.wilcoxon_pairs_needed(m) if m else 0
    rows, short_of_wilcoxon, degenerate = [], [], []
    for g, ref, x, y, folds, ratio in pairs:
        d = x - y
        n = len(d)
        p_w = math.nan
        if folds:
            res = stats.corrected_paired_t(d, ratio)
            test, lo, hi, p_t = "corrected paired t", res["low"], res["high"], res["p"]
        else:
            test, (lo, hi), p_t = "paired t", stats.t_interval(d), stats.paired_t(x, y)
            if n >= needed:
                p_w = stats.wilcoxon_p(x, y)
            elif n >= 1:
                short_of_wilcoxon.append(f"{g} ({n})")
        if n >= 2 and math.isnan(p_t):
            degenerate.append((g, ref, float(d[0])))
        rows.append({"group": g, "baseline": ref, "n_pairs": n, "diff": float(d.mean()) if n else math.nan,
                     "diff_ci_low": lo, "diff_ci_high": hi, "test": test, "p_t": p_t, "p_wilcoxon": p_w})
    if short_of_wilcoxon:
        notes.append(f"Wilcoxon signed-rank left out for {listing(short_of_wilcoxon, 8)} pairs: with Holm over {m} "
                     f"comparison(s) it cannot reach p < 0.05 below {needed} pairs (its smallest p with n pairs is 2/2^n)")
    if any(r["test"] == "corrected paired t" for r in rows):
        notes.append("fold runs: corrected resampled t-test (Nadeau & Bengio) paired by study/repeat/fold; "
                     "no Wilcoxon, which also assumes independent pairs")
    for g, ref, d0 in degenerate:
        what = "the same score on every pair: a tie" if d0 == 0 else f"the same difference ({d0:.4g}) on every pair"
        notes.append(f"{g} vs {ref}: {what}, so p is undefined; it still counts in Holm's m")
    table = pd.DataFrame(rows, columns=["group", "baseline", "n_pairs", "diff", "diff_ci_low", "diff_ci_high", "test",
                                        "p_t", "p_wilcoxon"])
    table["p_t_holm"] = stats.holm(table["p_t"].tolist())
    table["p_wilcoxon_holm"] = stats.holm(table["p_wilcoxon"].tolist())
    return table, notes


def _names(ix) -> str:
    return listing(fmt_value(i) if not isinstance(i, tuple) else "/".join(map(fmt_value, i)) for i in ix)


def report_table(summary, target=None, comparison=None):
    """The one wide table written out: group statistics, then time to target, then the comparison."""
    table = summary
    if target is not None:
        table = table.merge(target, on="group", how="left")
    if comparison is not None:
        table = table.merge(comparison, on="group", how="left")
    return table


# ---------------------------------------------------------------- the answer


def num(v: Any, digits: int = 4, sign: bool = False) -> str:
    """A number for people: 4 significant digits, '-' for missing, 'inf'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:+.{digits}g}" if sign else f"{v:.{digits}g}"


def pvalue(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


def answer(summary, comparison, metric: str, *, at: str = "final") -> list[str]:
    """The report's answer in a few sentences: which group is best, by how much, and how sure.

    The best group by its mean; then its paired comparison with the baseline when there is one (the
    difference, its 95% CI and the Holm-adjusted p), or else the runner-up and how to test the two.
    """
    s = summary[summary["n"] > 0].sort_values("mean", ascending=lower_is_better(metric), kind="stable")
    what = f"{metric_label(metric)} ({'final epoch' if at == 'final' else 'best epoch, chosen on validation'})"
    if s.empty:
        return [f"no group has a value of {metric} at {at}"]
    best = s.iloc[0]
    ci = f"95% CI {num(best['ci_low'])} to {num(best['ci_high'])}"
    lines = [f"{'Best' if len(s) > 1 else 'Only group'}: {best['group']}, {what} {num(best['mean'])} ({ci}, n={best['n']})"]
    if len(s) > 1 and s.iloc[1]["mean"] == best["mean"]:
        lines[0] = f"Tie on the mean: {best['group']} and {s.iloc[1]['group']}, {what} {num(best['mean'])}"
    rows = {} if comparison is None else {r["group"]: r for r in comparison.to_dict(orient="records")}
    if best["group"] in rows:
        lines.append(_versus(rows[best["group"]], metric))
    elif rows and comparison is not None and best["group"] in set(comparison["baseline"]):
        closest = comparison[comparison["baseline"] == best["group"]]
        closest = closest.sort_values("diff", ascending=not lower_is_better(metric), kind="stable").iloc[0].to_dict()
        lines.append(f"The baseline is best. Closest: {_versus(closest, metric)}")
    elif len(s) > 1:
        second = s.iloc[1]
        lines.append(f"Runner-up: {second['group']}, {num(second['mean'])} (95% CI {num(second['ci_low'])} to "
                     f"{num(second['ci_high'])}, n={second['n']}); difference {num(best['mean'] - second['mean'], sign=True)}. "
                     "For a paired test between groups, name one with --baseline")
    return lines


def _versus(r: Mapping[str, Any], metric: str) -> str:
    if r["n_pairs"] == 0:
        return f"{r['group']} vs {r['baseline']}: no paired runs"
    lo, hi = r["diff_ci_low"], r["diff_ci_high"]
    if r["diff"] == 0 and lo == hi == 0:
        return f"{r['group']} vs {r['baseline']}: a tie, the same {metric} on all {r['n_pairs']} pairs"
    sure = ("the 95% CI of the difference excludes 0" if (lo > 0 or hi < 0)
            else "the 95% CI of the difference includes 0: no clear difference with these runs")
    return (f"{r['group']} vs {r['baseline']}: {num(r['diff'], sign=True)} (95% CI {num(lo, sign=True)} to {num(hi, sign=True)}), "
            f"{r['test']} p = {pvalue(r['p_t_holm'])} after Holm, {r['n_pairs']} pairs; {sure}")
