"""`fused=True`: dlexp's compiled path, the foreach rule of each optimizer through `torch.compile`.

torch's CPU `fused=True` kernels do one pass over memory per tensor where the foreach path does one
per operation (Adam: ~8). Inductor gets the same single pass from the rule itself: it fuses a
tensor's chain of pointwise operations into one vectorised, multi-threaded loop. Each optimizer file
writes its `_fused_<name>` kernel (the foreach rule, written to be traced) and hands it to
`compiled_rule`, which runs it:

- hyperparameters enter as 0-dim float64 tensors, not Python floats: a learning rate that a schedule
  changes every step is a new value, not a new graph; float64 keeps the value the per-tensor rule
  sees (eager ops round a Python float to the tensor's dtype the same way);
- the graph specialises on what changes the computation (flags such as maximize, which terms are
  non-zero, dtype, device, the number of tensors), one compiled function per combination, so an
  experiment's param groups never push each other out of dynamo's cache;
- `torch.compile` is called on first use: importing torch._dynamo and compiling cost seconds
  (first compile on a 2-core CPU: 5-20 s; later processes hit inductor's on-disk cache), and only a
  run that asks for fused=True pays them.

The compiled path is tested against the per-tensor rule (`tests/test_optim_fused.py`); it is not
bitwise equal, because inductor contracts `a * b + c` into one fused multiply-add and computes
`lerp` and the bias corrections in its own order; the measured mismatch is in that test.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def _fused_devices() -> list[str]:
    """The devices torch's fused kernels take (torch's own list, for torch's own error message)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return _get_fused_kernels_supported_devices()
    except ImportError:  # a torch release that moved it
        return ["mps", "cuda", "xpu", "hpu", "cpu"]

_compiled: dict[tuple, Callable] = {}


def _compiled_kernel(kernel: Callable, key: tuple) -> Callable:
    """`torch.compile(kernel)`, one per `key`: each gets its own copy of the code object, because
    dynamo keeps its cache (and its limit of 8 graphs) per code object."""
    fn = _compiled.get(key)
    if fn is None:
        code_copy = types.FunctionType(kernel.__code__.replace(), kernel.__globals__, kernel.__name__)
        fn = _compiled[key] = torch.compile(code_copy, fullgraph=True, dynamic=None)
    return fn


def check_fused_params(params: list[Tensor]) -> None:
    """torch's fused optimizers take floating point params on their devices only, with this message
    (complex params included: torch's fused kernels do not take them)."""
    for p in params:
        if p.is_cpu and torch.is_floating_point(p):
            continue  # the usual case, without building torch's device list each step
        devices = _fused_devices()
        if not (torch.is_floating_point(p) and p.device.type in devices):
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of "
                f"supported devices: {devices} but {p.dtype} and {p.device.type}"
            )


def scalar(name: str, value: float | Tensor, like: Tensor) -> Tensor:
    """Hyperparameter `name` as a 0-dim float64 tensor on `like`'s device (a tensor lr keeps its dtype)."""
    if isinstance(value, Tensor):
        return value.to(device=like.device)
    return _scalar_tensor(name, float(value), like.device)


@functools.lru_cache(maxsize=256)
def _scalar_tensor(name: str, value: float, device: torch.device) -> Tensor:
    # cached: a step reuses the tensors of the last steps (kernels never write into them); one per
    # name, since two inputs that are one tensor (lr == weight_decay) are an alias that dynamo guards
    return torch.tensor(value, dtype=torch.float64, device=device)


def run_compiled(kernel: Callable, flags: dict[str, Any], lists: tuple[list[Tensor], ...],
                 scalars: dict[str, float | Tensor]) -> Any:
    """Run the compiled `kernel(*lists, **scalars_as_tensors, **flags)` on one (device, dtype)
    bucket of tensors; `flags` (bools and other structure) select the graph."""
    params = lists[0]
    key = (kernel, params[0].device, params[0].dtype, *flags.values())  # callers pass flags in a fixed order
    fn = _compiled_kernel(kernel, key)
    # a 0-dim float64 tensor goes in as a 1-element view of itself: torch 2.13's inductor does not
    # write back in-place updates of a 0-dim float64 CPU input (a 0-dim float64 param, or a float64
    # step counter, stayed unchanged); the view shares its storage, so the update lands. Only those:
    # a view input costs AOTAutograd's slower path for mutated views (0.25 ms a step on d2l's MLP)
    maybe = params[0].dtype == torch.float64 or torch.get_default_dtype() == torch.float64  # steps follow it
    if maybe and any(t.dim() == 0 and t.dtype == torch.float64 for seq in lists for t in seq):
        lists = tuple([t.view(1) if t.dim() == 0 and t.dtype == torch.float64 else t for t in seq] for seq in lists)
    with torch.no_grad():
        return fn(*lists, **{k: scalar(k, v, params[0]) for k, v in scalars.items()}, **flags)
