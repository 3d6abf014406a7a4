"""How often the report's 95% intervals contain the truth: simulated coverage, printed (not asserted).

The figures behind the README's "How the statistics work". Two tables:

1. Intervals of a group mean from n runs, on normal and on lognormal (skewed) data with known mean:
   Student t (`--ci t`), the studentized bootstrap (`--ci bootstrap`), and two the report does not
   use: the percentile bootstrap (what `--ci bootstrap` was before) and BCa (scipy.stats.bootstrap).
2. Intervals of the mean of K-fold scores (least squares on y = x.1 + noise, test MSE; the truth is
   the expected test MSE of a model fitted on n_train rows): the plain t interval against Nadeau &
   Bengio's corrected one, for 5-fold and 2x5 repeated K-fold.

tests/test_report_stats.py asserts bounds on a few of these cells (seeded, fewer draws).

    python benchmarks/report_coverage.py [--draws 1000] [--resamples 2000]   # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats as sps

from dlexp.report import stats


def bca(x, resamples: int, seed: int) -> tuple[float, float]:
    res = sps.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=resamples, method="BCa",
                        random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def coverage(intervals, truth: float) -> float:
    return float(np.mean([lo <= truth <= hi for lo, hi in intervals]))


def mean_table(draws: int, resamples: int) -> None:
    print(f"coverage of 95% intervals of a mean ({draws} draws per cell, {resamples} resamples)")
    print(f"{'data':10} {'n':>3} {'t':>7} {'boot-t':>7} {'pctile':>7} {'BCa':>7}")
    rng = np.random.default_rng(1)
    for data, truth, draw in (("normal", 0.0, lambda n: rng.normal(size=n)),
                              ("lognormal", math.exp(0.5), lambda n: rng.lognormal(size=n))):
        for n in (3, 5, 8, 10, 20):
            xs = [draw(n) for _ in range(draws)]
            cells = [
                coverage([stats.t_interval(x) for x in xs], truth),
                coverage([stats.bootstrap_interval(x, n_resamples=resamples) for x in xs], truth) if n >= stats.MIN_BOOTSTRAP_N else math.nan,
                coverage([stats.percentile_bootstrap_interval(x, n_resamples=resamples) for x in xs], truth),
                coverage([bca(x, resamples, i) for i, x in enumerate(xs)], truth),
            ]
            print(f"{data:10} {n:>3} " + " ".join("      -" if math.isnan(c) else f"{c:7.3f}" for c in cells))


def cv_scores(rng, n: int, k: int, repeats: int, p: int = 3) -> np.ndarray:
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


def fold_table(draws: int) -> None:
    n, k, p = 60, 5, 3
    n_train = n - n // k
    truth = 1 + p / (n_train - p - 1)  # expected test MSE of least squares fitted on n_train rows
    print(f"\ncoverage of 95% intervals of K-fold scores (least squares, n={n}, {draws} data sets per row)")
    print(f"{'design':10} {'plain t':>8} {'corrected':>10} {'width ratio':>12}")
    rng = np.random.default_rng(0)
    for repeats in (1, 2):
        xs = [cv_scores(rng, n, k, repeats, p) for _ in range(draws)]
        plain = coverage([stats.t_interval(x) for x in xs], truth)
        corrected = coverage([stats.corrected_t_interval(x, (n // k) / n_train) for x in xs], truth)
        J = k * repeats
        ratio = math.sqrt((1 / J + (n // k) / n_train) / (1 / J))
        print(f"{f'{repeats}x{k}-fold':10} {plain:8.3f} {corrected:10.3f} {ratio:12.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    start = time.perf_counter()
    mean_table(args.draws, args.resamples)
    fold_table(args.draws)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
