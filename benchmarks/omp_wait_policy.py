"""OpenMP's wait policy (OMP_WAIT_POLICY unset / PASSIVE / ACTIVE) x torch threads (1, 2), on an idle
machine and on one where other processes burn one or two cores: seconds per bare Fashion-MNIST epoch.

OpenMP reads the policy once, when torch loads it, so every measurement is a fresh process. The
epoch is train_loop.py's bare loop (d2l's MLP 784-256-10, Adam, batch 256, index slicing) on the real
Fashion-MNIST training images ($DLEXP_DATA), or on random data of that shape where they are missing.
Each child runs a short warm-up and then one timed epoch. Within a load condition the cells are
interleaved, round by round, in alternating order; the table gives the median of --rounds epochs and
its ratio to the unset policy with the same threads and load. The load average is printed beside
each condition: other users of the machine load it too.

    DLEXP_DATA=../shared/data python benchmarks/omp_wait_policy.py [--rounds 3] [--loads 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
POLICIES = ("unset", "PASSIVE", "ACTIVE")

CHILD = r"""
import json, os, sys, time
import torch
sys.path.insert(0, sys.argv[2])
import train_loop as tl
torch.set_num_threads(int(sys.argv[1]))
source = "random"
try:
    from omegaconf import OmegaConf
    from dlexp.data import load_source
    src = load_source(OmegaConf.create({"name": "fashion_mnist", "root": None}))
    x, y, source = src.x, src.y, "fashion_mnist"
except Exception:
    x, y = tl.make_data()
tl.bare_epoch(x[:5120], y[:5120])  # warm-up: 20 batches (allocator, OpenMP thread pool)
seconds = tl.bare_epoch(x, y)
print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads(), "source": source, "n": int(x.shape[0])}))
"""


def burner() -> subprocess.Popen:
    """A process that keeps one core busy (another user's job on a shared machine)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def epoch(threads: int, policy: str, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    env.setdefault("DLEXP_DATA", str((REPO / ".." / "shared" / "data").resolve()))
    env["DLEXP_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(HERE)], env=env, capture_output=True,
                             text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"seconds": float("inf"), "source": "timeout"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loads", default="0,1,2", help="burning processes per condition (0 = idle)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--timeout", type=float, default=300, help="seconds before one epoch counts as inf")
    ap.add_argument("--json", help="also write the raw measurements here")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` still stops the burners (finally below)
    cells = [(t, p) for t in (int(x) for x in args.threads.split(",")) for p in POLICIES]
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.rounds} rounds; cell = one fresh process, one timed epoch")
    raw: dict[str, dict[str, list[float]]] = {}
    info: dict[str, str] = {}
    source = "?"
    for load in (int(x) for x in args.loads.split(",")):
        name = "idle" if load == 0 else f"{load} core{'s' if load > 1 else ''} busy"
        burners = [burner() for _ in range(load)]
        try:
            time.sleep(1.0 if load else 0.0)
            before = loadavg()
            times: dict[str, list[float]] = {f"{t}|{p}": [] for t, p in cells}
            for r in range(args.rounds):
                for t, p in cells[:: 1 if r % 2 == 0 else -1]:  # alternate the order: no cell always runs first
                    res = epoch(t, p, args.timeout)
                    source = res.get("source", source)
                    times[f"{t}|{p}"].append(res["seconds"])
                    print(f"  {name:14s} threads={t} {p:8s} round {r + 1}: {res['seconds']:.2f} s", file=sys.stderr, flush=True)
            raw[name] = times
            info[name] = f"load average {before} -> {loadavg()}"
        finally:
            for b in burners:
                b.kill()
                b.wait()
    print(f"data: {source}")
    print(f"{'machine':16s} {'threads':>7s} {'OMP_WAIT_POLICY':>15s} {'s/epoch':>8s} {'/ unset':>8s} {'min':>7s} {'max':>7s}")
    for name, times in raw.items():
        for t in sorted({int(k.split('|')[0]) for k in times}):
            unset = statistics.median(times[f"{t}|unset"])
            for p in POLICIES:
                v = times[f"{t}|{p}"]
                med = statistics.median(v)
                print(f"{name:16s} {t:7d} {p:>15s} {med:8.2f} {med / unset:8.2f} {min(v):7.2f} {max(v):7.2f}")
        print(f"{'':16s} ({info[name]})")
    if args.json:
        Path(args.json).write_text(json.dumps({"raw": raw, "info": info, "source": source}, indent=2))


if __name__ == "__main__":
    main()
