"""`dlexp check-optimizers --suite torch`: dlexp's optimizers against torch.optim on PyTorch's own
optimizer test inputs.

The inputs come from the installed torch: `optim_db` in `torch/testing/_internal/common_optimizers.py`
(every CPU sample kwargs set of each optimizer dlexp implements, with torch's implementation switches
foreach / differentiable / fused added as its own tests add them, and every `optim_error_inputs`),
and the generic behaviours of torch's `test/test_optim.py` that make sense on the CPU (state_dict
round trips, hooks, deepcopy, LR schedulers, no-grad and zero-grad steps, add_param_group, tensor
lr, complex and sparse parameters). Every case runs torch.optim and dlexp side by side on the same
tensors and the same gradients, and compares parameters, optimizer state and `state_dict()` after
every step. One row per case; a deliberate difference is a row that says why, never a skipped case.
"""

from __future__ import annotations

import copy
import functools
import io
import re
import sys
import types
import unittest
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dlexp.optim import OPTIMIZERS

SUITE_DTYPES = (torch.float32, torch.float64, torch.complex64)
# Largest accepted relative difference (max |a - b| / max |b| per tensor). Most cases are bitwise
# equal (0.0): each rule replays torch's operations. The differences that remain are rounding:
# dlexp's foreach Adagrad does one addcdiv where torch's foreach path multiplies first, dlexp's
# fused=True (its own C++ kernels, bitwise its per-tensor rule) against torch's fused kernels, which
# take a square root and fold scalars in their own way, the differentiable Adam folds lr differently (2.4e-7 in float32).
TOLERANCES = {torch.float32: 1e-5, torch.complex64: 1e-5, torch.float64: 1e-10}
# torch's test_rosenbrock_sparse runs 1800 steps (AdaGrad at lr 0.1 needs them to get closer to the
# optimum than it started); parity is checked every 100 steps
ROSENBROCK_STEPS = 1800
STEPS = 7  # torch's _compare_between: 7 iterations, a no-grad step at 2, a frozen layer at 3 and 4


@dataclass
class Row:
    optimizer: str
    case: str  # the torch test the case comes from (test_optim.py's name, without "test_")
    variant: str  # the sample's description and kwargs
    dtype: str
    max_diff: float  # max relative difference seen; 0.0 = bitwise equal; nan = not a numeric case
    verdict: str  # ok | MISMATCH | deliberate
    note: str = ""


class _Mismatch(Exception):
    """A case found dlexp and torch apart; the message says where."""


def load_optim_db() -> types.ModuleType:
    """torch's `common_optimizers` module. It imports `expecttest` (a test-only package that the dev
    extra installs); without it, a stub with the one class torch's TestCase derives from."""
    try:
        import expecttest  # noqa: F401
    except ImportError:
        stub = types.ModuleType("expecttest")
        stub.TestCase = type("TestCase", (unittest.TestCase,), {})
        stub.ACCEPT = False
        sys.modules["expecttest"] = stub
    frozen = torch.backends.flags_frozen()
    from torch.testing._internal import common_optimizers

    if not frozen:  # torch's test utilities freeze torch.backends' global flags when imported;
        # unfreeze them, or a later run in this process could not set cudnn.benchmark (seed_everything)
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    return common_optimizers


# ---------------------------------------------------------------- comparison


