"""K-fold cross-validation for model selection (d2l 5.7), done rigorously.

- Folds are scikit-learn's (KFold / StratifiedKFold and their repeated forms: same seed, same
  folds), drawn by a few lines of numpy rather than by importing scikit-learn and scipy (0.7 s);
  every sample is validated exactly once per repeat (d2l's version drops the remainder).
- The preprocessing (standardization, imputation, one-hot categories) is fitted on the training
  folds only, inside each fold (`make_splits` does that).
- Every candidate sees exactly the same folds, so candidates are compared fold by fold (paired).
- Each fold is an ordinary run (`runner.execute`) carrying `study`, `candidate`, `repeat`, `fold`.
  The test set is not evaluated in fold runs: only `--refit` looks at it, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dlexp.data import CLASSIFICATION, Source, make_splits
from dlexp.errors import ConfigError


@dataclass(frozen=True)
class Fold:
    repeat: int
    index: int
    train_idx: np.ndarray
    val_idx: np.ndarray


@dataclass
class CVResult:
    scores: list[float]  # the validation metric per fold (nan for a diverged or failed fold)
    train_scores: list[float]
    run_ids: list[str | None]
    statuses: list[str]
    durations: list[float]
    duration_s: float = 0.0
    folds: list[Fold] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")


def task_metrics(task: str, positive_target: bool) -> tuple[str, ...]:
    if task == CLASSIFICATION:
        return ("acc", "loss")
    return ("log_rmse", "rmse", "loss") if positive_target else ("rmse", "loss")


def default_metric(data: Any) -> tuple[str, str]:
    """('val/acc', 'maximize') for classification; ('val/log_rmse' or 'val/rmse', 'minimize') for regression."""
    m = task_metrics(data.task, data.positive_target)[0]
    return f"val/{m}", direction_of(m)


def direction_of(metric: str) -> str:
    return "maximize" if metric.split("/")[-1] == "acc" else "minimize"


def check_metric(metric: str, data: Any) -> str:
    """'acc' or 'val/acc' -> 'val/acc'; a metric the task does not have is a ConfigError listing those it has."""
    name = metric.split("/", 1)[1] if metric.startswith("val/") else metric
    allowed = task_metrics(data.task, data.positive_target)
    if "/" in name or name not in allowed:
        raise ConfigError(
            f"--metric: {metric!r} does not exist for {data.task} on {data.name}; choose one of: "
            + ", ".join(f"val/{m}" for m in allowed)
        )
    return f"val/{name}"


def make_folds(source: Source, k: int, *, repeats: int = 1, seed: int = 0, stratify: bool | None = None) -> list[Fold]:
    """The K (x repeats) train/validation splits of `source`'s pool; stratified for classification by default."""
    n = len(source)
    if k < 2:
        raise ConfigError(f"--folds: must be at least 2, got {k}")
    if repeats < 1:
        raise ConfigError(f"--repeats: must be at least 1, got {repeats}")
    if k > n:
        raise ConfigError(f"--folds: {k} folds need at least {k} samples; {source.name} has {n}")
    if stratify is None:
        stratify = source.task == CLASSIFICATION
    if stratify and source.task != CLASSIFICATION:
        raise ConfigError(f"--stratify: only for classification; {source.name} is a {source.task} data set")
    y = source.y.numpy()
    if stratify:
        classes, counts = np.unique(y, return_counts=True)
        if counts.min() < k:
            c = classes[counts.argmin()]
            raise ConfigError(
                f"--folds: {k} stratified folds need at least {k} samples of every class; class {c} has {counts.min()} (use fewer folds or --no-stratify)"
            )
    # scikit-learn's seeding: one RandomState for all repeats (RepeatedKFold), or a fresh one (KFold)
    rng = np.random.RandomState(seed)
    folds = []
    for r in range(repeats):
        test_fold = _stratified_test_folds(y, k, rng) if stratify else _test_folds(n, k, rng)
        for i in range(k):
            val = np.flatnonzero(test_fold == i)
            folds.append(Fold(repeat=r, index=i, train_idx=np.flatnonzero(test_fold != i), val_idx=val))
    return folds


def _test_folds(n: int, k: int, rng: np.random.RandomState) -> np.ndarray:
    """The fold of each row, as scikit-learn's KFold(shuffle=True) draws it: the rows shuffled, then cut
    into k consecutive blocks, the first n % k of them one row larger. (A test checks that the
    folds equal scikit-learn's; dlexp does not import it, which would import scipy: 0.7 s.)"""
    order = np.arange(n)
    rng.shuffle(order)
    sizes = np.full(k, n // k, dtype=int)
    sizes[: n % k] += 1
    fold = np.empty(n, dtype=int)
    fold[order] = np.repeat(np.arange(k), sizes)
    return fold


def _stratified_test_folds(y: np.ndarray, k: int, rng: np.random.RandomState) -> np.ndarray:
    """The fold of each row, as scikit-learn's StratifiedKFold(shuffle=True) draws it: classes numbered
    in order of first appearance, each class's rows dealt round robin over the folds in sorted order,
    then each class's fold labels shuffled."""
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, order_of_first = np.unique(first, return_inverse=True)
    encoded = order_of_first[inverse]  # 0 = the class of the first row, 1 = the next new class, ...
    n_classes = len(first)
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::k], minlength=n_classes) for i in range(k)])  # (k, classes)
    fold = np.empty(len(y), dtype=int)
    for c in range(n_classes):
        labels = np.arange(k).repeat(allocation[:, c])
        rng.shuffle(labels)
        fold[encoded == c] = labels
    return fold


