"""The statistics of `dlexp report` and `dlexp kfold`: pure functions of numbers (no tables, no printing).

Each one is tested against scipy, and those that claim a coverage against simulation
(tests/test_report_stats.py). The choices and their reasons are in the README, "How the statistics work".

- Intervals of a mean: Student t; for fold scores, t with Nadeau & Bengio's corrected variance; on
  request a studentized bootstrap (bootstrap-t), which holds its coverage from n = 5 where the
  percentile bootstrap does not.
- Paired tests: the paired t-test; for fold scores the corrected resampled t-test; Wilcoxon's
  signed-rank test where it can reach significance at all.
- Families of tests: Holm's step-down adjustment, with every comparison made counted in m.
"""

from __future__ import annotations

import math
from typing import Sequence

LEVEL = 0.95
N_BOOTSTRAP = 10_000
# Below 5 values a resample that repeats one value (probability n / n**n: 1.6% at n = 4) has no spread,
# and the studentized bootstrap's 97.5% quantile runs off to infinity.
MIN_BOOTSTRAP_N = 5
# Below 10 values every interval rests on the shape assumed for the data (simulated in the tests).
FEW_RUNS = 10
ALPHA = 0.05


def t_interval(x: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student t interval of the mean: mean +- t_{(1+level)/2, n-1} * s / sqrt(n); NaN for n < 2.

    >>> t_interval([1.0, 2.0, 3.0])  # doctest: +ELLIPSIS
    (-0.48..., 4.48...)
    """
    return corrected_t_interval(x, 0.0, level)


def corrected_t_interval(x: Sequence[float], test_train_ratio: float, level: float = LEVEL) -> tuple[float, float]:
    """t interval of the mean of J resampled scores with Nadeau & Bengio's corrected variance.

    mean +- t_{(1+level)/2, J-1} * sqrt((1/J + n_val/n_train) * s^2). Fold scores share training data
    (each sample trains K-1 of the K models), so they are positively correlated and s^2 / J, the plain
    t interval's variance, is too small; the extra n_val/n_train term is Nadeau & Bengio's (2003)
    correction, in the repeated-K-fold form of Bouckaert & Frank (2004): J = K x R scores.
    With test_train_ratio = 0 this is the plain t interval. NaN for J < 2.
    """
    import numpy as np
    from scipy import stats

    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 2:
        return (math.nan, math.nan)
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if sd == 0:
        return (mean, mean)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * math.sqrt((1 / n + test_train_ratio) * sd**2)
    return (mean - half, mean + half)


def bootstrap_interval(x: Sequence[float], level: float = LEVEL, n_resamples: int = N_BOOTSTRAP,
                       seed: int = 0) -> tuple[float, float]:
    """Studentized bootstrap (bootstrap-t) interval of the mean, seeded; NaN for n < MIN_BOOTSTRAP_N.

    Each resample's t* = (mean* - mean) / (s* / sqrt(n)); the interval is
    [mean - q_{(1+level)/2}(t*) se, mean - q_{(1-level)/2}(t*) se] with se = s / sqrt(n) (Efron &
    Tibshirani 1993, ch. 12). Unlike the percentile bootstrap it rescales by each resample's own
    spread, which is what keeps its coverage near the nominal level at small n and on skewed data.
    """
    import numpy as np

    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < MIN_BOOTSTRAP_N:
        return (math.nan, math.nan)
    mean, se = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return (mean, mean)
    rng = np.random.default_rng(seed)
    resamples = x[rng.integers(0, n, size=(n_resamples, n))]  # (n_resamples, n)
    t = _studentize(resamples, mean)
    q_low, q_high = np.quantile(t, [(1 - level) / 2, (1 + level) / 2])
    return (float(mean - q_high * se), float(mean - q_low * se))


def _studentize(resamples, mean: float):
    """t* of each row of `resamples` (shape (B, n)) around `mean`; a row without spread gives +-inf
    (or 0 when its mean is `mean` too): it carries no information on the scale."""
    import numpy as np

    n = resamples.shape[-1]
    m = resamples.mean(axis=-1)
    s = resamples.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (m - mean) / (s / math.sqrt(n))
    return np.where(np.isnan(t), 0.0, t)


def percentile_bootstrap_interval(x: Sequence[float], level: float = LEVEL, n_resamples: int = N_BOOTSTRAP,
                                  seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean. Not used by the report: kept to show, in the tests,
    why (at n = 3 to 5 it covers 75 to 83% where it claims 95%)."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)  # (n_resamples,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def paired_t(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p of the paired t-test (scipy.stats.ttest_rel); NaN when undefined (n < 2, or every
    difference the same, when the t statistic is 0/0 or infinite)."""
    import numpy as np
    from scipy import stats

    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if len(d) < 2 or np.std(d) == 0:
        return math.nan
    return float(stats.ttest_rel(x, y).pvalue)


def corrected_paired_t(d: Sequence[float], test_train_ratio: float, *, alternative: str = "two-sided",
                       level: float = LEVEL) -> dict[str, float]:
    """Nadeau & Bengio's corrected resampled t-test on J paired fold differences d (same folds).

    t = mean(d) / sqrt((1/J + n_val/n_train) * s_d^2) with J - 1 degrees of freedom (Nadeau & Bengio
    2003, "Inference for the Generalization Error"; Bouckaert & Frank 2004 for J = K x R). Returns the
    mean difference, its interval (the same corrected variance), the p-value for `alternative`
    ("two-sided" or "greater": mean(d) > 0), the share of differences > 0 and of differences == 0.
    With every difference equal the statistic is undefined: p is NaN (a tie when they are all 0).
    """
    import numpy as np
    from scipy import stats

    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative: expected two-sided or greater, got {alternative!r}")
    d = np.asarray(d, dtype=float)
    J = len(d)
    out = {"diff": float(d.mean()) if J else math.nan, "folds": J,
           "wins": float((d > 0).mean()) if J else math.nan, "ties": float((d == 0).mean()) if J else math.nan}
    if J < 2:
        return {**out, "low": math.nan, "high": math.nan, "p": math.nan}
    if float(d.std(ddof=1)) == 0:  # every difference equal: no spread to test against
        return {**out, "low": out["diff"], "high": out["diff"], "p": math.nan}
    se = math.sqrt((1.0 / J + test_train_ratio) * float(d.var(ddof=1)))
    t = out["diff"] / se
    tcrit = float(stats.t.ppf((1 + level) / 2, J - 1))
    p = float(stats.t.sf(t, J - 1)) if alternative == "greater" else float(2 * stats.t.sf(abs(t), J - 1))
    return {**out, "low": out["diff"] - tcrit * se, "high": out["diff"] + tcrit * se, "p": p}


def wilcoxon_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p of Wilcoxon's signed-rank test (scipy.stats.wilcoxon); NaN when every difference is 0."""
    import numpy as np
    from scipy import stats

    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if len(d) == 0 or not np.any(d != 0):
        return math.nan
    return float(stats.wilcoxon(x, y).pvalue)


def wilcoxon_min_p(n: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with n pairs: 2 / 2**n (all signs alike)."""
    return 2.0 / 2**n


def wilcoxon_pairs_needed(m: int, alpha: float = ALPHA) -> int:
    """The fewest pairs with which the signed-rank test can reach p < alpha after Holm over m tests.

    Holm multiplies the smallest p of a family of m by m, so the test can reject only if
    m * 2 / 2**n < alpha: 6 pairs alone (0.03125), 7 pairs for m = 2 or 3, 8 for m = 4 to 6, ...
    """
    n = 1
    while m * wilcoxon_min_p(n) >= alpha:
        n += 1
    return n


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: sort ascending, p_(i) * (m - i + 1), running max, clip at 1.

    Every comparison made counts in m, also those whose p is NaN (all differences zero, too few
    pairs): leaving them out would shrink m and make the other comparisons look stronger for no
    reason in the data. NaN p-values stay NaN and rank after every number (as p = 1 would).
    """
    m = len(pvalues)
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
