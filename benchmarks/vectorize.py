"""Vectorized runs (issue 14, part 2): member-epochs per second of a stacked group against the same
runs trained one after another, and the whole `dlexp run -m` command with and without --vectorize.

- In-process (`dlexp.train.train`): N members (their own seeds, two learning rates) trained as one
  group (`train` given lists), against the same runs trained one by one; N = 1, 4, 16, 64 on digits
  (the default MLP 64-256-10, batch 64, 3 epochs) and on Fashion-MNIST (d2l's MLP 784-256-10, batch
  256, 1 epoch of the first 6,000 training images: the shape of each step is the full data set's, the
  epoch shorter). The sequential side's member-epochs per second do not depend on N: each round times
  min(N, 4) single runs, paired with the group of N, the order alternating between rounds; the ratio
  is the median over rounds of the paired ratio.
- The rule `dlexp.vectorize.pays` uses: the same pairs (N = 16) on digits at batch 64, 256 and 1024
  and on Fashion-MNIST MLPs of 64 and 128 hidden units and d2l's 256 at batch 64 and 256, each printed
  with a member's parameters, its multiply-adds per step, and what the rule decides for it.
- The whole command: `dlexp run -m 'seed=range(0,16)' 'optimizer.lr=0.1,0.05' trainer.epochs=20`
  with and without --vectorize, in fresh results folders, order alternating.

Threads: `--threads` (default 1) for the in-process measurements; the commands run with dlexp's own
default (the cores this process may use). Print the load average beside the figures: the machine
may be shared.

    python benchmarks/vectorize.py [--rounds 3] [--only inprocess,rule,command]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DLEXP_DATA") or REPO / ".." / "shared" / "data").resolve()
PROBLEMS = {
    "digits": ["dataset=digits", "trainer.batch_size=64", "trainer.epochs=3"],
    "fashion_mnist": ["dataset=fashion_mnist", "dataset.num_train=6000", "trainer.batch_size=256", "trainer.epochs=1"],
}
SIZES = (1, 4, 16, 64)


def configs(problem: list[str], n: int, extra: tuple[str, ...] = ()) -> list:
    from dlexp.config import compose

    common = [*problem, "trainer.device=cpu", "results_dir=/tmp/unused", "trainer.checkpoint_every=0", *extra]
    return [compose([*common, f"seed={i}", f"optimizer.lr={0.1 if i % 2 else 0.05}"]) for i in range(n)]


def paired(problem: list[str], n: int, rounds: int, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Member-epochs per second, grouped and sequential, their paired ratio (median over rounds), and
    whether --vectorize stacks this shape (`dlexp.vectorize.pays`)."""
    import torch

    from dlexp.data import load_splits
    from dlexp.train import train
    from dlexp.vectorize import pays

    cfgs = configs(problem, n, extra)
    splits = load_splits(cfgs[0].dataset)
    epochs = int(cfgs[0].trainer.epochs)
    seq_cfgs = cfgs[: min(n, 4)]
    train(cfgs[:2], [splits] * 2)  # warm up (first-call costs of both paths)
    train(cfgs[0], splits)
    grouped, sequential = [], []
    for r in range(rounds):
        for side in (("group", "seq") if r % 2 == 0 else ("seq", "group")):
            t0 = time.perf_counter()
            if side == "group":
                train(cfgs, [splits] * n)
                grouped.append(n * epochs / (time.perf_counter() - t0))
            else:
                for c in seq_cfgs:
                    train(c, splits)
                sequential.append(len(seq_cfgs) * epochs / (time.perf_counter() - t0))
    ratio = statistics.median(g / s for g, s in zip(grouped, sequential))
    return {"group": statistics.median(grouped), "seq": statistics.median(sequential), "ratio": ratio,
            "stacks": pays(cfgs[0], splits, torch.device("cpu"))}


