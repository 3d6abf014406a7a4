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
    step_value,
    to_scalar,
    view_as_real,
)
from dlexp.optim import fused
from dlexp.optim.fused import check_fused_params

__all__ = ["Adagrad", "adagrad"]


def adagrad(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    differentiable: bool = False,
) -> None:
    r"""One AdaGrad step for one tensor, in place on `param` and `state` (the readable ground truth).

    In d2l's notation (12.7), with g_t the gradient (negated if `maximize`, plus
    `weight_decay * x_{t-1}`) and s_0 = `initial_accumulator_value`:

        s_t = s_{t-1} + g_t^2                                  (`sum`)
        eta_t = lr / (1 + (t - 1) * lr_decay)
        x_t = x_{t-1} - eta_t * g_t / (sqrt(s_t) + eps)

    d2l's from-scratch code puts eps inside the root, sqrt(s_t + eps), with eps=1e-6; torch (and so
    this code) adds eps after the root, with eps=1e-10. State: `step` (0-dim float tensor), `sum`.

    A sparse gradient (`nn.Embedding(sparse=True)`: only the rows of the features seen in the
    batch) updates only those rows of `sum` and `param`: a feature that is rarely seen keeps a
    small sum and so a large step, d2l's motivation for AdaGrad. A complex parameter is a pair of
    real ones (its real and imaginary parts), as in torch. Call under `torch.no_grad()` unless
    differentiating through the step (`differentiable=True`).
    """
    state["step"] += 1
    t = step_value(state["step"])
    grad = grad if not maximize else -grad
    if weight_decay != 0:
        if grad.is_sparse:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        grad = grad.add(param, alpha=weight_decay)  # L2 in the gradient, torch's meaning
    clr = lr / (1 + (t - 1) * lr_decay)
    state_sum = state["sum"]
    if grad.is_sparse:
        grad = grad.coalesce()  # one value per row: the update is not linear in the gradient
        indices, values = grad._indices(), grad._values()
        # (the indices are the coalesced gradient's own: no invariant check needed)
        state_sum.add_(torch.sparse_coo_tensor(indices, values.pow(2), grad.size(), check_invariants=False))  # s_t, seen rows
        std_values = state_sum.sparse_mask(grad)._values().sqrt_().add_(eps)
        param.add_(torch.sparse_coo_tensor(indices, values / std_values, grad.size(), check_invariants=False), alpha=-clr)
        return
    if torch.is_complex(param):
        param, grad, state_sum = torch.view_as_real(param), torch.view_as_real(grad), torch.view_as_real(state_sum)
    state_sum.addcmul_(grad, grad, value=1)  # s_t
    # sqrt before eps, as torch.optim (d2l puts eps inside); out of place when autograd records it
    std = state_sum.sqrt() + eps if differentiable else state_sum.sqrt().add_(eps)
    param.addcdiv_(grad, std, value=-clr)


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
    differentiable: bool = False,
) -> None:
    """`adagrad` over a list of same-device, same-dtype tensors with `torch._foreach_*` ops (fast path)."""
    steps = [s["step"] for s in states]
    params, grads, state_sums = view_as_real(params, grads, [s["sum"] for s in states])
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


def fused_adagrad(params, grads, states, group, hp):
    """fused=True for Adagrad: `adagrad` in one C++ pass over each tensor (`fused.cpp`), bitwise equal
    to it, on each (device, dtype) bucket the kernel takes; returns the rest (CUDA) for the foreach rule."""
    check_fused_params(params)
    bits = fused.option_bits(maximize=hp["maximize"], weight_decay=hp["weight_decay"] != 0)
    values = (hp["lr"], hp["lr_decay"], hp["weight_decay"], hp["eps"])
    left = ([], [], [])
    for ps, gs, ss in split_by_device_and_dtype(params, grads, states):
        columns = [ps, gs, [s["sum"] for s in ss], [s["step"] for s in ss]]
        if not fused.run("adagrad", columns, values, bits, step_column=3):
            fused.leave(left, ps, gs, ss)
    return left


class Adagrad(Optimizer):
    """Hand-written `torch.optim.Adagrad`: same signature, defaults, state keys and results.

    As torch, the state (`step` = 0, `sum` = initial_accumulator_value) is created for every param
    in the constructor, not lazily at the first step. One deliberate difference: a param group's
    own `initial_accumulator_value` is honoured (torch fills every group's `sum` with the
    constructor's value and ignores the group's).
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
        defaults = dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults)
        check_impl_flags(foreach, fused, differentiable)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, self.state[p], group)

    @staticmethod
    def _init_state(p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = new_step(p, fused=bool(group["fused"]))
        value = group["initial_accumulator_value"]
        # a complex sum starts at value + value*i: the real and imaginary parts are separate sums
        value = complex(value, value) if torch.is_complex(p) else value
        state["sum"] = torch.full_like(p, value, memory_format=torch.preserve_format)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)

    def share_memory(self) -> None:
        """Put the `sum` tensors in shared memory (Hogwild!-style training across processes)."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    @step_grad_mode
    def step(self, closure=None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            # state normally exists since __init__; lazily for params added by add_param_group
            params, grads, states, has_sparse = params_with_grad(self, group, self._init_state)
            if not params:
                continue
            if group["fused"] and has_sparse:
                raise RuntimeError("`fused` does not support sparse grad or complex param")
            hp = dict(
                lr=to_scalar(group["lr"]), lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                eps=group["eps"], maximize=group["maximize"], differentiable=group["differentiable"],
            )  # fmt: skip
            per_tensor_only = has_sparse or group["differentiable"] or any_tensor(group["lr"])
            apply_rule(
                params, grads, states, group, hp, adagrad, _multi_tensor_adagrad,
                per_tensor_only=per_tensor_only, fused_rule=fused_adagrad,
            )  # fmt: skip
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
