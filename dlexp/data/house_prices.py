"""d2l's Kaggle house prices (d2l 5.7): predict SalePrice, scored by log-RMSE.

As d2l: drop Id, standardize the numeric features then fill their NaN with 0, one-hot the others
with a NaN column; the model is trained on the raw SalePrice with MSE and log-RMSE
(sqrt(mean((log y_hat - log y)^2)), Kaggle's score) is reported (`positive_target=True`).
Unlike d2l, the preprocessing is fitted on the training rows only (`TabularFeatures`), never on
the validation or Kaggle test rows. Kaggle's test CSV has no labels: `y_test` is None and
`test_ids` holds its Id column for `dlexp.submission.write_submission`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from dlexp.data import REGRESSION, Source, register
from dlexp.data.download import DataError, RemoteFile, fetch
from dlexp.data.tabular import TabularFeatures

# d2l's DATA_HUB['kaggle_house_train'] / ['kaggle_house_test'] (SHA-1)
FILES = [
    RemoteFile("kaggle_house_pred_train.csv", "sha1", "585e9cc93e70b39160e7921475f9bcd7d31219ce", 460676),
    RemoteFile("kaggle_house_pred_test.csv", "sha1", "fa19780a7b011d9b009e8bff8e99922a8ee2eb90", 451405),
]


@register("house_prices")
def house_prices(cfg) -> Source:
    paths = fetch("kaggle-house", FILES, cfg.get("root"))
    train = pd.read_csv(paths["kaggle_house_pred_train.csv"])
    test = pd.read_csv(paths["kaggle_house_pred_test.csv"])
    if "SalePrice" not in train.columns or "Id" not in test.columns:
        raise DataError(f"{paths['kaggle_house_pred_train.csv']}: not d2l's Kaggle house CSV (no SalePrice/Id)")
    y = torch.from_numpy(train["SalePrice"].to_numpy(dtype=np.float32)).reshape(-1, 1)  # raw dollars
    return Source(
        name="house_prices", task=REGRESSION,
        x=train.drop(columns=["Id", "SalePrice"]), y=y,
        x_test=test.drop(columns=["Id"]), y_test=None,
        num_outputs=1, featurizer=TabularFeatures.fit, positive_target=True,
        test_ids=test["Id"].to_numpy(),
    )
