"""Dataset registry: one row per `conf/dataset/<name>.yaml`.

A dataset loader turns its config into a `Source`: the raw train pool and test set, before any
fitted preprocessing. `make_splits` then cuts a validation hold-out (or a K-fold fold) out of the
pool, fits the preprocessing on the training rows only, and returns tensors ready for the loop.
Data flows one way: loader -> Source -> make_splits -> Splits -> train loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from dlexp.errors import ConfigError, echo

CLASSIFICATION = "classification"
REGRESSION = "regression"
OBJECTIVE = "objective"  # no samples to fit: a function minimized over the model's output (dlexp.data.objective)


@dataclass
class Source:
    """Raw data of one dataset.

    x and x_test are either tensors (already numeric, e.g. images scaled to [0, 1]) or pandas
    DataFrames that need preprocessing fitted on the training rows (`featurizer`).
    Classification targets are int64 class indices of shape (n,); regression targets are float32
    of shape (n, 1).
    """

    name: str
    task: str  # CLASSIFICATION | REGRESSION | OBJECTIVE
    x: Any  # train pool: torch.Tensor (n, *sample_shape) or pandas.DataFrame
    y: torch.Tensor
    x_test: Any = None
    y_test: torch.Tensor | None = None  # None where the test labels are unknown (Kaggle)
    num_outputs: int = 1  # classes, or 1 for regression
    # featurizer(train_rows_of_x) -> transform(rows_of_x) -> float32 tensor; None: x is numeric
    featurizer: Callable[[Any], Callable[[Any], torch.Tensor]] | None = None
    # log-RMSE is reported for regression targets that are positive (house prices)
    positive_target: bool = False
    test_ids: Any = None  # ids for a submission file (Kaggle), aligned with x_test
    extra: dict = field(default_factory=dict)
    # loss(output, target) -> scalar of a data set that brings its own (an objective's f); None: the task's
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # what identifies the content (the checksums of the files it was read from); None: load_source
    # hashes the arrays themselves. `--resume` compares it with the one recorded at the run's start.
    fingerprint: str | None = None
    finite: bool = False  # the loader guarantees finite values (images decoded from uint8): no check needed

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    """Tensors for one training run (on the CPU; the loop moves them to the device once)."""

    task: str
    num_outputs: int
    sample_shape: tuple[int, ...]
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor] | None
    positive_target: bool = False
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # see Source.loss
    fingerprint: str | None = None  # the source's and the rows chosen for train and val (see make_splits)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics the loop records for this task (besides lr and epoch time)."""
        if self.task == CLASSIFICATION:
            return ("loss", "acc")
        if self.task == OBJECTIVE:
            return ("loss",) + tuple(f"x{i + 1}" for i in range(self.num_outputs))
        return ("loss", "rmse", "log_rmse") if self.positive_target else ("loss", "rmse")


def _rows(x: Any, idx: np.ndarray) -> Any:
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(idx, dtype=torch.long)]
    return x.iloc[idx]


def _take_rows_in_place(x: torch.Tensor, idx: np.ndarray, chunk: int = 4096) -> torch.Tensor:
    """x[idx] for sorted, distinct `idx`, built inside x's own memory: row idx[j] moves to row j
    (idx[j] >= j, so no row is overwritten before it is read), a chunk of rows at a time. Returns
    the view x[:len(idx)]; x's other rows are left as garbage."""
    t = torch.as_tensor(idx, dtype=torch.long)
    for a in range(0, len(t), chunk):
        rows = t[a : a + chunk]
        x[a : a + len(rows)] = x[rows]  # the gather on the right is a copy of one chunk
    return x[: len(t)]


def make_splits(source: Source, train_idx: np.ndarray, val_idx: np.ndarray | None, *, consume: bool = False) -> Splits:
    """Cut `source`'s pool into train/val rows, fit the preprocessing on the train rows only.

    With `consume` (the caller will not use `source` again, as `load_splits`), the training rows of
    a tensor pool are gathered inside the pool's own memory instead of into a copy: a Fashion-MNIST
    run then holds the pool once, not the pool and a 90% copy of it."""
    if consume and isinstance(source.x, torch.Tensor) and source.featurizer is None and source.x.is_contiguous():
        x_val = _rows(source.x, val_idx) if val_idx is not None and len(val_idx) else None  # copied out first
        y_val = source.y[torch.as_tensor(val_idx, dtype=torch.long)] if x_val is not None else None
        x_train = _take_rows_in_place(source.x, np.asarray(train_idx))
        y_train = source.y[torch.as_tensor(train_idx, dtype=torch.long)]
        source.x = None  # consumed: its rows were moved
        test = (source.x_test, source.y_test) if source.x_test is not None and source.y_test is not None else None
        return Splits(task=source.task, num_outputs=source.num_outputs, sample_shape=tuple(x_train.shape[1:]),
                      train=(x_train, y_train), val=(x_val, y_val) if x_val is not None else None, test=test,
                      positive_target=source.positive_target, loss=source.loss)
    x_train = _rows(source.x, train_idx)
    x_val = _rows(source.x, val_idx) if val_idx is not None and len(val_idx) else None
    transform = source.featurizer(x_train) if source.featurizer is not None else (lambda v: v)
    t_idx = torch.as_tensor(train_idx, dtype=torch.long)
    train = (transform(x_train), source.y[t_idx])
    val = None
    if x_val is not None:
        val = (transform(x_val), source.y[torch.as_tensor(val_idx, dtype=torch.long)])
    test = None
    if source.x_test is not None and source.y_test is not None:
        test = (transform(source.x_test), source.y_test)
    return Splits(
        task=source.task,
        num_outputs=source.num_outputs,
        sample_shape=tuple(train[0].shape[1:]),
        train=train,
        val=val,
        test=test,
        positive_target=source.positive_target,
        loss=source.loss,
        fingerprint=_digest(source.fingerprint or "", np.asarray(train_idx, dtype=np.int64).tobytes(),
                            np.asarray(val_idx if val_idx is not None else [], dtype=np.int64).tobytes()),
    )


