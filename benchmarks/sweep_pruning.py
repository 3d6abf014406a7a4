"""What the median pruner saves, and what dlexp adds per trial beyond training.

A reference sweep (sweep=lr_wd: SGD's lr and weight decay, the MLP on digits) of 40 trials, run twice
with the same seed: with the median pruner and with none. Prints, for each, the epochs trained and the
best value reached; and dlexp's overhead per trial: the sweep's wall time minus the sum of its runs'
training time (summary.json duration_s), divided by the number of trials; and the part of it spent
inside trials (Optuna's trial duration minus training), which leaves out the one-time start.

    python benchmarks/sweep_pruning.py [--trials 40] [--epochs 10] [--seed 0]

Targets: >= 40% fewer epochs with the pruner for a best value within noise; overhead <= 0.2 s per trial.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def sweep_once(results: Path, pruner: str, trials: int, epochs: int, seed: int) -> dict:
    import optuna
    import typer

    from dlexp.cli.sweep import sweep

    study = f"bench-{pruner}"
    start = time.perf_counter()
    try:
        sweep(["sweep=lr_wd", "model=mlp", "dataset=digits", f"trainer.epochs={epochs}", "trainer.device=cpu",
               f"results_dir={results}"], trials=trials, timeout=None, sampler="tpe", pruner=pruner, metric=None,
              direction=None, jobs=1, seed=seed, cv=None, storage=None, study=study, heartbeat=10, config_dir=None,
              quiet=True, debug=False)
    except typer.Exit as e:
        assert e.exit_code == 0, e.exit_code
    wall = time.perf_counter() - start
    s = optuna.load_study(study_name=study, storage=f"sqlite:///{results / 'sweeps' / (study + '.db')}")
    trained = sum(t.user_attrs.get("train_s") or 0.0 for t in s.trials)
    return {
        "pruner": pruner,
        "trials": len(s.trials),
        "pruned": sum(t.state.name == "PRUNED" for t in s.trials),
        "epochs": sum(t.user_attrs.get("epochs") or 0 for t in s.trials),
        "best": s.best_value,
        "wall_s": wall,
        "train_s": trained,
        "overhead_s": (wall - trained) / len(s.trials),
        # per trial, without the one-time start (imports' first use, data, study creation, outputs)
        "in_trial_s": sum(t.duration.total_seconds() - (t.user_attrs.get("train_s") or 0.0) for t in s.trials) / len(s.trials),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch  # noqa: F401  imported up front: not part of any sweep's time

    with tempfile.TemporaryDirectory() as tmp:
        rows = [sweep_once(Path(tmp) / name, name, args.trials, args.epochs, args.seed) for name in ("none", "median")]
    print(f"{args.trials} trials of sweep=lr_wd (MLP, digits, {args.epochs} epochs, seed {args.seed})")
    print(f"{'pruner':>8} {'pruned':>6} {'epochs':>6} {'best val/acc':>12} {'wall s':>7} {'train s':>7} {'overhead s/trial':>16} {'of which in-trial':>17}")
    for r in rows:
        print(f"{r['pruner']:>8} {r['pruned']:>6} {r['epochs']:>6} {r['best']:>12.4f} {r['wall_s']:>7.1f} {r['train_s']:>7.1f} {r['overhead_s']:>16.3f} {r['in_trial_s']:>17.3f}")
    none, median = rows
    print(f"median pruner: {1 - median['epochs'] / none['epochs']:.0%} fewer epochs; best {median['best']:.4f} vs {none['best']:.4f}")


if __name__ == "__main__":
    main()
