"""`dlexp kfold`: K-fold cross-validation to choose between candidate configs (d2l 5.7)."""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, Optional

import typer

from dlexp.cli import slurm_options as so
from dlexp.cli.common import err, out, user_errors

def kfold(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides; with -m, sweeps give the candidates.", show_default=False)] = None,
    folds: Annotated[int, typer.Option("--folds", "-k", help="Number of folds K (>= 2).")] = 5,
    repeats: Annotated[int, typer.Option("--repeats", help="Repeated K-fold: R different fold assignments.")] = 1,
    stratify: Annotated[Optional[bool], typer.Option("--stratify/--no-stratify", help="Stratified folds (default: on for classification).", show_default=False)] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="Validation metric to rank by (default: val/acc, or val/log_rmse / val/rmse for regression).")] = None,
    at: Annotated[str, typer.Option("--at", help="Score each fold by the metric's final or best epoch.")] = "final",
    refit: Annotated[bool, typer.Option("--refit", help="Retrain the best candidate on all training data; report its test metric once (house prices: write the Kaggle submission).")] = False,
    multirun: Annotated[bool, typer.Option("-m", "--multirun", help="Candidates from sweeps: optimizer.weight_decay=0,1e-4 model.dropout=0,0.5.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Folds at once: this process and N-1 worker processes.")] = 1,
    vectorize: Annotated[bool, typer.Option("--vectorize", help="Train the folds (and candidates) that can share one stacked model as groups (see README, Vectorized runs).")] = False,
    vectorize_max: Annotated[Optional[int], typer.Option("--vectorize-max", help="With --vectorize: at most N runs a group (default: from the parameter count and the free memory).", show_default=False)] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="New runs for every fold, even those an earlier identical command finished.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold assignment (shared by all candidates).")] = 0,
    study: Annotated[Optional[str], typer.Option("--study", help="Name of this study (default: kfold-<hash of its settings>, so the same command continues it).")] = None,
    config_dir: Annotated[Optional[str], typer.Option("--config-dir", help="A folder of your own configs, searched before dlexp's.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-fold lines.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")] = False,
    launcher: so.Launcher = "local",
    partition: so.Partition = None,
    time: so.Time = None,
    cpus_per_task: so.CpusPerTask = None,
    mem: so.Mem = None,
    gpus: so.Gpus = None,
    account: so.Account = None,
    qos: so.Qos = None,
    sbatch: so.Sbatch = None,
    max_parallel: so.MaxParallel = None,
    runs_per_job: so.RunsPerJob = None,
    no_wait: so.NoWait = False,
) -> None:
    """K-fold cross-validation for model selection: rank candidates on the same folds.

    Rerunning the same command continues the study: finished folds are kept, interrupted ones resumed.
    --launcher slurm sends every fold of every candidate to a Slurm cluster as one job array.

    Example: dlexp kfold --folds 5 dataset=house_prices model=linear optimizer=adam optimizer.lr=5 trainer.epochs=100
    """
    from dlexp import config
    from dlexp.errors import ConfigError

    with user_errors(debug):
        if jobs < 1:
            raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
        from dlexp.cli.common import check_vectorize

        check_vectorize(vectorize, vectorize_max, jobs, True, "")
        slurm = so.slurm_options(launcher, config_dir, partition=partition, time=time, cpus_per_task=cpus_per_task, mem=mem,
                                 gpus=gpus, account=account, qos=qos, sbatch=sbatch, max_parallel=max_parallel,
                                 runs_per_job=runs_per_job, no_wait=no_wait)
        if slurm is not None:
            so.check_study_use(jobs=jobs)
            if vectorize:
                raise ConfigError("--vectorize: trains its groups in this process; not with --launcher slurm")
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
        from dlexp.study import DataCache

        data = DataCache()
        source = data.source(cfgs[0].dataset)
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
        definition = {"candidates": [[o for o in c if not o.startswith("results_dir=")] for c in grid], "folds": folds,
                      "repeats": repeats, "seed": seed, "stratify": stratify, "metric": metric_name, "at": at,
                      "config_dir": config_dir}
        study_dir, study = _study_dir(results_dir, study, definition)
        status = _run_study(grid, cfgs, source, fold_list, metric_name, direction, at, refit, jobs, study, study_dir, quiet,
                            folds, repeats, seed, fresh, data, slurm, no_wait, (vectorize, vectorize_max))
    raise typer.Exit(status)


