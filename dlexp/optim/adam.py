"""Adam (and AMSGrad): momentum plus RMSProp scaling, with bias correction.

Reference: d2l.ai section 12.10 (Adam); Kingma & Ba, "Adam: A Method for Stochastic Optimization"
(2015); Reddi et al., "On the Convergence of Adam and Beyond" (2018) for `amsgrad`.
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

__all__ = ["Adam", "adam"]


@torch.no_grad()
def adam(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool = False,
) -> None:
    r"""One Adam step for one tensor, in place on `param` and `state` (the readable ground truth).

    In d2l's notation (12.10), with g_t the gradient (negated if `maximize`; plus
    `weight_decay * x_{t-1}` unless the decay is decoupled, see `adamw`):

        v_t = beta1 v_{t-1} + (1 - beta1) g_t            (leaky average of gradients: `exp_avg`)
        s_t = beta2 s_{t-1} + (1 - beta2) g_t^2          (... of squared gradients: `exp_avg_sq`)
        \hat v_t = v_t / (1 - beta1^t),   \hat s_t = s_t / (1 - beta2^t)   (bias corrections)
        x_t = x_{t-1} - lr * \hat v_t / (sqrt(\hat s_t) + eps)

    With `amsgrad`, s_max_t = max(s_max_{t-1}, s_t) (`max_exp_avg_sq`) replaces s_t in \hat s_t.
    d2l's from-scratch code is the same rule with eps=1e-6; torch's default, used here, is 1e-8.
    State: `step` (0-dim float tensor t), `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq` (amsgrad).
    """
    grad = grad if not maximize else -grad
    state["step"] += 1
    t = state["step"].item()
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)  # AdamW: shrink the weights, leave g_t alone
        else:
            grad = grad.add(param, alpha=weight_decay)  # L2 in the gradient, torch's meaning
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)  # v_t; lerp, as torch.optim (rounds unlike mul_+add_)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # s_t
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    if amsgrad:
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        exp_avg_sq = state["max_exp_avg_sq"]
    # sqrt(\hat s_t) + eps: sqrt before eps, as torch.optim and the paper
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)  # \hat v_t folded into the step


@torch.no_grad()
def _multi_tensor_adam(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool = False,
) -> None:
    """`adam` over a list of same-device, same-dtype tensors with `torch._foreach_*` ops (fast path)."""
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    if maximize:
        grads = torch._foreach_neg(grads)
    increment_steps(steps)
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        elif maximize:  # grads is already our own copy: reuse it
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    ts = [s.item() for s in steps]
    step_sizes = [-lr / (1 - beta1**t) for t in ts]
    bias_correction2_sqrts = [(1 - beta2**t) ** 0.5 for t in ts]
    if amsgrad:
        max_exp_avg_sqs = [s["max_exp_avg_sq"] for s in states]
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        exp_avg_sqs = max_exp_avg_sqs
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrts)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


class Adam(Optimizer):
    """Hand-written `torch.optim.Adam`: same signature, defaults, state keys and results."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        check_nonnegative("weight_decay", weight_decay)
        reject_unimplemented(
            type(self).__name__, capturable=capturable, differentiable=differentiable, fused=fused
        )
        defaults = dict(
            lr=lr, betas=tuple(as_float(b) for b in betas), eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", False)

    @staticmethod
    def _init_state(p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = new_step()
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, states = params_with_grad(self, group, self._init_state)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            hp = dict(
                lr=as_float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], amsgrad=group["amsgrad"],
                maximize=group["maximize"], decoupled_weight_decay=group["decoupled_weight_decay"],
            )  # fmt: skip
            apply_rule(params, grads, states, group, hp, self._rule, _multi_tensor_adam)
        return loss

    # the readable per-tensor ground truth that foreach=False runs (AdamW substitutes `adamw`)
    _rule = staticmethod(adam)


@torch.no_grad()
def _stacked_adam(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: Tensor,
    beta1: Tensor,
    beta2: Tensor,
    eps: Tensor,
    weight_decay: Tensor,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool = False,
    weight_decay_on: bool = True,
) -> None:
    """`adam` (and `adamw`, decoupled) on stacked tensors (a vectorized group, dlexp.vectorize): slice m
    of every (M, *shape) tensor takes `adam`'s step with member m's hyperparameters, given as (M,)
    float64 tensors. `step` is an (M,) tensor: member m's t. The scalars the rule computes in Python
    floats (bias corrections, step size) are computed here in float64 and rounded to the param's
    dtype once, as the rule's floats are. `weight_decay_on`: some member's weight decay is not 0.
    A kernel's scalar argument becomes a factor of a tensor argument (`addcmul_(g, g, value=c)` is
    `addcmul_(g * c, g)`; `add(y, alpha=a)` is `addcmul(x, y, a)`), which rounds as the kernel does."""
    for p, g, s in zip(params, grads, states):
        if not s:  # as Adam._init_state, with one step count per member
            s["step"] = torch.zeros(p.shape[0], dtype=scalar_dtype(), device=p.device)
            s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if amsgrad:
                s["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        g = -g if maximize else g
        s["step"] += 1
        t = s["step"].double()  # (M,)
        if weight_decay_on:
            if decoupled_weight_decay:
                p.mul_(member_view(1 - lr * weight_decay, p))  # AdamW: shrink the weights, leave g_t alone
            else:
                g = torch.addcmul(g, p, member_view(weight_decay, p))  # L2 in the gradient, torch's meaning
        exp_avg, exp_avg_sq = s["exp_avg"], s["exp_avg_sq"]
        exp_avg.lerp_(g, member_view(1 - beta1, p))  # v_t
        exp_avg_sq.mul_(member_view(beta2, p)).addcmul_(g * member_view(1 - beta2, p), g)  # s_t
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        if amsgrad:
            torch.maximum(s["max_exp_avg_sq"], exp_avg_sq, out=s["max_exp_avg_sq"])
            exp_avg_sq = s["max_exp_avg_sq"]
        denom = (exp_avg_sq.sqrt() / member_view(bias_correction2**0.5, p)).add_(member_view(eps, p))
        p.addcdiv_(exp_avg * member_view(-lr / bias_correction1, p), denom)
