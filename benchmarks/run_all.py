"""dlexp's benchmark suite: one table of where dlexp stands, each row measured side by side.

Every ratio compares two things measured in the same process (or the same run), interleaved, so a
busy machine slows both sides alike; absolute times are printed for context only. Runs in a few
minutes on a 2-core CPU machine. Nothing here is a test: targets are printed, never asserted.

    python benchmarks/run_all.py            # everything
    python benchmarks/run_all.py --only train_loop,optim_step
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
DATA = Path(os.environ.get("DLEXP_DATA") or REPO / ".." / "shared" / "data").resolve()


def row(name: str, value: float, target: str | None, ok: bool | None, note: str = "") -> dict:
    return {"measurement": name, "value": value, "target": target or "", "met": "" if ok is None else ("yes" if ok else "NO"), "note": note}


def bench_train_loop(repeats: int) -> list[dict]:
    import train_loop as tl

    x, y = tl.make_data()
    loops = {
        "bare": lambda: tl.bare_epoch(x, y),
        "dataloader": lambda: tl.dataloader_epoch(x, y),
        "dlexp": lambda: tl.dlexp_epoch(x, y, "dlexp"),
        "dlexp_torch": lambda: tl.dlexp_epoch(x, y, "torch"),
    }
    for f in loops.values():
        f()
    rounds = 2 * repeats + 1  # an epoch is ~0.6 s: single epochs on a shared 2-core VM vary by 10-20%
    t = {k: [] for k in loops}
    for i in range(rounds):
        for k in list(loops)[:: 1 if i % 2 == 0 else -1]:  # alternate the order: no loop always runs first
            t[k].append(loops[k]())
    m = {k: statistics.median(v) for k, v in t.items()}
    # the ratio: median over rounds of the paired ratio (each round runs every loop back to back)
    r = {k: statistics.median(a / b for a, b in zip(t[k], t[ref])) for k, ref in
         (("dlexp", "bare"), ("dlexp_torch", "bare"), ("dataloader", "bare"))}
    return [
        row("dlexp epoch / bare loop (d2l MLP, Adam, FMNIST-shaped)", r["dlexp"], "<= 1.05", r["dlexp"] <= 1.05,
            f"{m['dlexp']:.2f} s vs {m['bare']:.2f} s per epoch, {rounds} rounds"),
        row("dlexp epoch (impl=torch) / bare loop", r["dlexp_torch"], None, None, f"{m['dlexp_torch']:.2f} s"),
        row("dlexp epoch / d2l DataLoader loop", r["dlexp"] / r["dataloader"], None, None, f"DataLoader {m['dataloader']:.2f} s"),
    ]


def bench_step_overhead(repeats: int) -> list[dict]:
    import step_overhead as so

    rounds = 2 * repeats + 1
    t, source = so.measure(rounds)
    r = {ref: statistics.median(a / b for a, b in zip(t["dlexp"], t[ref])) for ref in ("bare", "d2l")}
    us = statistics.median(t["dlexp"]) / so.N * 1e6
    return [
        row("dlexp step / bare loop step at batch 1 (airfoil SGD)", r["bare"], "<= 1.05", r["bare"] <= 1.05,
            f"{us:.0f} us/step, {rounds} epochs of {so.N} steps, {source} rows, 1 thread"),
        row("dlexp step / d2l train_ch11 step at batch 1", r["d2l"], None, None, "DataLoader + in-place p -= lr * grad"),
    ]


def bench_optim_step(reps: int) -> list[dict]:
    import torch

    import optim_step as os_

    rows = []
    threads = torch.get_num_threads()
    for name in os_.OPTIMIZERS:
        m = os_.measure(name, reps)
        ms = m["ms"]
        ratio = m["dlexp_vs_foreach"]
        note = f"{ms['dlexp']:.3f} ms/step vs {ms['torch foreach']:.3f}"
        rows.append(row(f"{name} step / torch foreach step", ratio, "<= 1.0", ratio <= 1.0, note))
        fused, target = m["fused_vs_ref"], m["target"]
        note = f"{ms['dlexp fused']:.3f} ms/step vs {ms[m['ref']]:.3f}"
        rows.append(row(f"{name} fused=True step / {m['ref']} step", fused, f"<= {target:.2f}", fused <= target, note))
    cold, warm = os_.build_seconds(threads)
    rows.append(row("fused=True kernels: build, first step with an empty cache (s)", cold, None, None,
                    f"{warm * 1e3:.0f} ms once built (a fresh process, Adam)"))
    return rows


def _dlexp(*args: str, cwd: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlexp", *args], cwd=cwd, env=env, capture_output=True, text=True)


def bench_cli(repeats: int) -> list[dict]:
    env = {**os.environ, "DLEXP_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        helps = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dlexp", "--help"], cwd=tmp, env=env, capture_output=True, check=True)
            helps.append(time.perf_counter() - t0)
        starts = []
        for i in range(repeats):
            t0 = time.time()
            p = _dlexp("run", "-q", "trainer.epochs=1", f"results_dir={tmp}/r{i}", cwd=tmp, env=env)
            assert p.returncode == 0, p.stderr
            meta = json.loads(next(Path(tmp, f"r{i}", "runs").glob("*/meta.json")).read_text())
            starts.append(meta["started_unix"] - t0)
    h, s = statistics.median(helps), statistics.median(starts)
    return [
        row("dlexp --help wall time (s)", h, "<= 0.5", h <= 0.5),
        row("dlexp run: process start to first batch (s)", s, "<= 3", s <= 3, "digits, default config"),
    ]


def bench_kfold(repeats: int) -> list[dict]:
    import numpy as np
    import torch

    import kfold_cost as kc

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = kc.compose(["dataset=house_prices", "model=linear", "optimizer=adam", "optimizer.lr=5",
                          "trainer.batch_size=64", "trainer.epochs=20", "trainer.device=cpu", f"results_dir={tmp}"])
        source = kc.load_source(cfg.dataset)
        folds = kc.make_folds(source, 5, seed=0)
        metric = kc.default_metric(source)[0]
        kc.kfold(cfg, source, folds, metric), kc.singles(cfg, source, folds)
        ratios = []
        for r in range(repeats):
            a = kc.kfold(cfg, source, folds, metric)
            b = kc.singles(cfg, source, folds, seed=r)
            ratios.append(a / b)
    torch.set_num_threads(os.cpu_count() or 1)
    m = float(np.median(ratios))
    return [row("kfold (K=5) / 5 single runs", m, "<= 1.05", m <= 1.05, f"house prices, median of {repeats} paired rounds")]


def bench_data_load(repeats: int) -> list[dict]:
    import data_load as dl

    env = {**os.environ, "DLEXP_DATA": str(DATA), "DLEXP_OFFLINE": "1"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as cache:
        env["XDG_CACHE_HOME"] = cache
        first = dl.run_child("fashion_mnist", env)
        cached = [dl.run_child("fashion_mnist", env) for _ in range(repeats)]
    best = min(c["seconds"] for c in cached)
    extra = cached[0]["peak_mb"] - cached[0]["base_mb"]
    return [
        row("Fashion-MNIST load after first use (s)", best, "<= 1.5", best <= 1.5, f"first load {first['seconds']:.2f} s"),
        row("Fashion-MNIST peak memory / data size", extra / cached[0]["data_mb"], None, None, f"{cached[0]['data_mb']:.0f} MB of tensors"),
    ]


def bench_sweep(repeats: int) -> list[dict]:
    import sweep_pruning as sp

    import contextlib
    import io

    trials = 16
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        r = sp.sweep_once(Path(tmp), "none", trials=trials, epochs=2, seed=0)
    return [row("sweep overhead per trial beyond training (s)", r["in_trial_s"], "<= 0.2", r["in_trial_s"] <= 0.2,
                f"mean over {trials} trials (digits MLP, 2 epochs); with the one-time start {r['overhead_s']:.2f} s/trial")]


def bench_study(repeats: int) -> list[dict]:
    import study_overhead as so

    env = {**os.environ, "DLEXP_OFFLINE": "1", "DLEXP_DATA": str(DATA)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cost = so.extra_point_cost({"this": (sys.executable, env)}, 20, repeats)["this"]
    ratio, seq, par = so.jobs_ratio(sys.executable, 10, repeats, env)
    rows = [
        row("extra grid point beyond its training (ms)", cost * 1e3, "<= 30", cost <= 0.030, f"digits, 1 epoch, median of {repeats} rounds"),
        row("--jobs 2 / sequential (10 digits runs)", ratio, "<= 1.0", ratio <= 1.0, f"{par:.1f} s vs {seq:.1f} s"),
    ]
    if DATA.is_dir():
        m = so.memory_ratio(sys.executable, env)
        rows.append(row("Fashion-MNIST run peak memory / data size", m["ratio"], "<= 1.3", m["ratio"] <= 1.3,
                        f"load + 1 epoch; {m['peak_mb'] - m['base_mb']:.0f} MB over {m['data_mb']:.0f} MB"))
    return rows


def bench_vectorize(repeats: int) -> list[dict]:
    import torch

    import vectorize as vb

    torch.set_num_threads(1)
    rows = []
    for r in vb.inprocess(repeats, (16,)):
        stacks = r["stacks"]
        target = ">= 2.0" if stacks else None
        note = (f"{r['group']:.1f} vs {r['seq']:.1f} member-epochs/s, 1 thread"
                + ("" if stacks else "; --vectorize runs this shape alone (vectorize.pays)"))
        rows.append(row(f"{r['problem']} MLP: N=16 stacked / sequential (member-epochs/s)", r["ratio"], target,
                        r["ratio"] >= 2.0 if stacks else None, note))
    torch.set_num_threads(os.cpu_count() or 1)
    c = vb.command(repeats)
    rows.append(row("dlexp run -m (32 digits runs, 20 epochs): plain / --vectorize", c["ratio"], ">= 2.0", c["ratio"] >= 2.0,
                    f"{c['plain']:.1f} s vs {c['vectorize']:.1f} s, median of {repeats} paired rounds"))
    return rows


BENCHES = {
    "train_loop": bench_train_loop,
    "optim_step": lambda r: bench_optim_step(100 * r + 100),
    "step_overhead": bench_step_overhead,
    "cli": bench_cli,
    "kfold": bench_kfold,
    "sweep": bench_sweep,
    "data_load": bench_data_load,
    "study": bench_study,
    "vectorize": bench_vectorize,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.only.split(","):
        t0 = time.perf_counter()
        try:
            rows += BENCHES[name](args.repeats)
        except Exception as e:  # one broken measurement must not hide the others
            rows.append(row(f"{name}: could not be measured", float("nan"), None, None, f"{type(e).__name__}: {e}"))
        print(f"  ({name} took {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    w = max(len(r["measurement"]) for r in rows)
    print(f"| {'measurement':<{w}} | {'value':>7} | {'target':>7} | met | note")
    print(f"|{'-' * (w + 2)}|{'-' * 9}|{'-' * 9}|-----|-----")
    for r in rows:
        print(f"| {r['measurement']:<{w}} | {r['value']:7.3f} | {r['target']:>7} | {r['met']:>3} | {r['note']}")


if __name__ == "__main__":
    main()
