"""Weight decay (d2l 3.7) and its three named modes in dlexp/train.py.

    coupled    torch's meaning: lambda * w added to the gradient (inside the optimizer)
    loss       d2l's form: lambda/2 ||w||^2 added to the loss, whose gradient is the same lambda * w
    decoupled  AdamW's form: w <- w (1 - lr lambda) before the optimizer's own update

Only weights (ndim >= 2) decay unless optimizer.decay_bias=true. The setting is d2l's: linear
regression on 20 samples of 200 inputs (dataset=synthetic_wd), minibatches of 5.

The references below are plain loops written from these definitions with torch.optim (SGD, Adam,
AdamW) on the same data, the same initial parameters (torch.manual_seed(seed) before building the
model) and the same minibatch order (a generator seeded with the run's seed, one randperm per epoch).

Tolerances: every run here is float32 (eps 1.2e-7) on parameters of size ~0.01-0.05. The forms
being compared do the same arithmetic in a different order (lambda/2 * 2w through autograd versus
lambda * w; w (1 - lr lambda) - lr g versus w - lr (g + lambda w)), an ulp or so per step. Measured
over the 40 steps here: loss vs coupled 1.9e-9, decoupled vs coupled (SGD) 6.5e-9, dlexp vs the
torch.optim reference loops 0.0. atol = 1e-7 (+ rtol 1e-6) leaves >10x headroom, while a wrong mode
(no decay, decay twice, decayed bias, coupled instead of decoupled) moves parameters by 1e-3 or more
(coupled vs decoupled Adam: 1.2e-2), which the tests also check, so the tolerance hides nothing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlexp.data import load_splits
from dlexp.models import build_model
from dlexp.train import param_groups, train

WD_SETTING = ["dataset=synthetic_wd", "model=linear", "trainer.batch_size=5", "trainer.epochs=10"]
TOL = dict(rtol=1e-6, atol=1e-7)  # float32, measured mismatch <= 6.5e-9: see the module docstring
LAMBDA = 3.0  # d2l 3.7 uses lambd = 3


def trained(make_cfg, *overrides):
    cfg = make_cfg(*WD_SETTING, *overrides)
    splits = load_splits(cfg.dataset)
    return cfg, splits, train(cfg, splits)


def params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_params_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOL, msg=lambda m: f"{name}: {m}")


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def reference_run(cfg, splits, make_optimizer) -> dict[str, torch.Tensor]:
    """The d2l loop with a torch.optim optimizer: make_optimizer(weights, biases) -> optimizer."""
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, splits.sample_shape, splits.num_outputs)
    weights = [p for p in model.parameters() if p.ndim >= 2]
    biases = [p for p in model.parameters() if p.ndim < 2]
    optimizer = make_optimizer(weights, biases)
    x, y = splits.train
    batch = int(cfg.trainer.batch_size)
    shuffle = torch.Generator().manual_seed(int(cfg.seed))
    for _ in range(int(cfg.trainer.epochs)):
        perm = torch.randperm(x.shape[0], generator=shuffle)
        for i in range(0, x.shape[0], batch):
            idx = perm[i : i + batch]
            loss = F.mse_loss(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return params(model)


# --- plain SGD: the three forms are one trajectory -----------------------------------------------


@pytest.mark.parametrize("impl", ["dlexp", "torch"])
def test_sgd_coupled_decay_matches_torch_sgd_on_the_weights_only(make_cfg, impl):
    cfg, splits, result = trained(make_cfg, "optimizer=sgd", f"optimizer.impl={impl}", "optimizer.lr=0.003",
                                  f"optimizer.weight_decay={LAMBDA}", "optimizer.weight_decay_mode=coupled")
    expected = reference_run(cfg, splits, lambda w, b: torch.optim.SGD(
        [{"params": w, "weight_decay": LAMBDA}, {"params": b, "weight_decay": 0.0}], lr=0.003))
    assert_params_close(params(result.model), expected)


@pytest.mark.parametrize("impl", ["dlexp", "torch"])
def test_sgd_decay_in_the_loss_gives_the_coupled_trajectory(make_cfg, impl):
    common = ["optimizer=sgd", f"optimizer.impl={impl}", "optimizer.lr=0.003", f"optimizer.weight_decay={LAMBDA}"]
    _, _, coupled = trained(make_cfg, *common, "optimizer.weight_decay_mode=coupled")
    _, _, in_loss = trained(make_cfg, *common, "optimizer.weight_decay_mode=loss")
    _, _, none = trained(make_cfg, *common[:-1], "optimizer.weight_decay=0")
    assert_params_close(params(in_loss.model), params(coupled.model))
    assert max_diff(params(in_loss.model), params(none.model)) > 1e-3  # the decay did act


def test_sgd_decoupled_decay_equals_coupled_without_momentum(make_cfg):
    # w - lr (g + lambda w) = w (1 - lr lambda) - lr g: the same update for plain SGD
    common = ["optimizer=sgd", "optimizer.lr=0.003", f"optimizer.weight_decay={LAMBDA}"]
    _, _, coupled = trained(make_cfg, *common, "optimizer.weight_decay_mode=coupled")
    _, _, decoupled = trained(make_cfg, *common, "optimizer.weight_decay_mode=decoupled")
    assert_params_close(params(decoupled.model), params(coupled.model))


@pytest.mark.parametrize("mode", ["coupled", "loss", "decoupled"])
def test_weight_decay_shrinks_the_weights(make_cfg, mode):
    # d2l 3.7's observation: with lambda = 3 the weight norm ends far smaller than without decay
    common = ["optimizer=sgd", "optimizer.lr=0.003", f"optimizer.weight_decay_mode={mode}", "trainer.epochs=20"]
    _, _, decayed = trained(make_cfg, *common, f"optimizer.weight_decay={LAMBDA}")
    _, _, free = trained(make_cfg, *common, "optimizer.weight_decay=0")
    norm = lambda r: r.model[1].weight.norm().item()
    assert norm(decayed) < 0.9 * norm(free)


# --- Adam: decoupled is AdamW, not Adam with L2 ------------------------------------------------------


@pytest.mark.parametrize("impl", ["dlexp", "torch"])
def test_adam_decoupled_decay_matches_torch_adamw(make_cfg, impl):
    cfg, splits, result = trained(make_cfg, "optimizer=adam", f"optimizer.impl={impl}", "optimizer.lr=0.01",
                                  "optimizer.weight_decay=0.5", "optimizer.weight_decay_mode=decoupled")
    expected = reference_run(cfg, splits, lambda w, b: torch.optim.AdamW(
        [{"params": w, "weight_decay": 0.5}, {"params": b, "weight_decay": 0.0}], lr=0.01))
    assert_params_close(params(result.model), expected)


@pytest.mark.parametrize("impl", ["dlexp", "torch"])
def test_adam_coupled_decay_matches_torch_adam_and_differs_from_decoupled(make_cfg, impl):
    common = ["optimizer=adam", f"optimizer.impl={impl}", "optimizer.lr=0.01", "optimizer.weight_decay=0.5"]
    cfg, splits, coupled = trained(make_cfg, *common, "optimizer.weight_decay_mode=coupled")
    _, _, decoupled = trained(make_cfg, *common, "optimizer.weight_decay_mode=decoupled")
    expected = reference_run(cfg, splits, lambda w, b: torch.optim.Adam(
        [{"params": w, "weight_decay": 0.5}, {"params": b, "weight_decay": 0.0}], lr=0.01))
    assert_params_close(params(coupled.model), expected)
    assert max_diff(params(coupled.model), params(decoupled.model)) > 1e-3


# --- which parameters decay -----------------------------------------------------------------------------

# One full-batch SGD step (20 samples, batch 20) from torch's default init, whose bias is not zero:
# the gradient is taken at the same initial parameters in every run, so the bias after the step is
# b0 - lr g_b without decay and b0 - lr (g_b + lambda b0) with it, whatever the weights do.
ONE_STEP = ["optimizer=sgd", "optimizer.lr=0.01", "trainer.epochs=1", "trainer.batch_size=20", "model.init=default"]
BIG_LAMBDA = 10.0


def one_step(make_cfg, mode, impl, weight_decay, decay_bias):
    cfg, splits, result = trained(make_cfg, *ONE_STEP, f"optimizer.impl={impl}", f"optimizer.weight_decay_mode={mode}",
                                  f"optimizer.weight_decay={weight_decay}", f"optimizer.decay_bias={str(decay_bias).lower()}")
    assert result.steps == 1
    return cfg, splits, params(result.model)


@pytest.mark.parametrize("impl", ["dlexp", "torch"])
@pytest.mark.parametrize("mode", ["coupled", "loss", "decoupled"])
def test_bias_does_not_decay_without_decay_bias(make_cfg, mode, impl):
    _, _, free = one_step(make_cfg, mode, impl, 0.0, decay_bias=False)
    _, _, decayed = one_step(make_cfg, mode, impl, BIG_LAMBDA, decay_bias=False)
    assert torch.equal(decayed["1.bias"], free["1.bias"])  # bit for bit: lambda never touched it
    assert (decayed["1.weight"] - free["1.weight"]).abs().max() > 1e-3  # while the weights did decay


@pytest.mark.parametrize("impl", ["dlexp", "torch"])
@pytest.mark.parametrize("mode", ["coupled", "loss", "decoupled"])
def test_bias_decays_with_decay_bias(make_cfg, mode, impl):
    cfg, splits, free = one_step(make_cfg, mode, impl, 0.0, decay_bias=True)
    _, _, decayed = one_step(make_cfg, mode, impl, BIG_LAMBDA, decay_bias=True)
    torch.manual_seed(int(cfg.seed))
    b0 = build_model(cfg.model, splits.sample_shape, splits.num_outputs)[1].bias.detach()
    assert b0.abs().min() > 1e-3  # torch's default init: a bias that decay visibly shrinks
    torch.testing.assert_close(decayed["1.bias"] - free["1.bias"], -0.01 * BIG_LAMBDA * b0, **TOL)


def test_param_groups_split_weights_from_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    groups = param_groups(model, 0.5, decay_bias=False)
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert [p.ndim for p in groups[0]["params"]] == [2, 2] and [p.ndim for p in groups[1]["params"]] == [1, 1]
    (together,) = param_groups(model, 0.5, decay_bias=True)
    assert together["weight_decay"] == 0.5 and len(together["params"]) == 4
