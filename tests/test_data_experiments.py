"""Every conf/experiment/d2l_*.yaml composes to d2l's published settings and runs on the real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dlexp.config import compose

SHARED = Path(os.environ.get("DLEXP_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} not found")

# experiment -> (model, hidden, dropout, activation, lr); all: Fashion-MNIST, SGD, batch 256, 10 epochs
D2L = {
    "d2l_softmax": ("softmax", None, None, None, 0.1),  # d2l 4.5
    "d2l_mlp": ("mlp", [256], 0.0, "relu", 0.1),  # d2l 5.2
    "d2l_dropout": ("mlp", [256, 256], [0.2, 0.5], "relu", 0.5),  # d2l 5.6
    "d2l_lenet": ("lenet", None, None, "sigmoid", 0.9),  # d2l 7.6
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DLEXP_DATA", str(SHARED))
    monkeypatch.setenv("DLEXP_MIRRORS", "http://127.0.0.1:9/")  # never a real download


@pytest.mark.parametrize("experiment", sorted(D2L))
def test_experiment_composes_to_d2l_settings(experiment):
    cfg = compose([f"experiment={experiment}"])
    model, hidden, dropout, activation, lr = D2L[experiment]
    assert cfg.dataset.name == "fashion_mnist" and cfg.dataset.val_fraction == 0.0
    assert cfg.model.name == model and cfg.optimizer.name == "sgd" and cfg.optimizer.lr == lr
    assert cfg.trainer.batch_size == 256 and cfg.trainer.epochs == 10
    if hidden is not None:
        assert list(cfg.model.hidden) == hidden
    if dropout is not None:
        assert (list(cfg.model.dropout) if isinstance(dropout, list) else cfg.model.dropout) == dropout
    if activation is not None:
        assert cfg.model.activation == activation
    first = (Path(__file__).resolve().parents[1] / "conf" / "experiment" / f"{experiment}.yaml").read_text().splitlines()
    assert first[0] == "# @package _global_" and first[1].startswith("# ")


@pytest.mark.parametrize(
    "experiment",
    sorted(D2L),
)
def test_experiment_runs_a_few_steps_on_the_real_files(experiment, cli, tmp_path):
    # 1024 training images at batch 256: 4 SGD steps, then the test pass on 256 images
    result = cli(
        "run", "-q", f"experiment={experiment}", "trainer.epochs=1", "dataset.num_train=1024",
        "dataset.num_test=256", f"results_dir={tmp_path / 'results'}",
    )
    assert result.exit_code == 0, result.stderr
    assert "4 steps" in result.stdout
    assert len(list((tmp_path / "results" / "runs").iterdir())) == 1