def inprocess(rounds: int, sizes: tuple[int, ...] = SIZES) -> list[dict]:
    rows = []
    for name, problem in PROBLEMS.items():
        if name != "digits" and not DATA.is_dir():
            continue
        for n in sizes:
            r = paired(problem, n, rounds)
            rows.append({"problem": name, "n": n, **r})
            print(f"{name:>13} N={n:<3} group {r['group']:8.1f} seq {r['seq']:8.1f} member-epochs/s  ratio {r['ratio']:.2f}"
                  f"  {'stacked' if r['stacks'] else 'alone'} under --vectorize  (load {os.getloadavg()[0]:.1f})", flush=True)
    return rows


def rule(rounds: int) -> list[dict]:
    """The pairs behind `dlexp.vectorize.pays`, each printed with what the rule decides for its shape."""
    from dlexp.data import load_splits
    from dlexp.vectorize import step_work

    rows = []
    shapes = [("digits", PROBLEMS["digits"], (f"trainer.batch_size={b}",)) for b in (64, 256, 1024)] + [
        ("fashion_mnist", PROBLEMS["fashion_mnist"], extra) for extra in (
            ("model.hidden=[64]", "trainer.batch_size=256"), ("model.hidden=[128]", "trainer.batch_size=64"),
            ("trainer.batch_size=64",), ("trainer.batch_size=256",))]
    for name, problem, extra in shapes:
        if name != "digits" and not DATA.is_dir():
            continue
        cfg = configs(problem, 1, extra)[0]
        params, work = step_work(cfg, load_splits(cfg.dataset))
        r = paired(problem, 16, rounds, extra)
        rows.append({"problem": name, "shape": " ".join(extra), "params": params, "work": work, **r})
        print(f"{name:>13} {' '.join(extra):<42} {params / 1e3:5.0f} k parameters {work / 1e6:5.1f} M multiply-adds a step"
              f"  N=16 ratio {r['ratio']:.2f}  --vectorize {'stacks it' if r['stacks'] else 'runs it alone'}"
              f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    return rows


def command(rounds: int, epochs: int = 20) -> dict[str, float]:
    """Wall time of the whole grid command, plain and --vectorize, each in a fresh results folder; the
    ratio is the median of the paired ratios (plain / --vectorize), the order alternating."""
    env = {**os.environ, "DLEXP_OFFLINE": "1", "DLEXP_DATA": str(DATA)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    grid = ["-m", "seed=range(0,16)", "optimizer.lr=0.1,0.05", f"trainer.epochs={epochs}", "--quiet"]
    walls: dict[str, list[float]] = {"vectorize": [], "plain": []}
    with tempfile.TemporaryDirectory() as cwd:
        for r in range(rounds):
            for side in (("vectorize", "plain") if r % 2 == 0 else ("plain", "vectorize")):
                with tempfile.TemporaryDirectory(dir=cwd) as out:
                    t0 = time.perf_counter()
                    p = subprocess.run([sys.executable, "-m", "dlexp", "run", *grid, f"results_dir={out}",
                                        *(["--vectorize"] if side == "vectorize" else [])], cwd=cwd, env=env, capture_output=True, text=True)
                    walls[side].append(time.perf_counter() - t0)
                    if p.returncode != 0:
                        raise RuntimeError(p.stderr[-2000:])
            print(f"command round {r + 1}: plain {walls['plain'][-1]:.1f} s, --vectorize {walls['vectorize'][-1]:.1f} s"
                  f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    ratio = statistics.median(a / b for a, b in zip(walls["plain"], walls["vectorize"]))
    return {"plain": statistics.median(walls["plain"]), "vectorize": statistics.median(walls["vectorize"]), "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the in-process measurements")
    ap.add_argument("--only", default="inprocess,rule,command")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="group sizes N of the in-process part")
    ap.add_argument("--epochs", type=int, default=20, help="trainer.epochs of the whole command")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    parts = args.only.split(",")
    if "inprocess" in parts:
        inprocess(args.rounds, tuple(int(n) for n in args.sizes.split(",")))
    if "rule" in parts:
        rule(args.rounds)
    if "command" in parts:
        r = command(args.rounds, args.epochs)
        print(f"whole command: plain {r['plain']:.1f} s, --vectorize {r['vectorize']:.1f} s, ratio {r['ratio']:.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
