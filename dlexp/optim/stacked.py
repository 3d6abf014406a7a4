"""The optimizer of a vectorized group (dlexp.vectorize): M runs' optimizers as one.

Every parameter is stacked along a leading member axis, (M, *shape), and every hyperparameter that
may differ between members (lr, momentum, betas, eps, weight_decay, ...) is an (M,) float64 tensor;
the flags that change an algorithm's code path (nesterov, centered, amsgrad, maximize) are equal in
a group. `step` applies the algorithm's stacked rule (`_stacked_<name>`, at the end of each
algorithm's file), which a test holds equal to the readable per-tensor rule applied member by member.
"""

from __future__ import annotations

from typing import Any

import torch

from dlexp.optim._common import Optimizer
from dlexp.optim.adadelta import _stacked_adadelta
from dlexp.optim.adagrad import _stacked_adagrad
from dlexp.optim.adam import _stacked_adam
from dlexp.optim.rmsprop import _stacked_rmsprop
from dlexp.optim.sgd import _stacked_sgd

# name -> (stacked rule, the hyperparameters given per member, the flags equal in a group)
RULES: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...]]] = {
    "sgd": (_stacked_sgd, ("lr", "momentum", "dampening", "weight_decay"), ("nesterov", "maximize")),
    "adagrad": (_stacked_adagrad, ("lr", "lr_decay", "weight_decay", "eps", "initial_accumulator_value"), ("maximize",)),
    "rmsprop": (_stacked_rmsprop, ("lr", "alpha", "eps", "weight_decay", "momentum"), ("centered", "maximize")),
    "adadelta": (_stacked_adadelta, ("lr", "rho", "eps", "weight_decay"), ("maximize",)),
    "adam": (_stacked_adam, ("lr", "beta1", "beta2", "eps", "weight_decay"), ("amsgrad", "maximize", "decoupled_weight_decay")),
    "adamw": (_stacked_adam, ("lr", "beta1", "beta2", "eps", "weight_decay"), ("amsgrad", "maximize", "decoupled_weight_decay")),
}


def member_hparams(name: str, group: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a stacked rule takes, read from one member's own optimizer param group
    (torch's keys: `betas` becomes beta1, beta2)."""
    _, per_member, flags = RULES[name]
    values = dict(group)
    if "betas" in values:
        values["beta1"], values["beta2"] = (float(b) for b in values["betas"])
    return {k: float(values[k]) for k in per_member} | {k: values.get(k, False) for k in flags}


class Stacked(Optimizer):
    """`name`'s update on stacked parameters with per-member hyperparameters.

    `groups` are param groups of stacked parameters; `members[m]` is member m's hyperparameters
    (`member_hparams`). A group may carry its own `weight_decay` list (M numbers): the no-decay group
    of biases gets zeros. The group entries become (M,) float64 tensors on the parameters' device
    (`lr` is set there by the loop, one value per member); `*_on` entries say on the host whether
    any member's momentum or weight decay is not 0, so that the rule skips what no member needs.
    """

    def __init__(self, groups: list[dict[str, Any]], name: str, members: list[dict[str, Any]]):
        if name not in RULES:
            raise ValueError(f"no stacked rule for optimizer {name!r}")
        rule, per_member, flags = RULES[name]
        device = groups[0]["params"][0].device
        defaults: dict[str, Any] = {k: members[0][k] for k in flags}
        for k in per_member:
            defaults[k] = [m[k] for m in members]
        self.name, self.rule, self.per_member = name, rule, per_member
        super().__init__(groups, defaults)
        for group in self.param_groups:
            for k in per_member:
                values = group[k]
                if "momentum" == k:
                    group["momentum_on"] = any(v != 0 for v in values)
                if "weight_decay" == k:
                    group["weight_decay_on"] = any(v != 0 for v in values)
                group[k] = torch.tensor(values, dtype=torch.float64, device=device)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every member (a member's slice moves exactly as its own optimizer would)."""
        assert closure is None, "a stacked optimizer takes no closure"
        _, per_member, flags = RULES[self.name]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            hp = {k: group[k] for k in (*per_member, *flags)}
            hp.update({k: group[k] for k in ("momentum_on", "weight_decay_on") if k in group})
            self.rule(params, [p.grad for p in params], [self.state[p] for p in params], **hp)
        return None
