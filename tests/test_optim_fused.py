"""fused=True, dlexp's compiled path (the foreach rule through torch.compile), against the readable
per-tensor rule; and the one-line refusals torch's fused optimizers make.

The compiled path is not bitwise equal to the rule: inductor contracts a * b + c into one fused
multiply-add and evaluates lerp in its own order. Measured over 50 steps of the parity network
(`dlexp.optim.check.make_problem`, one thread, each optimizer's richest parity row), max relative
difference of any parameter or state tensor, float32 / float64: SGD 7.3e-7 / 1.3e-15, Adagrad
5.5e-7 / 1.0e-14, RMSprop (centered, the root of a difference) 1.4e-5 / 7.5e-15, Adadelta 8.2e-7 /
1.5e-15, Adam and AdamW in the table of tests/test_optim_torch_suite (fused rows against torch's fused
kernels: 5.8e-7 / 8.7e-16). The bounds below are about ten times the largest, so a real bug (one
wrong term moves results by more than 1e-3) cannot hide.

Compiling takes 5-20 s per optimizer on a cold 2-core CPU (inductor caches it on disk afterwards):
the tests that compile are marked slow and cover each optimizer once.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dlexp.optim import OPTIMIZERS
from dlexp.optim.check import CASES, max_diffs, train_pair

FUSED_BOUND = {torch.float32: 1e-4, torch.float64: 1e-13}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _richest_case(name: str):
    """The parity-table row of `name` that switches on the most options."""
    return max((c for c in CASES if c.optimizer == name), key=lambda c: len(c.kwargs))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_matches_the_per_tensor_rule_within_the_stated_bound(name):
    case = _richest_case(name)
    cls = OPTIMIZERS[name].cls
    for dtype in (torch.float32, torch.float64):
        nets_opts = train_pair(
            case, dtype, 50,
            make_a=lambda groups, **kw: cls(groups, fused=True, **kw),
            make_b=lambda groups, **kw: cls(groups, foreach=False, **kw),
        )  # fmt: skip
        _, max_rel = max_diffs(*nets_opts)
        assert max_rel <= FUSED_BOUND[dtype], f"{name} {case.variant} {dtype}: {max_rel:.3e}"
        # the state keys, dtypes and the step counters are torch's fused ones
        opt = nets_opts[1]
        for state in opt.state.values():
            if "step" in state:
                assert state["step"].dtype == torch.float32 and state["step"].item() == 50.0


@pytest.mark.slow
def test_a_changing_lr_is_a_new_value_not_a_new_graph():
    """A schedule changes lr every step: the compiled kernel is compiled once, not once per value."""
    from torch._dynamo.utils import counters

    params = [torch.nn.Parameter(torch.randn(7, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = OPTIMIZERS["adamw"].cls(params, lr=1e-2, fused=True)
    counters.clear()
    for step in range(6):
        for g in opt.param_groups:
            g["lr"] = 1e-2 / (1 + step)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert counters["stats"]["unique_graphs"] == 1


def test_fused_refuses_what_torchs_fused_optimizers_refuse():
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    p.grad = torch.randn_like(p)
    for name, spec in OPTIMIZERS.items():
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point"):
            spec.cls([p], fused=True).step()
        with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
            spec.cls([p], fused=True, differentiable=True)
        with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
            spec.cls([p], fused=True, foreach=True)
    emb = torch.nn.Embedding(4, 2, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    for name, message in (("sgd", "`_fused_sgd` does not support sparse gradients"),
                          ("adagrad", "`fused` does not support sparse grad")):
        with pytest.raises(RuntimeError, match=message):
            OPTIMIZERS[name].cls(emb.parameters(), fused=True).step()


NO_COMPILE_PROBE = """
import sys, torch
from dlexp.optim import OPTIMIZERS
for name, spec in OPTIMIZERS.items():
    p = torch.nn.Parameter(torch.ones(3))
    opt = spec.cls([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
print("dynamo:", "torch._dynamo" in sys.modules, "inductor:", "torch._inductor" in sys.modules)
"""


def test_a_run_that_does_not_ask_for_fused_never_imports_the_compiler():
    out = subprocess.run([sys.executable, "-c", NO_COMPILE_PROBE], capture_output=True, text=True, check=True).stdout
    assert "dynamo: False inductor: False" in out, out


@pytest.mark.slow
def test_torch_compile_of_a_dlexp_step_keeps_the_step_a_tensor_and_does_not_drift():
    """torch.compile(opt.step) with foreach=False traces the per-tensor rule; `step_value` keeps t a
    tensor there (a Python float from .item() made torch 2.13's inductor drift by 3e-3 from step 3)."""
    make = lambda: [torch.nn.Parameter(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))]  # noqa: E731
    eager_params, compiled_params = make(), make()
    eager = OPTIMIZERS["adam"].cls(eager_params, lr=0.01, foreach=False)
    compiled = OPTIMIZERS["adam"].cls(compiled_params, lr=0.01, foreach=False)
    step = torch.compile(compiled.step)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        g = torch.randn(6, 4, generator=gen)
        eager_params[0].grad, compiled_params[0].grad = g.clone(), g.clone()
        eager.step()
        step()
    diff = (eager_params[0] - compiled_params[0]).abs().max().item()
    assert diff < 1e-6, diff  # measured 1.5e-8 (fused multiply-adds); the drift it guards against was 3e-3
