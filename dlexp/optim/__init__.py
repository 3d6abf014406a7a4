"""Optimizer registry: one row per `conf/optimizer/<name>.yaml`.

Each row carries the hand-written class (`cls`), its torch.optim twin (`torch_cls`), the constructor
keywords that the config passes through, whether it takes sparse gradients, and a one-line
description. Tests and `dlexp check-optimizers` iterate over this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dlexp.errors import ConfigError
from dlexp.optim.adadelta import Adadelta
from dlexp.optim.adagrad import Adagrad
from dlexp.optim.adam import Adam
from dlexp.optim.adamw import AdamW
from dlexp.optim.rmsprop import RMSprop
from dlexp.optim.sgd import SGD

__all__ = ["OPTIMIZERS", "OptimizerSpec", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "check_sparse_gradients"]

@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    cls: type[torch.optim.Optimizer]  # dlexp's hand-written implementation
    torch_cls: type[torch.optim.Optimizer]  # the torch.optim reference
    hparams: tuple[str, ...]  # constructor keywords read from the config (torch's names)
    description: str
    sparse: bool = False  # takes sparse gradients (nn.Embedding(sparse=True)), as its torch twin

    def optimizer_class(self, impl: str) -> type[torch.optim.Optimizer]:
        if impl == "dlexp":
            return self.cls
        if impl == "torch":
            return self.torch_cls
        raise ValueError(f"optimizer.impl: expected 'dlexp' or 'torch', got {impl!r}")


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(
        "sgd", SGD, torch.optim.SGD,
        ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "fused"),
        "minibatch SGD with optional (Nesterov) momentum", sparse=True,
    ),
    "adagrad": OptimizerSpec(
        "adagrad", Adagrad, torch.optim.Adagrad,
        ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize", "fused"),
        "AdaGrad: per-coordinate lr scaled by the root of the summed squared gradients", sparse=True,
    ),
    "rmsprop": OptimizerSpec(
        "rmsprop", RMSprop, torch.optim.RMSprop,
        ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize", "fused"),
        "RMSProp: lr scaled by a leaky average of squared gradients",
    ),
    "adadelta": OptimizerSpec(
        "adadelta", Adadelta, torch.optim.Adadelta,
        ("lr", "rho", "eps", "weight_decay", "maximize", "fused"),
        "Adadelta: RMSProp with the step size taken from a leaky average of past updates",
    ),
    "adam": OptimizerSpec(
        "adam", Adam, torch.optim.Adam,
        ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "fused"),
        "Adam: momentum and RMSProp with bias correction",
    ),
    "adamw": OptimizerSpec(
        "adamw", AdamW, torch.optim.AdamW,
        ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "fused"),
        "AdamW: Adam with decoupled weight decay",
    ),
}


def check_sparse_gradients(model: nn.Module, opt_cfg) -> None:
    """A model with `nn.Embedding(sparse=True)` / `nn.EmbeddingBag(sparse=True)` (model.sparse=true)
    gives sparse gradients; refuse, before training, the combinations torch refuses at the first step."""
    if not any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse for m in model.modules()):
        return
    takers = ", ".join(n for n, s in OPTIMIZERS.items() if s.sparse)
    if not OPTIMIZERS[opt_cfg.name].sparse:
        raise ConfigError(
            f"model.sparse=true: optimizer={opt_cfg.name} does not take sparse gradients ({takers} do); "
            "choose one of those or set model.sparse=false"
        )
    if opt_cfg.get("fused", False):
        raise ConfigError("optimizer.fused=true: the fused path takes dense gradients only; model.sparse=true gives sparse ones")
    if opt_cfg.weight_decay_mode == "coupled" and float(opt_cfg.weight_decay) > 0:
        # torch's L2 decay adds weight_decay * w, a dense tensor, to the sparse gradient: refused by torch
        raise ConfigError(
            "optimizer.weight_decay: weight_decay_mode=coupled (L2 in the gradient) is not compatible with "
            "sparse gradients (model.sparse=true); use optimizer.weight_decay_mode=decoupled or loss, or model.sparse=false"
        )
