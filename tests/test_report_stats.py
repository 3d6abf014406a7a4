"""The report's statistics (dlexp/report/stats.py) against scipy, hand computation and simulated coverage.

The coverage tests draw data whose true mean is known, build many intervals and count how often
they contain it. They are seeded (numpy's default_rng), so their figures are the same on every run;
the bounds leave room for the simulation's own error (about 1 point at 1,000 draws).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from dlexp.report import stats


def test_t_interval_matches_scipy():
    x = np.array([0.91, 0.93, 0.90, 0.95, 0.92])
    ref = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert stats.t_interval(x) == pytest.approx(ref, rel=1e-12)
    assert all(math.isnan(v) for v in stats.t_interval([0.5]))
    lo, hi = stats.t_interval([0.7, 0.7, 0.7])
    assert hi - lo < 1e-12 and lo == pytest.approx(0.7)  # no spread: the interval is the mean


def test_corrected_interval_is_nadeau_bengio_by_hand_and_plain_t_without_correction():
    x = np.array([0.81, 0.84, 0.79, 0.86, 0.83, 0.80, 0.85, 0.82, 0.84, 0.81])  # 2 repeats x 5 folds
    J, ratio = len(x), 0.25  # n_val / n_train of 5 folds
    half = sps.t.ppf(0.975, J - 1) * math.sqrt((1 / J + ratio) * x.var(ddof=1))
    assert stats.corrected_t_interval(x, ratio) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-12)
    assert stats.corrected_t_interval(x, 0.0) == pytest.approx(stats.t_interval(x), rel=1e-12)
    # on a 2x5 study the plain interval is sqrt((1/10 + 1/4) / (1/10)) = 1.87 times too narrow
    lo, hi = stats.corrected_t_interval(x, ratio)
    plo, phi = stats.t_interval(x)
    assert (hi - lo) / (phi - plo) == pytest.approx(math.sqrt(3.5), rel=1e-12)


def test_corrected_paired_t_matches_by_hand_and_ttest_rel_without_correction():
    a = np.array([0.80, 0.82, 0.85, 0.79, 0.84])
    b = np.array([0.78, 0.80, 0.84, 0.80, 0.81])
    d = a - b
    res = stats.corrected_paired_t(d, 0.25)
    t = d.mean() / math.sqrt((1 / 5 + 0.25) * d.var(ddof=1))
    assert res["p"] == pytest.approx(2 * sps.t.sf(abs(t), 4), rel=1e-12)
    assert stats.corrected_paired_t(d, 0.25, alternative="greater")["p"] == pytest.approx(sps.t.sf(t, 4), rel=1e-12)
    assert stats.corrected_paired_t(d, 0.0)["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
    assert (res["wins"], res["ties"], res["folds"]) == (pytest.approx(0.8), 0.0, 5)
    tie = stats.corrected_paired_t(np.zeros(5), 0.25)
    assert math.isnan(tie["p"]) and tie["ties"] == 1.0 and (tie["low"], tie["high"]) == (0.0, 0.0)


def test_paired_t_and_wilcoxon_match_scipy():
    x = np.array([0.86, 0.85, 0.88, 0.84, 0.90, 0.87, 0.89])
    y = np.array([0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.84])
    assert stats.paired_t(x, y) == pytest.approx(sps.ttest_rel(x, y).pvalue, rel=1e-12)
    assert stats.wilcoxon_p(x, y) == pytest.approx(sps.wilcoxon(x, y).pvalue, rel=1e-12)
    assert math.isnan(stats.paired_t(x, x)) and math.isnan(stats.wilcoxon_p(x, x))


def test_the_smallest_wilcoxon_p_is_two_over_two_to_the_n_and_decides_reachability_under_holm():
    for n in (4, 5, 6, 7, 9):
        d = np.arange(1, n + 1) / 100  # every difference positive and distinct: the most extreme case
        assert sps.wilcoxon(d).pvalue == pytest.approx(stats.wilcoxon_min_p(n), rel=1e-12)
    assert stats.wilcoxon_min_p(6) == 0.03125
    # alone, 6 pairs suffice; under Holm over m tests the smallest p is multiplied by m
    assert [stats.wilcoxon_pairs_needed(m) for m in (1, 2, 3, 4, 6, 7)] == [6, 7, 7, 8, 8, 9]
    for m in (1, 2, 5, 13):
        n = stats.wilcoxon_pairs_needed(m)
        assert m * stats.wilcoxon_min_p(n) < 0.05 <= m * stats.wilcoxon_min_p(n - 1)


def test_holm_matches_hand_computation_and_counts_nan_in_m():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.02, math.nan, 0.04])  # m = 3: 0.02*3 = 0.06, 0.04*2 = 0.08
    assert out[0] == pytest.approx(0.06) and math.isnan(out[1]) and out[2] == pytest.approx(0.08)
    assert stats.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # clipped at 1
    assert stats.holm([]) == []


# ---------------------------------------------------------------- simulated coverage


def _coverage(interval, draws, truth) -> float:
    hits = [lo <= truth <= hi for lo, hi in (interval(x) for x in draws)]
    return float(np.mean(hits))


@pytest.mark.parametrize("n", [5, 8])
def test_studentized_bootstrap_keeps_95_percent_coverage_at_small_n_where_the_percentile_one_does_not(n):
    rng = np.random.default_rng(1)
    draws = rng.normal(size=(600, n))
    boot_t = _coverage(lambda x: stats.bootstrap_interval(x, n_resamples=2000), draws, 0.0)
    percentile = _coverage(lambda x: stats.percentile_bootstrap_interval(x, n_resamples=2000), draws, 0.0)
    t = _coverage(stats.t_interval, draws, 0.0)
    assert 0.925 <= boot_t <= 0.975, boot_t
    assert abs(boot_t - t) < 0.03
    assert percentile < {5: 0.87, 8: 0.91}[n], percentile  # measured 0.83 and 0.89


def test_bootstrap_below_five_values_gives_no_interval():
    assert all(math.isnan(v) for v in stats.bootstrap_interval([0.1, 0.2, 0.3, 0.4]))
    assert stats.bootstrap_interval([0.1, 0.2, 0.3, 0.4, 0.5]) == stats.bootstrap_interval([0.1, 0.2, 0.3, 0.4, 0.5])


def _cv_scores(rng, n=60, k=5, repeats=2, p=3):
    """Repeated K-fold test MSE of least squares on y = x.1 + N(0,1), x ~ N(0, I_p)."""
    X = rng.normal(size=(n, p))
    y = X.sum(axis=1) + rng.normal(size=n)
    scores = []
    for _ in range(repeats):
        folds = np.array_split(rng.permutation(n), k)
        for i in range(k):
            train = np.concatenate([f for j, f in enumerate(folds) if j != i])
            beta = np.linalg.lstsq(X[train], y[train], rcond=None)[0]
            scores.append(np.mean((X[folds[i]] @ beta - y[folds[i]]) ** 2))
    return np.array(scores)


def test_corrected_interval_covers_the_generalization_error_of_repeated_kfold_where_the_plain_one_does_not():
    rng = np.random.default_rng(0)
    n, k, p = 60, 5, 3
    n_train = n - n // k
    truth = 1 + p / (n_train - p - 1)  # expected test MSE of least squares fitted on n_train samples
    draws = [_cv_scores(rng, n, k, 2, p) for _ in range(1000)]
    corrected = _coverage(lambda x: stats.corrected_t_interval(x, (n // k) / n_train), draws, truth)
    plain = _coverage(stats.t_interval, draws, truth)
    assert corrected >= 0.925, corrected  # measured 0.945
    assert plain <= 0.85, plain  # measured 0.77 to 0.80: the overconfidence the correction removes
