"""IDX reader and the Fashion-MNIST / MNIST loaders on the real files of the shared data folder."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dlexp.data import load_source, load_splits
from dlexp.data.idx import IMAGES_MAGIC, LABELS_MAGIC, CorruptFileError, parse_idx, read_idx
from dlexp.errors import ConfigError

SHARED = Path(os.environ.get("DLEXP_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} not found")
CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"

# label counts per class from the shared data README
COUNTS = {
    "fashion-mnist": ([6000] * 10, [1000] * 10),
    "mnist": (
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ),
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DLEXP_DATA", str(SHARED))
    monkeypatch.setenv("DLEXP_MIRRORS", "http://127.0.0.1:9/")  # never a real download


@pytest.mark.parametrize("folder", ["fashion-mnist", "mnist"])
def test_idx_reader_on_the_real_files(folder):
    d = SHARED / folder
    train_y = read_idx(d / "train-labels-idx1-ubyte.gz", LABELS_MAGIC)
    test_y = read_idx(d / "t10k-labels-idx1-ubyte.gz", LABELS_MAGIC)
    test_x = read_idx(d / "t10k-images-idx3-ubyte.gz", IMAGES_MAGIC)
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == np.uint8 and test_x.max() == 255
    assert np.bincount(train_y).tolist() == COUNTS[folder][0]
    assert np.bincount(test_y).tolist() == COUNTS[folder][1]


def _idx(magic: int, dims: tuple[int, ...], n_bytes: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + bytes(n_bytes)


def test_parse_idx_checks_magic_header_and_size():
    assert parse_idx(_idx(IMAGES_MAGIC, (2, 3, 4), 24), IMAGES_MAGIC).shape == (2, 3, 4)
    with pytest.raises(CorruptFileError, match=r"f\.idx: IDX magic number is 0x00000801, expected 0x00000803"):
        parse_idx(_idx(LABELS_MAGIC, (24,), 24), IMAGES_MAGIC, "f.idx")
    with pytest.raises(CorruptFileError, match="header says 2x3x4 = 24 bytes of data, file has 23"):
        parse_idx(_idx(IMAGES_MAGIC, (2, 3, 4), 23), IMAGES_MAGIC)
    with pytest.raises(CorruptFileError, match="file has 25"):
        parse_idx(_idx(IMAGES_MAGIC, (2, 3, 4), 25), IMAGES_MAGIC)
    with pytest.raises(CorruptFileError, match="truncated IDX header"):
        parse_idx(_idx(IMAGES_MAGIC, (2, 3, 4), 0)[:9], IMAGES_MAGIC)
    with pytest.raises(CorruptFileError, match="shorter than its header"):
        parse_idx(b"\x00\x00", IMAGES_MAGIC)


def test_truncated_gzip_is_a_one_line_error_naming_the_file(tmp_path):
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes((SHARED / "fashion-mnist" / bad.name).read_bytes()[:2000])
    with pytest.raises(CorruptFileError) as e:
        read_idx(bad, LABELS_MAGIC)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ConfigError)  # the CLI prints it as one line, exit status 2
    notgz = tmp_path / "x.gz"
    notgz.write_bytes(b"not gzip at all")
    with pytest.raises(CorruptFileError, match="x.gz: corrupt or truncated gzip"):
        read_idx(notgz, LABELS_MAGIC)
    short = tmp_path / "short.gz"  # valid gzip, IDX body cut short
    short.write_bytes(gzip.compress(gzip.decompress((SHARED / "fashion-mnist" / bad.name).read_bytes())[:-5]))
    with pytest.raises(CorruptFileError, match="short.gz: header says 10000 = 10000 bytes of data, file has 9995"):
        read_idx(short, LABELS_MAGIC)


def test_fashion_mnist_source_is_one_float_copy_in_unit_range_and_cached(tmp_path):
    cfg = OmegaConf.load(CONF / "fashion_mnist.yaml")
    assert cfg.name == "fashion_mnist"
    src = load_source(cfg)
    assert src.x.shape == (60000, 1, 28, 28) and src.x.dtype == torch.float32
    assert src.y.shape == (60000,) and src.y.dtype == torch.int64
    assert src.x_test.shape == (10000, 1, 28, 28) and src.y_test.shape == (10000,)
    assert float(src.x.min()) == 0.0 and float(src.x.max()) == 1.0
    assert src.x.is_contiguous() and src.num_outputs == 10 and src.extra["classes"][9] == "Ankle boot"
    cached = list((tmp_path / "cache" / "dlexp" / "fashion-mnist").glob("decoded-*.npz"))
    assert len(cached) == 1
    again = load_source(cfg)  # from the decoded cache
    assert torch.equal(again.x_test, src.x_test) and torch.equal(again.y, src.y)
    cached[0].write_bytes(cached[0].read_bytes()[:1000])  # a truncated cache file is rebuilt
    assert torch.equal(load_source(cfg).y_test, src.y_test)


def test_mnist_splits_hold_out_a_stratified_tenth():
    cfg = OmegaConf.load(CONF / "mnist.yaml")
    splits = load_splits(cfg)
    n_train, n_val = len(splits.train[1]), len(splits.val[1])
    assert n_train + n_val == 60000 and abs(n_val - 6000) <= 1  # sklearn's stratified rounding
    assert splits.train[0].shape[1:] == (1, 28, 28) and splits.val[0].shape[1:] == (1, 28, 28)
    assert splits.test[0].shape == (10000, 1, 28, 28)
    assert np.bincount(splits.val[1].numpy()).tolist()[1] in (674, 675)  # 10% of 6742 ones


def test_num_train_and_num_test_take_the_first_samples():
    cfg = OmegaConf.load(CONF / "fashion_mnist.yaml")
    cfg.num_train, cfg.num_test = 500, 100
    src = load_source(cfg)
    assert src.x.shape == (500, 1, 28, 28) and src.y_test.shape == (100,)
