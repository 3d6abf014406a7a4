"""The CUDA path: every model, optimizer and schedule on the GPU, parity with torch.optim on CUDA,
bf16 autocast and torch.compile. Skipped (and counted as skipped) where CUDA is absent."""

from __future__ import annotations

import pytest
import torch

from conftest import conf_choices

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = ["trainer.device=cuda"]


def _train(make_cfg, *overrides):
    from dlexp.data import load_splits
    from dlexp.train import train

    cfg = make_cfg(*CUDA, *overrides)
    return train(cfg, load_splits(cfg.dataset))


@pytest.mark.parametrize("optimizer", conf_choices("optimizer"))
@pytest.mark.parametrize("impl", ["dlexp", "torch"])
def test_every_optimizer_trains_on_cuda(make_cfg, optimizer, impl):
    res = _train(make_cfg, f"optimizer={optimizer}", f"optimizer.impl={impl}")
    assert res.status == "ok" and res.device.startswith("cuda")
    assert all(p.device.type == "cuda" for p in res.model.parameters())


@pytest.mark.parametrize("schedule", conf_choices("schedule"))
def test_every_schedule_trains_on_cuda(make_cfg, schedule):
    assert _train(make_cfg, f"schedule={schedule}").status == "ok"


@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_models_train_on_cuda(make_cfg, model):
    assert _train(make_cfg, f"model={model}").status == "ok"


def test_lenet_trains_on_cuda(make_cfg, data_env):
    res = _train(make_cfg, "model=lenet", "dataset=fashion_mnist", "dataset.num_train=2048", "dataset.num_test=512")
    assert res.status == "ok"


DATASETS = {  # every dataset except csv (it needs a user's file), shrunk where it is large
    "digits": [], "synthetic": [], "synthetic_wd": [], "airfoil": [], "house_prices": [],
    "fashion_mnist": ["dataset.num_train=2048", "dataset.num_test=512"],
    "mnist": ["dataset.num_train=2048", "dataset.num_test=512"],
    "sparse_features": ["model=sparse_linear", "optimizer=adagrad", "dataset.num_train=2048"],
}


def test_the_dataset_table_covers_every_dataset_but_csv():
    assert sorted(DATASETS) == sorted(set(conf_choices("dataset")) - {"csv"})


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_every_dataset_trains_on_cuda(make_cfg, data_env, dataset):
    res = _train(make_cfg, f"dataset={dataset}", *DATASETS[dataset])
    assert res.status == "ok" and res.device.startswith("cuda")


def test_no_host_synchronisation_per_step_on_cuda(make_cfg):
    """Losses and metrics stay on the device until the end of the epoch: 4x the steps per epoch
    must not add a single synchronizing CUDA call (torch's sync debug mode warns on each one)."""
    import warnings

    counts = []
    for batch_size in (256, 64):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = _train(make_cfg, f"trainer.batch_size={batch_size}", "trainer.epochs=2", "optimizer=adam")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert res.status == "ok"
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts


def test_same_seed_is_bit_identical_on_cuda_in_deterministic_mode(make_cfg):
    a = _train(make_cfg, "trainer.deterministic=true", "model.dropout=0.3")
    b = _train(make_cfg, "trainer.deterministic=true", "model.dropout=0.3")
    assert [r["value"] for r in a.records if r["metric"] != "epoch_s"] == [r["value"] for r in b.records if r["metric"] != "epoch_s"]


def test_bf16_and_compile_run_on_cuda(make_cfg):
    assert _train(make_cfg, "trainer.amp=bf16").status == "ok"
    assert _train(make_cfg, "trainer.compile=true").status == "ok"


def test_check_optimizers_passes_on_cuda():
    from dlexp.optim.check import check_optimizers

    rows = check_optimizers(device="cuda", steps=50)
    bad = [r for r in rows if r["verdict"] != "ok"]
    assert rows and not bad, bad


def _group(make_cfg, *overrides, members=((0, 0.1), (1, 0.05), (2, 0.2))):
    from dlexp.data import load_splits
    from dlexp.train import train

    cfgs = [make_cfg(*CUDA, *overrides, f"seed={s}", f"optimizer.lr={lr}") for s, lr in members]
    splits = load_splits(cfgs[0].dataset)
    return cfgs, splits, train(cfgs, [splits] * len(cfgs))


@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_a_vectorized_group_on_cuda_matches_its_single_runs(make_cfg, impl):
    """Each member of a group on the GPU is its single run there (dropout masks from each member's own
    CUDA generator state, through the same nn.Dropout / dropout_layer); batched and single cuBLAS
    products round differently, so the comparison is to the parity tolerance."""
    from dlexp.train import train

    cfgs, splits, grouped = _group(make_cfg, "trainer.epochs=3", "trainer.batch_size=64", "model.dropout=0.3",
                                   f"model.dropout_impl={impl}", "optimizer=adam")
    for cfg, member in zip(cfgs, grouped):
        single = train(cfg, splits)
        assert member.status == single.status == "ok" and member.device.startswith("cuda")
        a = [r["value"] for r in single.records if r["metric"] != "epoch_s"]
        b = [r["value"] for r in member.records if r["metric"] != "epoch_s"]
        assert len(a) == len(b)
        assert max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)) <= 1e-5


def test_the_vectorized_path_adds_no_host_synchronisation_per_step_on_cuda(make_cfg):
    """A group's per-member learning rates, losses, metrics, permutations and dropout streams stay on
    the device (or on the host without a copy) until the end of the epoch: 4x the steps must not add a
    synchronizing CUDA call. A per-step schedule included: its per-member table is copied once an epoch."""
    import warnings

    counts = []
    for batch_size in (256, 64):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _, _, grouped = _group(make_cfg, f"trainer.batch_size={batch_size}", "trainer.epochs=2", "optimizer=adam",
                                       "model.dropout=0.3", "schedule=cosine", "schedule.unit=step")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert all(r.status == "ok" for r in grouped)
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts
