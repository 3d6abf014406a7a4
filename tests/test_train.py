"""The training loop (dlexp/train.py): it learns, it is reproducible, it switches train/eval mode,
it records lr and epoch time per epoch, the lr follows the schedule, and divergence is a status."""

from __future__ import annotations

import math

import pytest
import torch

import dlexp.train
from dlexp.data import load_splits
from dlexp.optim import SGD
from dlexp.train import evaluate, train

TIMING = {"time_s"}  # wall-clock columns: the only ones allowed to differ between identical runs


@pytest.fixture(autouse=True)
def _restore_determinism():
    """trainer.deterministic=true flips a process-wide torch flag; leave it as this test found it."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def run(cfg):
    return train(cfg, load_splits(cfg.dataset))


def series(result, split: str, metric: str) -> list[float]:
    return [r["value"] for r in result.records if (r["split"], r["metric"]) == (split, metric)]


def comparable(records):
    """The records without wall-clock fields (time_s, and the values of the epoch_s metric)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records if r["metric"] != "epoch_s"]


def test_loss_goes_down_on_digits(make_cfg):
    result = run(make_cfg("trainer.epochs=5", "trainer.batch_size=64"))
    loss = series(result, "train", "loss")
    assert len(loss) == 5
    assert all(b < a for a, b in zip(loss, loss[1:])), loss
    assert series(result, "val", "acc")[-1] > 0.8  # chance is 0.1 on 10 balanced classes


def test_records_are_tidy_rows_with_lr_and_epoch_time_per_epoch(make_cfg):
    result = run(make_cfg("trainer.epochs=3"))
    assert result.status == "ok" and result.epochs_completed == 3
    assert all(set(r) == {"run_id", "epoch", "step", "examples", "split", "metric", "value", "time_s"} for r in result.records)
    for metric in ("lr", "epoch_s"):
        rows = [r for r in result.records if r["metric"] == metric]
        assert [r["epoch"] for r in rows] == [1, 2, 3], metric
    assert all(v > 0 for v in series(result, "train", "epoch_s"))
    # step counts updates completed: ceil(1293 training rows / 512) = 3 per epoch
    n_train = load_splits(make_cfg().dataset).train[0].shape[0]
    per_epoch = math.ceil(n_train / 512)
    steps = sorted({(r["epoch"], r["step"]) for r in result.records})
    assert steps == [(e, e * per_epoch) for e in (1, 2, 3)] and result.steps == 3 * per_epoch
    # examples counts the training rows seen: every epoch sees each row once
    assert sorted({(r["epoch"], r["examples"]) for r in result.records}) == [(e, e * n_train) for e in (1, 2, 3)]


@pytest.mark.parametrize("deterministic", [True, False])
def test_same_seed_gives_identical_metrics(make_cfg, deterministic):
    cfg = make_cfg("trainer.epochs=2", f"trainer.deterministic={str(deterministic).lower()}", "model.dropout=0.3")
    a, b = run(cfg), run(cfg)
    assert comparable(a.records) == comparable(b.records)  # float values compared with ==
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(pa, pb), name


def test_different_seeds_give_different_runs(make_cfg):
    a, b = run(make_cfg("seed=0")), run(make_cfg("seed=1"))
    assert series(a, "train", "loss") != series(b, "train", "loss")
    assert not all(torch.equal(pa, pb) for pa, pb in zip(a.model.parameters(), b.model.parameters()))


def test_training_runs_in_train_mode_and_evaluation_in_eval_mode(make_cfg, monkeypatch):
    calls = []  # (module.training, grad enabled) for every forward pass of the model

    real_build = dlexp.train.build_model

    def spying_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: calls.append((m.training, torch.is_grad_enabled())))
        return model

    monkeypatch.setattr(dlexp.train, "build_model", spying_build)
    run(make_cfg("trainer.epochs=2", "model.dropout=0.5"))
    # the training forwards (grad on) in train mode; the val/test forwards (grad off) in eval mode
    assert {t for t, grad in calls if grad} == {True}
    assert {t for t, grad in calls if not grad} == {False}
    assert sum(not grad for _, grad in calls) == 2 * 2  # val and test, once per epoch each


def test_evaluation_of_a_dropout_model_is_deterministic(make_cfg):
    cfg = make_cfg("trainer.epochs=2", "model.dropout=0.5")
    splits = load_splits(cfg.dataset)
    result = train(cfg, splits)
    x, y = splits.val
    loss_fn = torch.nn.CrossEntropyLoss()
    values = []
    for _ in range(2):
        result.model.train()  # evaluate must switch dropout off by itself
        values.append(evaluate(result.model, x, y, loss_fn, int(cfg.trainer.eval_batch_size), splits.task,
                               splits.positive_target))
    assert values[0] == values[1]
    assert values[0]["loss"] == series(result, "val", "loss")[-1]
    assert values[0]["acc"] == series(result, "val", "acc")[-1]
    # the eval batch size only changes the float32 summation order (trainer.eval_batch_size: no effect)
    small = evaluate(result.model.train(), x, y, loss_fn, 64, splits.task, splits.positive_target)
    assert small["acc"] == values[0]["acc"] and small["loss"] == pytest.approx(values[0]["loss"], rel=1e-6)


def test_recorded_lr_follows_a_piecewise_epoch_schedule(make_cfg):
    cfg = make_cfg("trainer.epochs=4", "schedule=piecewise", "schedule.unit=epoch",
                   "schedule.milestones=[1,3]", "schedule.factor=0.5", "optimizer.lr=0.2")
    # MultiStepLR's convention: epochs 1..4 have 0 / 1 / 1 / 2 milestones behind them
    assert series(run(cfg), "train", "lr") == pytest.approx([0.2, 0.1, 0.1, 0.05], rel=1e-12)


def test_recorded_lr_follows_an_exponential_epoch_schedule(make_cfg):
    cfg = make_cfg("trainer.epochs=3", "schedule=exponential", "schedule.unit=epoch", "schedule.lam=0.5",
                   "optimizer.lr=0.1")
    expected = [0.1 * math.exp(-0.5 * t) for t in range(3)]  # d2l 12.11: lr * exp(-lam t), t from 0
    assert series(run(cfg), "train", "lr") == pytest.approx(expected, rel=1e-12)


def test_optimizer_uses_the_scheduled_lr_at_every_step(make_cfg, monkeypatch):
    used = []
    real_step = SGD.step

    def spying_step(self, *args, **kwargs):
        used.append([g["lr"] for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(SGD, "step", spying_step)
    # 3 updates per epoch (1293 rows / 512); the lr halves after update 4 (steps counted from 0)
    cfg = make_cfg("trainer.epochs=2", "schedule=piecewise", "schedule.unit=step",
                   "schedule.milestones=[4]", "schedule.factor=0.5", "optimizer.lr=0.2")
    result = run(cfg)
    assert [set(lrs) for lrs in used] == [{0.2}] * 4 + [{0.1}] * 2
    assert series(result, "train", "lr") == [0.2, 0.1]  # the lr the epoch's last update used


def test_divergence_stops_the_run_and_keeps_its_records(make_cfg):
    cfg = make_cfg("dataset=synthetic", "model=linear", "optimizer.lr=1e6", "trainer.epochs=10")
    result = run(cfg)
    assert result.status == "diverged" and "loss" in result.reason
    assert result.epochs_completed < 10
    loss = series(result, "train", "loss")
    assert len(loss) == result.epochs_completed and not math.isfinite(loss[-1])
