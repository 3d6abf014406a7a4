"""Kaggle submission files: `Id,SalePrice` predictions for a data set whose test labels are unknown."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from dlexp.data import Source
from dlexp.atomic import atomic_write
from dlexp.errors import ConfigError


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Model outputs for `x` in eval mode (dropout off), on the model's device, returned on the CPU."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    out = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 1)


def write_submission(
    model: torch.nn.Module,
    source: Source,
    transform: Callable[[Any], torch.Tensor] | None,
    path: str | Path,
    target_name: str = "SalePrice",
) -> Path:
    """Write Kaggle's `Id,<target_name>` CSV of `model`'s predictions on `source.x_test`.

    `transform` is the preprocessing fitted on the rows the model was trained on
    (`source.featurizer(train_rows)`); None fits it on the whole training pool, as d2l does for its
    final submission. The file appears atomically (temporary file + rename).
    """
    if source.x_test is None or source.test_ids is None:
        raise ConfigError(f"dataset.name: {source.name} has no unlabelled test set to write a submission for")
    if transform is None:
        transform = source.featurizer(source.x) if source.featurizer is not None else (lambda v: v)
    pred = predict(model, transform(source.x_test)).reshape(len(source.test_ids), -1)
    if pred.shape[1] != 1:
        raise ConfigError(f"model: a submission needs one output per row, got {pred.shape[1]}")
    frame = pd.DataFrame({"Id": source.test_ids, target_name: pred[:, 0].numpy()})
    path = Path(path)
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    return path
