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

__all__ = ["Adam", "adam"]


def adam(
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
    decoupled_weight_decay: bool = False,
    differentiable: bool = False,
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

    A complex parameter is a pair of real ones (g_t^2 squares the real and imaginary parts, never
    the complex number), as in torch. Tensor `lr` and `betas` stay 0-dim tensors, so
    `lr / bias_correction1` is computed in float32 as torch does. Call under `torch.no_grad()`
    unless differentiating through the step (`differentiable=True`).
    """
    grad = grad if not maximize else -grad
    state["step"] += 1
    t = step_value(state["step"])
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)  # AdamW: shrink the weights, leave g_t alone
        else:
            grad = grad.add(param, alpha=weight_decay)  # L2 in the gradient, torch's meaning
    exp_avg, exp_avg_sq, max_exp_avg_sq = state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq")
    if torch.is_complex(param):
        param, grad, exp_avg, exp_avg_sq = (torch.view_as_real(x) for x in (param, grad, exp_avg, exp_avg_sq))
        if amsgrad:
            max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
    # lerp wants its tensor weight in the param's dtype (torch casts a tensor beta1 the same way)
    lerp_beta1 = beta1.to(device=param.device, dtype=param.dtype) if isinstance(beta1, Tensor) else beta1
    exp_avg.lerp_(grad, 1 - lerp_beta1)  # v_t; lerp, as torch.optim (rounds unlike mul_+add_)
    if differentiable and isinstance(beta2, Tensor) and beta2.requires_grad:
        exp_avg_sq.lerp_(grad.square(), 1 - beta2)  # s_t; addcmul's value cannot carry a gradient
    else:
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # s_t
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    if amsgrad:
        if differentiable:
            max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq.clone(), exp_avg_sq))
        else:
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        exp_avg_sq = max_exp_avg_sq
    # sqrt(\hat s_t) + eps: sqrt before eps, as torch.optim and the paper
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
    step_size = lr / bias_correction1  # \hat v_t folded into the step
    param.addcdiv_(exp_avg.clone() if differentiable else exp_avg, denom, value=-step_size)


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
    differentiable: bool = False,
) -> None:
    """`adam` over a list of same-device, same-dtype tensors with `torch._foreach_*` ops (fast path)."""
    steps = [s["step"] for s in states]
    exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
    (max_exp_avg_sqs,) = view_as_real([s["max_exp_avg_sq"] for s in states] if amsgrad else [])
    params, grads, exp_avgs, exp_avg_sqs = view_as_real(params, grads, exp_avgs, exp_avg_sqs)
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
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        exp_avg_sqs = max_exp_avg_sqs
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrts)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


def fused_adam(params, grads, states, group, hp):
    """fused=True for Adam and AdamW: `adam` (`adamw`) in one C++ pass over each tensor (`fused.cpp`),
    bitwise equal to it, on each (device, dtype) bucket the kernel takes; returns the rest (CUDA)
    for the foreach rule."""
    check_fused_params(params)
    bits = fused.option_bits(maximize=hp["maximize"], weight_decay=hp["weight_decay"] != 0,
                             decoupled=hp["decoupled_weight_decay"], amsgrad=hp["amsgrad"])  # fmt: skip
    values = (hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"])
    left = ([], [], [])
    for ps, gs, ss in split_by_device_and_dtype(params, grads, states):
        columns = [ps, gs, [s["exp_avg"] for s in ss], [s["exp_avg_sq"] for s in ss], [s["step"] for s in ss]]
        if hp["amsgrad"]:
            columns.append([s["max_exp_avg_sq"] for s in ss])
        if not fused.run("adam", columns, values, bits, step_column=4):
            fused.leave(left, ps, gs, ss)
    return left


class Adam(Optimizer):
    """Hand-written `torch.optim.Adam`: same signature, defaults, state keys and results."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
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
        # torch's checks, in torch's order and words (a tensor lr or betas and an explicit foreach
        # are refused: torch's foreach path computes bias corrections with Python floats)
        if isinstance(lr, Tensor) and foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        check_lr(lr)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        check_nonnegative("weight_decay", weight_decay)
        if not (all(isinstance(b, float) for b in betas) or all(isinstance(b, Tensor) for b in betas)):
            raise ValueError("betas must be either both floats or both Tensors")
        for i, b in enumerate(betas):
            if isinstance(b, Tensor):
                if foreach and not capturable:
                    raise ValueError(f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
                if b.numel() != 1:
                    raise ValueError(f"Tensor betas[{i}] must be 1-element")
        reject_unimplemented(type(self).__name__, capturable=capturable)
        defaults = dict(
            lr=lr, betas=tuple(to_scalar(b) for b in betas), eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip
        super().__init__(params, defaults)
        check_impl_flags(foreach, fused, differentiable)

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
        state["step"] = new_step(p, fused=bool(group["fused"]))
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @step_grad_mode
    def step(self, closure=None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, states, _ = params_with_grad(
                self, group, self._init_state,
                sparse_message="Adam does not support sparse gradients, please consider SparseAdam instead",
            )  # fmt: skip
            if not params:
                continue
            beta1, beta2 = group["betas"]
            hp = dict(
                lr=to_scalar(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], amsgrad=group["amsgrad"], maximize=group["maximize"],
                decoupled_weight_decay=group["decoupled_weight_decay"], differentiable=group["differentiable"],
            )  # fmt: skip
            # tensor lr or betas: the per-tensor rule (torch refuses them on its foreach path)
            per_tensor_only = group["differentiable"] or any_tensor(group["lr"], beta1, beta2)
            apply_rule(
                params, grads, states, group, hp, self._rule, _multi_tensor_adam,
                per_tensor_only=per_tensor_only, fused_rule=fused_adam,
            )  # fmt: skip
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
