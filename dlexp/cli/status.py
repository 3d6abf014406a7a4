"""`dlexp status`: what the studies in a results folder look like now, and how to continue them."""

from __future__ import annotations

from typing import Annotated

import typer

from dlexp.cli.common import out


def status(
    results_dir: Annotated[str, typer.Argument(help="The results folder to look at.")] = "results",
) -> None:
    """Runs by status (ok, diverged, pruned, interrupted, failed, running, killed), grouped by study
    (grid, K-fold study, sweep), with the command that continues each unfinished one; then the sweep
    studies stored in the folder.

    Example: dlexp status results/
    """
    from pathlib import Path

    from rich.table import Table

    from dlexp.cli.common import fail
    from dlexp.study import STATUSES, survey, sweep_studies

    if not Path(results_dir).is_dir():
        raise fail(f"results_dir: {results_dir} is not a folder")
    groups = survey(results_dir)
    if not groups:
        out.print(f"no runs under {Path(results_dir) / 'runs'}", markup=False)
    else:
        table = Table(title=f"runs in {results_dir}")
        table.add_column("study", no_wrap=True)
        for s in STATUSES:
            table.add_column(s, justify="right")
        table.add_column("left", justify="right")
        for g in groups:
            name = {"grid": f"grid {g['name']}", "kfold": f"kfold {g['name']}", "sweep": f"sweep {g['name']}"}.get(g["kind"], g["name"])
            table.add_row(name, *(str(g["counts"][s]) if g["counts"][s] else "" for s in STATUSES), str(g["missing"] or ""))
        out.print(table)
        for g in groups:
            if g["continue"]:
                what = "resume" if g["kind"] == "runs" else f"continue {g['kind']} {g['name']}"
                out.print(f"{what}: {g['continue']}", markup=False, soft_wrap=True)
            running = g["counts"]["running"]
            killed = [r for r, st, _ in g["unfinished"] if st == "killed"]
            if killed:
                out.print(f"  killed (no summary, no heartbeat): {', '.join(killed[:5])}" + (" ..." if len(killed) > 5 else ""),
                          markup=False, soft_wrap=True)
            if running:
                out.print(f"  {running} run(s) of {g['kind']} {g['name']} are running now", markup=False)
            _slurm_lines(results_dir, g)
    sweeps = sweep_studies(results_dir)
    if sweeps:
        table = Table(title="sweep studies (dlexp report --study NAME)")
        for col in ("study", "storage", "trials", "states"):
            table.add_column(col, no_wrap=col == "study")
        for sw in sweeps:
            states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(sw["states"].items()))
            table.add_row(sw["study"], sw["storage"], "" if sw["trials"] is None else str(sw["trials"]), states)
        out.print(table)


def _slurm_lines(results_dir: str, g: dict) -> None:
    """A study's Slurm jobs: its latest array as Slurm sees it now and where the job logs are; the
    job log of each unfinished run that ran in a job."""
    from dlexp.launchers.slurm_study import arrays, job_summary

    if g["kind"] not in ("grid", "kfold", "sweep"):
        return
    found = arrays(results_dir, g["kind"], g["name"])
    if found:
        latest = found[0]
        more = f" (and {len(found) - 1} earlier array(s) there)" if len(found) > 1 else ""
        out.print(f"  slurm array {latest['array_id']} ({job_summary(latest)}); job logs: {latest['folder']}/"
                  f"{latest['array_id']}_<task>/{more}", markup=False, soft_wrap=True)
    for run, log in list(g.get("logs", {}).items())[:5]:
        out.print(f"  job log of {run}: {log}", markup=False, soft_wrap=True)