def _rel_diff(a: Any, b: Any, where: str) -> float:
    """max |a - b| / max |b| for tensors (types, dtypes, shapes and devices must agree), 0 for equal
    plain values; raises _Mismatch for anything else."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            raise _Mismatch(f"{where}: {type(a).__name__} vs {type(b).__name__}")
        if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device or a.is_sparse != b.is_sparse:
            raise _Mismatch(f"{where}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
        a, b = a.detach(), b.detach()
        if a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        if a.is_complex():
            a, b = torch.view_as_real(a), torch.view_as_real(b)
        if a.numel() == 0:
            return 0.0
        a, b = a.double(), b.double()
        if torch.equal(a, b):
            return 0.0
        diff = (a - b).abs().max().item()
        scale = b.abs().max().item()
        return diff / scale if scale > 0 else diff
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return max((_rel_diff(x, y, where) for x, y in zip(a, b)), default=0.0)
    if a != b and not (a is None and b is None):
        raise _Mismatch(f"{where}: {a!r} vs {b!r}")
    return 0.0


def _state_diff(opt_t, opt_d, params_t, params_d) -> float:
    """The largest difference over parameters and per-parameter state (same keys required)."""
    worst = 0.0
    for i, (pt, pd) in enumerate(zip(params_t, params_d)):
        worst = max(worst, _rel_diff(pd, pt, f"param {i}"))
        st, sd = opt_t.state.get(pt, {}), opt_d.state.get(pd, {})
        if set(st) != set(sd):
            raise _Mismatch(f"state of param {i}: keys {sorted(sd)} vs torch {sorted(st)}")
        for k in st:
            worst = max(worst, _rel_diff(sd[k], st[k], f"state[{i}][{k!r}]"))
    return worst


def _state_dict_diff(sd_d: dict, sd_t: dict, ignore: Iterable[str] = ()) -> float:
    """state_dict() against state_dict(): same param_groups (keys and values) and same state."""
    groups_d, groups_t = sd_d["param_groups"], sd_t["param_groups"]
    if len(groups_d) != len(groups_t):
        raise _Mismatch(f"state_dict: {len(groups_d)} param groups vs torch {len(groups_t)}")
    worst = 0.0
    for i, (gd, gt) in enumerate(zip(groups_d, groups_t)):
        keys_d, keys_t = set(gd) - set(ignore), set(gt) - set(ignore)
        if keys_d != keys_t:
            raise _Mismatch(f"state_dict param_groups[{i}] keys: {sorted(keys_d ^ keys_t)} differ")
        for k in keys_t:
            worst = max(worst, _rel_diff(gd[k], gt[k], f"param_groups[{i}][{k!r}]"))
    if set(sd_d["state"]) != set(sd_t["state"]):
        raise _Mismatch("state_dict: state for different params")
    for idx, st in sd_t["state"].items():
        sd = sd_d["state"][idx]
        if set(sd) != set(st):
            raise _Mismatch(f"state_dict state[{idx}] keys: {sorted(sd)} vs torch {sorted(st)}")
        for k in st:
            worst = max(worst, _rel_diff(sd[k], st[k], f"state_dict state[{idx}][{k!r}]"))
    return worst


def _outcome(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - the error itself is what is compared
        return None, e


def _same_error(e_d: BaseException | None, e_t: BaseException | None) -> bool:
    return type(e_d) is type(e_t) and str(e_d) == str(e_t)


# ---------------------------------------------------------------- step parity on optim_db inputs


def _params(dtype: torch.dtype, seed: int, n_real: int = 0) -> list[Tensor]:
    """torch's _test_derived_optimizers shapes (Linear(2, 3), Linear(3, 1)) and a 0-dim param (torch's
    issue 100701); for complex dtypes one more real float32 param, as torch's test_complex mixes."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 2), (3,), (1, 3), (1,), ()]
    params = [torch.randn(s, dtype=dtype, generator=gen) for s in shapes]
    if dtype.is_complex:
        params.append(torch.randn(10, 5, generator=gen))
    return params


def _grads(params: list[Tensor], gen: torch.Generator) -> list[Tensor]:
    return [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params]


def step_parity(name: str, kwargs: dict[str, Any], dtype: torch.dtype, steps: int = STEPS,
                schedulers: list[Callable] | None = None) -> float:
    """Run torch's and dlexp's optimizer on copies of the same params with the same gradients; after
    every step compare params and state, at the end state_dict(). Step 2 has no gradients (a no-op
    step); params 2 has none at steps 3 and 4 (frozen). Errors must be the same, raised at the same
    point. Returns the largest relative difference."""
    spec = OPTIMIZERS[name]
    differentiable = kwargs.get("differentiable", False)
    base = _params(dtype, seed=0)
    leaves_t = [p.clone().requires_grad_() for p in base]
    leaves_d = [p.clone().requires_grad_() for p in base]
    # differentiable: step non-leaf copies, so the update can be recorded (as torch's tests do)
    params_t = [p.clone() for p in leaves_t] if differentiable else leaves_t
    params_d = [p.clone() for p in leaves_d] if differentiable else leaves_d
    opt_t, e_t = _outcome(lambda: spec.torch_cls(params_t, **copy.deepcopy(kwargs)))
    opt_d, e_d = _outcome(lambda: spec.cls(params_d, **copy.deepcopy(kwargs)))
    if e_t or e_d:
        if _same_error(e_d, e_t):
            return 0.0
        raise _Mismatch(f"construction: dlexp {e_d!r} vs torch {e_t!r}")
    scheds = [(make(opt_t), make(opt_d)) for make in schedulers or []]
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for i in range(steps):
        grads = _grads(base, gen)
        for j, (pt, pd, g) in enumerate(zip(params_t, params_d, grads)):
            none = i == 2 or (j == 2 and i in (3, 4))
            pt.grad = None if none else g.clone()
            pd.grad = None if none else g.clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # .grad of a non-leaf (differentiable): intended here
            _, e_t = _outcome(opt_t.step)
            _, e_d = _outcome(opt_d.step)
        if e_t or e_d:
            if _same_error(e_d, e_t):
                return worst
            raise _Mismatch(f"step {i}: dlexp {e_d!r} vs torch {e_t!r}")
        worst = max(worst, _state_diff(opt_t, opt_d, params_t, params_d))
        if differentiable and i == 0:  # the gradient through one step, to the starting values
            worst = max(worst, _gradient_diff(params_t, leaves_t, params_d, leaves_d))
        for s_t, s_d in scheds:
            for s in (s_t, s_d):
                s.step(float(i)) if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step()
    return max(worst, _state_dict_diff(opt_d.state_dict(), opt_t.state_dict()))


