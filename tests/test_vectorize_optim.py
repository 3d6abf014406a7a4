"""The stacked update rules (dlexp/optim/stacked.py, `_stacked_<name>` in each optimizer's file) against
the readable per-tensor rule applied member by member.

Three members with different hyperparameters (lr, momentum 0 included, dampening, betas, eps, alpha,
rho, weight decay 0 included, ...) take 60 steps on the same random gradients as three ordinary
optimizers built with foreach=False, which run the per-tensor rule. Every row of the parity table
(`dlexp.optim.check.CASES`) is a case, so every optimizer and option variant is covered.

The stacked rules call the per-tensor rule's kernels with its scalars turned into per-member tensor
factors of the same operations (`add(y, alpha=a)` as `addcmul(x, y, a)`, ...), so the results are
bit-identical, not just close (as the foreach path is to the per-tensor rule); the hyperparameter
arithmetic is float64 in both. One torch thread, fixed for the module, as for every bit-level claim.
"""

from __future__ import annotations

import pytest
import torch

from dlexp.optim import OPTIMIZERS
from dlexp.optim.check import CASES, Case
from dlexp.optim.stacked import RULES, Stacked, member_hparams

STEPS = 60
M = 3


# bit-level claims: one torch thread (conftest.one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def member_kwargs(case: Case) -> list[dict]:
    """The case's constructor keywords, varied per member: every per-member hyperparameter differs,
    momentum and weight decay take 0 in one member where the case allows it."""
    out = []
    for m in range(M):
        kw = dict(case.kwargs)
        kw["lr"] = kw["lr"] * (1.0, 0.5, 1.7)[m]
        if "momentum" in kw:
            # SGD groups mix momentum 0 and > 0; RMSprop's momentum > 0 is a code path, equal in a group
            kw["momentum"] = ((0.9, 0.5, 0.7) if kw.get("nesterov") or case.optimizer == "rmsprop" else (0.9, 0.0, 0.6))[m]
        if "dampening" in kw:
            kw["dampening"] = (0.5, 0.2, 0.0)[m]
        if "weight_decay" in kw or case.optimizer == "adamw":
            kw["weight_decay"] = (kw.get("weight_decay", 1e-2), 0.0, 3e-2)[m]
        if "betas" in kw or case.optimizer in ("adam", "adamw"):
            kw["betas"] = ((0.9, 0.999), (0.8, 0.99), (0.5, 0.9))[m]
        if "eps" in kw:
            kw["eps"] = kw["eps"] * (1.0, 10.0, 0.1)[m]
        if "alpha" in kw or case.optimizer == "rmsprop":
            kw["alpha"] = (0.99, 0.9, 0.5)[m]
        if "rho" in kw or case.optimizer == "adadelta":
            kw["rho"] = (0.9, 0.5, 0.95)[m]
        if "lr_decay" in kw:
            kw["lr_decay"] = (1e-2, 0.0, 0.1)[m]
        if "initial_accumulator_value" in kw:
            kw["initial_accumulator_value"] = (0.1, 0.0, 1.0)[m]
        out.append(kw)
    return out


def _id(case: Case) -> str:
    return f"{case.optimizer}-{case.variant}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_stacked_rule_matches_the_per_tensor_rule_member_by_member(case: Case, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (5,), (3, 5)]
    stacked = [torch.randn(M, *s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]
    start = [p.detach().clone() for p in stacked]
    kwargs = member_kwargs(case)
    cls = OPTIMIZERS[case.optimizer].cls
    # the members' own optimizers: per-tensor rule (foreach=False), one param group each
    singles = [[s[m].detach().clone().requires_grad_() for s in stacked] for m in range(M)]
    opts = [cls(singles[m], foreach=False, **kwargs[m]) for m in range(M)]
    opt = Stacked([{"params": stacked}], case.optimizer, [member_hparams(case.optimizer, o.param_groups[0]) for o in opts])
    for _ in range(STEPS):
        grads = [torch.randn(M, *s, generator=gen, dtype=dtype) for s in shapes]
        for p, g in zip(stacked, grads):
            p.grad = g.clone()
        opt.step()
        for m in range(M):
            for p, g in zip(singles[m], grads):
                p.grad = g[m].clone()
            opts[m].step()
    for m in range(M):
        for i, p in enumerate(stacked):
            single = singles[m][i]
            assert (single - start[i][m]).abs().max() > 1e-3, "the member did not move"  # parity of a frozen run proves nothing
            assert torch.equal(stacked[i][m], single), f"member {m}, tensor {i}"
            state, own = opt.state[p], opts[m].state[single]
            for key, value in own.items():
                assert torch.equal(state[key][m], value.reshape(value.shape)), f"member {m}, tensor {i}, {key}"


def test_every_optimizer_has_a_stacked_rule() -> None:
    assert set(RULES) == set(OPTIMIZERS)


def test_a_member_with_momentum_zero_steps_like_plain_sgd() -> None:
    """SGD keeps no buffer at momentum 0 and ignores dampening there; the shared buffer must too."""
    from dlexp.optim import SGD

    torch.manual_seed(0)
    p = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    q = p[1].detach().clone().requires_grad_()
    opt = Stacked([{"params": [p]}], "sgd", [
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.0, "nesterov": False, "maximize": False},
        {"lr": 0.1, "momentum": 0.0, "dampening": 0.5, "weight_decay": 0.0, "nesterov": False, "maximize": False},
    ])
    plain = SGD([q], lr=0.1, momentum=0.0, dampening=0.5)
    for _ in range(3):
        g = torch.randn(2, 4, dtype=torch.float64)
        p.grad, q.grad = g.clone(), g[1].clone()
        opt.step()
        plain.step()
    assert torch.equal(p[1], q) and not plain.state[q]
