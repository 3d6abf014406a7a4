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
    any_tensor,
    apply_rule,
    check_impl_flags,
    check_lr,
    check_nonnegative,
    closure_loss,
    increment_steps,
    member_view,
    new_step,
    params_with_grad,
    reject_unimplemented,
    scalar_dtype,
    split_by_device_and_dtype,
    step_grad_mode,
    to_scalar,
    view_as_real,
)
from dlexp.optim import fused
from dlexp.optim.fused import check_fused_params

__all__ = ["Adadelta", "adadelta"]


def adadelta(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    differentiable: bool = False,
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
    `acc_delta`. A complex parameter is a pair of real ones, as in torch. Call under
    `torch.no_grad()` unless differentiating through the step (`differentiable=True`).
    """
    state["step"] += 1
    grad = grad if not maximize else -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)  # L2 in the gradient, torch's meaning
    square_avg, acc_delta = state["square_avg"], state["acc_delta"]
    if torch.is_complex(param):
        square_avg, acc_delta, grad = torch.view_as_real(square_avg), torch.view_as_real(acc_delta), torch.view_as_real(grad)
    square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)  # s_t
    std = square_avg.add(eps).sqrt_()  # eps inside the root, as torch.optim and d2l
    delta = acc_delta.add(eps).sqrt_()
    if differentiable:  # autograd keeps sqrt's result: divide a copy
        delta = delta.clone()
    delta.div_(std).mul_(grad)  # g'_t
    acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)  # Delta x_t
    if torch.is_complex(param):
        delta = torch.view_as_complex(delta)
    param.add_(delta, alpha=-lr)


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
    differentiable: bool = False,
) -> None:
    """`adadelta` over a list of same-device, same-dtype tensors with `torch._foreach_*` ops (fast path)."""
    increment_steps([s["step"] for s in states])
    params, grads, square_avgs, acc_deltas = view_as_real(
        params, grads, [s["square_avg"] for s in states], [s["acc_delta"] for s in states]
    )
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


def fused_adadelta(params, grads, states, group, hp):
    """fused=True for Adadelta (torch has no fused Adadelta): `adadelta` in one C++ pass over each
    tensor (`fused.cpp`), bitwise equal to it, on each (device, dtype) bucket the kernel takes;
    returns the rest (CUDA) for the foreach rule."""
    check_fused_params(params)
    bits = fused.option_bits(maximize=hp["maximize"], weight_decay=hp["weight_decay"] != 0)
    values = (hp["lr"], hp["rho"], hp["eps"], hp["weight_decay"])
    left = ([], [], [])
    for ps, gs, ss in split_by_device_and_dtype(params, grads, states):
        columns = [ps, gs, [s["square_avg"] for s in ss], [s["acc_delta"] for s in ss], [s["step"] for s in ss]]
        if not fused.run("adadelta", columns, values, bits, step_column=4):
            fused.leave(left, ps, gs, ss)
    return left


class Adadelta(Optimizer):
    """Hand-written `torch.optim.Adadelta`: same signature, defaults, state keys and results.

    `fused=True` is not in torch's Adadelta signature (torch has no fused Adadelta); dlexp accepts
    it as a keyword for its fused CPU kernel (`fused.py`)."""

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
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_nonnegative("weight_decay", weight_decay)
        reject_unimplemented("Adadelta", capturable=capturable)
        defaults = dict(
            lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
            capturable=capturable, foreach=foreach, differentiable=differentiable,
        )  # fmt: skip
        if fused:  # only when asked: a state_dict of a plain Adadelta keeps torch's keys
            defaults["fused"] = fused
        super().__init__(params, defaults)
        check_impl_flags(foreach, fused, differentiable)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)

    @staticmethod
    def _init_state(p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = new_step(p, fused=bool(group.get("fused")))
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @step_grad_mode
    def step(self, closure=None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, states, _ = params_with_grad(
                self, group, self._init_state, sparse_message="Adadelta does not support sparse gradients"
            )
            if not params:
                continue
            hp = dict(
                lr=to_scalar(group["lr"]), rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
                maximize=group["maximize"], differentiable=group["differentiable"],
            )  # fmt: skip
            apply_rule(
                params, grads, states, group, hp, adadelta, _multi_tensor_adadelta,
                per_tensor_only=group["differentiable"] or any_tensor(group["lr"]), fused_rule=fused_adadelta,
            )  # fmt: skip
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
