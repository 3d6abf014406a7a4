"""dlexp's per-step overhead at batch size 1 (d2l 12.5's SGD on airfoil: 1,500 steps an epoch).

The linear model on the 1,500 standardized airfoil rows (random rows of that shape where the data is
missing), half-MSE loss, SGD lr 0.005, batch 1, one epoch per measurement. Three loops, interleaved
in this process with the order alternating each round; each figure is the median over --repeats
rounds, in microseconds per step:

- bare: index slicing of a random permutation, `torch.optim.SGD`, nothing else (the fastest plain loop);
- d2l: the book's `train_ch11` loop without its evaluations (a DataLoader over a TensorDataset with
  shuffle=True, `sgd` as `p -= lr * grad`);
- dlexp: `dlexp.train.train` (its own `train/epoch_s`, so set-up and file writes are left out).

Prints the figures and the ratios dlexp / bare and dlexp / d2l. One thread, as a batch of one row
cannot use more.

    python benchmarks/step_overhead.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

N, LR = 1500, 0.005


def airfoil():
    """The (x, y) that `dataset=airfoil dataset.test_fraction=0` trains on, or random rows of that shape."""
    from omegaconf import OmegaConf

    from dlexp.data import load_splits
    from dlexp.errors import ConfigError

    os.environ.setdefault("DLEXP_OFFLINE", "1")
    try:
        splits = load_splits(OmegaConf.create({"name": "airfoil", "test_fraction": 0.0, "val_fraction": 0.0}))
        return splits, "airfoil"
    except ConfigError:
        from dlexp.data import REGRESSION, Splits

        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(N, 5, generator=g), torch.randn(N, 1, generator=g)
        return Splits(task=REGRESSION, num_outputs=1, sample_shape=(5,), train=(x, y), val=None, test=None), "random"


def bare_epoch(x, y, seed: int) -> float:
    torch.manual_seed(seed)
    model = nn.Linear(5, 1)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    start = time.perf_counter()
    perm = torch.randperm(N)
    for i in range(N):
        idx = perm[i : i + 1]
        loss = nn.functional.mse_loss(model(x[idx]), y[idx]) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def d2l_epoch(x, y, seed: int) -> float:
    torch.manual_seed(seed)
    w = torch.normal(0.0, 0.01, size=(5, 1), requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y[:, 0]), batch_size=1, shuffle=True)
    start = time.perf_counter()
    for xb, yb in loader:
        y_hat = xb @ w + b
        loss = ((y_hat - yb.reshape(y_hat.shape)) ** 2 / 2).mean()
        loss.backward()
        with torch.no_grad():
            for p in (w, b):
                p -= LR * p.grad
                p.grad.zero_()
    return time.perf_counter() - start


def dlexp_epoch(splits, seed: int) -> float:
    from omegaconf import OmegaConf

    from dlexp.train import train

    cfg = OmegaConf.create({
        "seed": seed, "name": None, "results_dir": "unused",
        "model": {"name": "linear", "init": "normal", "init_std": 0.01},
        "dataset": {"name": "airfoil"},
        "optimizer": {"name": "sgd", "impl": "dlexp", "lr": LR, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
                      "maximize": False, "weight_decay": 0.0, "weight_decay_mode": "coupled", "decay_bias": False},
        "schedule": {"name": "constant", "unit": "epoch"},
        "trainer": {"epochs": 1, "batch_size": 1, "device": "cpu", "deterministic": False, "eval_batch_size": 4096,
                    "loss": "half_mse", "eval_every": 0},
    })
    res = train(cfg, splits)
    return next(r["value"] for r in res.records if r["metric"] == "epoch_s")


def measure(repeats: int) -> tuple[dict[str, list[float]], str]:
    """Seconds per epoch of each loop over `repeats` interleaved rounds, and where the rows came from."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(repeats)
    finally:
        torch.set_num_threads(threads)  # run_all's other measurements keep their threads


def _measure(repeats: int) -> tuple[dict[str, list[float]], str]:
    splits, source = airfoil()
    x, y = splits.train
    loops = {"bare": lambda s: bare_epoch(x, y, s), "d2l": lambda s: d2l_epoch(x, y, s), "dlexp": lambda s: dlexp_epoch(splits, s)}
    for f in loops.values():  # warm-up: first calls pay for lazy imports and allocator growth
        f(0)
    times = {k: [] for k in loops}
    for r in range(repeats):
        order = list(loops) if r % 2 == 0 else list(reversed(loops))
        for k in order:
            times[k].append(loops[k](r))
    return times, source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    times, source = measure(args.repeats)
    us = {k: statistics.median(v) / N * 1e6 for k, v in times.items()}
    print(f"per-step time at batch 1 ({source} rows, {N} steps an epoch, median of {args.repeats} interleaved epochs, 1 thread;"
          f" load average {open('/proc/loadavg').read().split()[0] if os.path.exists('/proc/loadavg') else '?'})")
    for k in times:
        print(f"  {k:6s} {us[k]:7.1f} us/step  {statistics.median(times[k]):.3f} s/epoch  (min {min(times[k]):.3f})")
    print(f"  dlexp / bare = {us['dlexp'] / us['bare']:.3f}   dlexp / d2l = {us['dlexp'] / us['d2l']:.3f}")


if __name__ == "__main__":
    main()
