"""The Slurm options that `run -m`, `kfold` and `sweep` share with `--launcher slurm`: declared once
here, merged over `conf/launcher/slurm.yaml` by `slurm_options`. Not a command.

A command takes them as parameters (`partition: Partition = None`, ...) and calls
`slurm_options(launcher, config_dir, partition=partition, ...)`. Nothing here imports submitit.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Launcher = Annotated[str, typer.Option("--launcher", help="local (this machine; --jobs) or slurm (one Slurm job array through submitit; options from conf/launcher/slurm.yaml and the options below).")]
Partition = Annotated[Optional[str], typer.Option("--partition", help="Slurm partition of every job (default: the cluster's default).")]
Time = Annotated[Optional[str], typer.Option("--time", help="Time limit per job: minutes, H:MM:SS or D-HH:MM (default: the partition's).")]
CpusPerTask = Annotated[Optional[int], typer.Option("--cpus-per-task", help="CPUs per job; torch uses as many threads (default 1).")]
Mem = Annotated[Optional[str], typer.Option("--mem", help="Memory per job, e.g. 4G (default: the partition's).")]
Gpus = Annotated[Optional[int], typer.Option("--gpus", help="GPUs per job (--gpus-per-node; default 0).")]
Account = Annotated[Optional[str], typer.Option("--account", help="Slurm account to charge.")]
Qos = Annotated[Optional[str], typer.Option("--qos", help="Slurm quality of service.")]
Sbatch = Annotated[Optional[list[str]], typer.Option("--sbatch", help="Any other sbatch option, repeatable: --sbatch=--constraint=a100 --sbatch=--exclusive.")]
MaxParallel = Annotated[Optional[int], typer.Option("--max-parallel", help="At most this many jobs at once (the array throttle).")]
RunsPerJob = Annotated[Optional[int], typer.Option("--runs-per-job", help="Runs one job works through, one after another (each job start costs ~2 s of imports; default 1).")]
NoWait = Annotated[bool, typer.Option("--no-wait", help="With --launcher slurm: submit, print the array id and how to watch and cancel it, and return; `dlexp status` follows the study, the same command again waits for it.")]
Workers = Annotated[Optional[int], typer.Option("--workers", help="With --launcher slurm: worker jobs that share the study (each runs --jobs processes; default 1).")]


def slurm_options(launcher: str, config_dir: str | None = None, **given):
    """None for `--launcher local`; for `slurm` (or another file of launcher/), the options of its
    file with the given command-line values on top. A bad value is a one-line ConfigError."""
    from dlexp.errors import ConfigError
    from dlexp.launchers import slurm

    if launcher == "local":
        if any(v not in (None, False, []) for v in given.values()):
            named = ", ".join("--" + k.replace("_", "-") for k, v in given.items() if v not in (None, False, []))
            raise ConfigError(f"{named}: Slurm options need --launcher slurm")
        return None
    given.pop("no_wait", None)
    given.pop("workers", None)
    if given.get("sbatch") is not None:
        given["sbatch"] = tuple(given["sbatch"])
    return slurm.load_options(launcher, config_dir, **given)


def check_study_use(*, jobs: int = 1, multirun: bool = True, resume: str | None = None) -> None:
    """`--launcher slurm` sends a whole study: one-line errors for what only makes sense on this machine."""
    from dlexp.errors import ConfigError

    if resume is not None:
        raise ConfigError("--resume: continues one run on this machine; with --launcher slurm give the grid's own "
                          "command again (it resumes its interrupted points on the cluster)")
    if not multirun:
        raise ConfigError("--launcher slurm: sends a grid to the cluster; add -m (a single run is a grid of one point)")
    if jobs != 1:
        raise ConfigError(f"--jobs {jobs}: processes on this machine; with --launcher slurm use --max-parallel "
                          "(jobs at once) and --runs-per-job")