def _study_dir(results_dir: str, study: Optional[str], definition: dict[str, Any]):
    """The study's folder: new, or the one an earlier identical command made (it is continued). A
    name already used by a study with other settings is refused."""
    import json
    from pathlib import Path

    from dlexp.errors import ConfigError
    from dlexp.results import write_json
    from dlexp.study import study_id

    base = Path(results_dir) / "kfold"
    base.mkdir(parents=True, exist_ok=True)
    name = study or f"kfold-{study_id(definition)}"
    path = base / name
    try:
        os.mkdir(path)
    except FileExistsError:
        try:
            earlier = json.loads((path / "definition.json").read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != json.loads(json.dumps(definition)):
            raise ConfigError(f"--study: {name} already exists under {base} with other candidates or settings; "
                              "choose another name (or rerun its own command to continue it)") from None
        return path, name
    write_json(path / "definition.json", definition)
    return path, name


def _run_study(grid, cfgs, source, fold_list, metric, direction, at, refit, jobs, study, study_dir, quiet, k, repeats, seed,
               fresh, data, slurm=None, no_wait: bool = False, vectorize=(False, None)) -> int:
    """The folds of every candidate as points of one study (dlexp.study), fold by fold: a rerun
    continues it, --jobs spreads it over worker processes, --launcher slurm over a Slurm job array;
    then the statistics over the fold scores."""
    import time

    import pandas as pd

    from dlexp import study as st
    from dlexp.cli.progress import StudyDisplay
    from dlexp.kfold import score_of
    from dlexp.report.tables import to_csv  # spreadsheet-safe: candidate labels carry the user's values
    from dlexp.results import atomic_write, write_json

    labels = _labels(grid)
    start = time.perf_counter()
    meta = {"study": {"kind": "kfold", "name": study}}
    points = []
    for fold in fold_list:  # fold by fold: an interrupted study has every candidate on its first folds (paired)
        for c, cfg in enumerate(cfgs):
            scope = {"kfold": study, "repeat": fold.repeat, "fold": fold.index}
            points.append(st.Point(
                index=len(points), overrides=grid[c], cfg=cfg, key=st.identity(cfg, scope),
                label=f"candidate {c} ({labels[c]}) repeat {fold.repeat} fold {fold.index}",
                columns={"study": study, "candidate": c, "repeat": fold.repeat, "fold": fold.index}, meta=meta,
                data=("fold", fold.repeat, fold.index, fold.train_idx, fold.val_idx)))
    results_dir = cfgs[0].results_dir
    counts = st.plan(points, results_dir, fresh=fresh)
    if not quiet:
        err.print(f"kfold {study}: " + st.plan_line(counts) + (" (--fresh)" if fresh else ""), markup=False)
    train_metric = "train/" + metric.split("/", 1)[1]
    rows: dict[int, dict[str, Any]] = {}

    def record(o: st.Outcome) -> None:
        if o.how == "busy":
            return
        p = points[o.index]
        s = o.summary
        rows[o.index] = dict(candidate=p.columns["candidate"], label=labels[p.columns["candidate"]], repeat=p.columns["repeat"],
                             fold=p.columns["fold"], run_id=o.run_id, status=s.get("status"), score=score_of(s, metric, at),
                             train_score=score_of(s, train_metric, "final"), duration_s=float(s.get("duration_s") or 0.0))
        atomic_write(study_dir / "folds.csv", to_csv(pd.DataFrame([rows[i] for i in sorted(rows)])))

    for p in points:
        if p.action == "done":
            record(st.load_outcome(results_dir, p))
    todo = st.pending(points)
    display = StudyDisplay(f"kfold {study}", {p.index: p.label for p in todo}, {p.index: int(p.cfg.trainer.epochs) for p in todo},
                           quiet or no_wait, on_finish=record)
    if slurm is not None:
        from dlexp.launchers.slurm_study import SlurmArray, study_folder

        executor = SlurmArray(slurm, study_folder(results_dir, "kfold", study), no_wait=no_wait, quiet=quiet, pause=display.close)
    else:
        from dlexp.cli.common import grouped_executor

        executor = grouped_executor(todo, data, vectorize, jobs, quiet) or (
            st.Pool(jobs) if jobs > 1 and len(todo) > 1 else st.InProcess(jobs))
    interrupted = False
    try:
        with display:
            executor.run(todo, data, display.event)
    except KeyboardInterrupt:
        interrupted = True
    busy = counts["running"] + sum(1 for p in todo if p.index not in rows)
    folds_df = pd.DataFrame([rows[i] for i in sorted(rows)])
    if len(folds_df):
        folds_df = folds_df.sort_values(["candidate", "repeat", "fold"]).reset_index(drop=True)
        atomic_write(study_dir / "folds.csv", to_csv(folds_df))
    n_val = int(sum(len(f.val_idx) for f in fold_list) / len(fold_list))
    n_train = len(source) - n_val
    ranking, best = _rank(folds_df, labels, direction, n_train, n_val) if len(folds_df) else (pd.DataFrame(), None)
    summary = {
        "study": study, "metric": metric, "direction": direction, "at": at, "folds": k, "repeats": repeats,
        "seed": seed, "dataset": source.name, "candidates": [{"candidate": i, "overrides": o} for i, o in enumerate(grid)],
        "interrupted": interrupted, "duration_s": time.perf_counter() - start, "best": best,
        "points": len(points), "complete": len(folds_df) == len(points),
        "fold_indices": [{"repeat": f.repeat, "fold": f.index, "val_idx": f.val_idx.tolist()} for f in fold_list],
    }
    if len(ranking):
        atomic_write(study_dir / "summary.csv", to_csv(ranking))
    detached = getattr(executor, "detached", False)  # --no-wait: the jobs run on; study.json says how many points
    if detached:
        write_json(study_dir / "study.json", summary)
        return 0
    _print_ranking(ranking, best, metric, direction, study, study_dir)
    if refit and best is not None and not interrupted and len(folds_df) == len(points):
        summary["refit"] = _refit(cfgs[best["candidate"]], source, study, study_dir, metric)
    write_json(study_dir / "study.json", summary)
    if busy and not interrupted:
        err.print(f"{busy} fold(s) were running in another process; rerun the same command once it ends to rank them too",
                  markup=False)
    if interrupted:
        err.print("interrupted: the finished folds are kept and ranked; rerun the same command to continue", markup=False)
        return 130
    return 1 if any(r["status"] in ("failed", "killed") for r in rows.values()) else 0


def _labels(grid: list[list[str]]) -> list[str]:
    keys: dict[str, set] = {}
    for o in grid:
        for x in o:
            k, _, v = x.partition("=")
            keys.setdefault(k, set()).add(v)
    varying = [k for k, v in keys.items() if len(v) > 1]
    return [" ".join(x for x in o if x.partition("=")[0] in varying) or "(the config)" for o in grid]


def _rank(folds_df, labels, direction, n_train, n_val):
    """The ranking table (one row per candidate) and the best candidate, compared with the runner-up.

    The 95% CI of a candidate's mean uses Nadeau & Bengio's corrected variance (its fold scores share
    training data). `train_running` is the training metric as the loop records it: the mean over the
    last epoch's minibatches while training (dropout on, weights moving), not an eval-mode score, so
    `gap_running` (train_running - val, signed so that > 0 means it fits train better) may be negative.
    """
    import pandas as pd

    from dlexp.kfold import corrected_interval, corrected_paired_test

    ratio = n_val / n_train
    rows = []
    for c, g in folds_df.groupby("candidate", sort=True):
        g = g.sort_values(["repeat", "fold"])
        scores = g["score"].tolist()
        ok = [s for s in scores if not math.isnan(s)]
        mean, sd, low, high = corrected_interval(ok, ratio) if len(ok) == len(scores) else (float("nan"),) * 4
        train = float(g["train_score"].mean())
        gap = (train - mean) if direction == "maximize" else (mean - train)  # > 0: fits train better than val
        rows.append(dict(candidate=int(c), label=labels[int(c)], n=len(scores), failed=len(scores) - len(ok),
                         mean=mean, std=sd, ci_low=low, ci_high=high, train_running=train, gap_running=gap,
                         cost_s=float(g["duration_s"].sum())))
    ranking = pd.DataFrame(rows)
    ascending = direction == "minimize"
    ranking = ranking.sort_values("mean", ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
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
            best["vs_runner_up"] = {"candidate": second, **corrected_paired_test(a, b, n_train, n_val, direction),
                                    "test": "Nadeau-Bengio corrected resampled t-test", "alternative": "one-sided (best > runner-up)",
                                    "post_selection": True}
    return ranking, best


def _print_ranking(ranking, best, metric, direction, study, study_dir) -> None:
    from rich.table import Table

    if not len(ranking):
        out.print("no fold finished")
        return
    table = Table(title=f"kfold {study}: {metric} ({'higher' if direction == 'maximize' else 'lower'} is better)")
    for col in ("rank", "candidate", "mean", "std", "95% CI", "train*", "gap*", "cost s"):
        table.add_column(col, justify="right" if col != "candidate" else "left")
    f = lambda v: "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
    for _, r in ranking.iterrows():
        table.add_row(str(r["rank"]), f"{r['candidate']}: {r['label']}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
                      f(r["mean"]), f(r["std"]), f"[{f(r['ci_low'])}, {f(r['ci_high'])}]", f(r["train_running"]),
                      f(r["gap_running"]), f"{r['cost_s']:.1f}")
    out.print(table)
    out.print("95% CI: t interval with Nadeau & Bengio's corrected variance (folds share training data). "
              "* train: the mean over the last epoch's minibatches while training (dropout on, weights moving), "
              "not an eval-mode score; gap = train* - val (> 0: fits train better), so it can be negative.", markup=False)
    if best is not None:
        out.print(_best_line(best, ranking, metric), markup=False)
    out.print(f"study: {study_dir}", markup=False)


def _best_line(best, ranking, metric) -> str:
    """The best candidate in one line; against the runner-up, an exact tie is said to be one."""
    line = f"best: candidate {best['candidate']} ({best['label']}), mean {metric} {best['mean']:.4g}"
    vs = best.get("vs_runner_up")
    if vs is None:
        return line
    if vs["ties"] == 1.0:
        return line + f"; a tie with runner-up {vs['candidate']}: the same score on all {vs['folds']} folds (ranked first by candidate number only)"
    if vs["diff"] == 0:
        return line + f"; vs runner-up {vs['candidate']}: the same mean (a tie on average), wins {vs['wins'] * 100:.0f}% of {vs['folds']} folds"
    p = "undefined (the same difference on every fold)" if math.isnan(vs["p"]) else f"{vs['p']:.3g}"
    return line + (f"; vs runner-up {vs['candidate']}: better by {vs['diff']:.4g} (95% CI [{vs['low']:.4g}, {vs['high']:.4g}]), "
                   f"wins {vs['wins'] * 100:.0f}% of {vs['folds']} folds; corrected paired t-test, one-sided p = {p} "
                   "(post-selection: these two were picked as the top two by the same fold scores, so p is optimistic)")


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
