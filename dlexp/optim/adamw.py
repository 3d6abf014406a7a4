"""AdamW: Adam with decoupled weight decay.

Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019); the Adam part
is d2l.ai section 12.10.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dlexp.optim.adam import Adam, adam

__all__ = ["AdamW", "adamw"]


def adamw(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    differentiable: bool = False,
) -> None:
    r"""One AdamW step for one tensor, in place on `param` and `state` (the readable ground truth).

    The weights shrink first, then take a plain Adam step on the *undecayed* gradient g_t:

        x'_{t-1} = (1 - lr * weight_decay) x_{t-1}
        v_t, s_t, \hat v_t, \hat s_t as in `adam` (g_t not touched by weight_decay)
        x_t = x'_{t-1} - lr * \hat v_t / (sqrt(\hat s_t) + eps)

    Note lr multiplies the decay (torch's convention; the paper has a separate schedule multiplier
    eta_t and decay lambda). Same state as `adam`.
    """
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)  # decoupled: never enters v_t or s_t
    adam(
        param, grad, state, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=0,
        amsgrad=amsgrad, maximize=maximize, differentiable=differentiable,
    )  # fmt: skip


class AdamW(Adam):
    """Hand-written `torch.optim.AdamW`: same signature, defaults, state keys and results."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=True,
        )  # fmt: skip

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # an AdamW is always decoupled, whatever was loaded
            group["decoupled_weight_decay"] = True

    @staticmethod
    def _rule(p, g, s, *, decoupled_weight_decay, **hp) -> None:
        """foreach=False runs `adamw` (Adam's flag is always True here and not needed by it)."""
        adamw(p, g, s, **hp)