def fold_splits(source: Source, fold: Fold):
    """Train on the other folds, validate on this one; preprocessing fitted on the training folds.
    The test split is left out: model selection must not see it."""
    splits = make_splits(source, fold.train_idx, fold.val_idx)
    splits.test = None
    return splits


def score_of(summary: dict[str, Any], metric: str, at: str = "final") -> float:
    value = summary.get(at, {}).get(metric)
    if value is None or summary.get("status") not in ("ok",):
        return float("nan")
    return float(value)


def run_fold(cfg, source: Source, fold: Fold, *, metric: str, at: str = "final", extra_columns=None, extra_meta=None, on_epoch=None):
    """One fold as an ordinary run. Returns (run_id, status, val score, train score, seconds)."""
    import time

    from dlexp.runner import execute

    cols = {**(extra_columns or {}), "repeat": fold.repeat, "fold": fold.index}
    t0 = time.perf_counter()
    # A fold that crashes is recorded as failed and the study goes on (its mean becomes nan). With an
    # on_epoch hook (a sweep's pruner raising TrialPruned, say) exceptions must reach the caller.
    run_id, summary = execute(
        cfg, fold_splits(source, fold), extra_columns=cols, extra_meta=extra_meta, on_epoch=on_epoch,
        reraise=on_epoch is not None,
    )
    train_metric = "train/" + metric.split("/", 1)[1]
    return run_id, summary["status"], score_of(summary, metric, at), score_of(summary, train_metric, "final"), time.perf_counter() - t0


def cross_validate(
    cfg,
    source: Source,
    folds: list[Fold],
    *,
    metric: str,
    at: str = "final",
    extra_columns: dict[str, Any] | None = None,
    extra_meta: dict[str, Any] | None = None,
    on_fold: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> CVResult:
    """Train `cfg` on every fold in turn (in this process). `on_fold(i, score)` runs after fold i and
    may raise (e.g. optuna.TrialPruned) to stop early."""
    import time

    from dlexp.runner import execute

    start = time.perf_counter()
    res = CVResult([], [], [], [], [], folds=list(folds))
    for i, fold in enumerate(folds):
        run_id, status, score, train_score, seconds = run_fold(
            cfg, source, fold, metric=metric, at=at, extra_columns=extra_columns, extra_meta=extra_meta, on_epoch=on_epoch
        )
        res.run_ids.append(run_id)
        res.statuses.append(status)
        res.scores.append(score)
        res.train_scores.append(train_score)
        res.durations.append(seconds)
        if on_fold is not None:
            on_fold(i, score)
    res.duration_s = time.perf_counter() - start
    return res


# ---- statistics over folds ---------------------------------------------------------------------
# The arithmetic lives in dlexp.report.stats (pure functions shared with `dlexp report`); these
# wrappers give it the shapes the kfold tables use.


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high) of a plain t-interval; nan bounds for fewer than 2 values."""
    return corrected_interval(values, 0.0, level)


def corrected_interval(values: list[float], test_train_ratio: float, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high) of a candidate's J fold scores, with Nadeau & Bengio's corrected
    variance (1/J + n_val/n_train) * s^2: folds share training data, so s^2 / J is too small."""
    from dlexp.report.stats import corrected_t_interval

    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    low, high = corrected_t_interval(x, test_train_ratio, level)
    return mean, float(x.std(ddof=1)), low, high


def corrected_paired_test(a: list[float], b: list[float], n_train: int, n_val: int, direction: str) -> dict[str, float]:
    """Is candidate `a` better than `b` over the same folds? Nadeau & Bengio's corrected resampled t-test.

    Fold scores share training data, so the plain paired t-test is overconfident; the corrected
    variance is (1/J + n_val/n_train) * s^2 over the J fold differences (Nadeau & Bengio 2003,
    "Inference for the Generalization Error"; Bouckaert & Frank 2004). Returns the mean difference
    (a - b, oriented so that positive means `a` is better), its 95% interval, the ONE-SIDED p-value
    for "a is not better", the share of folds `a` wins and ties. When `a` and `b` are the top two of a
    ranking made from these same scores, the test comes after the selection and its p is optimistic.
    """
    from dlexp.report.stats import corrected_paired_t

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if direction == "minimize":
        d = -d
    return corrected_paired_t(d, n_val / n_train, alternative="greater")
