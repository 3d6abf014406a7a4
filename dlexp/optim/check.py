"""Live parity check: every hand-written optimizer x its option variants x {float32, float64} against
its torch.optim twin, on a seeded small network trained for a few hundred steps.

`CASES` is the one table that drives both `dlexp check-optimizers` and `tests/test_optim_parity.py`;
`train_pair` and `max_diffs` are the comparison both use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dlexp.optim import OPTIMIZERS


@dataclass(frozen=True)
class Case:
    optimizer: str  # a key of OPTIMIZERS
    variant: str  # a short name for the option(s) this row switches on
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor keywords, torch's names


# A learning rate per optimizer that moves the small network visibly in 200 steps.
_LR = {"sgd": 0.05, "adagrad": 0.05, "rmsprop": 0.01, "adadelta": 1.0, "adam": 0.01, "adamw": 0.01}


def _case(optimizer: str, variant: str, **kwargs: Any) -> Case:
    return Case(optimizer, variant, {"lr": _LR[optimizer], **kwargs})


CASES: list[Case] = [
    _case("sgd", "plain"),
    _case("sgd", "momentum", momentum=0.9),
    _case("sgd", "dampening", momentum=0.9, dampening=0.5),
    _case("sgd", "nesterov", momentum=0.9, nesterov=True),
    _case("sgd", "weight_decay", momentum=0.9, weight_decay=1e-2),
    _case("sgd", "maximize", momentum=0.9, maximize=True),
    _case("sgd", "nesterov+weight_decay+maximize", momentum=0.9, nesterov=True, weight_decay=1e-2, maximize=True),
    _case("adagrad", "plain"),
    _case("adagrad", "lr_decay", lr_decay=1e-2),
    _case("adagrad", "weight_decay", weight_decay=1e-2),
    _case("adagrad", "initial_accumulator_value", initial_accumulator_value=0.1),
    _case("adagrad", "eps", eps=1e-3),
    _case("adagrad", "maximize", maximize=True),
    _case("adagrad", "weight_decay+maximize", weight_decay=1e-2, maximize=True),
    _case("rmsprop", "plain"),
    _case("rmsprop", "alpha+eps", alpha=0.9, eps=1e-4),
    _case("rmsprop", "centered", centered=True),
    _case("rmsprop", "momentum", momentum=0.9),
    _case("rmsprop", "centered+momentum", centered=True, momentum=0.9),
    _case("rmsprop", "weight_decay", weight_decay=1e-2),
    _case("rmsprop", "maximize", maximize=True),
    _case("rmsprop", "weight_decay+maximize", weight_decay=1e-2, maximize=True, centered=True),
    _case("adadelta", "plain"),
    _case("adadelta", "lr", lr=0.5),
    _case("adadelta", "rho", rho=0.5),
    _case("adadelta", "eps", eps=1e-4),
    _case("adadelta", "weight_decay", weight_decay=1e-2),
    _case("adadelta", "maximize", maximize=True),
    _case("adadelta", "weight_decay+maximize", weight_decay=1e-2, maximize=True),
    _case("adam", "plain"),
    _case("adam", "betas+eps", betas=(0.8, 0.99), eps=1e-6),
    _case("adam", "amsgrad", amsgrad=True),
    _case("adam", "weight_decay", weight_decay=1e-2),
    _case("adam", "maximize", maximize=True),
    _case("adam", "amsgrad+weight_decay+maximize", amsgrad=True, weight_decay=1e-2, maximize=True),
    _case("adamw", "plain"),  # torch's default weight_decay=1e-2
    _case("adamw", "betas+eps", betas=(0.8, 0.99), eps=1e-6),
    _case("adamw", "amsgrad", amsgrad=True),
    _case("adamw", "weight_decay", weight_decay=0.1),
    _case("adamw", "maximize", maximize=True),
    _case("adamw", "amsgrad+maximize", amsgrad=True, maximize=True, weight_decay=0.1),
]

# Largest accepted relative difference (see `max_diffs`) after the run: near 1e-10 in float64 tells
# a real bug from rounding; float32 rounding on a 200-step feedback loop stays below 1e-5.
TOLERANCES: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = (torch.float32, torch.float64)


def make_problem(dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    """A seeded 10 -> 16 (tanh) -> 3 regression network and a fixed batch (64 x 10 -> 64 x 3)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 10, generator=gen, dtype=dtype)
    y = torch.randn(64, 3, generator=gen, dtype=dtype)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).to(device=device, dtype=dtype)
    return net, x.to(device), y.to(device)


