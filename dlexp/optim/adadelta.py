"""Adadelta: RMSProp whose step size comes from a leaky average of the past updates themselves.

Reference: d2l.ai section 12.9 (Adadelta); Zeiler, "ADADELTA: An Adaptive Learning Rate Method"
(2012).
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

__all__ = ["Adadelta", "adadelta"]


@torch.no_grad()
def adadelta(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One Adadelta step for one tensor, in place on `param` and `state` (the readable ground truth).

    In d2l's notation (12.9), with g_t the gradient (negated if `maximize`, plus
    `weight_decay * x_{t-1}`):

        s_t = rho s_{t-1} + (1 - rho) g_t^2                             (`square_avg`)
        g'_t = sqrt(Delta x_{t-1} + eps) / sqrt(s_t + eps) * g_t        (the rescaled gradient)
        Delta x_t = rho Delta x_{t-1} + (1 - rho) g'_t^2                (`acc_delta`)
        x_t = x_{t-1} - lr * g'_t

    Here torch agrees with d2l and the paper: eps is *inside* both roots (torch and the paper use
    eps=1e-6; d2l's from-scratch code uses 1e-5).
    d2l's from-scratch code has no lr (lr=1, torch's default). State: `step`, `square_avg`,
    `acc_delta`.
    """
    grad = grad if not maximize else -grad
    state["step"] += 1
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)  # L2 in the gradient, torch's meaning
    square_avg, acc_delta = state["square_avg"], state["acc_delta"]
    square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)  # s_t
    std = square_avg.add(eps).sqrt_()  # eps inside the root, as torch.optim and d2l
    delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)  # g'_t
    acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)  # Delta x_t
    param.add_(delta, alpha=-lr)


@torch.no_grad()
def _multi_tensor_adadelta(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """`adadelta` over a list of same-device, same-dtype tensors with `torch._foreach_*` ops (fast path)."""
    square_avgs = [s["square_avg"] for s in states]
    acc_deltas = [s["acc_delta"] for s in states]
    increment_steps([s["step"] for s in states])
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if maximize:  # grads is already our own copy: reuse it
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(square_avgs, rho)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - rho)
    std = torch._foreach_add(square_avgs, eps)
    torch._foreach_sqrt_(std)
    deltas = torch._foreach_add(acc_deltas, eps)
    torch._foreach_sqrt_(deltas)
    torch._foreach_div_(deltas, std)
    torch._foreach_mul_(deltas, grads)
    torch._foreach_mul_(acc_deltas, rho)
    torch._foreach_addcmul_(acc_deltas, deltas, deltas, value=1 - rho)
    torch._foreach_add_(params, deltas, alpha=-lr)


class Adadelta(Optimizer):
    """Hand-written `torch.optim.Adadelta`: same signature, defaults, state keys and results."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_nonnegative("weight_decay", weight_decay)
        reject_unimplemented("Adadelta", capturable=capturable, differentiable=differentiable)
        defaults = dict(
            lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
            capturable=capturable, foreach=foreach, differentiable=differentiable,
        )  # fmt: skip
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)

    @staticmethod
    def _init_state(p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = new_step()
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, states = params_with_grad(self, group, self._init_state)
            if not params:
                continue
            hp = dict(
                lr=as_float(group["lr"]), rho=group["rho"], eps=group["eps"],
                weight_decay=group["weight_decay"], maximize=group["maximize"],
            )  # fmt: skip
            apply_rule(params, grads, states, group, hp, adadelta, _multi_tensor_adadelta)
        return loss


@torch.no_grad()
def _stacked_adadelta(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: Tensor,
    rho: Tensor,
    eps: Tensor,
    weight_decay: Tensor,
    maximize: bool,
    weight_decay_on: bool,
) -> None:
    """`adadelta` on stacked tensors (a vectorized group, dlexp.vectorize): slice m of every (M, *shape)
    tensor takes `adadelta`'s step with member m's hyperparameters, given as (M,) float64 tensors.
    `weight_decay_on`: some member's weight decay is not 0. A kernel's scalar argument becomes a factor
    of a tensor argument, which rounds as the kernel does (see `_stacked_adam`)."""
    for p, g, s in zip(params, grads, states):
        if not s:  # as Adadelta._init_state, with one step count per member
            s["step"] = torch.zeros(p.shape[0], dtype=scalar_dtype(), device=p.device)
            s["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            s["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        g = -g if maximize else g
        s["step"] += 1
        if weight_decay_on:
            g = torch.addcmul(g, p, member_view(weight_decay, p))  # L2 in the gradient, torch's meaning
        square_avg, acc_delta = s["square_avg"], s["acc_delta"]
        square_avg.mul_(member_view(rho, p)).addcmul_(g * member_view(1 - rho, p), g)  # s_t
        std = square_avg.add(member_view(eps, p)).sqrt_()  # eps inside the root, as torch.optim and d2l
        delta = acc_delta.add(member_view(eps, p)).sqrt_().div_(std).mul_(g)  # g'_t
        acc_delta.mul_(member_view(rho, p)).addcmul_(delta * member_view(1 - rho, p), delta)  # Delta x_t
        p.addcmul_(delta, member_view(-lr, p))