def _gradient_diff(params_t, leaves_t, params_d, leaves_d) -> float:
    """differentiable=True: d(sum of squares of the updated params)/d(params before the step), through
    torch's update and through dlexp's (one step, as torch's gradcheck tests; torch's own
    differentiable RMSprop cannot backpropagate through two steps)."""
    grads = []
    for ps, leaves in ((params_t, leaves_t), (params_d, leaves_d)):
        loss = sum(torch.view_as_real(p).square().sum() if p.is_complex() else p.square().sum() for p in ps)
        grads.append(torch.autograd.grad(loss, leaves, retain_graph=True))
    return max(_rel_diff(d, t, f"d(loss)/d(param {j}) through the step") for j, (t, d) in enumerate(zip(*grads)))


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, Tensor):
            return f"tensor({v.tolist()})"
        if isinstance(v, tuple):
            return "(" + ", ".join(show(x) for x in v) + ")"
        return repr(v)

    return ", ".join(f"{k}={show(v)}" for k, v in kwargs.items())


def _judge(optimizer: str, case: str, variant: str, dtype: torch.dtype | None, run: Callable[[], float],
           note: str = "") -> Row:
    """Run one case and turn its result (a difference, or a _Mismatch) into a row."""
    dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else "-"
    try:
        diff = run()
    except _Mismatch as e:
        return Row(optimizer, case, variant, dtype_name, float("inf"), "MISMATCH", str(e))
    tol = TOLERANCES.get(dtype, 0.0) if dtype is not None else 0.0
    verdict = "ok" if diff <= tol or diff != diff else "MISMATCH"
    return Row(optimizer, case, variant, dtype_name, diff, verdict, note)


def samples(co: types.ModuleType, name: str, dtype: torch.dtype, impls=("foreach", "differentiable", "fused")):
    """torch's CPU samples for `name` with its implementation switches, as torch's
    `_get_optim_inputs_including_global_cliquey_kwargs` adds them, except that foreach is added on
    the CPU too (torch leaves it out there: its CPU default is the for-loop, dlexp's is foreach):
    each sample as given (default switches), then with each switch the optimizer supports."""
    info = _info(co, name)
    flags = [f for f in info.supported_impls if f in impls and (f != "fused" or "cpu" in info.supports_fused_on)]
    out = []
    for sample in info.optim_inputs_func(device="cpu", dtype=dtype):
        out.append((sample.desc, dict(sample.kwargs)))
        if "foreach" in flags:
            out.append((f"{sample.desc} & for-loop", {**sample.kwargs, "foreach": False}))
        for flag in flags:
            out.append((f"{sample.desc} & {flag}", {**sample.kwargs, flag: True}))
    return out


# dlexp's differentiable=True computes the numbers of its ordinary rule (bias corrections from the
# step as a Python float, in double precision); torch's differentiable Adam computes them from the
# float32 step tensor and folds lr into the denominator. Measured: 1.3e-8 relative in float64,
# 4.3e-7 in float32; the bound below keeps a real bug visible.
DELIBERATE = {
    ("adam", "differentiable"): (1e-6, "torch's differentiable Adam computes its bias corrections in float32 "
                                       "from the step tensor; dlexp's in double, as its ordinary rule"),
    ("adamw", "differentiable"): (1e-6, "as Adam: torch's differentiable bias corrections are float32"),
}


def parity_rows(co: types.ModuleType, name: str, dtypes=SUITE_DTYPES, fused: bool = True) -> list[Row]:
    """Every CPU sample of torch's optim_db for `name`, with each implementation switch, in each dtype."""
    rows = []
    impls = ("foreach", "differentiable", "fused") if fused else ("foreach", "differentiable")
    for dtype in dtypes:
        for desc, kwargs in samples(co, name, dtype, impls):
            variant = f"{desc}: {_kwargs_text(kwargs)}"
            row = _judge(name, "step_parity", variant, dtype, functools.partial(step_parity, name, kwargs, dtype))
            deliberate = DELIBERATE.get((name, "differentiable")) if kwargs.get("differentiable") else None
            if deliberate and row.verdict == "MISMATCH" and row.max_diff <= deliberate[0]:
                row.verdict, row.note = "deliberate", deliberate[1]
            rows.append(row)
    return rows


def _info(co: types.ModuleType, name: str):
    torch_name = OPTIMIZERS[name].torch_cls.__name__
    return next(i for i in co.optim_db if i.optim_cls.__name__ == torch_name)


# ---------------------------------------------------------------- error inputs


def error_rows(co: types.ModuleType, name: str) -> list[Row]:
    """Every `optim_error_inputs` case: dlexp raises (or warns) what torch raises, where torch does."""
    info = _info(co, name)
    cls = OPTIMIZERS[name].cls
    rows = []
    for error_input in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
        sample = error_input.optimizer_error_input

        def run(sample=sample, error_input=error_input) -> float:
            expected, regex = error_input.error_type, error_input.error_regex
            on_step = error_input.error_on == co.OptimizerErrorEnum.STEP_ERROR
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    opt = cls(sample.params, **sample.kwargs)
                    if on_step:
                        opt.step()
                except Exception as e:  # noqa: BLE001
                    if issubclass(expected, Warning) or not isinstance(e, expected) or not re.search(regex, str(e)):
                        raise _Mismatch(f"raised {type(e).__name__}: {e}; torch: {expected.__name__} {regex!r}") from None
                    return float("nan")
            if issubclass(expected, Warning) and any(
                issubclass(w.category, expected) and re.search(regex, str(w.message)) for w in caught
            ):
                return float("nan")
            raise _Mismatch(f"accepted; torch: {expected.__name__} {regex!r}")

        rows.append(_judge(name, "errors", sample.desc, None, run))
    return rows