def param_groups(net: nn.Sequential, lr: float) -> list[dict[str, Any]]:
    """Two param groups, the second layer at half the learning rate, so groups are exercised."""
    return [{"params": list(net[0].parameters())}, {"params": list(net[2].parameters()), "lr": lr / 2}]


def loss_and_backward(net: nn.Module, x: torch.Tensor, y: torch.Tensor, maximize: bool) -> torch.Tensor:
    """Zero grads, MSE loss (negated when maximizing, so both ascend/descend to the same fit), backward."""
    net.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(net(x), y)
    (-loss if maximize else loss).backward()
    return loss.detach()


def train_pair(
    case: Case,
    dtype: torch.dtype,
    steps: int,
    device: str = "cpu",
    make_a: Callable[..., torch.optim.Optimizer] | None = None,
    make_b: Callable[..., torch.optim.Optimizer] | None = None,
):
    """Train two copies of the same network side by side, each on the gradients of its own current
    parameters (so differences feed back), with optimizer `make_a` (default: dlexp's class) and
    `make_b` (default: the torch.optim twin, for-loop path). Returns (net_a, opt_a, net_b, opt_b)."""
    spec = OPTIMIZERS[case.optimizer]
    make_a = make_a or spec.cls
    make_b = make_b or (lambda groups, **kw: spec.torch_cls(groups, foreach=False, **kw))
    net_a, x, y = make_problem(dtype, device)
    net_b, _, _ = make_problem(dtype, device)
    opt_a = make_a(param_groups(net_a, case.kwargs["lr"]), **case.kwargs)
    opt_b = make_b(param_groups(net_b, case.kwargs["lr"]), **case.kwargs)
    maximize = case.kwargs.get("maximize", False)
    # One intra-op thread: on a 16-unit network threading costs far more than it saves (10x on a
    # busy 2-core machine), and results do not depend on it. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            for net, opt in ((net_a, opt_a), (net_b, opt_b)):
                loss_and_backward(net, x, y, maximize)
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return net_a, opt_a, net_b, opt_b


def max_diffs(net_a, opt_a, net_b, opt_b) -> tuple[float, float]:
    """(max absolute, max relative) difference over every parameter and every state tensor.

    Relative is per tensor: max|a - b| / max|b| (guarded against 0), so near-zero entries do not
    blow it up. Different state keys, dtypes or shapes count as an infinite difference.
    """
    pairs = list(zip(net_a.parameters(), net_b.parameters(), strict=True))
    for p_a, p_b in pairs:
        s_a, s_b = opt_a.state.get(p_a, {}), opt_b.state.get(p_b, {})
        if set(s_a) != set(s_b):
            return float("inf"), float("inf")
        pairs += [(s_a[k], s_b[k]) for k in s_a]
    max_abs = max_rel = 0.0
    for a, b in pairs:
        if a.dtype != b.dtype or a.shape != b.shape:  # e.g. a float64 `step` where torch keeps float32
            return float("inf"), float("inf")
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        diff = (a - b).abs().max().item()
        scale = b.abs().max().item()
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return max_abs, max_rel


def check_optimizers(device: str = "cpu", steps: int = 200) -> list[dict[str, Any]]:
    """Run every `CASES` row in float32 and float64 against torch.optim; one result row each."""
    rows = []
    for case in CASES:
        for dtype in DTYPES:
            max_abs, max_rel = max_diffs(*train_pair(case, dtype, steps, device))
            rows.append({
                "optimizer": case.optimizer, "variant": case.variant,
                "dtype": str(dtype).removeprefix("torch."), "steps": steps,
                "max_abs_diff": max_abs, "max_rel_diff": max_rel,
                "verdict": "ok" if max_rel <= TOLERANCES[dtype] else "MISMATCH",
            })  # fmt: skip
    return rows
