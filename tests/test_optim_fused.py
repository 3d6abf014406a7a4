"""fused=True, dlexp's fused CPU kernels (`dlexp/optim/fused.cpp`, built on first use), against the
readable per-tensor rule; the fallbacks to the foreach rule; a missing compiler; and the one-line
refusals torch's fused optimizers make.

The claim is bitwise equality with the per-tensor rule (same operations, same order, same roundings,
torch's own square root): checked with one thread (torch.set_num_threads(1), the autouse fixture),
never across thread counts or machines. The kernels are built once per machine and source and loaded
once per process, so the session pays one build (about 4 s on a 2-core machine, in CI's throwaway
cache) or none.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dlexp.optim import OPTIMIZERS, fused
from dlexp.optim.check import CASES, max_diffs, train_pair


# bit-level claims: one torch thread (conftest.one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def _fused_and_rule(name: str):
    cls = OPTIMIZERS[name].cls
    return (lambda groups, **kw: cls(groups, fused=True, **kw)), (lambda groups, **kw: cls(groups, foreach=False, **kw))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_is_bitwise_the_per_tensor_rule_for_every_option(name):
    """Every parity-table row of `name` (each option, and the combinations the table has), two param
    groups at different lr, float32 and float64, 30 steps in which differences would feed back."""
    assert fused.sqrt_as_torch(), "the kernels' square root is not torch's here: bitwise equality cannot hold"
    make_fused, make_rule = _fused_and_rule(name)
    for case in (c for c in CASES if c.optimizer == name):
        for dtype in (torch.float32, torch.float64):
            net_a, opt_a, net_b, opt_b = train_pair(case, dtype, 30, make_a=make_fused, make_b=make_rule)
            assert max_diffs(net_a, opt_a, net_b, opt_b) == (0.0, 0.0), f"{case.variant} {dtype}"
            for state in opt_a.state.values():  # torch's fused state: float32 step counters
                if "step" in state:
                    assert state["step"].dtype == torch.float32 and state["step"].item() == 30.0


def _params(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def _step_both(name, shapes, steps, kwargs, *, dtypes=None, grad_layout=lambda g: g, lr_schedule=None):
    """Step a fused=True and a foreach=False copy of the same params on the same gradients; returns
    both optimizers' params and states."""
    dtypes = dtypes or [torch.float32] * len(shapes)
    a = [p for s, d in zip(shapes, dtypes) for p in _params([s], d)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    cls = OPTIMIZERS[name].cls
    opt_a, opt_b = cls(a, fused=True, **kwargs), cls(b, foreach=False, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for pa, pb in zip(a, b):
            g = torch.randn(pa.shape, generator=gen, dtype=pa.dtype)
            pa.grad, pb.grad = grad_layout(g.clone()), grad_layout(g.clone())
        if lr_schedule:
            for opt in (opt_a, opt_b):
                for group in opt.param_groups:
                    group["lr"] = lr_schedule(step)
        opt_a.step()
        opt_b.step()
    return (a, opt_a), (b, opt_b)


RICH = {  # the options that add work to each kernel
    "sgd": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adagrad": dict(lr=0.1, lr_decay=1e-2, weight_decay=1e-2),
    "rmsprop": dict(lr=0.01, centered=True, momentum=0.9, weight_decay=1e-2),
    "adadelta": dict(lr=1.0, weight_decay=1e-2),
    "adam": dict(lr=0.01, amsgrad=True, weight_decay=1e-2),
    "adamw": dict(lr=0.01, amsgrad=True, weight_decay=0.1),
}
# many blocks of the kernels (256 elements) with tails, a 0-dim param, and one over the threading
# grain (32,768 elements), so that the threaded split is used when threads > 1
SHAPES = [(300, 7), (5,), (), (40_001,)]


def _assert_same(pair_a, pair_b, equal: bool):
    (a, opt_a), (b, opt_b) = pair_a, pair_b
    for pa, pb in zip(a, b):
        tensors = [(pa, pb)] + [(opt_a.state[pa][k], opt_b.state[pb][k]) for k in opt_b.state[pb]]
        for x, y in tensors:
            if equal:
                assert torch.equal(x, y)
            else:
                torch.testing.assert_close(x, y)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_is_bitwise_the_rule_on_large_odd_tensors_mixed_dtypes_and_a_changing_lr(name):
    """Tensors of many blocks with tails; a float32 and a float64 param in one group (two kernel
    calls); an lr that a schedule changes every step (a new value, nothing rebuilt)."""
    out = _step_both(name, SHAPES, 4, RICH[name], dtypes=[torch.float32, torch.float64, torch.float32, torch.float32],
                     lr_schedule=lambda t: RICH[name]["lr"] / (1 + t))  # fmt: skip
    _assert_same(*out, equal=True)


def test_the_threaded_split_computes_the_same_update():
    """With 2 threads the kernels split a group into pieces; no bitwise claim across thread counts
    (the per-tensor rule runs at 1), only that every piece got the right update."""
    for name in OPTIMIZERS:
        torch.set_num_threads(2)
        (a, opt_a), _ = _step_both(name, SHAPES, 3, RICH[name])
        torch.set_num_threads(1)
        _, (b, opt_b) = _step_both(name, SHAPES, 3, RICH[name])
        _assert_same((a, opt_a), (b, opt_b), equal=False)


def test_tensors_the_kernels_cannot_take_run_the_foreach_rule():
    """A non-contiguous gradient: the kernels take only contiguous memory, so that bucket runs the
    foreach rule (as a CUDA bucket does: correct by construction, no kernel of dlexp's own there)."""
    for name in OPTIMIZERS:
        transposed = lambda g: g.t().contiguous().t() if g.dim() == 2 else g  # noqa: E731
        pair_a, pair_b = _step_both(name, [(6, 4), (4,)], 3, RICH[name], grad_layout=transposed)
        assert not pair_a[0][0].grad.is_contiguous()
        _assert_same(pair_a, pair_b, equal=False)  # foreach against the rule: within rounding


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_params_take_the_foreach_rule():
    """dlexp has no CUDA kernel of its own: fused=True on CUDA runs the foreach rule (the kernels are
    not even handed a pointer), which agrees with the per-tensor rule within rounding."""
    for name in OPTIMIZERS:
        a = [torch.nn.Parameter(p.detach().cuda()) for p in _params([(300, 7), (5,)])]
        b = [torch.nn.Parameter(p.detach().clone()) for p in a]
        cls = OPTIMIZERS[name].cls
        opt_a, opt_b = cls(a, fused=True, **RICH[name]), cls(b, foreach=False, **RICH[name])
        for _ in range(3):
            for pa, pb in zip(a, b):
                pa.grad = torch.randn_like(pa)
                pb.grad = pa.grad.clone()
            opt_a.step()
            opt_b.step()
        _assert_same((a, opt_a), (b, opt_b), equal=False)


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


NO_BUILD_PROBE = """
import sys, torch
from dlexp.optim import OPTIMIZERS, fused
for name, spec in OPTIMIZERS.items():
    p = torch.nn.Parameter(torch.ones(3))
    opt = spec.cls([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
print("loaded:", fused._library is not None, "dynamo:", "torch._dynamo" in sys.modules)
"""


def test_a_run_that_does_not_ask_for_fused_never_builds_or_loads_the_kernels():
    out = subprocess.run([sys.executable, "-c", NO_BUILD_PROBE], capture_output=True, text=True, check=True).stdout
    assert "loaded: False dynamo: False" in out, out


HELP_PROBE = """
import sys
from dlexp.cli import main
sys.argv = ["dlexp", "--help"]
try:
    main()
except SystemExit:
    pass
print("imported:", sorted(m for m in ("torch", "dlexp.optim", "dlexp.optim.fused") if m in sys.modules))
"""


def test_dlexp_help_imports_neither_torch_nor_the_kernels():
    out = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, check=True).stdout
    assert "imported: []" in out, out


CACHED_PROBE = """
import torch
from dlexp.optim import OPTIMIZERS, fused
def refuse(*args, **kwargs):
    raise AssertionError("the kernels were built again")
fused.subprocess.run = refuse
p = torch.nn.Parameter(torch.ones(3))
opt = OPTIMIZERS["adam"].cls([p], fused=True)
p.grad = torch.ones(3)
opt.step()
print("stepped", p.tolist())
"""


def test_a_second_process_loads_the_built_kernels_without_building():
    fused.library()  # built (or loaded) by this process first
    done = subprocess.run([sys.executable, "-c", CACHED_PROBE], capture_output=True, text=True)
    assert done.returncode == 0 and "stepped" in done.stdout, done.stderr


MISSING_COMPILER_PROBE = """
import torch
from dlexp.errors import ConfigError
from dlexp.optim import OPTIMIZERS
try:
    OPTIMIZERS["sgd"].cls([torch.nn.Parameter(torch.ones(2))], fused=True)
except ConfigError as e:
    print("ConfigError:", e)
"""


@pytest.mark.parametrize("how", ["CXX names no program", "no compiler on PATH", "the build fails", "no cache folder"])
def test_no_compiler_a_failing_build_or_no_cache_folder_is_a_one_line_config_error(tmp_path, how):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    if how == "no cache folder":  # the cache path is a file: the kernels have nowhere to go
        (tmp_path / "cache").write_text("not a folder")
        expected = "for the built kernels (Not a directory); set XDG_CACHE_HOME to a writable folder"
    elif how == "CXX names no program":
        env["CXX"] = str(tmp_path / "nonexistent-c++")
        expected = "could not run the C++ compiler"
    elif how == "the build fails":  # a compiler that runs and fails, with its own error lines
        env["CXX"] = "sh -c 'echo In file included from x.h: >&2; echo fused.cpp:1:1: error: no OpenMP >&2; exit 1'"
        expected = "building dlexp's fused CPU kernels with sh failed: fused.cpp:1:1: error: no OpenMP"
    else:
        env.pop("CXX", None)
        env["PATH"] = str(tmp_path)  # an empty folder: no c++ or g++ (python is run by its full path)
        expected = "none was found (install g++, or set CXX to one)"
    out = subprocess.run([sys.executable, "-c", MISSING_COMPILER_PROBE], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ConfigError: fused=True:") and expected in out.stdout, out.stdout
    assert len(out.stdout.strip().splitlines()) == 1


def test_the_cli_says_a_missing_compiler_in_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "CXX": str(tmp_path / "nonexistent-c++")}
    done = subprocess.run(
        [sys.executable, "-m", "dlexp", "run", "optimizer=adam", "optimizer.fused=true", "trainer.epochs=1"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "C++ compiler" in lines[0], done.stderr


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
