"""dlexp's training loop against a bare PyTorch loop and d2l's DataLoader loop, side by side.

The d2l MLP (784-256-10, ReLU) with Adam (lr 0.001), batch 256, one epoch on Fashion-MNIST-shaped
random data (60000 x 1x28x28, 10 classes). All loops run in this process on the same data and are
interleaved; each figure is the median of --repeats epochs. Prints seconds per epoch and the ratios.
Target: dlexp / bare <= 1.05.

    python benchmarks/train_loop.py [--repeats 5] [--impl dlexp|torch]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf
from torch import nn

from dlexp.data import CLASSIFICATION, Splits
from dlexp.train import train


def make_data(n=60000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def d2l_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def bare_epoch(x, y, batch_size=256, seed=0) -> float:
    """Manual index slicing and torch.optim.Adam: the fastest plain loop."""
    torch.manual_seed(seed)
    model = d2l_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    perm = torch.randperm(x.shape[0])
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def dataloader_epoch(x, y, batch_size=256, seed=0) -> float:
    """d2l's loop: a DataLoader over a TensorDataset with shuffle=True."""
    torch.manual_seed(seed)
    model = d2l_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    start = time.perf_counter()
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def dlexp_cfg(impl: str):
    return OmegaConf.create({
        "seed": 0, "name": None, "results_dir": "unused",
        "model": {"name": "mlp", "hidden": [256], "activation": "relu", "dropout": 0.0, "dropout_impl": "torch", "init": "default", "init_std": 0.01},
        "dataset": {"name": "bench"},
        "optimizer": {"name": "adam", "impl": impl, "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "amsgrad": False,
                      "maximize": False, "weight_decay": 0.0, "weight_decay_mode": "coupled", "decay_bias": False},
        "schedule": {"name": "constant", "unit": "epoch"},
        "trainer": {"epochs": 1, "batch_size": 256, "device": "cpu", "deterministic": False, "eval_batch_size": 4096},
    })


def dlexp_epoch(x, y, impl: str) -> float:
    """One epoch through dlexp.train.train (train metrics accumulated as it goes; no val/test split,
    so the comparison is training work against training work)."""
    splits = Splits(task=CLASSIFICATION, num_outputs=10, sample_shape=(1, 28, 28), train=(x, y), val=None, test=None)
    res = train(dlexp_cfg(impl), splits)
    return next(r["value"] for r in res.records if r["metric"] == "epoch_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    x, y = make_data()
    loops = {
        "bare (index slicing, torch.optim.Adam)": lambda: bare_epoch(x, y),
        "d2l DataLoader": lambda: dataloader_epoch(x, y),
        "dlexp train (impl=dlexp)": lambda: dlexp_epoch(x, y, "dlexp"),
        "dlexp train (impl=torch)": lambda: dlexp_epoch(x, y, "torch"),
    }
    for f in loops.values():  # warm-up
        f()
    times = {k: [] for k in loops}
    for i in range(args.repeats):
        for k in list(loops)[:: 1 if i % 2 == 0 else -1]:  # alternate the order: no loop always runs first
            times[k].append(loops[k]())
    med = {k: statistics.median(v) for k, v in times.items()}
    bare = med["bare (index slicing, torch.optim.Adam)"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} epochs")
    print(f"{'loop':42s} {'s/epoch':>8s} {'/ bare':>7s}")
    for k, v in med.items():
        print(f"{k:42s} {v:8.3f} {v / bare:7.3f}")
    ratio = med["dlexp train (impl=dlexp)"] / bare
    print(f"dlexp / bare = {ratio:.3f} (target <= 1.05): {'met' if ratio <= 1.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
