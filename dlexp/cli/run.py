"""`dlexp run`: one run, or a grid with -m, from Hydra overrides."""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import typer

from dlexp.cli.common import err, fail, out, progress_bar, user_errors


def run(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides: optimizer=adam optimizer.lr=0.01 model.hidden=[256,256] seed=3", show_default=False)] = None,
    multirun: Annotated[bool, typer.Option("-m", "--multirun", help="Run the grid of every sweep (a=1,2 b=range(0,3)).")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Runs at once, each in its own process (with -m).")] = 1,
    cfg: Annotated[bool, typer.Option("--cfg", help="Print the composed config(s) and exit.")] = False,
    config_dir: Annotated[Optional[str], typer.Option("--config-dir", help="A folder of your own configs, searched before dlexp's.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue RUN_ID (or a run folder) from its last epoch checkpoint.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")] = False,
) -> None:
    """Train and evaluate: one run, or a grid with -m. Results go to results/runs/<run_id>/.

    Examples: dlexp run optimizer=adam model=mlp; dlexp run -m optimizer=sgd,adam seed=0,1,2 --jobs 2
    """
    from dlexp import config

    overrides = list(overrides or [])
    with user_errors(debug):
        if jobs < 1:
            raise config.ConfigError(f"--jobs: must be >= 1, got {jobs}")
        if resume is not None:
            raise typer.Exit(_resume(resume, overrides, quiet))
        grid = config.expand(overrides, multirun, config_dir)
        cfgs = config.compose_grid(grid, config_dir)  # every point checked before any run starts
        if cfg:
            # plain stdout, not rich: rich wraps long lines, which would break the YAML
            for o, c in zip(grid, cfgs):
                if len(grid) > 1:
                    typer.echo(f"# {' '.join(o)}")
                typer.echo(config.to_yaml(c), nl=False)
            return
        from dlexp.results import check_writable

        for c in {c.results_dir for c in cfgs}:
            check_writable(c)
        if len(cfgs) > 1:
            _preflight(cfgs, grid)
        if len(cfgs) == 1:
            status = _single(cfgs[0], quiet)
        else:
            status = _grid(grid, cfgs, jobs, config_dir, quiet)
    raise typer.Exit(status)


def _preflight(cfgs, grid) -> None:
    """Every grid point's data, model, optimizer and schedule built before the first run (each data
    set loaded once): a bad point is exit 2 with nothing trained, with or without --jobs."""
    from dlexp import config
    from dlexp.data import load_splits
    from dlexp.train import check_buildable

    splits: dict[str, object] = {}
    for i, c in enumerate(cfgs):
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
    ended = finished_summary(run_dir)  # a result is never made worse by a resume
    if ended is not None:
        out.print(f"run {run_dir.name} already finished ({ended['status']} after {ended.get('epochs_completed')} of "
                  f"{cfg.trainer.epochs} epochs); nothing to resume", markup=False)
        return 0
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


def _exit_code(statuses: list[str]) -> int:
    if "interrupted" in statuses:
        return 130
    return 1 if "failed" in statuses else 0


def _single(cfg, quiet: bool) -> int:
    from dlexp.data import load_splits
    from dlexp.runner import execute

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
    metrics = [m for m in ("loss", "acc", "rmse", "log_rmse") if any(k.endswith("/" + m) for k in final)]
    table = Table(title=f"run {run_id}: {cfg.model.name} / {cfg.dataset.name} / {cfg.optimizer.name} ({summary['status']})")
    table.add_column("split")
    for m in metrics:
        table.add_column(m, justify="right")
    for split in ("train", "val", "test"):
        if any(k.startswith(split + "/") for k in final):
            table.add_row(split, *(f"{final[f'{split}/{m}']:.4f}" if f"{split}/{m}" in final else "" for m in metrics))
    out.print(table)
    out.print(f"{summary['epochs_completed']} epochs, {summary['steps']} steps, {summary['duration_s']:.2f} s" + (
        f"; {summary['reason']}" if summary.get("reason") else ""), markup=False)
    out.print(f"results: {os.path.join(cfg.results_dir, 'runs', run_id)}", markup=False)


def _worker(overrides: list[str], config_dir: Optional[str], threads: int) -> tuple[list[str], str | None, dict[str, Any]]:
    """One grid point in a fresh process (for --jobs)."""
    import torch

    torch.set_num_threads(threads)
    from dlexp import config
    from dlexp.data import load_splits
    from dlexp.runner import execute

    cfg = config.compose(overrides, config_dir)
    try:
        run_id, summary = execute(cfg, load_splits(cfg.dataset))
    except Exception as e:  # recorded as 'failed' in the run folder; the grid goes on
        return overrides, None, {"status": "failed", "reason": f"{type(e).__name__}: {e}", "final": {}, "duration_s": 0.0}
    return overrides, run_id, summary


def _grid(grid: list[list[str]], cfgs: list, jobs: int, config_dir: Optional[str], quiet: bool) -> int:
    from rich.table import Table

    from dlexp.config import to_yaml

    rows: list[tuple[list[str], str | None, dict[str, Any]]] = []
    interrupted = False
    varying = _varying_keys(grid)

    def report(o, run_id, summary) -> None:
        rows.append((o, run_id, summary))
        label = " ".join(x for x in o if x.split("=")[0] in varying) or " ".join(o)
        if not quiet:
            err.print(f"[{len(rows)}/{len(grid)}] {label}: {summary['status']}" + (f" ({summary['reason']})" if summary.get("reason") else ""), markup=False)

    if jobs == 1:
        from dlexp.data import load_splits
        from dlexp.runner import execute

        cache: dict[str, Any] = {}  # the data of each distinct dataset config is loaded once
        for o, cfg in zip(grid, cfgs):
            key = to_yaml(cfg.dataset)
            try:
                if key not in cache:
                    cache[key] = load_splits(cfg.dataset)
                run_id, summary = execute(cfg, cache[key])
            except KeyboardInterrupt:
                interrupted = True
                break
            except Exception as e:
                from dlexp.errors import ConfigError
                from dlexp.runner import ResultsWriteError

                if isinstance(e, (ConfigError, ResultsWriteError)):
                    raise  # bad input, or a results folder that can no longer be written: stop the grid
                run_id, summary = None, {"status": "failed", "reason": f"{type(e).__name__}: {e}", "final": {}, "duration_s": 0.0}
            report(o, run_id, summary)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // jobs)
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
        try:
            futures = [pool.submit(_worker, o, config_dir, threads) for o in grid]
            for f in as_completed(futures):
                report(*f.result())
        except KeyboardInterrupt:
            interrupted = True
            pool.shutdown(wait=False, cancel_futures=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    table = Table(title=f"grid: {len(rows)} of {len(grid)} runs")
    for col in ("run", *varying, "status", "val", "test", "s"):
        table.add_column(col)
    for o, run_id, summary in rows:
        values = dict(x.split("=", 1) for x in o)
        final = summary.get("final", {})
        main = "acc" if any(k.endswith("/acc") for k in final) else "rmse"
        fmt = lambda k: f"{final[k]:.4f}" if k in final else ""
        table.add_row(run_id or "-", *(values.get(k, "") for k in varying), summary["status"], fmt(f"val/{main}"), fmt(f"test/{main}"), f"{summary['duration_s']:.1f}")
    out.print(table)
    statuses = [s["status"] for _, _, s in rows] + (["interrupted"] if interrupted else [])
    if interrupted:
        err.print("interrupted: finished runs are kept; the rest of the grid was not started")
    return _exit_code(statuses)


def _varying_keys(grid: list[list[str]]) -> list[str]:
    keys: dict[str, set[str]] = {}
    for o in grid:
        for x in o:
            k, _, v = x.partition("=")
            keys.setdefault(k, set()).add(v)
    return [k for k, vs in keys.items() if len(vs) > 1]
