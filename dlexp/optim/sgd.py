"""Minibatch SGD with optional momentum, dampening, Nesterov momentum and L2 weight decay.

Reference: d2l.ai sections 12.4 (Stochastic Gradient Descent) and 12.6 (Momentum);
Sutskever et al., "On the importance of initialization and momentum in deep learning" (2013).
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
    member_view,
    params_with_grad,
    split_by_device_and_dtype,
    step_grad_mode,
    to_scalar,
)
from dlexp.optim import fused
from dlexp.optim.fused import check_fused_params

__all__ = ["SGD", "sgd"]


def sgd(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float | Tensor,
    nesterov: bool,
    maximize: bool,
    differentiable: bool = False,
) -> None:
    r"""One SGD step for one tensor, in place on `param` and `state` (the readable ground truth).

    With g_t the minibatch gradient (negated if `maximize`) plus `weight_decay * x_{t-1}`:

        v_1 = g_1,   v_t = momentum * v_{t-1} + (1 - dampening) * g_t       (momentum > 0)
        d_t = g_t + momentum * v_t  (nesterov)  |  v_t  (momentum > 0)  |  g_t  (momentum = 0)
        x_t = x_{t-1} - lr * d_t

    d2l 12.6 writes the leaky average as v_t = beta v_{t-1} + g_t (no dampening, v_0 = 0), which is
    this rule with dampening=0; torch (and so this code) starts the buffer at v_1 = g_1 exactly,
    without the (1 - dampening) factor. State: `momentum_buffer` (v_t, shape of param).

    Every operation is linear, so a complex parameter needs no special case, and a sparse gradient
    (`nn.Embedding(sparse=True)`) updates only the rows it touches (without momentum; with momentum
    the buffer is sparse too, as in torch). Call under `torch.no_grad()` unless differentiating
    through the step (`differentiable=True`; `lr` and `weight_decay` may then be tensors that
    require grad).
    """
    grad = grad if not maximize else -grad
    if weight_decay != 0:
        if grad.is_sparse:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        if isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
            grad = grad.addcmul_(param.clone(), weight_decay)  # differentiable in weight_decay
        else:
            grad = grad.add(param, alpha=weight_decay)  # L2 in the gradient, torch's meaning
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            # first step: the buffer *is* the gradient, no dampening applied (as torch.optim)
            buf = state["momentum_buffer"] = grad.detach().clone()
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(buf, alpha=momentum) if nesterov else buf
    if isinstance(lr, Tensor) and lr.requires_grad:
        param.addcmul_(grad, lr, value=-1)  # differentiable in lr
    else:
        param.add_(grad, alpha=-lr)


def _multi_tensor_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    differentiable: bool = False,
) -> None:
    """`sgd` over a list of same-device, same-dtype tensors with `torch._foreach_*` ops (fast path).

    Every operation is linear: complex tensors need no real view here either."""
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if maximize:  # grads is already our own copy: reuse it
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        bufs = [s.get("momentum_buffer") for s in states]
        if any(b is None for b in bufs):
            # first step for some tensors: same per-tensor code as the rule
            for i, (b, s) in enumerate(zip(bufs, states)):
                if b is None:
                    bufs[i] = s["momentum_buffer"] = grads[i].detach().clone()
                else:
                    b.mul_(momentum).add_(grads[i], alpha=1 - dampening)
        else:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads, alpha=1 - dampening)
        if nesterov:
            if maximize or weight_decay != 0:  # grads is our own copy: update it in place
                torch._foreach_add_(grads, bufs, alpha=momentum)
            else:  # never write into p.grad (torch's foreach path does; its for-loop does not)
                grads = torch._foreach_add(grads, bufs, alpha=momentum)
        else:
            grads = bufs
    torch._foreach_add_(params, grads, alpha=-lr)


def fused_sgd(params, grads, states, group, hp):
    """fused=True for SGD: `sgd` in one C++ pass over each tensor (`fused.cpp`), bitwise equal to it,
    on each (device, dtype) bucket the kernel takes; returns the rest (CUDA) for the foreach rule."""
    check_fused_params(params)
    momentum = hp["momentum"]
    if momentum != 0 and any("momentum_buffer" not in s for s in states):
        for p, g, s in zip(params, grads, states):  # the first step: buffers are created from g
            sgd(p, g, s, **hp)
        return [], [], []
    bits = fused.option_bits(maximize=hp["maximize"], weight_decay=hp["weight_decay"] != 0,
                             momentum=momentum != 0, nesterov=hp["nesterov"])  # fmt: skip
    values = (hp["lr"], momentum, hp["dampening"], hp["weight_decay"])
    left = ([], [], [])
    for ps, gs, ss in split_by_device_and_dtype(params, grads, states):
        columns = [ps, gs, [s["momentum_buffer"] for s in ss]] if momentum != 0 else [ps, gs]
        if not fused.run("sgd", columns, values, bits, step_column=None):
            fused.leave(left, ps, gs, ss)
    return left


class SGD(Optimizer):
    """Hand-written `torch.optim.SGD`: same signature, defaults, state keys and results."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative("momentum", momentum)
        check_nonnegative("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach,
            differentiable=differentiable, fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults)
        check_impl_flags(foreach, fused, differentiable)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    @step_grad_mode
    def step(self, closure=None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, _, has_sparse = params_with_grad(self, group, None)
            if not params:
                continue
            if group["fused"] and has_sparse:
                raise RuntimeError("`_fused_sgd` does not support sparse gradients")
            # torch keeps no state at all for momentum=0; otherwise only `momentum_buffer`, lazily
            states = [self.state[p] for p in params] if group["momentum"] != 0 else [{}] * len(params)
            hp = dict(
                lr=to_scalar(group["lr"]), momentum=group["momentum"], dampening=group["dampening"],
                weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                maximize=group["maximize"], differentiable=group["differentiable"],
            )  # fmt: skip
            per_tensor_only = has_sparse or group["differentiable"] or any_tensor(group["lr"], group["weight_decay"])
            apply_rule(
                params, grads, states, group, hp, sgd, _multi_tensor_sgd,
                per_tensor_only=per_tensor_only, fused_rule=fused_sgd,
            )  # fmt: skip
        return loss


@torch.no_grad()
def _stacked_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: Tensor,
    momentum: Tensor,
    dampening: Tensor,
    weight_decay: Tensor,
    nesterov: bool,
    maximize: bool,
    momentum_on: bool,
    weight_decay_on: bool,
) -> None:
    """`sgd` on stacked tensors (a vectorized group, dlexp.vectorize): slice m of every (M, *shape)
    param, grad and buffer takes `sgd`'s step with member m's hyperparameters, given as (M,) float64
    tensors. `momentum_on` / `weight_decay_on`: some member's momentum / weight decay is not 0.

    A member with momentum 0 keeps no buffer in `sgd` (its step is g_t, dampening unused); here the
    shared buffer gives it v_t = 0 * v_{t-1} + g_t = g_t, so its dampening is taken as 0.
    `x.add(y, alpha=a)` is written `torch.addcmul(x, y, a)`: the same fused multiply-add, bit for bit.
    """
    for p, g, s in zip(params, grads, states):
        g = -g if maximize else g
        if weight_decay_on:
            g = torch.addcmul(g, p, member_view(weight_decay, p))  # L2 in the gradient, torch's meaning
        if momentum_on:
            buf = s.get("momentum_buffer")
            if buf is None:
                buf = s["momentum_buffer"] = g.detach().clone()  # first step: v_1 = g_1, as `sgd`
            else:
                damped = torch.where(momentum == 0, 1.0, 1.0 - dampening)
                buf.mul_(member_view(momentum, p)).addcmul_(g, member_view(damped, p))
            g = torch.addcmul(g, buf, member_view(momentum, p)) if nesterov else buf
        p.addcmul_(g, member_view(-lr, p))
