"""Every hand-written optimizer x its option variants x {float32, float64} against torch.optim.

One table (`dlexp.optim.check.CASES`) drives these tests and `dlexp check-optimizers`; the
comparison (`train_pair`, `max_diffs`) is the same code. Today every row matches torch bit for bit
(max diff 0.0) because each rule replays torch's own sequence of tensor ops; the tolerances
(1e-10 relative in float64, 1e-5 in float32) leave room for a torch release that reorders them.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dlexp.optim import OPTIMIZERS
from dlexp.optim.check import (
    CASES,
    DTYPES,
    TOLERANCES,
    Case,
    loss_and_backward,
    make_problem,
    max_diffs,
    param_groups,
    train_pair,
)

STEPS = 200


# bit-level claims: one torch thread (conftest.one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def _id(case: Case) -> str:
    return f"{case.optimizer}-{case.variant}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_matches_torch_over_200_steps(case: Case, dtype: torch.dtype) -> None:
    net_a, opt_a, net_b, opt_b = train_pair(case, dtype, STEPS)
    # the run moved the parameters (a parity test on a frozen network proves nothing)
    net_0, _, _ = make_problem(dtype)
    moved = max((p - p0).abs().max().item() for p, p0 in zip(net_a.parameters(), net_0.parameters()))
    assert moved > 1e-3
    # two groups, both carrying the whole state torch keeps
    assert len(opt_a.param_groups) == 2
    _, max_rel = max_diffs(net_a, opt_a, net_b, opt_b)
    assert max_rel <= TOLERANCES[dtype], f"{_id(case)} {dtype}: max relative diff {max_rel:.3e}"


def test_every_optimizer_and_option_is_in_the_table() -> None:
    covered = {(c.optimizer, k) for c in CASES for k in c.kwargs}
    for name, spec in OPTIMIZERS.items():
        for hp in spec.hparams:
            if hp == "lr" or (name == "adamw" and hp == "weight_decay"):
                continue  # lr is in every row; AdamW's plain row runs its default decay 1e-2
            if hp == "fused":
                continue  # the fused kernels: against the per-tensor rule in tests/test_optim_fused.py
            assert (name, hp) in covered, f"no parity case switches on {name}.{hp}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_foreach_fast_path_matches_per_tensor_rule(case: Case) -> None:
    cls = OPTIMIZERS[case.optimizer].cls
    nets_opts = train_pair(
        case, torch.float64, 50,  # bit-identity needs no long run; keeps the file fast
        make_a=lambda groups, **kw: cls(groups, foreach=True, **kw),
        make_b=lambda groups, **kw: cls(groups, foreach=False, **kw),
    )  # fmt: skip
    max_abs, _ = max_diffs(*nets_opts)
    assert max_abs == 0.0  # same ops in the same order: bit-identical, not just close


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per_tensor"])
def test_state_dict_mid_run_continues_bit_exactly(name: str, foreach: bool) -> None:
    case = next(c for c in CASES if c.optimizer == name and len(c.kwargs) > 2)  # a row with options
    cls = OPTIMIZERS[name].cls
    net, x, y = make_problem(torch.float64)
    maximize = case.kwargs.get("maximize", False)

    def run(net, opt, steps):
        for _ in range(steps):
            loss_and_backward(net, x, y, maximize)
            opt.step()

    opt = cls(param_groups(net, case.kwargs["lr"]), foreach=foreach, **case.kwargs)
    run(net, opt, 100)
    saved_net, saved_opt = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    run(net, opt, 100)  # the uninterrupted run

    net2, _, _ = make_problem(torch.float64, seed=1)  # different weights, overwritten by the load
    net2.load_state_dict(saved_net)
    opt2 = cls(param_groups(net2, 123.0), foreach=foreach, **case.kwargs)  # wrong lr, overwritten too
    opt2.load_state_dict(saved_opt)
    run(net2, opt2, 100)

    for p, p2 in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, p2)
        assert opt.state[p].keys() == opt2.state[p2].keys()
        for k in opt.state[p]:
            assert torch.equal(opt.state[p][k], opt2.state[p2][k]), k


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trips_with_torch(name: str) -> None:
    """Our state_dict loads into the torch.optim twin and vice versa, and both continue alike."""
    case = next(c for c in CASES if c.optimizer == name and len(c.kwargs) > 2)
    spec = OPTIMIZERS[name]
    maximize = case.kwargs.get("maximize", False)
    net, x, y = make_problem(torch.float64)
    ours = spec.cls(param_groups(net, case.kwargs["lr"]), **case.kwargs)
    for _ in range(20):
        loss_and_backward(net, x, y, maximize)
        ours.step()
    theirs = spec.torch_cls(param_groups(net, case.kwargs["lr"]), **case.kwargs)
    theirs.load_state_dict(ours.state_dict())
    back = spec.cls(param_groups(net, case.kwargs["lr"]), **case.kwargs)
    back.load_state_dict(theirs.state_dict())
    for p in net.parameters():
        for k, v in ours.state[p].items():
            assert torch.equal(theirs.state[p][k], v) and theirs.state[p][k].dtype == v.dtype, k
            assert torch.equal(back.state[p][k], v) and back.state[p][k].dtype == v.dtype, k
