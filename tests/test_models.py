"""Models (dlexp/models.py): output shapes, dropout placement, the d2l initialisations, LeNet's input check.

Statistics: init=normal draws n i.i.d. N(0, s^2) weights; the sample std has relative standard error
~1/sqrt(2n) and the sample mean has standard error s/sqrt(n). The smallest layer checked has
n = 256 x 256 = 65,536 weights: 0.28% relative error on the std, so the 2% bound is 7 standard errors
(and the mean bound 10), negligible for a correct init, while a wrong std (0.1, or torch's default
~1/sqrt(fan_in)) misses by far. The seeds are fixed anyway.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF
from dlexp.errors import ConfigError
from dlexp.models import ScratchDropout, build_model


def model_cfg(name: str, **overrides):
    """The shipped conf/model/<name>.yaml with some keys replaced."""
    base = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())
    return OmegaConf.create({**base, **overrides})


@pytest.mark.parametrize("name,sample_shape,num_outputs", [
    ("softmax", (64,), 10),
    ("softmax", (1, 28, 28), 10),
    ("linear", (2,), 1),
    ("linear", (200,), 1),
    ("mlp", (64,), 10),
    ("mlp", (1, 28, 28), 10),
    ("lenet", (1, 28, 28), 10),
])
def test_output_shape_is_batch_by_num_outputs(name, sample_shape, num_outputs):
    torch.manual_seed(0)
    model = build_model(model_cfg(name), sample_shape, num_outputs)
    assert model(torch.randn(5, *sample_shape)).shape == (5, num_outputs)


def test_softmax_and_linear_are_one_affine_layer():
    for name, shape, outputs in (("softmax", (1, 28, 28), 10), ("linear", (2,), 1)):
        linears = [m for m in build_model(model_cfg(name), shape, outputs).modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(math.prod(shape), outputs)]


def test_mlp_layers_have_the_configured_widths_and_activation():
    model = build_model(model_cfg("mlp", hidden=[32, 16], activation="tanh"), (20,), 3)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 32), (32, 16), (16, 3)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 2


def layer_kinds(model: nn.Module) -> list[str]:
    kinds = {nn.Linear: "linear", nn.ReLU: "act", nn.Dropout: "dropout", ScratchDropout: "dropout", nn.Flatten: "flatten"}
    return [kinds[type(m)] for m in model if type(m) in kinds]


@pytest.mark.parametrize("impl,cls", [("torch", nn.Dropout), ("scratch", ScratchDropout)])
def test_mlp_dropout_follows_each_hidden_activation_and_never_the_output(impl, cls):
    model = build_model(model_cfg("mlp", hidden=[32, 16], dropout=[0.2, 0.5], dropout_impl=impl), (20,), 3)
    assert layer_kinds(model) == ["flatten", "linear", "act", "dropout", "linear", "act", "dropout", "linear"]
    dropouts = [m for m in model.modules() if isinstance(m, (nn.Dropout, ScratchDropout))]
    assert all(isinstance(m, cls) for m in dropouts)
    assert [m.p for m in dropouts] == [0.2, 0.5]  # d2l 5.6: dropout1 then dropout2


def test_one_dropout_rate_applies_to_every_hidden_layer_and_zero_adds_none():
    model = build_model(model_cfg("mlp", hidden=[8, 8, 8], dropout=0.3), (4,), 2)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.3]
    model = build_model(model_cfg("mlp", hidden=[8, 8], dropout=0.0), (4,), 2)
    assert "dropout" not in layer_kinds(model)


def test_dropout_rate_list_of_the_wrong_length_is_a_config_error():
    with pytest.raises(ConfigError, match="model.dropout"):
        build_model(model_cfg("mlp", hidden=[8, 8], dropout=[0.1, 0.2, 0.3]), (4,), 2)


@pytest.mark.parametrize("name", ["softmax", "linear", "mlp"])
def test_normal_init_gives_std_init_std_and_zero_bias(name):
    torch.manual_seed(0)
    std = 0.01
    model = build_model(model_cfg(name, init="normal", init_std=std, hidden=[256]), (1000,), 256)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach().double()
            assert w.std().item() == pytest.approx(std, rel=0.02)
            assert abs(w.mean().item()) < 10 * std / math.sqrt(w.numel())
            assert torch.count_nonzero(m.bias) == 0


def test_normal_init_honours_a_different_std():
    torch.manual_seed(0)
    model = build_model(model_cfg("linear", init="normal", init_std=0.5), (1000,), 256)
    assert model[1].weight.detach().double().std().item() == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("name,shape", [("mlp", (784,)), ("lenet", (1, 28, 28))])
def test_xavier_init_stays_within_the_glorot_bound_and_zeroes_biases(name, shape):
    torch.manual_seed(0)
    model = build_model(model_cfg(name, init="xavier"), shape, 10)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers
    for m in layers:
        receptive = math.prod(m.weight.shape[2:])  # 1 for a Linear, k*k for a Conv2d
        fan_in, fan_out = m.weight.shape[1] * receptive, m.weight.shape[0] * receptive
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot & Bengio (2010), uniform form
        w = m.weight.detach().abs()
        assert w.max().item() <= bound
        if w.numel() >= 1000:  # enough draws that the largest is close to the bound
            assert w.max().item() > 0.95 * bound
        assert torch.count_nonzero(m.bias) == 0


def test_default_init_keeps_torchs_initialisation():
    torch.manual_seed(0)
    model = build_model(model_cfg("mlp", init="default", hidden=[64]), (100,), 10)
    torch.manual_seed(0)
    reference = nn.Linear(100, 64)  # torch's own init, the same draws in the same order
    assert torch.equal(model[1].weight, reference.weight) and torch.equal(model[1].bias, reference.bias)


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8), (3, 28, 28), (1, 32, 32)])
def test_lenet_refuses_anything_but_1x28x28(shape):
    with pytest.raises(ConfigError, match="lenet"):
        build_model(model_cfg("lenet"), shape, 10)


def test_lenet_has_d2l_layer_sizes_and_sigmoid_by_default():
    model = build_model(model_cfg("lenet"), (1, 28, 28), 10)
    convs = [(m.in_channels, m.out_channels, m.kernel_size) for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(1, 6, (5, 5)), (6, 16, (5, 5))]
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(400, 120), (120, 84), (84, 10)]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 2


def test_unknown_model_name_is_a_config_error():
    with pytest.raises(ConfigError, match="model.name"):
        build_model(OmegaConf.create({"name": "resnet"}), (4,), 2)
