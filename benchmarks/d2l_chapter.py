"""d2l's optimization chapter (12.3-12.10, and 3.7's weight decay) run by dlexp beside the book's own
loop, the same day on the same machine: the table and the figures of the README's "Reproducing the
book" section.

- Airfoil (12.5-12.10): every setting of `benchmarks/d2l_ch11.py` (the book's `train_ch11` and
  optimizers) and the same setting as dlexp's `experiment=d2l_airfoil_*`, for each seed, interleaved
  (the order alternates seed by seed), in this process, one thread each. Reported: the final loss (the
  book's: half the MSE of the whole training set after the last update), mean and sample std over
  the seeds; seconds per epoch, median over the seeds. dlexp's are its `train/epoch_s`, which includes
  its evaluations every 200 examples (one batched pass over the 1,500 rows each); the book's timer
  stops during its evaluations (a DataLoader pass of 1,500/batch-size batches each), so its figure
  leaves them out.
- Weight decay (3.7, the 0.17 edition's 4.5 setting): `experiment=d2l_weight_decay` at lambda 0 and
  3: the L2 norm of w (the book prints about 13 and 0.36) and the test loss.
- Figures (small PNGs under benchmarks/figures/): the 12.5 comparison, loss against seconds for GD,
  SGD and minibatch 100 and 10, dlexp and the book's loop (seed 0); the 2-D trajectories of 12.3-12.8,
  one panel per method, drawn by `dlexp.trajectory` from dlexp runs.

    DLEXP_DATA=../shared/data python benchmarks/d2l_chapter.py [--seeds 0,1,2] [--no-figures]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import d2l_ch11  # noqa: E402  (the reference loop beside this file)

FIGURES = Path(__file__).resolve().parent / "figures"
SECTIONS = {"gd": "12.5", "sgd": "12.5", "minibatch100": "12.5", "minibatch10": "12.5", "momentum": "12.6",
            "adagrad": "12.7", "rmsprop": "12.8", "adadelta": "12.9", "adam": "12.10"}
TWO_D = ["d2l_2d_gd", "d2l_2d_gd_lr04", "d2l_2d_gd_lr06", "d2l_2d_momentum_beta05", "d2l_2d_momentum_beta025",
         "d2l_2d_adagrad_lr04", "d2l_2d_adagrad_lr2", "d2l_2d_rmsprop", "d2l_2d_sgd_noisy"]


def dlexp_overrides(setting: str) -> list[str]:
    """'d2l_airfoil_momentum lr=0.01 momentum=0.9' -> the experiment and its optimizer overrides."""
    experiment, *rest = setting.split()
    return [f"experiment={experiment}", *(f"optimizer.{kv}" for kv in rest)]


def run_dlexp(overrides: list[str], seed: int):
    from dlexp.config import compose
    from dlexp.data import load_splits
    from dlexp.train import train

    cfg = compose([*overrides, f"seed={seed}", "trainer.device=cpu", "results_dir=unused"])
    return cfg, train(cfg, load_splits(cfg.dataset))


def curve(result, split="train_eval", metric="loss"):
    rows = [r for r in result.records if (r["split"], r["metric"]) == (split, metric)]
    return [r["time_s"] for r in rows], [r["value"] for r in rows], [r["examples"] for r in rows]


def airfoil(seeds: list[int]) -> tuple[dict, dict]:
    """setting -> {'dlexp': [(loss, s/epoch)], 'book': [...]} and seed 0's curves for the figure."""
    results = {s: {"dlexp": [], "book": []} for s in d2l_ch11.SETTINGS}
    curves = {}
    for k, seed in enumerate(seeds):
        for setting in d2l_ch11.SETTINGS:
            order = ("dlexp", "book") if k % 2 == 0 else ("book", "dlexp")
            for who in order:
                if who == "dlexp":
                    _, res = run_dlexp(dlexp_overrides(setting), seed)
                    assert res.status == "ok", res.reason
                    ts, losses, seen = curve(res)
                    epoch_s = [r["value"] for r in res.records if r["metric"] == "epoch_s"]
                    results[setting]["dlexp"].append((losses[-1], statistics.mean(epoch_s)))
                else:
                    ts, losses, seen, per_epoch = d2l_ch11.run(setting, seed)
                    results[setting]["book"].append((losses[-1], per_epoch))
                if seed == seeds[0]:
                    curves[(setting, who)] = (ts, losses, seen)
    return results, curves


def weight_decay(seeds: list[int]) -> dict:
    out = {}
    for wd in (0, 3):
        rows = []
        for seed in seeds:
            _, res = run_dlexp(["experiment=d2l_weight_decay", f"optimizer.weight_decay={wd}"], seed)
            test = [r["value"] for r in res.records if (r["split"], r["metric"]) == ("test", "loss")][-1]
            rows.append((float(res.model[1].weight.detach().norm()), test))
        out[wd] = rows
    return out


