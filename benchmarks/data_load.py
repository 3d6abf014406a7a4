"""Fashion-MNIST load time and peak memory: first load (gzip decode) vs. later loads (decoded cache).

Each load runs in a fresh subprocess with its own empty user cache (XDG_CACHE_HOME in a temporary
folder), so the numbers include the checksum check of the raw files and nothing is warm in Python.
Peak memory is the child's peak resident set (ru_maxrss) minus its resident set after the imports,
compared with the size of the float32 tensors it returns.

    DLEXP_DATA=/path/to/shared/data python benchmarks/data_load.py [--dataset fashion_mnist] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
from omegaconf import OmegaConf
from dlexp.data import load_source
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
base = rss_mb()
t = time.perf_counter()
src = load_source(OmegaConf.create({"name": sys.argv[1], "root": None}))
dt = time.perf_counter() - t
data_mb = sum(v.numel() * v.element_size() for v in (src.x, src.y, src.x_test, src.y_test)) / 2**20
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": dt, "base_mb": base, "peak_mb": peak, "end_mb": rss_mb(), "data_mb": data_mb}))
"""


def run_child(dataset: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, dataset], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env.setdefault("DLEXP_DATA", str((repo / ".." / "shared" / "data").resolve()))
    env.setdefault("DLEXP_OFFLINE", "1")  # measure local loading, never a download
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as cache:
        env["XDG_CACHE_HOME"] = cache
        rows = [("first load (decode + write cache)", run_child(args.dataset, env))]
        rows += [(f"cached load #{i + 1}", run_child(args.dataset, env)) for i in range(args.repeat)]
    print(f"{args.dataset}: DLEXP_DATA={env['DLEXP_DATA']}")
    print(f"{'':36s} {'time s':>7s} {'peak RSS - base MB':>19s} {'data MB':>8s} {'ratio':>6s}")
    for label, r in rows:
        extra = r["peak_mb"] - r["base_mb"]
        print(f"{label:36s} {r['seconds']:7.3f} {extra:19.0f} {r['data_mb']:8.0f} {extra / r['data_mb']:6.2f}")
    first, cached = rows[0][1]["seconds"], min(r["seconds"] for _, r in rows[1:])
    print(f"first / cached load time: {first / cached:.1f}x")


if __name__ == "__main__":
    main()
