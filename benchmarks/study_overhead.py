"""What a study pays around its training (issue 14, part 1): the cost of an extra grid point, --jobs 2
against one process, and the peak memory of a Fashion-MNIST run.

- Extra grid point: `dlexp run -m 'seed=range(0,N)'` on digits (1 epoch) for N = 1 and N = 1 + K, in
  fresh results folders; (wall(1 + K) - wall(1) - the K extra runs' own training time) / K. Rounds
  alternate the order. `--python` measures another checkout's dlexp too (the code before a change),
  interleaved with this one.
- --jobs 2 / sequential: the wall time of the same 10-point grid, paired and order-alternating.
- Memory: a child process loads Fashion-MNIST the way `dlexp run` does and trains one epoch; its peak
  resident memory above what it held after the imports, over the size of the data's tensors. Twice:
  above the module-level imports only, and above a process that has first trained once on 1,000
  images (so that the lazy imports and one-time set-up, about 100 MB whatever the data, are not
  counted as the data's).

    python benchmarks/study_overhead.py [--rounds 3] [--python /path/to/other/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DLEXP_DATA") or REPO / ".." / "shared" / "data").resolve()


def grid_wall(python: str, n: int, extra: list[str], cwd: str, env: dict) -> tuple[float, float]:
    """(wall time, sum of the runs' training time) of an n-point digits grid in a fresh results folder."""
    with tempfile.TemporaryDirectory(dir=cwd) as out:
        t0 = time.perf_counter()
        p = subprocess.run([python, "-m", "dlexp", "run", "-m", f"seed=range(0,{n})", "trainer.epochs=1", "trainer.device=cpu",
                            f"results_dir={out}", "-q", *extra], cwd=cwd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        train = sum(json.loads(s.read_text())["duration_s"] for s in Path(out, "runs").glob("*/summary.json"))
    return wall, train


def extra_point_cost(pythons: dict[str, tuple[str, dict]], k: int, rounds: int) -> dict[str, float]:
    costs: dict[str, list[float]] = {name: [] for name in pythons}
    with tempfile.TemporaryDirectory() as cwd:
        for r in range(rounds):
            for name in list(pythons)[:: 1 if r % 2 == 0 else -1]:
                python, env = pythons[name]
                one, train_one = grid_wall(python, 1, [], cwd, env)
                many, train = grid_wall(python, 1 + k, [], cwd, env)
                costs[name].append((many - one - (train - train_one)) / k)
    return {name: statistics.median(v) for name, v in costs.items()}


def jobs_ratio(python: str, n: int, rounds: int, env: dict) -> tuple[float, float, float]:
    ratios, seq, par = [], [], []
    with tempfile.TemporaryDirectory() as cwd:
        for r in range(rounds):
            order = [1, 2] if r % 2 == 0 else [2, 1]
            t = {}
            for jobs in order:
                t[jobs], _ = grid_wall(python, n, ["trainer.epochs=2", "--jobs", str(jobs)], cwd, env)
            ratios.append(t[2] / t[1])
            seq.append(t[1])
            par.append(t[2])
    return statistics.median(ratios), statistics.median(seq), statistics.median(par)


MEMORY_CHILD = r"""
import json, resource, sys
import torch
from omegaconf import OmegaConf
from dlexp.config import compose
from dlexp.data import load_splits
from dlexp.train import train
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
cfg = compose(["dataset=fashion_mnist", "model.hidden=[256]", "trainer.epochs=1", "trainer.batch_size=256", "trainer.device=cpu"])
if sys.argv[1:] == ["warm"]:
    # the lazy imports and one-time set-up of a run (about 100 MB) paid first, on 1,000 images: what is
    # then measured is what the data's size brings
    warm = compose(["dataset=fashion_mnist", "dataset.num_train=1000", "dataset.num_test=100", "model.hidden=[256]",
                    "trainer.epochs=1", "trainer.batch_size=256", "trainer.device=cpu"])
    train(warm, load_splits(warm.dataset))
base = rss_mb()
splits = load_splits(cfg.dataset)
tensors = [t for pair in (splits.train, splits.val, splits.test) if pair for t in pair]
data_mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
train(cfg, splits)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mb": base, "peak_mb": peak, "data_mb": data_mb}))
"""


def memory_ratio(python: str, env: dict, warm: bool = False) -> dict[str, float]:
    p = subprocess.run([python, "-c", MEMORY_CHILD, *(["warm"] if warm else [])], env=env, capture_output=True, text=True, check=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["ratio"] = (r["peak_mb"] - r["base_mb"]) / r["data_mb"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--points", type=int, default=20, help="extra grid points (K)")
    ap.add_argument("--python", help="another checkout's python (its dlexp), measured beside this one")
    args = ap.parse_args()
    env = {**os.environ, "DLEXP_OFFLINE": "1", "DLEXP_DATA": str(DATA)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    pythons = {"this": (sys.executable, env)}
    if args.python:  # its own dlexp (installed in that environment), not this checkout's
        pythons["other"] = (args.python, {k: v for k, v in env.items() if k != "PYTHONPATH"})
    cost = extra_point_cost(pythons, args.points, args.rounds)
    for name, c in cost.items():
        print(f"extra grid point beyond its training ({name}): {c * 1e3:.0f} ms")
    ratio, seq, par = jobs_ratio(sys.executable, 10, args.rounds, env)
    print(f"--jobs 2 / sequential, 10 digits runs of 2 epochs: {ratio:.2f} ({par:.2f} s vs {seq:.2f} s)")
    if DATA.is_dir():
        m = memory_ratio(sys.executable, env)
        print(f"Fashion-MNIST run peak memory above the imports / data size: {m['ratio']:.2f} "
              f"({m['peak_mb'] - m['base_mb']:.0f} MB over {m['data_mb']:.0f} MB of tensors; the module-level imports only)")
        warm = sorted(memory_ratio(sys.executable, env, warm=True)["ratio"] for _ in range(max(3, args.rounds)))
        print(f"  the same above a process that has run once on 1,000 images (every lazy import and one-time "
              f"set-up done): median {statistics.median(warm):.2f} of {len(warm)} processes (range {warm[0]:.2f}-{warm[-1]:.2f})")


if __name__ == "__main__":
    main()
