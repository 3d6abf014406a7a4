"""Dropout (d2l 5.6): expectation preserved, drop rate p, edge rates, eval mode, per-layer rates in the MLP.

Statistical bounds. Dropout keeps each unit independently with probability 1 - p and scales it by
1/(1 - p), so for one unit x: Y = x B / (1 - p), B ~ Bernoulli(1 - p), E[Y] = x,
Var[Y] = x^2 p / (1 - p). Over n independent draws the mean of Y has standard error
|x| sqrt(p / ((1 - p) n)), and the fraction of dropped units (Binomial(n, p) / n) has standard error
sqrt(p (1 - p) / n). With n >= 50,000 the normal approximation is excellent, so a correct
implementation lands outside 5 standard errors with probability ~5.7e-7 per check (two-sided);
over the ~100 checks below that is < 1e-4, while a wrong scale (e.g. no 1/(1 - p)) or a wrong rate
misses by hundreds of standard errors. Seeds are fixed, so the tests are deterministic anyway.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dlexp.errors import ConfigError
from dlexp.models import ScratchDropout, build_model, dropout_layer

Z = 5.0  # standard errors allowed, see the module docstring

SAMPLE_SHAPE, NUM_OUTPUTS = (20,), 3


def mlp_cfg(**overrides):
    cfg = {"name": "mlp", "hidden": [32, 16], "activation": "relu", "dropout": 0.0, "dropout_impl": "torch",
           "init": "default", "init_std": 0.01}
    return OmegaConf.create({**cfg, **overrides})


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Dropout, ScratchDropout))]


def mlp_dropout(impl: str, p: float) -> nn.Module:
    """The dropout module that build_model puts in an MLP with dropout_impl=impl, in train mode."""
    model = build_model(mlp_cfg(hidden=[8], dropout=p, dropout_impl=impl), SAMPLE_SHAPE, NUM_OUTPUTS)
    (module,) = dropout_modules(model)
    return module.train()


# every way of applying dropout at rate p: d2l's function, its module, and what the MLP builds
IMPLS = {
    "dropout_layer": lambda p: (lambda x: dropout_layer(x, p)),
    "ScratchDropout": lambda p: ScratchDropout(p).train(),
    "mlp-scratch": lambda p: mlp_dropout("scratch", p),
    "mlp-torch": lambda p: mlp_dropout("torch", p),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_preserves_the_expectation(impl, p):
    torch.manual_seed(0)
    n = 50_000
    x = torch.tensor([1.0, -2.0, 0.5, 3.0, -0.25, 10.0, -7.0, 0.01], dtype=torch.float64)  # (8,)
    y = IMPLS[impl](p)(x.expand(n, -1).clone())  # (n, 8): n independent draws per unit
    se = x.abs() * math.sqrt(p / ((1 - p) * n))  # (8,) standard error of each column mean
    z = (y.mean(0) - x).abs() / se
    assert (z < Z).all(), f"z-scores {z.tolist()}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_drops_a_fraction_p_and_scales_the_rest(impl, p):
    torch.manual_seed(1)
    n = 200_000
    x = torch.rand(n, dtype=torch.float64) + 0.5  # no zeros: a zero in y is a drop
    y = IMPLS[impl](p)(x)
    dropped = y == 0
    rate = dropped.double().mean().item()
    se = math.sqrt(p * (1 - p) / n)
    assert abs(rate - p) < Z * se, f"drop rate {rate} vs p={p} (se {se:.2e})"
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p), rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl", ["dropout_layer", "ScratchDropout"])
def test_rate_one_gives_zeros_and_rate_zero_the_identity(impl):
    x = torch.randn(64, 10)
    assert torch.equal(IMPLS[impl](1.0)(x), torch.zeros_like(x))
    assert torch.equal(IMPLS[impl](0.0)(x), x)


def test_torch_dropout_edge_rates_agree_with_scratch():
    # the torch impl (nn.Dropout) has the same edge cases as d2l's dropout_layer
    x = torch.randn(64, 10)
    assert torch.equal(nn.Dropout(1.0).train()(x), torch.zeros_like(x))
    assert torch.equal(nn.Dropout(0.0).train()(x), x)


def test_scratch_dropout_is_the_identity_in_eval_mode():
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    m = ScratchDropout(0.5)
    assert not torch.equal(m.train()(x), x)  # active in train mode ...
    assert torch.equal(m.eval()(x), x)  # ... and the identity in eval mode


@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_mlp_in_eval_mode_ignores_dropout(impl):
    torch.manual_seed(0)
    model = build_model(mlp_cfg(dropout=[0.5, 0.3], dropout_impl=impl), SAMPLE_SHAPE, NUM_OUTPUTS)
    x = torch.randn(128, *SAMPLE_SHAPE)
    without_dropout = nn.Sequential(*[m for m in model if not isinstance(m, (nn.Dropout, ScratchDropout))])
    with torch.no_grad():
        reference = without_dropout(x)
        model.eval()
        assert torch.equal(model(x), reference)
        assert torch.equal(model(x), reference)  # deterministic
        model.train()
        assert not torch.equal(model(x), reference)  # and dropout is really there in train mode


@pytest.mark.parametrize("impl, cls", [("torch", nn.Dropout), ("scratch", ScratchDropout)])
def test_mlp_puts_each_rate_after_its_hidden_layer_in_order(impl, cls):
    model = build_model(mlp_cfg(hidden=[32, 16], dropout=[0.2, 0.5], dropout_impl=impl), SAMPLE_SHAPE, NUM_OUTPUTS)
    layers = list(model)
    drops = [i for i, m in enumerate(layers) if isinstance(m, (nn.Dropout, ScratchDropout))]
    assert [type(layers[i]) for i in drops] == [cls, cls]
    assert [layers[i].p for i in drops] == [0.2, 0.5]
    for i, width in zip(drops, [32, 16]):
        # Linear(.., width) -> activation -> Dropout: dropout follows the hidden activation (d2l 5.6)
        assert isinstance(layers[i - 1], nn.ReLU)
        assert isinstance(layers[i - 2], nn.Linear) and layers[i - 2].out_features == width
    assert isinstance(layers[-1], nn.Linear) and layers[-1].in_features == 16  # no dropout on the output


def test_mlp_one_rate_applies_to_every_hidden_layer_and_zero_adds_none():
    model = build_model(mlp_cfg(hidden=[8, 8, 8], dropout=0.3), SAMPLE_SHAPE, NUM_OUTPUTS)
    assert [m.p for m in dropout_modules(model)] == [0.3, 0.3, 0.3]
    assert dropout_modules(build_model(mlp_cfg(dropout=0.0), SAMPLE_SHAPE, NUM_OUTPUTS)) == []


@pytest.mark.parametrize(
    "dropout, message",
    [
        (1.0, "every rate must be in [0, 1)"),
        (-0.1, "every rate must be in [0, 1)"),
        (1.5, "every rate must be in [0, 1)"),
        ([0.2, 1.0], "every rate must be in [0, 1)"),
        ([0.2, -0.1], "every rate must be in [0, 1)"),
        ([0.2], "has 1 rates but model.hidden has 2 layers"),
        ([0.2, 0.5, 0.1], "has 3 rates but model.hidden has 2 layers"),
    ],
)
@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_bad_dropout_rate_raises_configerror_naming_the_key(dropout, message, impl):
    with pytest.raises(ConfigError, match=r"^model\.dropout: ") as err:
        build_model(mlp_cfg(hidden=[32, 16], dropout=dropout, dropout_impl=impl), SAMPLE_SHAPE, NUM_OUTPUTS)
    assert message in str(err.value)
