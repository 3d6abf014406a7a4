"""What K-fold cross-validation costs over K plain runs, side by side in one process.

The issue's target: K folds of one candidate cost at most 1.05 times K single runs. One config
(d2l 5.7's house prices: linear model, Adam lr 5, batch 64, 20 epochs on the CPU), the data loaded
once. `cross_validate` over K folds is timed against K `runner.execute` runs on seeded hold-out
splits with exactly the fold sizes (`make_splits`, preprocessing fitted on their training rows, as
a fold does). Both write their run folders (to a temporary results dir). The two are interleaved,
their order alternating, for --repeats rounds; the figures are medians (and minima, the figure
least disturbed by other processes on a shared machine). Prints both and the ratios.
Target: cv / singles <= 1.05.

    DLEXP_DATA=/path/to/shared/data python benchmarks/kfold_cost.py [--repeats 7] [--folds 5] [--epochs 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from dlexp.config import compose
from dlexp.data import load_source, make_splits
from dlexp.kfold import cross_validate, default_metric, make_folds
from dlexp.runner import execute


def singles(cfg, source, folds, seed: int = 0) -> float:
    """K plain runs on random hold-outs of the same train/val sizes as the K folds."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for fold in folds:
        perm = rng.permutation(len(source))
        k = len(fold.val_idx)
        splits = make_splits(source, np.sort(perm[k:]), np.sort(perm[:k]))
        splits.test = None  # as a fold: no test pass (house prices has no test labels anyway)
        execute(cfg, splits)
    return time.perf_counter() - start


def kfold(cfg, source, folds, metric: str) -> float:
    start = time.perf_counter()
    res = cross_validate(cfg, source, folds, metric=metric)
    assert all(s == "ok" for s in res.statuses), res.statuses
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least sensitive to a loaded machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([
            "dataset=house_prices", "model=linear", "optimizer=adam", "optimizer.lr=5", "trainer.batch_size=64",
            f"trainer.epochs={args.epochs}", "trainer.device=cpu", f"results_dir={tmp}",
        ])
        source = load_source(cfg.dataset)  # once: both sides reuse the parsed CSV
        folds = make_folds(source, args.folds, seed=0)
        metric = default_metric(source)[0]
        print(f"house_prices: {len(source)} rows, {args.folds} folds of {sorted({len(f.val_idx) for f in folds})} "
              f"val rows, linear, adam lr 5, batch 64, {args.epochs} epochs; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
        kfold(cfg, source, folds, metric), singles(cfg, source, folds)  # warm-up
        cv, single = [], []
        for r in range(args.repeats):
            if r % 2 == 0:
                cv.append(kfold(cfg, source, folds, metric))
                single.append(singles(cfg, source, folds, seed=r))
            else:
                single.append(singles(cfg, source, folds, seed=r))
                cv.append(kfold(cfg, source, folds, metric))
            print(f"  round {r}: cross_validate {cv[-1]:.3f} s, {args.folds} single runs {single[-1]:.3f} s, "
                  f"ratio {cv[-1] / single[-1]:.3f}")
    m_cv, m_single = statistics.median(cv), statistics.median(single)
    paired = statistics.median(c / s for c, s in zip(cv, single))
    print(f"median over {args.repeats} rounds: cross_validate {m_cv:.3f} s, {args.folds} single runs {m_single:.3f} s")
    print(f"min over {args.repeats} rounds: cross_validate {min(cv):.3f} s, {args.folds} single runs {min(single):.3f} s")
    print(f"ratio of medians {m_cv / m_single:.3f}, median of per-round ratios {paired:.3f}, ratio of minima "
          f"{min(cv) / min(single):.3f} (target <= 1.05); load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
