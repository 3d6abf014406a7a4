"""AdaGrad: a per-coordinate learning rate from the sum of all past squared gradients.

Reference: d2l.ai section 12.7 (Adagrad); Duchi, Hazan & Singer, "Adaptive Subgradient Methods for
Online Learning and Stochastic Optimization" (JMLR 2011).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dlexp.optim._common import (
    Optimizer,
    apply_rule,
    closure_loss,
    as_float,
    check_lr,
    check_nonnegative,
    increment_steps,
    member_view,
    new_step,
    params_with_grad,
    reject_unimplemented,
    scalar_dtype,
)

__all__ = ["Adagrad", "adagrad"]


@torch.no_grad()
def adagrad(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    r"""One AdaGrad step for one tensor, in place on `param` and `state` (the readable ground truth).

    In d2l's notation (12.7), with g_t the gradient (negated if `maximize`, plus
    `weight_decay * x_{t-1}`) and s_0 = `initial_accumulator_value`:

        s_t = s_{t-1} + g_t^2                                  (`sum`)
        eta_t = lr / (1 + (t - 1) * lr_decay)
        x_t = x_{t-1} - eta_t * g_t / (sqrt(s_t) + eps)

    d2l's from-scratch code puts eps inside the root, sqrt(s_t + eps), with eps=1e-6; torch (and so
    this code) adds eps after the root, with eps=1e-10. State: `step` (0-dim float tensor), `sum`.
    """
    grad = grad if not maximize else -grad
    state["step"] += 1
    t = state["step"].item()
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)  # L2 in the gradient, torch's meaning
    clr = lr / (1 + (t - 1) * lr_decay)
    state_sum = state["sum"]
    state_sum.addcmul_(grad, grad, value=1)  # s_t
    std = state_sum.sqrt().add_(eps)  # sqrt before eps, as torch.optim (d2l puts eps inside)
    param.addcdiv_(grad, std, value=-clr)


@torch.no_grad()
def _multi_tensor_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    """`adagrad` over a list of same-device, same-dtype tensors with `torch._foreach_*` ops (fast path)."""
    state_sums = [s["sum"] for s in states]
    steps = [s["step"] for s in states]
    if maximize:
        grads = torch._foreach_neg(grads)
    increment_steps(steps)
    if weight_decay != 0:
        if maximize:  # grads is already our own copy: reuse it
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    minus_clr = [-lr / (1 + (s.item() - 1) * lr_decay) for s in steps]
    torch._foreach_addcmul_(state_sums, grads, grads, value=1)
    std = torch._foreach_sqrt(state_sums)
    torch._foreach_add_(std, eps)
    # One addcdiv with per-tensor scalars, as the per-tensor rule; torch's foreach path first
    # multiplies the grads by -clr (an extra pass over memory, and a slightly different rounding).
    torch._foreach_addcdiv_(params, grads, std, minus_clr)


class Adagrad(Optimizer):
    """Hand-written `torch.optim.Adagrad`: same signature, defaults, state keys and results.

    As torch, the state (`step` = 0, `sum` = initial_accumulator_value) is created for every param
    in the constructor, not lazily at the first step.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative("lr_decay", lr_decay)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("initial_accumulator_value", initial_accumulator_value)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        reject_unimplemented("Adagrad", differentiable=differentiable, fused=fused)
        defaults = dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, self.state[p], group)

    @staticmethod
    def _init_state(p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = new_step()
        state["sum"] = torch.full_like(
            p, group["initial_accumulator_value"], memory_format=torch.preserve_format
        )

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            # state normally exists since __init__; lazily for params added by add_param_group
            params, grads, states = params_with_grad(self, group, self._init_state)
            if not params:
                continue
            hp = dict(
                lr=as_float(group["lr"]), lr_decay=group["lr_decay"],
                weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
            )  # fmt: skip
            apply_rule(params, grads, states, group, hp, adagrad, _multi_tensor_adagrad)
        return loss


@torch.no_grad()
def _stacked_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: Tensor,
    lr_decay: Tensor,
    weight_decay: Tensor,
    eps: Tensor,
    initial_accumulator_value: Tensor,
    maximize: bool,
    weight_decay_on: bool,
) -> None:
    """`adagrad` on stacked tensors (a vectorized group, dlexp.vectorize): slice m of every (M, *shape)
    tensor takes `adagrad`'s step with member m's hyperparameters, given as (M,) float64 tensors;
    `step` is (M,), and `sum` starts at member m's initial_accumulator_value.
    `weight_decay_on`: some member's weight decay is not 0. A kernel's scalar argument becomes a factor
    of a tensor argument, which rounds as the kernel does (see `_stacked_adam`)."""
    for p, g, s in zip(params, grads, states):
        if not s:  # as Adagrad._init_state, with one step count and start value per member
            s["step"] = torch.zeros(p.shape[0], dtype=scalar_dtype(), device=p.device)
            s["sum"] = torch.zeros_like(p, memory_format=torch.preserve_format).add_(member_view(initial_accumulator_value, p))
        g = -g if maximize else g
        s["step"] += 1
        t = s["step"].double()  # (M,)
        if weight_decay_on:
            g = torch.addcmul(g, p, member_view(weight_decay, p))  # L2 in the gradient, torch's meaning
        clr = lr / (1 + (t - 1) * lr_decay)
        state_sum = s["sum"]
        state_sum.addcmul_(g, g, value=1)  # s_t
        std = state_sum.sqrt().add_(member_view(eps, p))  # sqrt before eps, as torch.optim
        p.addcdiv_(g * member_view(-clr, p), std)
