"""Tabular data: d2l's Kaggle house prices fitted on training rows only, airfoil, any CSV, submissions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from dlexp.data import CLASSIFICATION, REGRESSION, load_source, load_splits, make_splits
from dlexp.data.tabular import TabularFeatures
from dlexp.errors import ConfigError
from dlexp.submission import write_submission

SHARED = Path(os.environ.get("DLEXP_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} not found")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DLEXP_DATA", str(SHARED))
    monkeypatch.setenv("DLEXP_MIRRORS", "http://127.0.0.1:9/")  # never a real download


@pytest.fixture
def house():
    return load_source(OmegaConf.load(CONF / "house_prices.yaml"))


@needs_data
def test_house_prices_source_is_d2l_data_with_kaggle_test_unlabelled(house):
    assert house.x.shape == (1460, 79) and house.x_test.shape == (1459, 79)
    assert house.y.shape == (1460, 1) and house.y.dtype == torch.float32 and float(house.y.min()) > 0
    assert house.y_test is None and house.positive_target and house.task == REGRESSION
    assert house.test_ids.tolist() == list(range(1461, 2920))
    splits = load_splits(OmegaConf.load(CONF / "house_prices.yaml"))
    assert splits.test is None and splits.metrics == ("loss", "rmse", "log_rmse")
    assert splits.train[0].dtype == torch.float32 and not torch.isnan(splits.train[0]).any()


@needs_data
def test_house_statistics_come_from_the_training_rows_only(house):
    rng = np.random.default_rng(0)
    train_idx = np.sort(rng.permutation(1460)[:1000])
    rows = house.x.iloc[train_idx]
    feats = TabularFeatures.fit(rows)
    numeric = rows.select_dtypes("number")
    pd.testing.assert_series_equal(feats.mean, numeric.mean(), check_names=False)
    pd.testing.assert_series_equal(feats.std, numeric.std(), check_names=False)
    # d2l's leaky version standardizes with train + test statistics: different numbers
    leaky = pd.concat([house.x, house.x_test]).select_dtypes("number").mean()
    assert abs(leaky["LotArea"] - feats.mean["LotArea"]) > 1.0
    # so the training features are exactly centred, column by column (NaN-free columns)
    x = feats(rows)
    full = [i for i, c in enumerate(feats.numeric) if rows[c].notna().all()]
    assert torch.allclose(x[:, full].double().mean(0), torch.zeros(len(full), dtype=torch.float64), atol=1e-5)
    assert x.shape[1] == len(feats.columns)


@needs_data
def test_category_seen_only_in_held_out_rows_is_all_zeros(house):
    blueste = (house.x["Neighborhood"] == "Blueste").to_numpy()
    assert blueste.sum() == 2
    train_idx, val_idx = np.nonzero(~blueste)[0], np.nonzero(blueste)[0]
    feats = TabularFeatures.fit(house.x.iloc[train_idx])
    assert "Neighborhood_Blueste" not in feats.columns  # d2l's get_dummies on all rows would make it
    hood = [i for i, c in enumerate(feats.columns) if c.startswith("Neighborhood_")]
    x_val = feats(house.x.iloc[val_idx])
    assert x_val[:, hood].abs().sum() == 0
    splits = make_splits(house, train_idx, val_idx)
    assert torch.equal(splits.val[0], x_val) and splits.train[0].shape[1] == x_val.shape[1]


@needs_data
def test_submission_is_kaggles_id_saleprice_csv_written_atomically(house, tmp_path):
    feats = TabularFeatures.fit(house.x)
    model = torch.nn.Linear(len(feats.columns), 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.constant_(model.bias, 180000.0)
    out = write_submission(model, house, feats, tmp_path / "sub" / "submission.csv")
    df = pd.read_csv(out)
    assert list(df.columns) == ["Id", "SalePrice"] and len(df) == 1459
    assert df["Id"].tolist() == list(range(1461, 2920)) and (df["SalePrice"] == 180000.0).all()
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temporary file left
    write_submission(model, house, None, out)  # None: fit the features on the whole pool
    assert len(pd.read_csv(out)) == 1459


@needs_data
def test_airfoil_is_d2l_standardized_with_a_fixed_test_holdout():
    raw = np.genfromtxt(SHARED / "airfoil" / "airfoil_self_noise.dat", dtype=np.float32, delimiter="\t")
    d2l = torch.from_numpy((raw - raw.mean(axis=0)) / raw.std(axis=0))[:1500]  # d2l's get_data_ch11
    cfg = OmegaConf.load(CONF / "airfoil.yaml")
    src = load_source(cfg)
    assert src.x.shape == (1350, 5) and src.y.shape == (1350, 1) and src.x_test.shape == (150, 5)
    both = torch.cat([torch.cat([src.x, src.y], 1), torch.cat([src.x_test, src.y_test], 1)])
    assert torch.equal(torch.sort(both[:, 0]).values, torch.sort(d2l[:, 0]).values)
    assert torch.equal(load_source(cfg).x_test, src.x_test)  # the same test rows every time
    cfg.test_fraction = 0
    exact = load_source(cfg)
    assert torch.equal(torch.cat([exact.x, exact.y], 1), d2l) and exact.x_test is None


def _write(tmp_path, name, frame):
    p = tmp_path / name
    frame.to_csv(p, index=False)
    return str(p)


def _csv_cfg(**kw):
    return OmegaConf.merge(OmegaConf.load(CONF / "csv.yaml"), kw)


@pytest.fixture
def iris_like(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({
        "id": np.arange(n),
        "size": rng.normal(10, 2, n),
        "colour": rng.choice(["red", "green", None], n),
        "kind": rng.choice(["setosa", "virginica", "versicolor"], n),
        "price": rng.uniform(1, 5, n),
    })
    return frame


def test_csv_classification_maps_targets_to_sorted_class_indices(tmp_path, iris_like):
    path = _write(tmp_path, "train.csv", iris_like)
    test = _write(tmp_path, "test.csv", iris_like.iloc[:10])
    src = load_source(_csv_cfg(path=path, target="kind", task="classification", test_path=test, drop=["id"]))
    assert src.task == CLASSIFICATION and src.num_outputs == 3
    assert src.extra["classes"] == ["setosa", "versicolor", "virginica"]
    names = np.array(src.extra["classes"])[src.y.numpy()]
    assert (names == iris_like["kind"].to_numpy()).all() and src.y.dtype == torch.int64
    assert "id" not in src.x.columns and src.y_test.shape == (10,)
    splits = make_splits(src, np.arange(40), np.arange(40, 60))
    # size, price, then colour_green, colour_red, colour_nan
    assert splits.train[0].shape == (40, 5) and splits.test[0].shape == (10, 5)


def test_csv_regression_and_unlabelled_test_file(tmp_path, iris_like):
    path = _write(tmp_path, "train.csv", iris_like)
    test = _write(tmp_path, "test.csv", iris_like.drop(columns=["price"]).iloc[:7])
    src = load_source(_csv_cfg(path=path, target="price", task="regression", test_path=test))
    assert src.y.shape == (60, 1) and src.y.dtype == torch.float32 and src.y_test is None
    assert src.x_test.shape == (7, 4)
    splits = load_splits(_csv_cfg(path=path, target="price", task="regression"))
    assert splits.train[0].shape[0] == 48 and splits.val[0].shape[0] == 12 and splits.test is None


def test_csv_config_errors_name_the_key(tmp_path, iris_like):
    path = _write(tmp_path, "train.csv", iris_like)
    cases = [
        (dict(target="kind", task="classification"), "dataset.path"),
        (dict(path=str(tmp_path / "nope.csv"), target="kind", task="classification"), "dataset.path: no such file"),
        (dict(path=path, target="species", task="classification"), "dataset.target: column 'species'"),
        (dict(path=path, target="kind", task="clustering"), "dataset.task: must be classification or regression"),
        (dict(path=path, target="kind", task="regression"), "dataset.task: regression needs a numeric target"),
        (dict(path=path, target="kind", task="classification", drop=["nope"]), "dataset.drop"),
        (dict(path=path, target="kind", task="classification", test_path=str(tmp_path / "t.csv")), "dataset.test_path"),
    ]
    for kw, message in cases:
        with pytest.raises(ConfigError) as e:
            load_source(_csv_cfg(**kw))
        assert str(e.value).startswith(message.split(":")[0]) and message in str(e.value), kw
        assert "\n" not in str(e.value)


def test_csv_test_class_never_seen_in_training_is_an_error(tmp_path, iris_like):
    path = _write(tmp_path, "train.csv", iris_like)
    test = _write(tmp_path, "test.csv", iris_like.assign(kind="unknown").iloc[:3])
    with pytest.raises(ConfigError, match="'unknown' is not one of the training classes"):
        load_source(_csv_cfg(path=path, target="kind", task="classification", test_path=test))


def test_every_dataset_config_names_itself_and_says_what_it_is():
    for name in ["fashion_mnist", "mnist", "airfoil", "house_prices", "csv"]:
        text = (CONF / f"{name}.yaml").read_text()
        assert text.startswith("# ") and "\n" in text
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert cfg.name == name and "val_fraction" in cfg and "split_seed" in cfg
        assert name == "csv" or ("root" in cfg and cfg.root is None)


# --- hostile data: non-finite values, high-cardinality columns ------------------------------------


@pytest.mark.parametrize("column, row, value", [("size", 17, "inf"), ("size", 0, "-inf"), ("price", 41, "inf"),
                                                 ("price", 5, "1e39")])
def test_non_finite_data_is_refused_at_load_naming_column_and_row(tmp_path, iris_like, column, row, value):
    frame = iris_like.astype({column: object})
    frame.loc[row, column] = value
    path = _write(tmp_path, "train.csv", frame)
    for target in ("price", "kind"):
        if target == "kind" and value == "1e39":
            continue  # a feature of 1e39 is finite and standardized: only a float32 target cannot hold it
        task = "regression" if target == "price" else "classification"
        with pytest.raises(ConfigError) as e:
            load_source(_csv_cfg(path=path, target=target, task=task))
        message = str(e.value)
        assert f"'{column}'" in message and f"row {row + 1}" in message and f"line {row + 2}" in message, message


def test_a_nan_feature_is_still_a_missing_value(tmp_path, iris_like):
    frame = iris_like.copy()
    frame.loc[3, "size"] = np.nan
    splits = load_splits(_csv_cfg(path=_write(tmp_path, "train.csv", frame), target="kind", task="classification"))
    assert torch.isfinite(splits.train[0]).all()


def test_a_synthetic_target_beyond_float32_is_refused(tmp_path):
    cfg = OmegaConf.load(CONF.parent / "dataset" / "synthetic.yaml")
    cfg.w = 1e38
    with pytest.raises(ConfigError, match=r"dataset \(synthetic\): training target row \d+ holds a non-finite value"):
        load_source(cfg)


def test_a_high_cardinality_column_is_refused_before_one_hot_with_the_way_out(tmp_path):
    n = 30_000
    frame = pd.DataFrame({"user": [f"u{i:05d}" for i in range(n)], "x": np.arange(n) % 7, "y": np.arange(n) % 2})
    path = _write(tmp_path, "train.csv", frame)
    with pytest.raises(ConfigError) as e:
        load_splits(_csv_cfg(path=path, target="y", task="classification"))
    message = str(e.value)
    assert "'user'" in message and "dataset.max_categories=1000" in message and "dataset.drop=[user]" in message
    splits = load_splits(_csv_cfg(path=path, target="y", task="classification", drop=["user"]))
    assert splits.train[0].shape[1] == 1
    few = frame.assign(user=frame["user"].str[:4])  # u000..u299: 300 distinct values, one-hot as before
    splits = load_splits(_csv_cfg(path=_write(tmp_path, "few.csv", few), target="y", task="classification", max_categories=300))
    assert splits.train[0].shape[1] == 1 + 300 + 1


def test_a_file_that_is_not_text_or_not_regular_is_refused_without_reading_it_into_the_message(tmp_path):
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"a,b\n1,\x00secret\n")
    for path, words in ((binary, "NUL bytes"), ("/dev/zero", "not a regular file"), (tmp_path, "not a regular file")):
        with pytest.raises(ConfigError) as e:
            load_source(_csv_cfg(path=str(path), target="a", task="regression"))
        assert words in str(e.value) and "secret" not in str(e.value)
