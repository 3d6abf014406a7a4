"""`dlexp kfold`: K-fold cross-validation to choose between candidate configs (d2l 5.7)."""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, Optional

import typer

from dlexp.cli.common import err, out, user_errors

_SOURCES: dict[str, Any] = {}  # per process: the data of a study is loaded and parsed once


def _source(dataset_cfg):
    from dlexp.config import to_yaml
    from dlexp.data import load_source

    key = to_yaml(dataset_cfg)
    if key not in _SOURCES:
        _SOURCES[key] = load_source(dataset_cfg)
    return _SOURCES[key]


def _fold_worker(cfg_container: dict, fold, metric: str, at: str, columns: dict, threads: int):
    import torch
    from omegaconf import OmegaConf

    from dlexp.kfold import run_fold

    torch.set_num_threads(threads)
    cfg = OmegaConf.create(cfg_container)
    return columns["candidate"], fold, run_fold(cfg, _source(cfg.dataset), fold, metric=metric, at=at, extra_columns=columns)


def kfold(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides; with -m, sweeps give the candidates.", show_default=False)] = None,
    folds: Annotated[int, typer.Option("--folds", "-k", help="Number of folds K (>= 2).")] = 5,
    repeats: Annotated[int, typer.Option("--repeats", help="Repeated K-fold: R different fold assignments.")] = 1,
    stratify: Annotated[Optional[bool], typer.Option("--stratify/--no-stratify", help="Stratified folds (default: on for classification).", show_default=False)] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="Validation metric to rank by (default: val/acc, or val/log_rmse / val/rmse for regression).")] = None,
    at: Annotated[str, typer.Option("--at", help="Score each fold by the metric's final or best epoch.")] = "final",
    refit: Annotated[bool, typer.Option("--refit", help="Retrain the best candidate on all training data; report its test metric once (house prices: write the Kaggle submission).")] = False,
    multirun: Annotated[bool, typer.Option("-m", "--multirun", help="Candidates from sweeps: optimizer.weight_decay=0,1e-4 model.dropout=0,0.5.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Folds at once, each in its own process.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold assignment (shared by all candidates).")] = 0,
    study: Annotated[Optional[str], typer.Option("--study", help="Name of this study (default: kfold-<time>).")] = None,
    config_dir: Annotated[Optional[str], typer.Option("--config-dir", help="A folder of your own configs, searched before dlexp's.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-fold lines.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")] = False,
) -> None:
    """K-fold cross-validation for model selection: rank candidates on the same folds.

    Example: dlexp kfold --folds 5 dataset=house_prices model=linear optimizer=adam optimizer.lr=5 trainer.epochs=100
    """
    from dlexp import config
    from dlexp.errors import ConfigError

    with user_errors(debug):
        if jobs < 1:
            raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
        if not 0 <= seed < 2**32:  # scikit-learn's splitters take numpy's legacy seeds
            raise ConfigError(f"--seed: must be in [0, 2**32), got {seed}")
        if at not in ("final", "best"):
            raise ConfigError(f"--at: expected final or best, got {at!r}")
        if study is not None:
            config.check_name(study, "--study", 80)  # it names a folder under results/kfold/
        grid = config.expand(list(overrides or []), multirun, config_dir)
        cfgs = config.compose_grid(grid, config_dir)
        datasets = {config.to_yaml(c.dataset) for c in cfgs}
        if len(datasets) > 1:
            raise ConfigError("dataset: every candidate must use the same data set, since the folds are shared")
        source = _source(cfgs[0].dataset)
        from dlexp.kfold import check_metric, default_metric, direction_of, make_folds

        metric_name = check_metric(metric, source) if metric is not None else default_metric(source)[0]
        direction = direction_of(metric_name)
        fold_list = make_folds(source, folds, repeats=repeats, seed=seed, stratify=stratify)
        # a model, optimizer or schedule a candidate cannot build (lenet on tabular data, momentum=-1)
        # fails here, before anything is written
        from dlexp.kfold import fold_splits
        from dlexp.train import check_buildable

        first = fold_splits(source, fold_list[0])
        for i, c in enumerate(cfgs):
            try:
                check_buildable(c, first)
            except ConfigError as e:
                raise config.point_error(grid, i, e) from None
        results_dir = cfgs[0].results_dir
        from dlexp.results import check_writable

        check_writable(results_dir)
        study_dir, study = _new_study_dir(results_dir, study)
        status = _run_study(grid, cfgs, source, fold_list, metric_name, direction, at, refit, jobs, study, study_dir, quiet, folds, repeats, seed)
    raise typer.Exit(status)