def mean_std(values, fmt=".3f") -> str:
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{m:{fmt}} ± {s:{fmt}}"


def table(results: dict, wd: dict, n: int) -> str:
    lines = [
        f"| setting (`conf/experiment/`) | d2l | dlexp final loss ({n} seeds) | dlexp s/epoch | book's loop final loss | book's loop s/epoch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for setting, r in results.items():
        experiment, *rest = setting.split()
        label = f"`{experiment}`" + (" " + " ".join(f"`optimizer.{kv}`" for kv in rest) if rest else "")
        section = SECTIONS[experiment.removeprefix("d2l_airfoil_")]
        d, b = r["dlexp"], r["book"]
        lines.append(f"| {label} | {section} | {mean_std([x[0] for x in d])} | {statistics.median(x[1] for x in d):.3f} "
                     f"| {mean_std([x[0] for x in b])} | {statistics.median(x[1] for x in b):.3f} |")
    wd_lines = [
        "",
        f"| setting | d2l | ‖w‖ with dlexp ({n} seeds) | test loss with dlexp | ‖w‖ in the book |",
        "|---|---|---:|---:|---:|",
    ]
    for lam, book in ((0, "about 13"), (3, "about 0.36")):
        rows = wd[lam]
        wd_lines.append(f"| `d2l_weight_decay optimizer.weight_decay={lam}` | 3.7 | {mean_std([x[0] for x in rows], '.2f')} "
                        f"| {mean_std([x[1] for x in rows], '.3g')} | {book} |")
    return "\n".join(lines + wd_lines)


def figure_12_5(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for (setting, label), color in zip((("d2l_airfoil_gd", "gd"), ("d2l_airfoil_sgd", "sgd"),
                                        ("d2l_airfoil_minibatch100", "batch size=100"),
                                        ("d2l_airfoil_minibatch10", "batch size=10")), ("C0", "C1", "C2", "C3")):
        ts, losses, seen = curves[(setting, "dlexp")]
        keep = [i for i, e in enumerate(seen) if e > 0]  # the log axis has no 0 s: the start is left out
        ax.plot([ts[i] for i in keep], [losses[i] for i in keep], color=color, lw=1.6, label=f"{label} (dlexp)")
        ts, losses, _ = curves[(setting, "book")]
        ax.plot(ts, losses, color=color, lw=1.2, ls="--", label=f"{label} (book's loop)")
    ax.set_xscale("log")
    ax.set_xlim(1e-2, 10)
    ax.set_ylim(0.22, 0.35)
    ax.set_xlabel("time (sec)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=6.5, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def figure_2d(path: Path) -> None:
    """One panel per method of 12.3-12.8, from dlexp runs written to a temporary results folder."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlexp import trajectory
    from dlexp.config import compose
    from dlexp.data import load_splits
    from dlexp.results import load_metrics, load_runs
    from dlexp.runner import execute

    with tempfile.TemporaryDirectory() as tmp:
        for experiment in TWO_D:
            cfg = compose([f"experiment={experiment}", "trainer.device=cpu", f"results_dir={tmp}"])
            execute(cfg, load_splits(cfg.dataset), checkpoints=False)
        fig = trajectory.plot_panels(load_runs(tmp), load_metrics(tmp), ["name"])
    for ax in fig.axes:  # 'name=d2l_2d_gd_lr04' -> 'd2l_2d_gd_lr04'
        ax.set_title(ax.get_title().replace("name=", ""), fontsize=8.5)
    fig.savefig(path, dpi=60)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("DLEXP_OFFLINE", "1")
    torch.set_num_threads(1)  # a 5-input linear model gains nothing from threads; both loops get one
    seeds = [int(s) for s in args.seeds.split(",")]
    from dlexp.runner import cpu_name

    start = time.perf_counter()
    results, curves = airfoil(seeds)
    wd = weight_decay(seeds)
    load = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
          f"1 thread, load average {load}, {time.strftime('%Y-%m-%d')}, {time.perf_counter() - start:.0f} s\n")
    print(table(results, wd, len(seeds)))
    if not args.no_figures:
        FIGURES.mkdir(exist_ok=True)
        figure_12_5(curves, FIGURES / "d2l_12_5_loss_vs_time.png")
        figure_2d(FIGURES / "d2l_2d_trajectories.png")
        print(f"\nwrote {FIGURES / 'd2l_12_5_loss_vs_time.png'} and {FIGURES / 'd2l_2d_trajectories.png'}")


if __name__ == "__main__":
    main()