def _digest(*parts: Any) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return "sha1:" + h.hexdigest()


def content_digest(*arrays: Any) -> str:
    """SHA-1 of tensors and DataFrames, for a source whose loader read no checksummed files."""
    import pandas as pd

    parts = []
    for a in arrays:
        if a is None:
            parts.append(b"none")
        elif isinstance(a, pd.DataFrame):
            parts += [str(list(a.columns)).encode(), pd.util.hash_pandas_object(a, index=False).to_numpy().tobytes()]
        else:
            t = torch.as_tensor(a).contiguous()
            parts += [f"{t.dtype}{tuple(t.shape)}".encode(), t.numpy().tobytes()]
    return _digest(*parts)


def check_finite(source: Source) -> None:
    """Refuse a data set with inf or NaN in a tensor, or inf in a numeric column, naming where: it
    would train to a NaN loss, or end `ok` with an infinite one. (In a DataFrame a NaN is a missing
    value, which the features fill; in a target it is refused by the loader.)"""
    import pandas as pd

    for split, values in (("training", source.x), ("training target", source.y), ("test", source.x_test),
                          ("test target", source.y_test)):
        if isinstance(values, torch.Tensor) and values.is_floating_point():
            if torch.isfinite(values.sum()):  # fast path: no inf or NaN in the sum, none in the values
                continue
            bad = ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
            if bad.any():
                row = int(bad.nonzero()[0])
                raise ConfigError(f"dataset ({source.name}): {split} row {row + 1} holds a non-finite value; refused")
        elif isinstance(values, pd.DataFrame):
            for c in values.columns:
                if pd.api.types.is_numeric_dtype(values[c]) and not pd.api.types.is_bool_dtype(values[c]):
                    column = values[c].to_numpy(dtype="float64", na_value=np.nan)
                    if np.isinf(column).any():
                        row = int(np.flatnonzero(np.isinf(column))[0])
                        raise ConfigError(f"dataset ({source.name}): column {echo(c)}, {split} row {row + 1} is "
                                          f"{column[row]}; non-finite values are refused")


def stratified_holdout(labels: np.ndarray | None, fraction: float, seed: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded hold-out of `fraction` of the rows: (kept, held_out), both sorted.

    With labels, each class gives round(fraction * class size) rows (at least one when the class
    has two or more), so class proportions are kept; without labels, a plain random draw.
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        k = int(round(fraction * n))
        return np.sort(perm[k:]), np.sort(perm[:k])
    held = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = int(round(fraction * len(rows)))
        if k == 0 and fraction > 0 and len(rows) >= 2:
            k = 1
        held.append(rng.permutation(rows)[:k])
    held_out = np.sort(np.concatenate(held)) if held else np.arange(0)
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out


def holdout_indices(source: Source, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded validation hold-out of the pool, stratified for classification."""
    n = len(source)
    if val_fraction <= 0:
        return np.arange(n), np.arange(0)
    labels = source.y.numpy() if source.task == CLASSIFICATION else None
    train_idx, val_idx = stratified_holdout(labels, val_fraction, seed, n)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ConfigError(f"dataset.val_fraction: holding out {val_fraction} of {n} samples leaves an empty split")
    return train_idx, val_idx


# name -> loader(dataset_cfg) -> Source. Loaders register themselves with @register.
DATASETS: dict[str, Callable[[Any], Source]] = {}


def register(name: str):
    def deco(fn: Callable[[Any], Source]) -> Callable[[Any], Source]:
        DATASETS[name] = fn
        return fn

    return deco


def load_source(dataset_cfg: Any) -> Source:
    """Build the Source named by `dataset_cfg.name` (the config file name)."""
    name = dataset_cfg.name
    if name not in DATASETS:
        raise ConfigError(f"dataset.name: unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    source = DATASETS[name](dataset_cfg)
    if not source.finite:
        check_finite(source)
    if source.fingerprint is None:
        source.fingerprint = content_digest(source.x, source.y, source.x_test, source.y_test)
    return source


def load_splits(dataset_cfg: Any) -> Splits:
    """Source plus the configured validation hold-out: what `dlexp run` trains on."""
    source = load_source(dataset_cfg)
    train_idx, val_idx = holdout_indices(
        source, float(dataset_cfg.get("val_fraction", 0.1)), int(dataset_cfg.get("split_seed", 0))
    )
    return make_splits(source, train_idx, val_idx, consume=True)


def _lazy(name: str, module: str) -> None:
    """Register `name` now, import its module (which registers the real loader) on first use: the
    tabular loaders need pandas, which a run on images or digits should not import (0.1-0.2 s)."""

    def load(cfg) -> Source:
        import importlib

        importlib.import_module(module)
        return DATASETS[name](cfg)

    DATASETS[name] = load


# Loaders. Each module registers its rows on import; the pandas-based ones when first used.
from dlexp.data import airfoil, builtin, mnist, objective, sparse_features  # noqa: E402,F401

_lazy("house_prices", "dlexp.data.house_prices")
_lazy("csv", "dlexp.data.tabular")
