"""d2l's tabular preprocessing (d2l 5.7), fitted on the training rows only, and the `csv` data set.

d2l standardizes the numeric columns, fills their NaN with 0 (the mean after standardizing) and
one-hot encodes the other columns with `pd.get_dummies(dummy_na=True)`, all on train + test rows
together. Here every statistic (means, standard deviations, the set of categories) is fitted on the
training rows that `make_splits` passes to `TabularFeatures.fit`, then applied unchanged to the
validation and test rows: a category never seen in training is encoded as all zeros.
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dlexp.data import CLASSIFICATION, REGRESSION, Source, register
from dlexp.errors import ConfigError, echo, echo_list

# One-hot encoding makes one column per category: a column of 30,000 distinct ids would make a
# 30,000-wide matrix (4 GB for 30,000 rows). Past this many categories a column is refused, with the
# way out named (drop it, or raise dataset.max_categories for a real categorical of that size).
MAX_CATEGORIES = 1000


class TabularFeatures:
    """Fitted preprocessing: call it on a DataFrame with the training columns, get float32 (n, d)."""

    def __init__(self, numeric: list[str], mean: pd.Series, std: pd.Series, categories: dict[str, list]):
        self.numeric = numeric
        self.mean = mean  # per numeric column, over the training rows
        self.std = std  # pandas' std (ddof=1), as d2l; 1 where a column is constant
        self.categories = categories  # categorical column -> sorted categories seen in training
        # numeric columns first, then each categorical column's dummies and its NaN dummy, as get_dummies
        self.columns = list(numeric) + [
            f"{c}_{v}" for c, cats in categories.items() for v in [*cats, "nan"]
        ]

    @classmethod
    def fit(cls, df: pd.DataFrame, max_categories: int = MAX_CATEGORIES) -> "TabularFeatures":
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        values = df[numeric].astype("float64")
        mean = values.mean().fillna(0.0)
        std = values.std()
        std = std.where((std > 0) & std.notna(), 1.0)
        categories = {}
        for c in df.columns:
            if c in numeric:
                continue
            seen = pd.unique(df[c].dropna())
            if len(seen) > max_categories:
                raise ConfigError(
                    f"dataset: column {echo(c)} has {len(seen):,} distinct values in the training rows, more than "
                    f"dataset.max_categories={max_categories} (one-hot would add a feature per value); drop it "
                    f"(dataset.drop=[{c}]) if it is an id, or raise dataset.max_categories")
            try:
                categories[c] = sorted(seen)
            except TypeError:  # mixed types in one column
                categories[c] = sorted(seen, key=str)
        return cls(numeric, mean, std, categories)

    def __call__(self, df: pd.DataFrame) -> torch.Tensor:
        missing = [c for c in [*self.numeric, *self.categories] if c not in df.columns]
        if missing:
            raise ConfigError(f"dataset: rows lack the training columns {echo_list(missing)}")
        n = len(df)
        num = df[self.numeric].apply(pd.to_numeric, errors="coerce").astype("float64")
        num = ((num - self.mean) / self.std).fillna(0.0)
        blocks = [num.to_numpy(dtype=np.float32)]
        for c, cats in self.categories.items():
            col = df[c]
            codes = pd.Index(cats).get_indexer(col)  # -1: NaN or never seen in training
            onehot = np.zeros((n, len(cats) + 1), dtype=np.float32)
            rows = np.nonzero(codes >= 0)[0]
            onehot[rows, codes[rows]] = 1.0
            onehot[col.isna().to_numpy(), len(cats)] = 1.0  # the dummy_na column
            blocks.append(onehot)
        return torch.from_numpy(np.concatenate(blocks, axis=1))


def read_csv(path, key: str, digests: list[str] | None = None) -> pd.DataFrame:
    """A CSV file of user data; its SHA-1 is appended to `digests`. A file that is not a regular text
    file (a device, /proc/self/environ with its NUL bytes) is refused without echoing its content."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise ConfigError(f"{key}: no such file: {p}")
    if not p.is_file():
        raise ConfigError(f"{key}: {p} is not a regular file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {p}: {e.strerror or e}") from None
    if b"\0" in data[: 1 << 16]:
        raise ConfigError(f"{key}: {p} is not a text CSV file (it holds NUL bytes)")
    if digests is not None:
        digests.append(hashlib.sha1(data).hexdigest())
    try:
        df = pd.read_csv(io.BytesIO(data))
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: cannot read {p} as CSV: {type(e).__name__}: {echo(str(e), 200)}") from None
    _refuse_infinities(df, key, p)
    return df


