"""dlexp's command line. One module per command; this file only wires them into one Typer app.

Nothing here imports torch at module level: `dlexp --help` and `dlexp list` stay fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dlexp.cli.check_optimizers import check_optimizers
from dlexp.cli.kfold import kfold
from dlexp.cli.list import list_choices
from dlexp.cli.report import report
from dlexp.cli.run import run
from dlexp.cli.status import status
from dlexp.cli.sweep import sweep

app = typer.Typer(
    name="dlexp",
    help="Experiment runner for optimizer and regularization studies in PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version_line() -> str:
    """`dlexp 0.1.0 (torch 2.13.0+cpu)`, from the installed packages' metadata: torch is not imported."""
    from importlib.metadata import PackageNotFoundError, version

    import dlexp

    try:
        torch = f"torch {version('torch')}"
    except PackageNotFoundError:
        torch = "torch not installed"
    return f"dlexp {dlexp.__version__} ({torch})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", help="Print dlexp's and torch's versions and exit.",
                                          callback=_print_version, is_eager=True)] = False,
) -> None:
    """Experiment runner for optimizer and regularization studies in PyTorch."""


app.command("run", context_settings={"allow_interspersed_args": True})(run)
app.command("list")(list_choices)
app.command("kfold", context_settings={"allow_interspersed_args": True})(kfold)
app.command("sweep", context_settings={"allow_interspersed_args": True})(sweep)
app.command("report")(report)
app.command("check-optimizers")(check_optimizers)
app.command("status")(status)


# OpenMP's wait policy for dlexp's processes (benchmarks/omp_wait_policy.py measured it; README "Threads"):
# PASSIVE threads sleep when out of work instead of spinning, which on a shared or busy machine keeps
# torch's second thread from burning the core that the first one needs
OMP_WAIT_POLICY = "PASSIVE"


def main() -> None:
    import os
    import sys

    from dlexp.signals import interrupt_on_stop_signals

    if "torch" not in sys.modules:  # OpenMP reads it once, when torch loads it; a value the user set wins
        os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    # SIGTERM, SIGHUP, SIGUSR1, ... (`kill PID`, a closed terminal, a batch scheduler's time limit) end
    # a run as Ctrl-C does: the run is marked interrupted with its finished epochs kept, a grid or
    # sweep stops cleanly, exit 130
    interrupt_on_stop_signals()
    sys.exit(invoke())


def invoke(argv: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run the command line (`argv`, default sys.argv[1:]) in this process and return its exit
    status, with dlexp's one-line usage errors: what `main` exits with, without exiting (a Slurm
    job runs several commands in one process this way)."""
    import sys

    try:
        code = app(args=argv, prog_name=prog_name, standalone_mode=False)
    except Exception as e:
        # Typer's usage errors (a bad option value, an unknown option or command) print as a box of
        # several lines; dlexp's convention is one line and exit 2. (Typer vendors click, so its
        # exception classes are matched by their interface rather than imported.)
        if type(e).__name__ == "Abort":
            return 130
        if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
            raise
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            return 0
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        from dlexp.errors import one_line
        from dlexp.masking import mask

        print(f"error: {one_line(mask(e.format_message()))}{where}", file=sys.stderr)
        return e.exit_code
    return code if isinstance(code, int) else 0
