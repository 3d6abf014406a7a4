"""Optimizer registry: one row per `conf/optimizer/<name>.yaml`.

Each row carries the hand-written class (`cls`), its torch.optim twin (`torch_cls`), the constructor
keywords that the config passes through, and a one-line description. Tests and
`dlexp check-optimizers` iterate over this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlexp.optim.adadelta import Adadelta
from dlexp.optim.adagrad import Adagrad
from dlexp.optim.adam import Adam
from dlexp.optim.adamw import AdamW
from dlexp.optim.rmsprop import RMSprop
from dlexp.optim.sgd import SGD

__all__ = ["OPTIMIZERS", "OptimizerSpec", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW"]

@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    cls: type[torch.optim.Optimizer]  # dlexp's hand-written implementation
    torch_cls: type[torch.optim.Optimizer]  # the torch.optim reference
    hparams: tuple[str, ...]  # constructor keywords read from the config (torch's names)
    description: str

    def optimizer_class(self, impl: str) -> type[torch.optim.Optimizer]:
        if impl == "dlexp":
            return self.cls
        if impl == "torch":
            return self.torch_cls
        raise ValueError(f"optimizer.impl: expected 'dlexp' or 'torch', got {impl!r}")


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(
        "sgd", SGD, torch.optim.SGD,
        ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
        "minibatch SGD with optional (Nesterov) momentum",
    ),
    "adagrad": OptimizerSpec(
        "adagrad", Adagrad, torch.optim.Adagrad,
        ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"),
        "AdaGrad: per-coordinate lr scaled by the root of the summed squared gradients",
    ),
    "rmsprop": OptimizerSpec(
        "rmsprop", RMSprop, torch.optim.RMSprop,
        ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
        "RMSProp: lr scaled by a leaky average of squared gradients",
    ),
    "adadelta": OptimizerSpec(
        "adadelta", Adadelta, torch.optim.Adadelta,
        ("lr", "rho", "eps", "weight_decay", "maximize"),
        "Adadelta: RMSProp with the step size taken from a leaky average of past updates",
    ),
    "adam": OptimizerSpec(
        "adam", Adam, torch.optim.Adam,
        ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"),
        "Adam: momentum and RMSProp with bias correction",
    ),
    "adamw": OptimizerSpec(
        "adamw", AdamW, torch.optim.AdamW,
        ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"),
        "AdamW: Adam with decoupled weight decay",
    ),
}