# ---------------------------------------------------------------- generic behaviours of test_optim.py


def _fwd_bwd(opt, weight, bias, inp):
    opt.zero_grad()
    loss = (weight.mv(inp) + bias).pow(2).sum()
    loss.backward()
    return loss


def _weight_bias(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(10, 5, dtype=dtype, generator=gen))
    b = torch.nn.Parameter(torch.randn(10, dtype=dtype, generator=gen))
    return w, b, torch.randn(5, dtype=dtype, generator=gen)




def state_dict_round_trip(name: str, kwargs: dict) -> float:
    """torch -> dlexp -> torch: a torch optimizer's state_dict loads into dlexp's, which continues
    exactly as torch does; dlexp's state_dict then loads into a fresh torch optimizer, again."""
    spec = OPTIMIZERS[name]
    w, b, inp = _weight_bias()
    opt_t = spec.torch_cls([w, b], **kwargs)
    for _ in range(3):
        _fwd_bwd(opt_t, w, b, inp)
        opt_t.step()
    worst = 0.0
    w_d, b_d = (torch.nn.Parameter(t.detach().clone()) for t in (w, b))
    opt_d = spec.cls([w_d, b_d], **kwargs)
    opt_d.load_state_dict(copy.deepcopy(opt_t.state_dict()))
    for _ in range(3):
        _fwd_bwd(opt_t, w, b, inp)
        _fwd_bwd(opt_d, w_d, b_d, inp)
        opt_t.step()
        opt_d.step()
        worst = max(worst, _state_diff(opt_t, opt_d, [w, b], [w_d, b_d]))
    w_t2, b_t2 = (torch.nn.Parameter(t.detach().clone()) for t in (w_d, b_d))
    opt_t2 = spec.torch_cls([w_t2, b_t2], **kwargs)
    opt_t2.load_state_dict(copy.deepcopy(opt_d.state_dict()))
    for _ in range(3):
        _fwd_bwd(opt_d, w_d, b_d, inp)
        _fwd_bwd(opt_t2, w_t2, b_t2, inp)
        opt_d.step()
        opt_t2.step()
        worst = max(worst, _state_diff(opt_t2, opt_d, [w_t2, b_t2], [w_d, b_d]))
    return max(worst, _state_dict_diff(opt_d.state_dict(), opt_t2.state_dict()))


def state_dict_deterministic(name: str, kwargs: dict) -> float:
    """test_state_dict_deterministic: a state_dict loaded into a new dlexp optimizer on equal (not
    identical) params continues identically, gives an equal state_dict, and repeated param groups
    have identical representations."""
    cls = OPTIMIZERS[name].cls
    w, b, inp = _weight_bias()
    opt = cls([w, b], **kwargs)
    for _ in range(10):
        _fwd_bwd(opt, w, b, inp)
        opt.step()
    w_c, b_c = (torch.nn.Parameter(t.detach().clone()) for t in (w, b))
    opt_c = cls([w_c, b_c], **kwargs)
    opt_c.load_state_dict(copy.deepcopy(opt.state_dict()))
    worst = 0.0
    for _ in range(10):
        _fwd_bwd(opt, w, b, inp)
        _fwd_bwd(opt_c, w_c, b_c, inp)
        opt.step()
        opt_c.step()
        worst = max(worst, _rel_diff(w_c, w, "weight"), _rel_diff(b_c, b, "bias"))
    worst = max(worst, _state_dict_diff(opt_c.state_dict(), opt.state_dict()))
    opt_c.param_groups.extend(opt_c.param_groups)
    _rel_diff(opt.state_dict()["param_groups"][-1], opt_c.state_dict()["param_groups"][-1], "repeated group")
    return worst


def load_nontensor_step(name: str, kwargs: dict) -> float:
    """test_load_nontensor_step: a state_dict whose `step` values are plain numbers (older torch
    checkpoints) loads, the steps become tensors again, and the next step equals torch's."""
    spec = OPTIMIZERS[name]
    worst = 0.0
    pairs = []
    for cls in (spec.torch_cls, spec.cls):
        params = [torch.nn.Parameter(t) for t in _params(torch.float32, seed=3)[:2]]
        opt = cls(params, **kwargs)
        gen = torch.Generator().manual_seed(4)
        for _ in range(3):
            for p, g in zip(params, _grads(params, gen)):
                p.grad = g
            opt.step()
        sd = copy.deepcopy(opt.state_dict())
        for p_state in sd["state"].values():
            if torch.is_tensor(p_state.get("step")):
                p_state["step"] = p_state["step"].item()
        opt.load_state_dict(sd)
        for p, g in zip(params, _grads(params, gen)):
            p.grad = g
        opt.step()
        pairs.append((opt, params))
    (opt_t, params_t), (opt_d, params_d) = pairs
    worst = max(worst, _state_diff(opt_t, opt_d, params_t, params_d))
    return max(worst, _state_dict_diff(opt_d.state_dict(), opt_t.state_dict()))


