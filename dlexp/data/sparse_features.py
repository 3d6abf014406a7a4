"""Sparse features: d2l 12.7's motivation for AdaGrad, as a data set that needs no files.

Each sample is a bag of `features_per_sample` feature ids out of `num_features`, drawn with Zipf
frequencies (feature i, counted from 0, with probability proportional to 1 / (i + 1)^zipf): a few
features are in most samples, most features are rare (with the defaults, 356 of 2000 features occur
fewer than 10 times in the 20,000 training samples). The target is the sum of the features' true
weights plus noise, y = sum_i w_i + noise, w_i ~ N(0, 1): a linear regression on sparse inputs, as
in click-through-rate models.

A linear model over the ids (`model=sparse_linear`, an `nn.EmbeddingBag(sparse=True)`) gets a
gradient only for the features in its batch. With one learning rate for all, SGD's largest stable lr
is set by the frequent features, and a rare feature moves rarely and by little; AdaGrad divides each
feature's step by the root of its own summed squared gradients, so rare features take large steps
(`conf/experiment/sparse_adagrad.yaml`).
"""

from __future__ import annotations

import torch

from dlexp.data import REGRESSION, Source, register
from dlexp.errors import ConfigError


def _positive_int(cfg, key: str, minimum: int = 1) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"dataset.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


@register("sparse_features")
def sparse_features(cfg) -> Source:
    """x: int64 (n, features_per_sample) feature ids; y: float32 (n, 1)."""
    num_features = _positive_int(cfg, "num_features")
    per_sample = _positive_int(cfg, "features_per_sample")
    n_train, n_test = _positive_int(cfg, "num_train"), _positive_int(cfg, "num_test")
    zipf, noise = float(cfg.get("zipf", 1.1)), float(cfg.get("noise", 0.1))
    if not 0 <= zipf <= 10:
        raise ConfigError(f"dataset.zipf: expected an exponent in [0, 10], got {zipf}")
    if not noise >= 0:
        raise ConfigError(f"dataset.noise: must be >= 0, got {noise}")
    if (n_train + n_test) * per_sample > 2**31:
        raise ConfigError("dataset.num_train, num_test, features_per_sample: more than 2^31 feature ids in all")
    # the data come from their own generator (data_seed), independent of the run's seed
    gen = torch.Generator().manual_seed(int(cfg.get("data_seed", 0)))
    frequency = 1.0 / torch.arange(1, num_features + 1, dtype=torch.float64) ** zipf
    n = n_train + n_test
    ids = torch.multinomial(frequency, n * per_sample, replacement=True, generator=gen).view(n, per_sample)
    w = torch.randn(num_features, generator=gen)
    y = (w[ids].sum(dim=1, keepdim=True) + noise * torch.randn(n, 1, generator=gen)).float()
    return Source(
        name="sparse_features", task=REGRESSION, x=ids[:n_train], y=y[:n_train],
        x_test=ids[n_train:], y_test=y[n_train:], num_outputs=1,
        extra={"num_features": num_features},
    )  # fmt: skip