def _new_study_dir(results_dir: str, study: Optional[str]):
    import datetime as dt
    import secrets
    from pathlib import Path

    from dlexp.errors import ConfigError

    base = Path(results_dir) / "kfold"
    base.mkdir(parents=True, exist_ok=True)
    name = study or f"kfold-{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    try:
        os.mkdir(base / name)
    except FileExistsError:
        raise ConfigError(f"--study: {name} already exists under {base}; choose another name") from None
    return base / name, name


def _run_study(grid, cfgs, source, fold_list, metric, direction, at, refit, jobs, study, study_dir, quiet, k, repeats, seed) -> int:
    import time

    import pandas as pd
    from omegaconf import OmegaConf

    from dlexp.kfold import run_fold
    from dlexp.results import atomic_write, write_json

    labels = _labels(grid)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    interrupted = False

    def record(c: int, fold, result) -> None:
        run_id, status, score, train_score, seconds = result
        rows.append(dict(candidate=c, label=labels[c], repeat=fold.repeat, fold=fold.index, run_id=run_id, status=status,
                         score=score, train_score=train_score, duration_s=seconds))
        if not quiet:
            err.print(f"[{len(rows)}/{len(cfgs) * len(fold_list)}] candidate {c} ({labels[c]}) repeat {fold.repeat} fold {fold.index}: {metric} {score:.4g} ({status})", markup=False)
        atomic_write(study_dir / "folds.csv", pd.DataFrame(rows).to_csv(index=False))

    cols = lambda c: {"study": study, "candidate": c}
    try:
        if jobs == 1:
            for c, cfg in enumerate(cfgs):
                for fold in fold_list:
                    record(c, fold, run_fold(cfg, source, fold, metric=metric, at=at, extra_columns=cols(c)))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            threads = max(1, (os.cpu_count() or 1) // jobs)
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
                futures = [
                    pool.submit(_fold_worker, OmegaConf.to_container(cfg, resolve=True), fold, metric, at, cols(c), threads)
                    for c, cfg in enumerate(cfgs) for fold in fold_list
                ]
                try:
                    for f in as_completed(futures):
                        record(*f.result())
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    except KeyboardInterrupt:
        interrupted = True

    folds_df = pd.DataFrame(rows)
    n_val = int(sum(len(f.val_idx) for f in fold_list) / len(fold_list))
    n_train = len(source) - n_val
    ranking, best = _rank(folds_df, labels, direction, n_train, n_val) if rows else (pd.DataFrame(), None)
    summary = {
        "study": study, "metric": metric, "direction": direction, "at": at, "folds": k, "repeats": repeats,
        "seed": seed, "dataset": source.name, "candidates": [{"candidate": i, "overrides": o} for i, o in enumerate(grid)],
        "interrupted": interrupted, "duration_s": time.perf_counter() - start, "best": best,
        "fold_indices": [{"repeat": f.repeat, "fold": f.index, "val_idx": f.val_idx.tolist()} for f in fold_list],
    }
    if len(ranking):
        atomic_write(study_dir / "summary.csv", ranking.to_csv(index=False))
    _print_ranking(ranking, best, metric, direction, study, study_dir)
    if refit and best is not None and not interrupted:
        summary["refit"] = _refit(cfgs[best["candidate"]], source, study, study_dir, metric)
    write_json(study_dir / "study.json", summary)
    if interrupted:
        err.print("interrupted: the finished folds are kept and ranked")
        return 130
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _labels(grid: list[list[str]]) -> list[str]:
    keys: dict[str, set] = {}
    for o in grid:
        for x in o:
            k, _, v = x.partition("=")
            keys.setdefault(k, set()).add(v)
    varying = [k for k, v in keys.items() if len(v) > 1]
    return [" ".join(x for x in o if x.partition("=")[0] in varying) or "(the config)" for o in grid]


def _rank(folds_df, labels, direction, n_train, n_val):
    import pandas as pd

    from dlexp.kfold import corrected_paired_test, t_interval

    rows = []
    for c, g in folds_df.groupby("candidate", sort=True):
        g = g.sort_values(["repeat", "fold"])
        scores = g["score"].tolist()
        ok = [s for s in scores if not math.isnan(s)]
        mean, sd, low, high = t_interval(ok) if len(ok) == len(scores) else (float("nan"),) * 4
        train = float(g["train_score"].mean())
        gap = (train - mean) if direction == "maximize" else (mean - train)  # > 0: fits train better than val
        rows.append(dict(candidate=int(c), label=labels[int(c)], n=len(scores), failed=len(scores) - len(ok),
                         mean=mean, std=sd, ci_low=low, ci_high=high, train=train, gap=gap, cost_s=float(g["duration_s"].sum())))
    ranking = pd.DataFrame(rows)
    ascending = direction == "minimize"
    ranking = ranking.sort_values("mean", ascending=ascending, na_position="last").reset_index(drop=True)
    ranking.insert(0, "rank", range(1, len(ranking) + 1))
    top = ranking.iloc[0]
    if math.isnan(top["mean"]):
        return ranking, None
    best = {"candidate": int(top["candidate"]), "label": top["label"], "mean": float(top["mean"])}
    if len(ranking) > 1 and not math.isnan(ranking.iloc[1]["mean"]):
        second = int(ranking.iloc[1]["candidate"])
        a = folds_df[folds_df.candidate == best["candidate"]].sort_values(["repeat", "fold"])["score"].tolist()
        b = folds_df[folds_df.candidate == second].sort_values(["repeat", "fold"])["score"].tolist()
        if len(a) == len(b):
            best["vs_runner_up"] = {"candidate": second, **corrected_paired_test(a, b, n_train, n_val, direction)}
    return ranking, best


def _print_ranking(ranking, best, metric, direction, study, study_dir) -> None:
    from rich.table import Table

    if not len(ranking):
        out.print("no fold finished")
        return
    table = Table(title=f"kfold {study}: {metric} ({'higher' if direction == 'maximize' else 'lower'} is better)")
    for col in ("rank", "candidate", "mean", "std", "95% CI", "train", "gap", "cost s"):
        table.add_column(col, justify="right" if col != "candidate" else "left")
    f = lambda v: "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
    for _, r in ranking.iterrows():
        table.add_row(str(r["rank"]), f"{r['candidate']}: {r['label']}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
                      f(r["mean"]), f(r["std"]), f"[{f(r['ci_low'])}, {f(r['ci_high'])}]", f(r["train"]), f(r["gap"]), f"{r['cost_s']:.1f}")
    out.print(table)
    if best is not None:
        line = f"best: candidate {best['candidate']} ({best['label']}), mean {metric} {best['mean']:.4g}"
        vs = best.get("vs_runner_up")
        if vs:
            line += (f"; vs runner-up {vs['candidate']}: better by {vs['diff']:.4g} (95% CI [{vs['low']:.4g}, {vs['high']:.4g}]), "
                     f"wins {vs['wins'] * 100:.0f}% of {vs['folds']} folds, corrected paired t-test p = {vs['p']:.3g}")
        out.print(line, markup=False)
    out.print(f"study: {study_dir}", markup=False)


def _refit(cfg, source, study, study_dir, metric) -> dict[str, Any]:
    """The best candidate trained on the whole training pool; its test metric, once."""
    import numpy as np

    from dlexp.data import make_splits
    from dlexp.runner import execute

    splits = make_splits(source, np.arange(len(source)), None)
    held: dict[str, Any] = {}
    run_id, summary = execute(cfg, splits, extra_columns={"study": study, "candidate": "refit"}, on_finish=lambda r: held.update(model=r.model))
    test_metric = "test/" + metric.split("/", 1)[1]
    result = {"run_id": run_id, "status": summary["status"], test_metric: summary["final"].get(test_metric)}
    if summary["final"].get(test_metric) is not None:
        out.print(f"refit: {run_id}: {test_metric} = {summary['final'][test_metric]:.4g} (the test set, looked at once)", markup=False)
    if source.test_ids is not None and "model" in held:
        from dlexp.submission import write_submission

        transform = source.featurizer(source.x) if source.featurizer is not None else None
        path = write_submission(held["model"], source, transform, study_dir / "submission.csv")
        result["submission"] = str(path)
        out.print(f"refit: {run_id}: Kaggle submission written to {path}", markup=False)
    return result
