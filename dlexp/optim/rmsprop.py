"""RMSProp: the learning rate scaled by a leaky average of squared gradients (optionally centered,
optionally with momentum).

Reference: d2l.ai section 12.8 (RMSProp); Tieleman & Hinton, Lecture 6.5 of "Neural Networks for
Machine Learning" (2012); Graves, "Generating Sequences With Recurrent Neural Networks" (2013) for
the centered variant.
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

__all__ = ["RMSprop", "rmsprop"]


def rmsprop(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    differentiable: bool = False,
) -> None:
    r"""One RMSProp step for one tensor, in place on `param` and `state` (the readable ground truth).

    In d2l's notation (12.8, gamma = `alpha`), with g_t the gradient (negated if `maximize`, plus
    `weight_decay * x_{t-1}`):

        s_t = alpha s_{t-1} + (1 - alpha) g_t^2                 (leaky average: `square_avg`)
        centered: v_t = alpha v_{t-1} + (1 - alpha) g_t         (`grad_avg`),  s~_t = s_t - v_t^2
        otherwise s~_t = s_t
        d_t = g_t / (sqrt(s~_t) + eps)
        momentum > 0:  b_t = momentum b_{t-1} + d_t  (`momentum_buffer`),  x_t = x_{t-1} - lr b_t
        otherwise      x_t = x_{t-1} - lr d_t

    d2l's from-scratch code uses sqrt(s_t + eps) with eps=1e-6; torch (and so this code) adds eps
    after the root, eps=1e-8. State: `step`, `square_avg`, `grad_avg`, `momentum_buffer`.
    A complex parameter is a pair of real ones, as in torch. Call under `torch.no_grad()` unless
    differentiating through the step (`differentiable=True`).
    """
    grad = grad if not maximize else -grad
    state["step"] += 1
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)  # L2 in the gradient, torch's meaning
    square_avg = state["square_avg"]
    if torch.is_complex(param):
        param, grad, square_avg = torch.view_as_real(param), torch.view_as_real(grad), torch.view_as_real(square_avg)
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)  # s_t
    if centered:
        grad_avg = state["grad_avg"]
        grad_avg = torch.view_as_real(grad_avg) if torch.is_complex(grad_avg) else grad_avg
        grad_avg.lerp_(grad, 1 - alpha)  # v_t; lerp, as torch.optim
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()  # sqrt(s_t - v_t^2)
    else:
        avg = square_avg.sqrt()
    # sqrt before eps, as torch.optim (d2l puts eps inside); out of place when autograd records it
    avg = avg.add(eps) if differentiable else avg.add_(eps)
    if momentum > 0:
        buf = state["momentum_buffer"]
        buf = torch.view_as_real(buf) if torch.is_complex(buf) else buf
        buf.mul_(momentum).addcdiv_(grad, avg)
        param.add_(buf, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)


def _multi_tensor_rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    differentiable: bool = False,
) -> None:
    """`rmsprop` over a list of same-device, same-dtype tensors with `torch._foreach_*` ops (fast path)."""
    increment_steps([s["step"] for s in states])
    params, grads, square_avgs = view_as_real(params, grads, [s["square_avg"] for s in states])
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if maximize:  # grads is already our own copy: reuse it
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if centered:
        (grad_avgs,) = view_as_real([s["grad_avg"] for s in states])
        torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
        avg = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_sqrt_(avg)
    else:
        avg = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(avg, eps)
    if momentum > 0:
        (bufs,) = view_as_real([s["momentum_buffer"] for s in states])
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_addcdiv_(bufs, grads, avg)
        torch._foreach_add_(params, bufs, alpha=-lr)
    else:
        torch._foreach_addcdiv_(params, grads, avg, value=-lr)


def fused_rmsprop(params, grads, states, group, hp):
    """fused=True for RMSprop (torch has no fused RMSprop): `rmsprop` in one C++ pass over each tensor
    (`fused.cpp`), bitwise equal to it, on each (device, dtype) bucket the kernel takes; returns the
    rest (CUDA) for the foreach rule."""
    check_fused_params(params)
    centered, momentum = hp["centered"], hp["momentum"] > 0
    bits = fused.option_bits(maximize=hp["maximize"], weight_decay=hp["weight_decay"] != 0,
                             centered=centered, momentum=momentum)  # fmt: skip
    values = (hp["lr"], hp["alpha"], hp["eps"], hp["weight_decay"], hp["momentum"])
    left = ([], [], [])
    for ps, gs, ss in split_by_device_and_dtype(params, grads, states):
        columns = [ps, gs, [s["square_avg"] for s in ss], [s["step"] for s in ss]]
        if centered:
            columns.append([s["grad_avg"] for s in ss])
        if momentum:
            columns.append([s["momentum_buffer"] for s in ss])
        if not fused.run("rmsprop", columns, values, bits, step_column=3):
            fused.leave(left, ps, gs, ss)
    return left


class RMSprop(Optimizer):
    """Hand-written `torch.optim.RMSprop`: same signature, defaults, state keys and results.

    `fused=True` is not in torch's RMSprop signature (torch has no fused RMSprop); dlexp accepts it
    as a keyword for its fused CPU kernel (`fused.py`)."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_nonnegative("momentum", momentum)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("alpha", alpha)
        reject_unimplemented("RMSprop", capturable=capturable)
        defaults = dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, capturable=capturable, foreach=foreach, maximize=maximize,
            differentiable=differentiable,
        )  # fmt: skip
        if fused:  # only when asked: a state_dict of a plain RMSprop keeps torch's keys
            defaults["fused"] = fused
        super().__init__(params, defaults)
        check_impl_flags(foreach, fused, differentiable)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("momentum", 0)
            group.setdefault("centered", False)
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)

    @staticmethod
    def _init_state(p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = new_step(p, fused=bool(group.get("fused")))
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @step_grad_mode
    def step(self, closure=None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, states, _ = params_with_grad(
                self, group, self._init_state, sparse_message="RMSprop does not support sparse gradients"
            )
            if not params:
                continue
            hp = dict(
                lr=to_scalar(group["lr"]), alpha=group["alpha"], eps=group["eps"],
                weight_decay=group["weight_decay"], momentum=group["momentum"],
                centered=group["centered"], maximize=group["maximize"], differentiable=group["differentiable"],
            )  # fmt: skip
            apply_rule(
                params, grads, states, group, hp, rmsprop, _multi_tensor_rmsprop,
                per_tensor_only=group["differentiable"] or any_tensor(group["lr"]), fused_rule=fused_rmsprop,
            )  # fmt: skip
        return loss


@torch.no_grad()
def _stacked_rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: Tensor,
    alpha: Tensor,
    eps: Tensor,
    weight_decay: Tensor,
    momentum: Tensor,
    centered: bool,
    maximize: bool,
    momentum_on: bool,
    weight_decay_on: bool,
) -> None:
    """`rmsprop` on stacked tensors (a vectorized group, dlexp.vectorize): slice m of every (M, *shape)
    tensor takes `rmsprop`'s step with member m's hyperparameters, given as (M,) float64 tensors.
    `momentum_on` / `weight_decay_on`: every member's momentum is > 0 (momentum > 0 is a code path of
    its own: a group's members agree on it) / some member's weight decay is not 0. A kernel's scalar
    argument becomes a factor of a tensor argument, which rounds as the kernel does (see `_stacked_adam`)."""
    for p, g, s in zip(params, grads, states):
        if not s:  # as RMSprop._init_state, with one step count per member
            s["step"] = torch.zeros(p.shape[0], dtype=scalar_dtype(), device=p.device)
            s["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if momentum_on:
                s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if centered:
                s["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        g = -g if maximize else g
        s["step"] += 1
        if weight_decay_on:
            g = torch.addcmul(g, p, member_view(weight_decay, p))  # L2 in the gradient, torch's meaning
        square_avg = s["square_avg"]
        square_avg.mul_(member_view(alpha, p)).addcmul_(g * member_view(1 - alpha, p), g)  # s_t
        if centered:
            grad_avg = s["grad_avg"]
            grad_avg.lerp_(g, member_view(1 - alpha, p))  # v_t
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()  # sqrt(s_t - v_t^2)
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(member_view(eps, p))  # sqrt before eps, as torch.optim
        if momentum_on:
            buf = s["momentum_buffer"]
            buf.mul_(member_view(momentum, p)).addcdiv_(g, avg)
            p.addcmul_(buf, member_view(-lr, p))
        else:
            p.addcdiv_(g * member_view(-lr, p), avg)