def can_load_older_state_dict(co, name: str, kwargs: dict) -> float:
    """test_can_load_older_state_dict: a state_dict without the flags added after the optimizer first
    shipped (foreach, maximize, ...) loads into dlexp and gets torch's defaults back."""
    spec, info = OPTIMIZERS[name], _info(co, name)
    pairs = []
    for cls in (spec.torch_cls, spec.cls):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2))
        inp = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
        opt = cls(model.parameters(), **kwargs)
        for _ in range(3):
            opt.zero_grad()
            model(inp).sum().backward()
            opt.step()
        old = copy.deepcopy(opt.state_dict())
        for group in old["param_groups"]:
            for flag in info.not_og_supported_flags:
                group.pop(flag, None)
        opt.load_state_dict(old)
        opt.zero_grad()
        model(inp).sum().backward()
        opt.step()
        pairs.append((opt, list(model.parameters())))
    (opt_t, params_t), (opt_d, params_d) = pairs
    return max(_state_diff(opt_t, opt_d, params_t, params_d), _state_dict_diff(opt_d.state_dict(), opt_t.state_dict()))


def save_load_weights_only(name: str, kwargs: dict) -> float:
    """test_save_load_equality_with_weights_only: dlexp's state_dict survives torch.save and
    torch.load(weights_only=True) unchanged."""
    cls = OPTIMIZERS[name].cls
    w, b, inp = _weight_bias()
    opt = cls([w, b], **kwargs)
    for _ in range(3):
        opt.step(functools.partial(_fwd_bwd, opt, w, b, inp))
    sd = opt.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return _state_dict_diff(torch.load(buf, weights_only=True), sd)


