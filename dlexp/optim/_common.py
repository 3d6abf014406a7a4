"""Small helpers shared by the hand-written optimizers: argument checks, the `step` counter, and
the iteration over a param group's tensors that both the per-tensor rule and the foreach fast path use.

Nothing here is an algorithm; each `dlexp/optim/<name>.py` reads top to bottom on its own.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor


def _dynamo_import_deferred(name: str):
    """torch.optim.Optimizer's `name`, without importing torch._dynamo unless it is already loaded.

    torch wraps add_param_group, zero_grad, state_dict and load_state_dict in torch._disable_dynamo,
    whose first call imports torch._dynamo: 1.2 s of a `dlexp run` that trains for 0.02 s (digits,
    one epoch, on the CPU). The wrapper only matters while dynamo traces, and dynamo is then loaded,
    so: torch's wrapped method once torch._dynamo is imported, the plain one before.
    """
    wrapped = getattr(torch.optim.Optimizer, name)
    plain = getattr(wrapped, "__wrapped__", wrapped)

    @functools.wraps(plain)
    def method(self, *args, **kwargs):
        fn = wrapped if "torch._dynamo" in sys.modules else plain
        return fn(self, *args, **kwargs)

    return method


class Optimizer(torch.optim.Optimizer):
    """torch.optim.Optimizer, unchanged but for a process start that does not import torch._dynamo."""

    add_param_group = _dynamo_import_deferred("add_param_group")
    zero_grad = _dynamo_import_deferred("zero_grad")
    state_dict = _dynamo_import_deferred("state_dict")
    load_state_dict = _dynamo_import_deferred("load_state_dict")


def check_lr(lr: float | Tensor) -> None:
    """Reject a negative (or multi-element tensor) learning rate with torch.optim's message."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_nonnegative(name: str, value: float) -> None:
    """`Invalid <name> value: <value>` for a negative hyperparameter, as torch.optim words it."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name} value: {value}")


def reject_unimplemented(cls_name: str, **flags: Any) -> None:
    """torch's capturable/differentiable/fused switches are accepted in the signature (so configs and
    state_dicts written for torch.optim load) but only their off values are implemented here."""
    for flag, value in flags.items():
        if value:
            raise NotImplementedError(
                f"dlexp.optim.{cls_name} does not implement {flag}=True; use torch.optim.{cls_name}"
            )


def as_float(x: float | Tensor) -> float:
    """A Python float for a hyperparameter that torch also allows as a 1-element tensor."""
    return x.item() if isinstance(x, Tensor) else x


def scalar_dtype() -> torch.dtype:
    """The dtype torch.optim uses for the `step` counter (float32, or float64 when that is the
    default dtype): a 0-dim CPU tensor, so our state_dicts and torch's load into each other."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def new_step() -> Tensor:
    """`state["step"]` at initialisation: tensor(0.) on the CPU, as torch.optim (capturable/fused off)."""
    return torch.tensor(0.0, dtype=scalar_dtype())


def params_with_grad(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    init_state: Callable[[Tensor, dict[str, Any], dict[str, Any]], None] | None,
) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]:
    """The group's params that have a gradient this step, their grads and their state dicts.

    A param whose `.grad is None` is skipped: unchanged, and no state is created for it (as torch).
    `init_state(p, state, group)` fills an empty state lazily; `None` means "leave state alone".
    """
    params, grads, states = [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")
        params.append(p)
        grads.append(p.grad)
        if init_state is not None:
            state = optimizer.state[p]
            if len(state) == 0:
                init_state(p, state, group)
            states.append(state)
    return params, grads, states


def use_foreach(group: dict[str, Any]) -> bool:
    """`foreach=None` (default) or True -> the `torch._foreach_*` fast path; False -> the readable
    per-tensor rule. Unlike torch.optim, None means foreach on the CPU too (torch picks the for-loop
    there): the fast path is what makes our step cost no more than torch's."""
    return group["foreach"] is not False


def closure_loss(closure) -> Any:
    """The loss of `closure` (re-evaluating the model with gradients on), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def apply_rule(params, grads, states, group, hp: dict[str, Any], rule, multi_tensor_rule) -> None:
    """One param group's update: the foreach fast path on each (device, dtype) bucket, or the
    readable per-tensor `rule` (foreach=False), with the same hyperparameters `hp`."""
    if use_foreach(group):
        for lists in split_by_device_and_dtype(params, grads, states):
            multi_tensor_rule(*lists, **hp)
    else:
        for p, g, s in zip(params, grads, states):
            rule(p, g, s, **hp)


def split_by_device_and_dtype(
    params: list[Tensor], *lists: list[Any]
) -> Iterator[tuple[list[Any], ...]]:
    """Yield `(params, *lists)` restricted to one (device, dtype) at a time, since a `_foreach_*` call
    wants tensors that agree; the usual one-device-one-dtype case yields the lists unchanged."""
    first = params[0]
    if all(p.dtype == first.dtype and p.device == first.device for p in params):
        yield (params, *lists)
        return
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    for idx in buckets.values():
        yield tuple([seq[i] for i in idx] for seq in (params, *lists))


# One CPU scalar tensor to add to the CPU `step` counters: `_foreach_add_(steps, 1)` would wrap the 1
# into a new tensor once per counter (torch.optim's multi-tensor code does the same trick).
_ONE = torch.tensor(1.0)


def increment_steps(steps: list[Tensor]) -> None:
    """`step += 1` for every counter in one call."""
    if steps[0].is_cpu:
        torch._foreach_add_(steps, _ONE.to(steps[0].dtype), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)


def member_view(h: Tensor, like: Tensor) -> Tensor:
    """A per-member hyperparameter h (shape (M,), float64, dlexp.vectorize) in the dtype of the stacked
    tensor `like` (M, *shape), viewed (M, 1, ..., 1) to broadcast over each member's slice. The cast
    rounds once, as a Python float hyperparameter is rounded to the param's dtype inside a kernel."""
    return h.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))
