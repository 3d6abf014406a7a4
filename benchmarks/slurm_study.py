"""What a grid costs on Slurm through the study engine: `dlexp run -m ... --launcher slurm`, one run
per job and packed, against the same grid on this machine with `--jobs` (as many as the cluster's CPUs).

Each side is the real command (`python -m dlexp`, submit to the last run done, the table printed),
on the same one-epoch digits points, in fresh results folders; the sides are interleaved and their
order rotates from round to round. Printed: the median wall time of each side, its ratio to the
local one, and the cost per point. Nothing is asserted.

    python benchmarks/slurm_study.py                 # a throwaway one-node cluster (tests/slurm_cluster.py, as root)
    python benchmarks/slurm_study.py --running       # the cluster SLURM_CONF / the login node already points at
    python benchmarks/slurm_study.py --points 8 --rounds 3
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_packing import cluster  # noqa: E402  (the throwaway cluster of the packing benchmark)


def one_side(points: int, side: str, root: Path, conf: Path, cpus: int) -> float:
    results = root / f"{side}-{time.monotonic_ns()}"
    grid = ["run", "-m", f"seed=range(0,{points})", "trainer.epochs=1", "trainer.batch_size=512", "trainer.device=cpu",
            "trainer.threads=1", f"results_dir={results}", "--quiet", "--config-dir", str(conf)]
    if side == "local":
        extra = ["--jobs", str(cpus)]
    else:
        extra = ["--launcher", "slurm", "--runs-per-job", side.split("x")[1]]
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "dlexp", *grid, *extra], capture_output=True, text=True,
                       env={**os.environ, "DLEXP_OFFLINE": "1"})
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{side}: exit {p.returncode}: {p.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--running", action="store_true", help="use the cluster this machine already submits to")
    args = ap.parse_args()
    with cluster(args.running) as c, tempfile.TemporaryDirectory(prefix="dlexp-bench-", dir=os.getcwd() if args.running else None) as tmp:
        cpus = c.cpus if c is not None else 2
        conf = Path(tmp) / "conf"
        (conf / "launcher").mkdir(parents=True)
        # look at the queue every 0.5 s (the default, 5 s, suits a real cluster and would dominate here)
        (conf / "launcher" / "slurm.yaml").write_text("# benchmark: look at the queue often\npoll_s: 0.5\n")
        packed = max(1, -(-args.points // cpus))  # ceil: as many jobs as CPUs
        sides = ["local", "slurm-x1", f"slurm-x{packed}"]
        times: dict[str, list[float]] = {s: [] for s in sides}
        for r in range(args.rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for side in order:
                times[side].append(one_side(args.points, side, Path(tmp), conf, cpus))
            print(f"round {r + 1}: " + ", ".join(f"{s} {times[s][-1]:.1f} s" for s in sides), flush=True)
    local = statistics.median(times["local"])
    print(f"{args.points} one-epoch digits points, median of {args.rounds} rounds, {cpus} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}:")
    for s in sides:
        m = statistics.median(times[s])
        what = f"--jobs {cpus} on this machine" if s == "local" else f"--launcher slurm --runs-per-job {s.split('x')[1]}"
        print(f"  {what:40s} {m:6.1f} s  ({m / args.points:.2f} s per point, {m / local:.2f} x local)")


if __name__ == "__main__":
    main()