def hooks(name: str, kwargs: dict) -> float:
    """test_step_pre_hook / post_hook / all_hooks, state_dict and load_state_dict pre/post hooks:
    they run, in torch's order, on a dlexp optimizer (the hook machinery is torch's base class)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    cls = OPTIMIZERS[name].cls
    params = [torch.tensor([1.0, 1.0])]
    opt = cls(params, **kwargs)
    data: list[int] = []
    handles = [
        register_optimizer_step_pre_hook(lambda *a: data.append(0)),
        register_optimizer_step_post_hook(lambda *a: data.append(5)),
        opt.register_step_pre_hook(lambda *a: data.append(1)),
        opt.register_step_post_hook(lambda *a: data.append(2)),
    ]
    try:
        opt.step()
        opt.step()
    finally:
        for h in handles:
            h.remove()
    opt.step()
    if data != [0, 1, 2, 5, 0, 1, 2, 5]:
        raise _Mismatch(f"step hooks ran {data}")
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "ran": "test" in sd["state"]})
    if not opt.state_dict().get("ran"):
        raise _Mismatch("state_dict pre/post hooks did not run in order")
    opt.register_load_state_dict_pre_hook(lambda o, sd: sd["param_groups"][0].__setitem__("lr", 0.002))
    opt.register_load_state_dict_post_hook(lambda o: o.state.__setitem__("loaded", True))
    sd = opt.state_dict()
    sd["state"].pop("test", None)
    sd.pop("ran", None)
    opt.load_state_dict(sd)
    if opt.param_groups[0]["lr"] != 0.002 or not opt.state["loaded"]:
        raise _Mismatch("load_state_dict pre/post hooks did not run")
    return 0.0


def deepcopy_public_attrs(name: str, kwargs: dict) -> float:
    """test_deepcopy_copies_all_public_attrs, plus: the copy steps exactly as the original."""
    cls = OPTIMIZERS[name].cls
    params = [torch.nn.Parameter(t) for t in _params(torch.float32, seed=5)[:2]]
    opt = cls(params, **kwargs)
    gen = torch.Generator().manual_seed(6)
    for _ in range(3):
        for p, g in zip(params, _grads(params, gen)):
            p.grad = g
        opt.step()
    public = lambda o: {k for k in o.__dict__ if not k.startswith("_")}  # noqa: E731
    clone = copy.deepcopy(opt)
    if public(clone) != public(opt):
        raise _Mismatch(f"public attributes {sorted(public(opt) ^ public(clone))} not copied")
    clone_params = [p for g in clone.param_groups for p in g["params"]]
    for p, q in zip(params, clone_params):
        q.grad = p.grad.clone()
    opt.step()
    clone.step()
    return _state_diff(opt, clone, params, clone_params)


def lr_schedulers(co, name: str, kwargs: dict) -> float:
    """test_forloop_goes_right_direction with_lrsched, as a parity test: each of torch's scheduler
    combinations for this optimizer drives a torch and a dlexp optimizer; they stay equal."""
    worst = 0.0
    for schedulers in _info(co, name).scheduler_inputs:
        worst = max(worst, step_parity(name, kwargs, torch.float32, steps=12, schedulers=schedulers))
    return worst


def no_grad_and_zero_grad_steps(name: str, kwargs: dict) -> float:
    """test_step_is_noop_when_params_have_no_grad and test_step_is_noop_for_zero_grads: no gradient,
    or a zero gradient without weight decay, leaves the params exactly as they were."""
    cls = OPTIMIZERS[name].cls
    params = [torch.randn(2, 3) for _ in range(2)]
    before = [p.clone() for p in params]
    cls(params, **kwargs).step(lambda: torch.tensor([1.0]))
    if not all(torch.equal(p, q) for p, q in zip(params, before)):
        raise _Mismatch("a step without gradients changed the params")
    if kwargs.get("weight_decay", 0) != 0:
        return 0.0  # decay moves the weights without a gradient (torch's test skips these too)
    kwargs = dict(kwargs)
    if name == "adamw":
        kwargs["lr"] = torch.tensor(1e-5) if isinstance(kwargs.get("lr"), Tensor) else 1e-5
    param = torch.randn(5, 1, requires_grad=True)
    old = param.detach().clone()
    param.grad = torch.zeros_like(param)
    cls([param], **kwargs).step()
    return _rel_diff(param, old, "param after a zero-grad step")


def add_param_group(name: str, kwargs: dict) -> float:
    """add_param_group mid-run, with a group-specific lr: torch and dlexp agree afterwards (and the
    new group's state is created as torch creates it)."""
    spec = OPTIMIZERS[name]
    runs = []
    for cls in (spec.torch_cls, spec.cls):
        params = [torch.nn.Parameter(t) for t in _params(torch.float32, seed=7)[:4]]
        opt = cls(params[:2], **kwargs)
        gen = torch.Generator().manual_seed(8)
        for i in range(6):
            if i == 3:
                opt.add_param_group({"params": params[2:], "lr": 0.005})
            for p, g in zip(params, _grads(params, gen)):
                p.grad = g
            opt.step()
        runs.append((opt, params))
    (opt_t, params_t), (opt_d, params_d) = runs
    return max(_state_diff(opt_t, opt_d, params_t, params_d), _state_dict_diff(opt_d.state_dict(), opt_t.state_dict()))


def param_groups_lr(name: str, kwargs: dict) -> float:
    """test_param_groups_lr: a group with lr 1e-28 does not move; the other group's loss goes down."""
    cls = OPTIMIZERS[name].cls
    kwargs = dict(kwargs)
    if kwargs.get("lr", 0) == 0:
        kwargs["lr"] = 1e-3
    w, b, inp = _weight_bias()
    irrelevant = torch.nn.Parameter(torch.randn(2))
    frozen = irrelevant.detach().clone()
    opt = cls([dict(params=[w, b], **kwargs), dict(params=[irrelevant])], lr=1e-28)
    first = None
    for _ in range(20):
        loss = _fwd_bwd(opt, w, b, inp)
        first = loss.item() if first is None else first
        irrelevant.grad = torch.rand_like(irrelevant)
        opt.step()
    last = (w.mv(inp) + b).pow(2).sum().item()
    if (last > first) != bool(kwargs.get("maximize", False)) or not torch.equal(irrelevant, frozen):
        raise _Mismatch(f"loss {first:.4g} -> {last:.4g}; the lr=1e-28 group moved: {not torch.equal(irrelevant, frozen)}")
    return 0.0


def tensor_lr(name: str, kwargs: dict) -> float:
    """test_tensor_lr: lr=torch.tensor(1e-3) gives what lr=1e-3 gives (or torch's ValueError)."""
    cls = OPTIMIZERS[name].cls
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    w, b, inp = _weight_bias()
    w_c, b_c = (torch.nn.Parameter(t.detach().clone()) for t in (w, b))
    opt_r = cls([w, b], lr=1e-3, **kwargs)
    try:
        opt = cls([w_c, b_c], lr=torch.tensor(1e-3), **kwargs)
    except ValueError as e:
        if "lr as a Tensor is not supported" not in str(e):
            raise _Mismatch(f"tensor lr refused: {e}") from None
        return float("nan")
    worst = 0.0
    for _ in range(5):
        _fwd_bwd(opt_r, w, b, inp)
        _fwd_bwd(opt, w_c, b_c, inp)
        opt_r.step()
        opt.step()
        worst = max(worst, _rel_diff(w_c, w, "weight"), _rel_diff(b_c, b, "bias"))
    return worst


def complex_2d(name: str, kwargs: dict) -> float:
    """test_complex_2d: optimizing a complex vector equals optimizing its real and imaginary parts
    as two real vectors (Rosenbrock, 3 steps)."""
    cls = OPTIMIZERS[name].cls
    a1 = torch.randn(2, dtype=torch.complex64, generator=torch.Generator().manual_seed(9), requires_grad=True)
    re_, im_ = a1.real.detach().clone().requires_grad_(), a1.imag.detach().clone().requires_grad_()
    opt1, opt2 = cls([a1], **kwargs), cls([re_, im_], **kwargs)
    worst = 0.0
    for _ in range(3):
        for opt, x in ((opt1, a1), (opt2, torch.complex(re_, im_))):
            opt.zero_grad()
            _rosenbrock(x).abs().backward()
        opt1.step()
        opt2.step()
        worst = max(worst, _rel_diff(a1.real, re_, "real part"), _rel_diff(a1.imag, im_, "imaginary part"))
    return worst


def _rosenbrock(t: Tensor) -> Tensor:
    x, y = t
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosenbrock_sparse(co, name: str, kwargs: dict, with_lrsched: bool) -> float:
    """test_rosenbrock_sparse (float64): cyclic coordinate descent with an uncoalesced sparse
    gradient; dlexp equals torch step by step, equals the dense gradient within torch's tolerance
    (5e-6), and gets closer to the optimum (or, maximizing, climbs)."""
    spec, info = OPTIMIZERS[name], _info(co, name)
    schedulers = info.metadata_for_sparse[1] if with_lrsched else []
    multi = kwargs.get("foreach", False)
    start = [torch.tensor([1.5, 1.5]), torch.tensor([1.5, 1.5], dtype=torch.float64)] if multi else [torch.tensor([1.5, 1.5])]
    runs = {}
    for label, cls, sparse in (("torch", spec.torch_cls, True), ("dlexp", spec.cls, True), ("dense", spec.cls, False)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = cls(params, **kwargs)
        scheds = [s(opt) for s in schedulers]
        runs[label] = (opt, params, scheds, sparse)
    worst = 0.0
    for i in range(ROSENBROCK_STEPS):
        w = i % 2
        for label, (opt, params, scheds, sparse) in runs.items():
            for p in params:
                p.grad = _rosenbrock_grad(p.detach(), sparse, w)
            opt.step()
            for s in scheds:
                s.step(_rosenbrock(params[0]).item()) if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step()
        if i % 100 == 0 or i == ROSENBROCK_STEPS - 1:
            (ot, pt, _, _), (od, pd, _, _), (_, pdense, _, _) = runs.values()
            worst = max(worst, _state_diff(ot, od, pt, pd))
            if max((a - b).abs().max().item() for a, b in zip(pd, pdense)) > 5e-6 + 5e-6 * 1.5:
                raise _Mismatch(f"sparse and dense gradients part at step {i}")
    solution = torch.tensor([1.0, 1.0])
    params = runs["dlexp"][1]
    if kwargs.get("maximize", False):  # torch's test: maximizing goes up the function instead
        if sum(_rosenbrock(p.detach()) for p in params) < sum(_rosenbrock(t) for t in start):
            raise _Mismatch("maximize went down the function")
    elif sum(p.detach().dist(solution) for p in params) > sum(t.dist(solution) for t in start):
        raise _Mismatch("moved away from the optimum")
    return worst


def _rosenbrock_grad(t: Tensor, sparse: bool, w: int) -> Tensor:
    x, y = t.tolist()
    grad = [-400 * x * (y - x**2) - 2 * (1 - x), 200 * (y - x**2)]
    if sparse:  # uncoalesced: the same index twice, values summing to the gradient
        g = grad[0] if w else grad[1]
        idx = [[0, 0]] if w else [[1, 1]]
        vals = [g / 4.0, g - g / 4.0] if w else [g - g / 4.0, g / 4.0]
        return torch.sparse_coo_tensor(idx, torch.tensor(vals), (2,), dtype=t.dtype)
    return torch.tensor([grad[0], 0.0] if w else [0.0, grad[1]], dtype=t.dtype)


def printable_and_nonempty_state(name: str, kwargs: dict) -> float:
    """test_optimizer_can_be_printed and test_non_empty_state."""
    cls = OPTIMIZERS[name].cls
    model = torch.nn.Linear(5, 5)
    opt = cls(model.parameters(), **kwargs)
    repr(opt)
    model(torch.rand(2, 5)).sum().backward()
    opt.step()
    if not all(len(s) > 0 for s in opt.state.values()):
        raise _Mismatch("a param with a gradient has an empty state after a step")
    return 0.0


def behaviour_rows(co: types.ModuleType, name: str, fused: bool = True) -> list[Row]:
    """The generic behaviours of torch's test_optim.py, on every sample (float32)."""
    rows = []
    impls = ("foreach", "fused") if fused else ("foreach",)
    for desc, kw in samples(co, name, torch.float32, impls):
        variant = f"{desc}: {_kwargs_text(kw)}"
        f32 = torch.float32
        cases = [
            ("state_dict_round_trip_torch_dlexp_torch", lambda: state_dict_round_trip(name, copy.deepcopy(kw))),
            ("state_dict_deterministic", lambda: state_dict_deterministic(name, copy.deepcopy(kw))),
            ("load_nontensor_step", lambda: load_nontensor_step(name, copy.deepcopy(kw))),
            ("can_load_older_state_dict", lambda: can_load_older_state_dict(co, name, copy.deepcopy(kw))),
            ("save_load_equality_with_weights_only", lambda: save_load_weights_only(name, copy.deepcopy(kw))),
            ("hooks", lambda: hooks(name, copy.deepcopy(kw))),
            ("deepcopy_copies_all_public_attrs", lambda: deepcopy_public_attrs(name, copy.deepcopy(kw))),
            ("lr_schedulers", lambda: lr_schedulers(co, name, copy.deepcopy(kw))),
            ("step_is_noop_without_or_with_zero_grads", lambda: no_grad_and_zero_grad_steps(name, copy.deepcopy(kw))),
            ("add_param_group", lambda: add_param_group(name, copy.deepcopy(kw))),
            ("param_groups_lr", lambda: param_groups_lr(name, copy.deepcopy(kw))),
            ("tensor_lr", lambda: tensor_lr(name, copy.deepcopy(kw))),
            ("optimizer_can_be_printed_and_non_empty_state", lambda: printable_and_nonempty_state(name, copy.deepcopy(kw))),
        ]
        if not kw.get("fused"):  # torch's fused kernels take no complex params (test_complex skips fused)
            cases.append(("complex_2d", lambda: complex_2d(name, copy.deepcopy(kw))))
        for case, run in cases:
            rows.append(_judge(name, case, variant, f32, run))
    info = _info(co, name)
    if info.supports_sparse:
        kwarg_updates = info.metadata_for_sparse[0]
        seen = set()
        # the samples as given (foreach variants left out: a sparse gradient runs the per-tensor
        # rule in dlexp and the for-loop in torch whatever foreach says)
        for _, sample_kwargs in samples(co, name, torch.float64, impls=()):
            kw = {k: v for k, v in sample_kwargs.items() if k not in kwarg_updates}
            key = tuple(sorted((k, repr(v)) for k, v in kw.items()))
            if not kw or key in seen:
                continue
            seen.add(key)
            if "lr" in kwarg_updates:
                kw["lr"] = kwarg_updates["lr"]
            for with_lrsched in (False, True):
                if with_lrsched and not info.metadata_for_sparse[1]:
                    continue
                variant = f"{_kwargs_text(kw)}{', with its schedulers' if with_lrsched else ''}"
                run = functools.partial(rosenbrock_sparse, co, name, copy.deepcopy(kw), with_lrsched)
                rows.append(_judge(name, "rosenbrock_sparse", variant, torch.float64, run))
    return rows


def deliberate_rows(name: str) -> list[Row]:
    """Where dlexp differs from torch on purpose: shown, with the reason, and checked to still hold."""
    rows = []
    if name == "adagrad":
        def run() -> float:
            a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
            groups = lambda: [{"params": [a]}, {"params": [b], "initial_accumulator_value": 0.5}]  # noqa: E731
            ours = OPTIMIZERS["adagrad"].cls(groups()).state[b]["sum"]
            theirs = torch.optim.Adagrad(groups()).state[b]["sum"]
            if not (torch.equal(ours, torch.full((2,), 0.5)) and torch.equal(theirs, torch.zeros(2))):
                raise _Mismatch(f"sum starts at {ours.tolist()} (torch {theirs.tolist()})")
            return float("nan")

        rows.append(Row("adagrad", "per_group_initial_accumulator_value", "group 2: initial_accumulator_value=0.5",
                        "-", float("nan"), "deliberate",
                        "dlexp starts that group's `sum` at 0.5; torch uses the constructor's value for "
                        "every group and ignores the group's"))  # fmt: skip
        try:
            run()
        except _Mismatch as e:
            rows[-1].verdict, rows[-1].note = "MISMATCH", str(e)
    if name in ("rmsprop", "adadelta"):
        rows.append(Row(name, "fused", "fused=True", "-", float("nan"), "deliberate",
                        f"torch.optim.{OPTIMIZERS[name].torch_cls.__name__} has no fused=True; dlexp accepts it "
                        "as its fused CPU kernel (bitwise the per-tensor rule: tests/test_optim_fused.py)"))  # fmt: skip
    return rows


def run_suite(names: Iterable[str] | None = None, dtypes=SUITE_DTYPES, fused: bool = True,
              behaviours: bool = True, progress: Callable[[str], None] | None = None) -> list[Row]:
    """Every case for every optimizer in `names` (default: all of dlexp's). `fused=False` leaves out
    the fused=True samples (for a machine without a C++ compiler, which fused=True needs);
    the caller must then say so, as `dlexp check-optimizers` does."""
    co = load_optim_db()
    rows: list[Row] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they save
    try:
        for name in names or OPTIMIZERS:
            if progress:
                progress(name)
            rows += parity_rows(co, name, dtypes, fused)
            rows += error_rows(co, name)
            if behaviours:
                rows += behaviour_rows(co, name, fused)
            rows += deliberate_rows(name)
    finally:
        torch.set_num_threads(threads)
    return rows
