"""Time one `optimizer.step()` on the d2l MLP's parameters: dlexp vs torch.optim.

Parameters are those of d2l's 784-256-10 MLP (weights 256x784, bias 256, weights 10x256, bias 10;
float32, random gradients that stay fixed). For each algorithm: dlexp (default = foreach fast path),
torch foreach=True, torch fused=True (where torch has a fused CPU kernel), torch foreach=False (the
for-loop, torch's own default on the CPU). Median of many repetitions, variants interleaved so that
machine load hits them alike; no assertions.

    python benchmarks/optim_step.py [--reps 400] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dlexp.optim import OPTIMIZERS

SHAPES = [(256, 784), (256,), (10, 256), (10,)]
KWARGS = {  # switch on the options that cost work (momentum buffers, centered, ...)
    "sgd": dict(lr=0.1, momentum=0.9),
    "adagrad": dict(lr=0.01),
    "rmsprop": dict(lr=0.01, momentum=0.9, centered=True),
    "adadelta": dict(lr=1.0),
    "adam": dict(lr=1e-3),
    "adamw": dict(lr=1e-3),
}


def make_params() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return params


def variants(name: str):
    spec, kw = OPTIMIZERS[name], KWARGS[name]
    yield "dlexp", lambda ps: spec.cls(ps, **kw)
    yield "torch foreach", lambda ps: spec.torch_cls(ps, foreach=True, **kw)
    if "fused" in spec.torch_cls.__init__.__code__.co_varnames:
        yield "torch fused", lambda ps: spec.torch_cls(ps, fused=True, **kw)
    yield "torch for-loop", lambda ps: spec.torch_cls(ps, foreach=False, **kw)


def time_steps(opts: dict[str, torch.optim.Optimizer], reps: int) -> dict[str, float]:
    """Median seconds per step for each optimizer, measured round-robin."""
    times: dict[str, list[float]] = {k: [] for k in opts}
    for opt in opts.values():  # warm-up: state creation, first-call dispatch
        for _ in range(10):
            opt.step()
    for _ in range(reps):
        for k, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.reps} reps, median")
    header = f"{'optimizer':<9} {'dlexp':>8} {'foreach':>8} {'fused':>8} {'for-loop':>8}   {'dlexp/foreach':>13} {'dlexp/fused':>11}"
    print(header + "\n" + "-" * len(header) + "   (ms/step)")
    for name in OPTIMIZERS:
        opts = {label: make(make_params()) for label, make in variants(name)}
        med = {k: v * 1e3 for k, v in time_steps(opts, args.reps).items()}
        fused = med.get("torch fused")
        print(
            f"{name:<9} {med['dlexp']:8.3f} {med['torch foreach']:8.3f} "
            f"{fused if fused is not None else float('nan'):8.3f} {med['torch for-loop']:8.3f}   "
            f"{med['dlexp'] / med['torch foreach']:13.2f} "
            f"{(med['dlexp'] / fused) if fused else float('nan'):11.2f}"
        )


if __name__ == "__main__":
    main()
