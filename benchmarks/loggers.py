"""What `trainer.loggers` costs a run: none / tensorboard / mlflow (the default SQLite store) / mlflow
with a server that is down (a closed port on 127.0.0.1), side by side.

Each measurement is a fresh `python -m dlexp run` (the loggers' imports and the MLflow store's set-up
are part of the cost), interleaved round by round in alternating order. Printed per variant, as
medians with their ratio to the run without loggers: the time spent in epochs (what a logger that
slows training would stretch), the run's duration (summary.json `duration_s`: the loggers' start
included) and the process wall time (start-up and the end-of-run wait for the logger included). The MLflow store is made before the first round, as after a user's first run.

    python benchmarks/loggers.py [--rounds 5] [--epochs 10]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(results: Path, epochs: int, extra: list[str]) -> tuple[float, float, float, int]:
    """(seconds in epochs, run seconds, process wall seconds, warnings on stderr) of one run."""
    before = set((results / "runs").iterdir()) if (results / "runs").is_dir() else set()
    env = {**os.environ, "DLEXP_OFFLINE": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "dlexp", "run", f"trainer.epochs={epochs}", "trainer.device=cpu",
                        f"results_dir={results}", "--quiet", *extra], env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"run failed ({extra}): {p.stderr}")
    (new,) = set((results / "runs").iterdir()) - before
    summary = json.loads((new / "summary.json").read_text())
    with open(new / "metrics.csv", newline="") as f:
        epochs_s = sum(float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "epoch_s")
    return epochs_s, summary["duration_s"], wall, sum(line.startswith("warning:") for line in p.stderr.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    down = f"http://127.0.0.1:{closed_port()}"
    variants = {
        "none": [],
        "tensorboard": ["trainer.loggers=[tensorboard]"],
        "mlflow (SQLite)": ["trainer.loggers=[mlflow]"],
        "mlflow (server down)": ["trainer.loggers=[mlflow]", f"trainer.mlflow_uri={down}"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        run(results, 1, variants["mlflow (SQLite)"])  # creates the MLflow store, as a user's first run does
        times = {k: [] for k in variants}
        warned = {k: 0 for k in variants}
        for r in range(args.rounds):
            for k in list(variants)[:: 1 if r % 2 == 0 else -1]:  # alternate the order: no variant always runs first
                *seconds, warnings = run(results, args.epochs, variants[k])
                times[k].append(seconds)
                warned[k] += warnings
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in times.items()}
    print(f"dlexp run, MLP on digits, {args.epochs} epochs, median of {args.rounds} interleaved rounds; load average {load}")
    print("epochs: the epochs' own time (train/epoch_s); run: summary.json duration_s (+ the loggers' start);"
          " wall: the whole process")
    print(f"{'loggers':22s} {'epochs s':>9s} {'/ none':>7s} {'run s':>7s} {'/ none':>7s} {'wall s':>7s} {'/ none':>7s} {'warnings/run':>13s}")
    for k, (ep, rn, wall) in med.items():
        b = med["none"]
        print(f"{k:22s} {ep:9.2f} {ep / b[0]:7.2f} {rn:7.2f} {rn / b[1]:7.2f} {wall:7.2f} {wall / b[2]:7.2f} {warned[k] / args.rounds:13.1f}")


if __name__ == "__main__":
    main()
