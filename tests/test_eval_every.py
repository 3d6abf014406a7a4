"""`trainer.eval_every` (d2l 12.5's loss every 200 examples), the `examples` column, and
`trainer.loss=half_mse` (d2l's squared_loss), on small regression data made here.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from dlexp.data import REGRESSION, Splits
from dlexp.train import train

N = 150  # training rows


def regression_splits(loss=None) -> Splits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 5, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]]) + 0.1 * torch.randn(N, 1, generator=g)
    return Splits(task=REGRESSION, num_outputs=1, sample_shape=(5,), train=(x, y), val=None, test=None, loss=loss)


def cfg(make_cfg, *overrides):
    # the linear model on regression data; `dataset` only names it (the splits are made here)
    return make_cfg("model=linear", "dataset=synthetic", *overrides)


def rows(result, split, metric):
    return [r for r in result.records if (r["split"], r["metric"]) == (split, metric)]


@pytest.mark.parametrize("batch_size, every, expected", [
    (1, 20, list(range(0, 2 * N + 1, 20))),  # d2l's case: the batch divides the interval
    (10, 25, [0, 30, 50, 80, 100, 130, 150, 180, 200, 230, 250, 280, 300]),  # first batch past each multiple of 25
    (N, 100, [0, N, 2 * N]),  # full batch: every update passes a multiple, so every epoch end
])
def test_the_training_set_is_evaluated_each_time_the_examples_pass_a_multiple(make_cfg, batch_size, every, expected):
    result = train(cfg(make_cfg, f"trainer.batch_size={batch_size}", f"trainer.eval_every={every}", "trainer.epochs=2"),
                   regression_splits())
    evals = rows(result, "train_eval", "loss")
    assert [r["examples"] for r in evals] == expected
    # epoch 0 is before the first update; the others carry the epoch in progress, as integers
    assert [r["epoch"] for r in evals] == [0] + [1 if e <= N else 2 for e in expected[1:]]
    assert [r["step"] for r in evals] == [e // batch_size if e % batch_size == 0 else e // batch_size + 1 for e in expected]
    assert all(isinstance(r["epoch"], int) for r in result.records)
    times = [r["time_s"] for r in evals]
    assert times == sorted(times)


def test_train_eval_is_the_loss_of_the_current_weights_on_the_whole_training_set(make_cfg):
    splits = regression_splits()
    result = train(cfg(make_cfg, "trainer.batch_size=7", "trainer.eval_every=50", "trainer.epochs=2"), splits)
    x, y = splits.train
    with torch.no_grad():
        mse = float(((result.model(x) - y) ** 2).mean())
    final = rows(result, "train_eval", "loss")[-1]
    assert final["examples"] == 2 * N and final["value"] == pytest.approx(mse, rel=1e-6)
    assert rows(result, "train_eval", "rmse")[-1]["value"] == pytest.approx(mse**0.5, rel=1e-6)


def test_without_eval_every_there_are_no_train_eval_rows_and_no_epoch_0(make_cfg):
    result = train(cfg(make_cfg, "trainer.epochs=2"), regression_splits())
    assert not rows(result, "train_eval", "loss") and min(r["epoch"] for r in result.records) == 1


def test_half_mse_is_half_the_mse_and_rmse_stays_the_root_of_the_mse(make_cfg):
    splits = regression_splits()
    result = train(cfg(make_cfg, "trainer.loss=half_mse", f"trainer.eval_every={N}", "trainer.epochs=1"), splits)
    x, y = splits.train
    with torch.no_grad():
        mse = float(((result.model(x) - y) ** 2).mean())
    (final,) = [r for r in rows(result, "train_eval", "loss") if r["epoch"] == 1]
    assert final["value"] == pytest.approx(mse / 2, rel=1e-6)
    assert [r for r in rows(result, "train_eval", "rmse") if r["epoch"] == 1][0]["value"] == pytest.approx(mse**0.5, rel=1e-6)
    (train_loss,), (train_rmse,) = rows(result, "train", "loss"), rows(result, "train", "rmse")
    assert train_rmse["value"] == pytest.approx((2 * train_loss["value"]) ** 0.5, rel=1e-9)


def test_sgd_on_half_mse_at_lr_equals_sgd_on_mse_at_half_the_lr(make_cfg):
    # the gradient of (y_hat - y)^2 / 2 is half that of (y_hat - y)^2: d2l's lr 0.4 is torch's 0.2 on MSE
    splits = regression_splits()
    half = train(cfg(make_cfg, "trainer.loss=half_mse", "optimizer.lr=0.4", "trainer.batch_size=10", "trainer.epochs=2"), splits)
    full = train(cfg(make_cfg, "trainer.loss=mse", "optimizer.lr=0.2", "trainer.batch_size=10", "trainer.epochs=2"), splits)
    for a, b in zip(half.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_interrupt_mid_epoch_keeps_no_evaluation_of_the_unfinished_epoch(make_cfg):
    # Ctrl-C at the 25th training step: in epoch 2 (15 batches of 10 an epoch), after that epoch's first
    # evaluation (examples 200). Evaluations run without gradients, so they do not count here.
    steps = {"n": 0}

    def interrupting(out, y):
        if torch.is_grad_enabled():
            steps["n"] += 1
            if steps["n"] == 25:
                raise KeyboardInterrupt
        return torch.nn.functional.mse_loss(out, y)

    result = train(cfg(make_cfg, "trainer.batch_size=10", "trainer.eval_every=50", "trainer.epochs=3"),
                   regression_splits(loss=interrupting))
    assert result.status == "interrupted" and result.epochs_completed == 1
    assert max(r["epoch"] for r in result.records) == 1
    assert [r["examples"] for r in rows(result, "train_eval", "loss")] == [0, 50, 100, 150]


def test_eval_every_must_not_be_negative(cli, results_dir):
    res = cli("run", "-q", "trainer.eval_every=-5", f"results_dir={results_dir}")
    assert res.exit_code == 2 and "trainer.eval_every" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_half_mse_on_a_classification_set_is_refused(cli, results_dir):
    res = cli("run", "-q", "trainer.loss=half_mse", f"results_dir={results_dir}")
    assert res.exit_code == 2 and "trainer.loss" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not results_dir.exists() or not any((results_dir / "runs").iterdir())


def test_a_config_saved_before_these_keys_existed_still_trains(make_cfg):
    # runs resumed from older results folders have no trainer.loss or trainer.eval_every
    c = cfg(make_cfg, "trainer.epochs=1")
    trainer = {k: v for k, v in OmegaConf.to_container(c.trainer).items() if k not in ("loss", "eval_every")}
    c = OmegaConf.merge(OmegaConf.masked_copy(c, [k for k in c if k != "trainer"]), {"trainer": trainer})
    assert "loss" not in c.trainer
    result = train(c, regression_splits())
    assert result.status == "ok" and rows(result, "train", "loss")
