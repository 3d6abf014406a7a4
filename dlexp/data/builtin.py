"""Datasets that need no download: scikit-learn's 8x8 digits and d2l's synthetic linear regression."""

from __future__ import annotations

import numpy as np
import torch

from dlexp.data import CLASSIFICATION, REGRESSION, Source, register, stratified_holdout
from dlexp.errors import ConfigError


def _digits_array() -> np.ndarray:
    """scikit-learn's bundled digits.csv.gz, read directly: importing sklearn.datasets costs ~2 s of
    start-up for a 1797-row file. Falls back to sklearn's loader if the file has moved."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        from pathlib import Path

        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.column_stack([data.data, data.target])


@register("digits")
def digits(cfg) -> Source:
    """scikit-learn's bundled handwritten digits: 1797 images of 8x8, pixel values 0..16.

    The test set is a fixed stratified hold-out (`test_fraction`, seeded by `split_seed`), the same
    for every run, so that runs with different seeds are compared on the same test images.
    """
    raw = _digits_array()  # (1797, 65): 64 pixels, then the label
    x = torch.tensor(raw[:, :-1], dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    y = torch.tensor(raw[:, -1], dtype=torch.long)
    pool, test = stratified_holdout(raw[:, -1].astype(np.int64), float(cfg.get("test_fraction", 0.2)), int(cfg.get("split_seed", 0)))
    return Source(
        name="digits", task=CLASSIFICATION, x=x[pool], y=y[pool], x_test=x[test], y_test=y[test],
        num_outputs=10,
    )


def _synthetic(cfg, name: str) -> Source:
    """d2l 3.3's generator: y = X w + b + noise, X ~ N(0, 1), noise ~ N(0, noise^2).

    `w` is either a list of weights or a scalar repeated `num_inputs` times (d2l 3.7 uses 0.01 x 200).
    The data are drawn from their own generator (`data_seed`), independent of the run's seed.
    """
    num_inputs = int(cfg.num_inputs)
    w_cfg = cfg.w
    if isinstance(w_cfg, (int, float)):
        w = torch.full((num_inputs, 1), float(w_cfg))
    else:
        w = torch.tensor([float(v) for v in w_cfg]).reshape(-1, 1)
        if w.shape[0] != num_inputs:
            raise ConfigError(f"dataset.w: has {w.shape[0]} values but dataset.num_inputs is {num_inputs}")
    n_train, n_test = int(cfg.num_train), int(cfg.num_test)
    if n_train < 1 or n_test < 0:
        raise ConfigError("dataset.num_train must be >= 1 and dataset.num_test >= 0")
    g = torch.Generator().manual_seed(int(cfg.get("data_seed", 0)))
    n = n_train + n_test
    x = torch.normal(0.0, 1.0, (n, num_inputs), generator=g)
    y = x @ w + float(cfg.b) + torch.normal(0.0, float(cfg.noise), (n, 1), generator=g)
    return Source(
        name=name, task=REGRESSION, x=x[:n_train], y=y[:n_train], x_test=x[n_train:], y_test=y[n_train:],
        num_outputs=1,
    )


@register("synthetic")
def synthetic(cfg) -> Source:
    return _synthetic(cfg, "synthetic")


@register("synthetic_wd")
def synthetic_wd(cfg) -> Source:
    """d2l 3.7's weight-decay setting (4.5 in the 0.17 edition): 20 training samples, 200 inputs, w = 0.01, b = 0.05."""
    return _synthetic(cfg, "synthetic_wd")
