"""`dlexp run`: one run, or a grid with -m, from Hydra overrides."""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import typer

from dlexp.cli import slurm_options as so
from dlexp.cli.common import check_vectorize, err, fail, grouped_executor, out, progress_bar, user_errors


def run(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides: optimizer=adam optimizer.lr=0.01 model.hidden=[256,256] seed=3", show_default=False)] = None,
    multirun: Annotated[bool, typer.Option("-m", "--multirun", help="Run the grid of every sweep (a=1,2 b=range(0,3)).")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Runs at once, each in its own process (with -m).")] = 1,
    cfg: Annotated[bool, typer.Option("--cfg", help="Print the composed config(s) and exit.")] = False,
    config_dir: Annotated[Optional[str], typer.Option("--config-dir", help="A folder of your own configs, searched before dlexp's.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue RUN_ID (or a run folder) from its last epoch checkpoint.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="With -m: new runs for every point, even those an earlier identical command finished.")] = False,
    max_points: Annotated[int, typer.Option("--max-points", help="With -m: refuse a grid of more points than this.")] = 10000,
    vectorize: Annotated[bool, typer.Option("--vectorize", help="With -m: train the points that can share one stacked model as groups (see README, Vectorized runs).")] = False,
    vectorize_max: Annotated[Optional[int], typer.Option("--vectorize-max", help="With --vectorize: at most N runs a group (default: from the parameter count and the free memory).", show_default=False)] = None,
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
    """Train and evaluate: one run, or a grid with -m. Results go to results/runs/<run_id>/.

    Rerunning the same -m command continues its grid: finished points are skipped, interrupted ones
    resumed, the rest run (--fresh: run them all again). --launcher slurm sends the grid to a Slurm
    cluster as one job array.

    Examples: dlexp run optimizer=adam model=mlp; dlexp run -m optimizer=sgd,adam 'seed=range(0,3)' --jobs 2;
    dlexp run -m 'seed=range(0,20)' --launcher slurm --runs-per-job 4 --time 30
    """
    from dlexp import config

    overrides = list(overrides or [])
    with user_errors(debug):
        if jobs < 1:
            raise config.ConfigError(f"--jobs: must be >= 1, got {jobs}")
        check_vectorize(vectorize, vectorize_max, jobs, multirun, "-m")
        slurm = so.slurm_options(launcher, config_dir, partition=partition, time=time, cpus_per_task=cpus_per_task, mem=mem,
                                 gpus=gpus, account=account, qos=qos, sbatch=sbatch, max_parallel=max_parallel,
                                 runs_per_job=runs_per_job, no_wait=no_wait)
        if slurm is not None:
            so.check_study_use(jobs=jobs, multirun=multirun or cfg, resume=resume)
            if vectorize:
                raise config.ConfigError("--vectorize: trains its groups in this process; not with --launcher slurm")
        if resume is not None:
            raise typer.Exit(_resume(resume, overrides, quiet))
        grid = config.expand(overrides, multirun, config_dir)
        if len(grid) > max_points:
            raise config.ConfigError(f"-m: the grid has {len(grid)} points, more than --max-points {max_points}; "
                                     "split it into several commands, or raise --max-points")
        cfgs = _compose_all(grid, config_dir, quiet)  # every point checked before any run starts
        if cfg:
            # plain stdout, not rich: rich wraps long lines, which would break the YAML
            for o, c in zip(grid, cfgs):
                if len(grid) > 1:
                    typer.echo(f"# {' '.join(o)}")
                typer.echo(config.to_yaml(c), nl=False)
            return
        from dlexp.results import check_writable

        if slurm is not None and len({c.results_dir for c in cfgs}) > 1:
            raise config.ConfigError("--launcher slurm: every point of the grid must write to the same results_dir "
                                     "(one job array, one folder of job logs)")
        for c in {c.results_dir for c in cfgs}:
            check_writable(c)
        if not multirun:
            status = _single(cfgs[0], quiet)
        else:
            status = _grid(grid, cfgs, jobs, quiet, fresh, slurm, no_wait, (vectorize, vectorize_max))
    raise typer.Exit(status)


def _compose_all(grid: list[list[str]], config_dir: Optional[str], quiet: bool) -> list:
    """Every point's config, one Hydra composition per distinct set of group choices (GridComposer);
    an error names the point; a long grid shows how far it got."""
    import time

    from dlexp import config

    if len(grid) == 1:
        return [config.compose(grid[0], config_dir)]
    t0, shown = time.perf_counter(), [0.0]

    def progress(i: int) -> None:
        now = time.perf_counter() - t0
        if not quiet and len(grid) >= 500 and now - shown[0] >= 2.0:  # a long grid says how far it got
            shown[0] = now
            err.print(f"composing the grid: {i + 1} of {len(grid)} points", markup=False)

    return config.compose_grid(grid, config_dir, on_point=progress)


def _preflight(cfgs, grid, indices) -> None:
    """Every grid point's data, model, optimizer and schedule built before the first run (each data
    set loaded once, each config that differs in more than its seed built once): a bad point is exit
    2 with nothing trained, with or without --jobs."""
    from dlexp import config
    from dlexp.data import load_splits
    from dlexp.study import identity
    from dlexp.train import check_buildable

    splits: dict[str, object] = {}
    built: set[str] = set()
    for i, c in zip(indices, cfgs):
        from omegaconf import OmegaConf

        shape = identity(OmegaConf.masked_copy(c, [k for k in c.keys() if k != "seed"]))
        if shape in built:
            continue
        built.add(shape)
        key = config.to_yaml(c.dataset)
        try:
            if key not in splits:
                splits[key] = load_splits(c.dataset)
            check_buildable(c, splits[key])
        except config.ConfigError as e:
            raise config.point_error(grid, i, e) from None


def _resume(resume: str, overrides: list[str], quiet: bool) -> int:
    """Continue a run in its own folder from its last checkpoint: same config, same seed, same data."""
    from pathlib import Path

    from dlexp import config
    from dlexp.data import load_splits
    from dlexp.runner import check_resume, execute, finished_summary

    extra = [o for o in overrides if not o.startswith("results_dir=")]
    if extra:
        raise config.ConfigError(f"--resume: takes no overrides (the run keeps its own config); got {' '.join(extra)}")
    results_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("results_dir=")), "results")
    run_dir = Path(resume) if Path(resume).is_dir() else Path(results_dir) / "runs" / resume
    if not (run_dir / "config.yaml").is_file():
        raise config.ConfigError(f"--resume: no run {resume!r} under {Path(results_dir) / 'runs'}")
    cfg = config.load_run_config(run_dir / "config.yaml")
    group = _check_resumable(run_dir)
    if group is not None:
        return _resume_group(run_dir, group, quiet)
    ended = finished_summary(run_dir)  # a result is never made worse by a resume
    if ended is not None:
        out.print(f"run {run_dir.name} already finished ({ended['status']} after {ended.get('epochs_completed')} of "
                  f"{cfg.trainer.epochs} epochs); nothing to resume", markup=False)
        return 0
    from dlexp.study import set_threads

    set_threads(cfg)
    splits = load_splits(cfg.dataset)
    done = check_resume(cfg, splits, run_dir)["epoch"]  # checkpoint, config and data belong together
    err.print(f"resuming {run_dir.name} after epoch {done} of {cfg.trainer.epochs}", markup=False)
    bar = progress_bar(quiet)
    try:
        if bar is not None:
            with bar:
                run_id, summary = execute(cfg, splits, progress=bar, resume_dir=run_dir)
        else:
            run_id, summary = execute(cfg, splits, resume_dir=run_dir)
    except KeyboardInterrupt:
        err.print("interrupted: the run is marked 'interrupted' and its metrics so far are kept")
        return 130
    _print_summary(cfg, run_id, summary)
    return _exit_code([summary["status"]])


def _check_resumable(run_dir) -> dict | None:
    """A K-fold fold is refused (its rows are the study's: its own command continues it); a member of
    a vectorized group returns the group (meta.json's `group`), else None."""
    import json

    from dlexp import config

    try:
        info = json.loads((run_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    study = info.get("study") if isinstance(info, dict) and isinstance(info.get("study"), dict) else {}
    if study.get("kind") == "kfold":
        raise config.ConfigError(f"--resume: {run_dir.name} is a fold of K-fold study {study.get('name')}, whose rows only the study "
                                 "knows; rerun its dlexp kfold command to continue it")
    group = info.get("group") if isinstance(info, dict) else None
    return group if isinstance(group, dict) and isinstance(group.get("runs"), list) and len(group["runs"]) > 1 else None


def _resume_group(run_dir, group: dict, quiet: bool) -> int:
    """--resume of a member of a vectorized group: every member that did not finish continues, together,
    from its checkpoint (members whose last checkpoints are of different epochs, in one batch each)."""
    from dlexp import config
    from dlexp.data import load_splits
    from dlexp.runner import Member, execute_group
    from dlexp.study import DONE, read_summary, set_threads, start_epoch

    runs = run_dir.parent
    todo, finished, lost = [], [], []
    for r in group["runs"]:
        d = runs / str(r)
        if (read_summary(d) or {}).get("status") in DONE:
            finished.append(d)
        elif (d / "checkpoint.pt").is_file():
            todo.append(d)
        else:
            lost.append(d)
    if not todo:
        out.print(f"group {group.get('id')}: no member left to resume ({len(finished)} finished"
                  + (f", {len(lost)} without a checkpoint" if lost else "") + ")", markup=False)
        return 0
    err.print(f"resuming group {group.get('id')}: {len(todo)} of {len(group['runs'])} members ({len(finished)} finished"
              + (f"; {len(lost)} without a checkpoint cannot" if lost else "") + ")", markup=False)
    batches: dict[int, list] = {}
    for d in todo:
        batches.setdefault(start_epoch(d), []).append(d)
    ended, splits = [], {}
    try:
        for epoch, dirs in sorted(batches.items()):
            cfgs = [config.load_run_config(d / "config.yaml") for d in dirs]
            for c in cfgs:
                key = config.to_yaml(c.dataset)
                if key not in splits:
                    splits[key] = load_splits(c.dataset)
            err.print(f"  {len(dirs)} member(s) after epoch {epoch} of {cfgs[0].trainer.epochs}", markup=False)
            set_threads(cfgs[0])
            ended += execute_group(cfgs, [splits[config.to_yaml(c.dataset)] for c in cfgs], [Member(resume_dir=d) for d in dirs],
                                   group=len(dirs) > 1)  # one member left: an ordinary resume
    except KeyboardInterrupt:
        err.print("interrupted: the members are marked 'interrupted' and their metrics so far are kept")
        return 130
    from rich.table import Table

    table = Table(title=f"group {group.get('id')}: {len(ended)} member(s) resumed")
    for col in ("run", "status", "epochs", "val", "test"):
        table.add_column(col)
    for run_id, summary in ended:
        final = summary.get("final") or {}
        main = "acc" if any(k.endswith("/acc") for k in final) else "rmse"
        fmt = lambda k: f"{final[k]:.4f}" if isinstance(final.get(k), (int, float)) else ""
        table.add_row(run_id or "-", str(summary.get("status")), str(summary.get("epochs_completed")), fmt(f"val/{main}"), fmt(f"test/{main}"))
    out.print(table)
    return _exit_code([summary.get("status") for _, summary in ended])


def _exit_code(statuses: list[str]) -> int:
    if "interrupted" in statuses:
        return 130
    return 1 if "failed" in statuses or "killed" in statuses else 0  # killed: a Slurm job that died without a word


def _single(cfg, quiet: bool) -> int:
    from dlexp.data import load_splits
    from dlexp.runner import execute
    from dlexp.study import set_threads

    set_threads(cfg)
    splits = load_splits(cfg.dataset)
    bar = progress_bar(quiet)
    try:
        if bar is not None:
            with bar:
                run_id, summary = execute(cfg, splits, progress=bar)
        else:
            run_id, summary = execute(cfg, splits)
    except KeyboardInterrupt:
        err.print("interrupted: the run is marked 'interrupted' and its metrics so far are kept")
        return 130
    _print_summary(cfg, run_id, summary)
    return _exit_code([summary["status"]])


def _print_summary(cfg, run_id: str, summary: dict[str, Any]) -> None:
    from rich.table import Table

    final = summary["final"]
    metrics = [m for m in ("loss", "acc", "rmse", "log_rmse", "x1", "x2") if any(k.endswith("/" + m) for k in final)]
    # the run id on a line of its own: a table title wraps to the table's width, which cut the id in two
    out.print(f"run {run_id}", markup=False, soft_wrap=True)
    table = Table(title=f"{cfg.model.name} / {cfg.dataset.name} / {cfg.optimizer.name} ({summary['status']})")
    table.add_column("split")
    for m in metrics:
        table.add_column(m, justify="right")
    for split in ("train", "train_eval", "val", "test"):
        if any(k.startswith(split + "/") for k in final):
            table.add_row(split, *(f"{final[f'{split}/{m}']:.4f}" if f"{split}/{m}" in final else "" for m in metrics))
    out.print(table)
    out.print(f"{summary['epochs_completed']} epochs, {summary['steps']} steps, {summary['duration_s']:.2f} s" + (
        f"; {summary['reason']}" if summary.get("reason") else ""), markup=False)
    out.print(f"results: {os.path.join(cfg.results_dir, 'runs', run_id)}", markup=False)


def _grid(grid: list[list[str]], cfgs: list, jobs: int, quiet: bool, fresh: bool, slurm=None, no_wait: bool = False,
          vectorize=(False, None)) -> int:
    """A grid as a study (dlexp.study): planned against what earlier identical commands left, run in
    this process, with --jobs workers or as a Slurm job array, shown live, then one table."""
    import sys

    from dlexp import study
    from dlexp.cli.progress import StudyDisplay

    varying = _varying_keys(grid)
    grid_id = study.study_id([[o for o in point if not o.startswith("results_dir=")] for point in grid])
    labels = [" ".join(x for x in o if x.split("=")[0] in varying) or " ".join(o) for o in grid]
    meta = {"study": {"kind": "grid", "id": grid_id, "points": len(grid)}}
    points = [study.Point(index=i, overrides=o, cfg=c, key=study.identity(c), label=labels[i], meta=meta)
              for i, (o, c) in enumerate(zip(grid, cfgs))]
    results_dirs = {c.results_dir for c in cfgs}
    counts = {"done": 0, "resume": 0, "run": 0, "running": 0}
    for d in results_dirs:
        for k, v in study.plan([p for p in points if p.cfg.results_dir == d], d, fresh=fresh).items():
            counts[k] += v
    if not quiet:
        err.print(study.plan_line(counts) + (" (--fresh)" if fresh else ""), markup=False)
    for d in results_dirs:
        study.record_grid(d, grid_id, [p for p in points if p.cfg.results_dir == d], _command())
    todo = study.pending(points)
    if todo:
        _preflight([p.cfg for p in todo], grid, [p.index for p in todo])
    outcomes: dict[int, study.Outcome] = {p.index: study.load_outcome(p.cfg.results_dir, p) for p in points if p.action == "done"}
    display = StudyDisplay(f"grid {grid_id}", {p.index: p.label for p in todo}, {p.index: int(p.cfg.trainer.epochs) for p in todo},
                           quiet or no_wait, on_finish=lambda o: outcomes.__setitem__(o.index, o))
    data = study.DataCache()
    if slurm is not None:
        from dlexp.launchers.slurm_study import SlurmArray, study_folder

        executor = SlurmArray(slurm, study_folder(cfgs[0].results_dir, "grid", grid_id), no_wait=no_wait, quiet=quiet,
                              pause=display.close)
    else:
        executor = grouped_executor(todo, data, vectorize, jobs, quiet) or (
            study.Pool(jobs) if jobs > 1 and len(todo) > 1 else study.InProcess(jobs))
    interrupted = False
    try:
        with display:
            executor.run(todo, data, display.event)
    except KeyboardInterrupt:
        interrupted = True
    if getattr(executor, "detached", False):  # --no-wait: the jobs run on
        return 0
    _print_grid(points, outcomes, varying)
    statuses = [o.summary.get("status") for o in outcomes.values() if o.how != "busy"]
    busy = sum(o.how == "busy" for o in outcomes.values()) + counts["running"]
    if busy:
        err.print(f"{busy} point(s) were running in another process; rerun the same command once it ends to see them here",
                  markup=False)
    if interrupted:
        err.print("interrupted: finished runs are kept; rerun the same command to continue (the interrupted run resumes "
                  "from its checkpoint)", markup=False)
        return 130
    return _exit_code(statuses)


def _command() -> list[str]:
    """This command line as meta.json records it (passwords in URLs masked, where dlexp masks them)."""
    import sys

    try:
        from dlexp.sweep import mask
    except ImportError:
        return list(sys.argv)
    return [mask(a) for a in sys.argv]


def _print_grid(points, outcomes, varying, limit: int = 200) -> None:
    from rich.table import Table

    shown = [p for p in points if p.index in outcomes]
    table = Table(title=f"grid: {len(shown)} of {len(points)} points" + (f" (the first {limit} shown)" if len(shown) > limit else ""))
    table.add_column("run", no_wrap=True, min_width=len("20260101-000000-000000"))  # a run id is never cut
    for col in (*varying, "status", "val", "test", "s"):
        table.add_column(col)
    for p in shown[:limit]:
        o = outcomes[p.index]
        values = dict(x.split("=", 1) for x in p.overrides)
        final = o.summary.get("final") or {}
        main = "acc" if any(k.endswith("/acc") for k in final) else "rmse"
        fmt = lambda k: f"{final[k]:.4f}" if isinstance(final.get(k), (int, float)) else ""
        status = o.summary.get("status", "?") + {"skipped": " (earlier)", "resumed": " (resumed)", "busy": " (elsewhere)"}.get(o.how, "")
        seconds = o.summary.get("duration_s")
        table.add_row(o.run_id or "-", *(values.get(k, "") for k in varying), status, fmt(f"val/{main}"), fmt(f"test/{main}"),
                      f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "")
    out.print(table)


def _varying_keys(grid: list[list[str]]) -> list[str]:
    keys: dict[str, set[str]] = {}
    for o in grid:
        for x in o:
            k, _, v = x.partition("=")
            keys.setdefault(k, set()).add(v)
    return [k for k, vs in keys.items() if len(vs) > 1]
