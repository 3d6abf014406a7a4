"""Small helpers shared by the hand-written optimizers: argument checks, the `step` counter, the
choice between the per-tensor rule, the foreach fast path and the fused kernels, and the iteration
over a param group's tensors that all three use.

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
    """torch.optim.Optimizer, with a process start that does not import torch._dynamo, and a saved
    `step` that is a plain number (checkpoints of older torch versions) turned back into a tensor on
    load, as every torch.optim class does in its `__setstate__`."""

    _add_param_group = _dynamo_import_deferred("add_param_group")
    zero_grad = _dynamo_import_deferred("zero_grad")
    state_dict = _dynamo_import_deferred("state_dict")
    load_state_dict = _dynamo_import_deferred("load_state_dict")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's `add_param_group`; for a fused=True group with CPU params, dlexp's fused kernels are
        built (or loaded) here, so that a missing compiler is a one-line error before training."""
        self._add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("fused") and any(p.is_cpu for p in group["params"]):
            from dlexp.optim import fused  # not imported by runs that do not ask for fused=True

            fused.library()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # load_state_dict ends with this call too
        for group in self.param_groups:
            for p in group["params"]:
                p_state = self.state.get(p)
                if p_state and "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = new_step(p, fused=bool(group.get("fused"))) + float(p_state["step"])


def step_grad_mode(step: Callable) -> Callable:
    """`Optimizer.step` runs without autograd, unless the optimizer was built with
    `differentiable=True`: then the update itself is recorded, so gradients flow through it (as
    torch.optim's `_use_grad_for_differentiable`, without its dynamo graph breaks)."""

    @functools.wraps(step)
    def wrapped(self, *args, **kwargs):
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return step(self, *args, **kwargs)

    return wrapped


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


def check_impl_flags(foreach: bool | None, fused: bool | None, differentiable: bool) -> None:
    """The combinations of torch's implementation switches that torch.optim refuses, with its
    messages. `fused=True` is dlexp's fused kernels (see `fused.py`)."""
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def reject_unimplemented(cls_name: str, **flags: Any) -> None:
    """torch's `capturable` switch is accepted in the signature (so configs and state_dicts written
    for torch.optim load) but only its off value is implemented: it keeps CUDA graphs capturable,
    and dlexp's step counters live on the CPU."""
    for flag, value in flags.items():
        if value:
            raise NotImplementedError(
                f"dlexp.optim.{cls_name} does not implement {flag}=True; use torch.optim.{cls_name}"
            )


def to_scalar(x: float | Tensor) -> float | Tensor:
    """A 1-element tensor hyperparameter as a 0-dim tensor (torch's `_to_scalar`); a float as is.

    Tensor hyperparameters stay tensors: the rules compute with them exactly as torch does (e.g.
    `lr / bias_correction1` is a 0-dim float32 tensor there), not with `x.item()` in double."""
    if isinstance(x, Tensor) and x.dim() != 0:
        return x.squeeze()
    return x


def scalar_dtype(fused: bool = False) -> torch.dtype:
    """The dtype torch.optim uses for the `step` counter: float32, or float64 when that is the
    default dtype (float32 always for fused, as torch's fused kernels)."""
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def new_step(p: Tensor | None = None, fused: bool = False) -> Tensor:
    """`state["step"]` at initialisation: tensor(0.) on the CPU, as torch.optim; with fused=True on
    the parameter's device in float32, as torch's fused optimizers keep it."""
    if fused and p is not None:
        return torch.zeros((), dtype=scalar_dtype(fused=True), device=p.device)
    return torch.tensor(0.0, dtype=scalar_dtype())


def step_value(step: Tensor) -> float | Tensor:
    """t as a Python float for eager code (`.item()` is much faster than scalar tensor arithmetic),
    but the tensor itself while torch.compile traces: a float read from a tensor would be baked into
    the graph, and torch 2.13's inductor miscompiles such floats (compiled Adam drifted from eager
    by 3e-3 from step 3 on). torch.optim's `_get_value` makes the same choice."""
    if torch.compiler.is_compiling():
        return step
    return step.item()


def any_tensor(*values: Any) -> bool:
    """Is any of these hyperparameters a tensor (tensor lr, tensor betas)?"""
    return any(isinstance(v, Tensor) for v in values)


def params_with_grad(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    init_state: Callable[[Tensor, dict[str, Any], dict[str, Any]], None] | None,
    sparse_message: str | None = None,
) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]], bool]:
    """The group's params that have a gradient this step, their grads, their state dicts, and
    whether any gradient is sparse.

    A param whose `.grad is None` is skipped: unchanged, and no state is created for it (as torch).
    `init_state(p, state, group)` fills an empty state lazily; `None` means "leave state alone".
    `sparse_message`: the RuntimeError torch raises for a sparse gradient (None: sparse is supported).
    """
    params, grads, states, has_sparse = [], [], [], False
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            if sparse_message is not None:
                raise RuntimeError(sparse_message)
            has_sparse = True
        params.append(p)
        grads.append(p.grad)
        if init_state is not None:
            state = optimizer.state[p]
            if len(state) == 0:
                init_state(p, state, group)
            states.append(state)
    return params, grads, states, has_sparse


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


def apply_rule(
    params, grads, states, group, hp: dict[str, Any], rule, multi_tensor_rule, *,
    per_tensor_only: bool = False, fused_rule=None,
) -> None:
    """One param group's update, by one of three paths that compute the same rule:

    - fused=True: `fused_rule` (dlexp's C++ kernel of the rule, see `fused.py`), which returns the
      tensors it could not take (not on the CPU: CUDA); those go on by the paths below;
    - foreach (the default): `multi_tensor_rule`, on each (device, dtype) bucket;
    - foreach=False: the readable per-tensor `rule`, the ground truth the others are tested against.

    `per_tensor_only` picks the per-tensor rule over the foreach path: sparse gradients,
    `differentiable=True` and tensor hyperparameters run it whatever foreach says (torch's foreach
    paths refuse them or fall back to their for-loop).
    """
    if group.get("fused") and fused_rule is not None:
        params, grads, states = fused_rule(params, grads, states, group, hp)
        if not params:
            return
    if use_foreach(group) and not per_tensor_only:
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


def view_as_real(params: list[Tensor], *lists: list[Tensor]) -> tuple[list[Tensor], ...]:
    """Complex tensors as (..., 2) real views, for the foreach fast paths: an optimizer treats a
    complex parameter as a pair of real ones (torch's `_view_as_real`), so that squares and roots
    act on the real and imaginary parts separately, never as complex products."""
    if not any(torch.is_complex(p) for p in params):
        return (params, *lists)
    real = lambda t: torch.view_as_real(t) if torch.is_complex(t) else t  # noqa: E731
    return tuple([real(t) for t in seq] for seq in (params, *lists))


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