def _refuse_infinities(df: pd.DataFrame, key: str, path: Path) -> None:
    """inf in a numeric column would train to a NaN loss (or a NaN-free but infinite one): refused at
    load, naming the column and the row. (NaN is a missing value, which the features fill with 0.)"""
    for c in df.columns:
        if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            values = df[c].to_numpy(dtype="float64", na_value=np.nan)
            bad = np.isinf(values)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ConfigError(f"{key}: column {echo(c)}, row {row + 1} (line {row + 2} of {path}) is {values[row]}; "
                                  "non-finite values are refused (leave a cell empty for a missing value)")


def _class_indices(col: pd.Series, classes: list, key: str) -> torch.Tensor:
    codes = pd.Index(classes).get_indexer(col)  # -1: not a training class
    if (codes < 0).any():
        bad = col[codes < 0].iloc[0]
        raise ConfigError(f"{key}: target value {echo(bad)} is not one of the training classes {echo_list(classes)}")
    return torch.from_numpy(codes.astype(np.int64))


def _regression_target(col: pd.Series, key: str) -> torch.Tensor:
    numbers = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    text = np.isnan(numbers) & col.notna().to_numpy()
    if text.any():
        row = int(np.flatnonzero(text)[0])
        raise ConfigError(f"dataset.task: regression needs a numeric target column ({key}: row {row + 1} of "
                          f"{echo(col.name)} is {echo(col.iloc[row])})")
    with np.errstate(over="ignore"):
        v = numbers.astype(np.float32)
    beyond = ~np.isfinite(v) & ~np.isnan(numbers)
    if beyond.any():  # inf, or a number past float32's range, which the targets are trained in
        row = int(np.flatnonzero(beyond)[0])
        raise ConfigError(f"{key}: target column {echo(col.name)}, row {row + 1} (line {row + 2}) is {numbers[row]}; "
                          "non-finite targets (or beyond float32's range, 3.4e38) are refused")
    return torch.from_numpy(v).reshape(-1, 1)


@register("csv")
def csv_dataset(cfg) -> Source:
    """Any CSV file: `path`, `target` column, `task`; optional `test_path` and `drop` columns."""
    if not cfg.get("path"):
        raise ConfigError("dataset.path: set it to the CSV file to train on (dataset.path=/path/to/file.csv)")
    task = cfg.get("task")
    if task not in (CLASSIFICATION, REGRESSION):
        raise ConfigError(f"dataset.task: must be {CLASSIFICATION} or {REGRESSION}, got {task!r}")
    max_categories = cfg.get("max_categories", MAX_CATEGORIES)
    if isinstance(max_categories, bool) or not isinstance(max_categories, int) or max_categories < 1:
        raise ConfigError(f"dataset.max_categories: expected a positive integer, got {echo(max_categories)}")
    digests: list[str] = []
    df = read_csv(cfg.path, "dataset.path", digests)
    target = cfg.get("target")
    if target is None or target not in df.columns:
        raise ConfigError(f"dataset.target: column {echo(target)} not in {cfg.path}; its {len(df.columns):,} columns: "
                          f"{echo_list(map(str, df.columns))}")
    drop = [str(c) for c in (cfg.get("drop") or [])]
    unknown = [c for c in drop if c not in df.columns]
    if unknown:
        raise ConfigError(f"dataset.drop: columns {echo_list(unknown)} not in {cfg.path}")
    if df[target].isna().any():
        raise ConfigError(f"dataset.target: column {echo(target)} has {int(df[target].isna().sum())} missing values")
    test = read_csv(cfg.test_path, "dataset.test_path", digests) if cfg.get("test_path") else None

    extra = {}
    if task == CLASSIFICATION:
        seen = pd.unique(df[target])
        try:
            classes = sorted(seen)
        except TypeError:
            classes = sorted(seen, key=str)
        if len(classes) < 2:
            raise ConfigError(f"dataset.task: classification needs >= 2 classes in {echo(target)}, found {echo_list(classes)}")
        extra["classes"] = [c.item() if hasattr(c, "item") else c for c in classes]  # index -> name
        y = _class_indices(df[target], classes, "dataset.target")
        num_outputs = len(classes)
    else:
        y = _regression_target(df[target], "dataset.target")
        num_outputs = 1

    x_test = y_test = None
    if test is not None:
        x_test = test.drop(columns=[c for c in [target, *drop] if c in test.columns])
        if target in test.columns and test[target].notna().all():
            y_test = (
                _class_indices(test[target], classes, "dataset.test_path")
                if task == CLASSIFICATION
                else _regression_target(test[target], "dataset.test_path")
            )
    return Source(
        name="csv", task=task, x=df.drop(columns=[target, *drop]), y=y, x_test=x_test, y_test=y_test,
        num_outputs=num_outputs, featurizer=functools.partial(TabularFeatures.fit, max_categories=max_categories),
        extra=extra, fingerprint="sha1:" + ",".join(digests),
    )
