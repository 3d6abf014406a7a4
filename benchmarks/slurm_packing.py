"""What `runs_per_job` saves on Slurm: N small runs as N one-run jobs against the same N runs
packed into as many jobs as the node has CPUs.

Each job start costs a Python process and dlexp's imports (about 2 s); packing pays it once per
job instead of once per run. Both sides run the same one-epoch digits runs through
`dlexp.launchers.slurm` on the same cluster, interleaved and in alternating order; printed: the
median wall time of each side (submit to every run done), their ratio, and the cost per run.
Nothing is asserted.

    python benchmarks/slurm_packing.py                 # a throwaway one-node cluster (tests/slurm_cluster.py, as root)
    python benchmarks/slurm_packing.py --running       # the cluster SLURM_CONF / the login node already points at
    python benchmarks/slurm_packing.py --runs 8 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def cluster(running: bool):
    if running:
        yield None
        return
    sys.path.insert(0, str(REPO / "tests"))
    import slurm_cluster as sc

    missing = sc.missing_programs()
    if missing:
        sys.exit(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge, or --running")
    sc.reap_stale()
    base = Path(tempfile.mkdtemp(prefix=sc.PREFIX))
    os.chmod(base, 0o755)
    (base / "owner").write_text(f"{os.getpid()} {sc._start_time(os.getpid())}\n")
    c = sc.write_config(base)
    os.environ["SLURM_CONF"] = str(c.conf)
    t0 = time.perf_counter()
    try:
        c.start()
        print(f"one-node cluster up in {time.perf_counter() - t0:.1f} s ({c.cpus} CPUs)")
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


def one_side(runs: int, per_job: int, root: Path) -> float:
    from dlexp.launchers import slurm

    results = root / f"k{per_job}-{time.monotonic_ns()}"
    items = [["run", "trainer.epochs=1", "trainer.batch_size=512", "trainer.device=cpu", f"seed={s}",
              f"results_dir={results}", "--quiet"] for s in range(runs)]
    t0 = time.perf_counter()
    batch = slurm.submit(slurm.run_cli, items, slurm.SlurmOptions(runs_per_job=per_job, poll_s=0.2), results / "slurm")
    done = batch.wait(poll_s=0.2)
    seconds = time.perf_counter() - t0
    bad = [r for r in done if r.status != "done"]
    if bad:
        sys.exit(f"run {bad[0].index} ended {bad[0].status}: {bad[0].error}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--running", action="store_true", help="use the cluster this machine already submits to")
    args = ap.parse_args()
    with cluster(args.running) as c, tempfile.TemporaryDirectory(prefix="dlexp-bench-", dir=os.getcwd() if args.running else None) as tmp:
        cpus = c.cpus if c is not None else 2
        packed = max(1, -(-args.runs // cpus))  # ceil: as many jobs as CPUs
        times: dict[int, list[float]] = {1: [], packed: []}
        for r in range(args.rounds):
            order = [1, packed] if r % 2 == 0 else [packed, 1]
            for k in order:
                times[k].append(one_side(args.runs, k, Path(tmp)))
            print(f"round {r + 1}: " + ", ".join(f"{k} run(s)/job {times[k][-1]:.1f} s" for k in (1, packed)), flush=True)
    one, many = statistics.median(times[1]), statistics.median(times[packed])
    print(f"{args.runs} one-epoch digits runs, median of {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}:")
    print(f"  1 run per job:       {one:6.1f} s  ({one / args.runs:.2f} s per run)")
    print(f"  {packed} runs per job:      {many:6.1f} s  ({many / args.runs:.2f} s per run)")
    print(f"  packed / one per job: {many / one:.3f}")


if __name__ == "__main__":
    main()
