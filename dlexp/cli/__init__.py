"""dlexp's command line. One module per command; this file only wires them into one Typer app.

Nothing here imports torch at module level: `dlexp --help` and `dlexp list` stay fast.
"""

from __future__ import annotations

import typer

from dlexp.cli.check_optimizers import check_optimizers
from dlexp.cli.kfold import kfold
from dlexp.cli.list import list_choices
from dlexp.cli.report import report
from dlexp.cli.run import run
from dlexp.cli.sweep import sweep

app = typer.Typer(
    name="dlexp",
    help="Experiment runner for optimizer and regularization studies in PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("run", context_settings={"allow_interspersed_args": True})(run)
app.command("list")(list_choices)
app.command("kfold", context_settings={"allow_interspersed_args": True})(kfold)
app.command("sweep", context_settings={"allow_interspersed_args": True})(sweep)
app.command("report")(report)
app.command("check-optimizers")(check_optimizers)


def main() -> None:
    import sys

    from dlexp.signals import interrupt_on_stop_signals

    # SIGTERM, SIGHUP, SIGUSR1, ... (`kill PID`, a closed terminal, a batch scheduler's time limit) end
    # a run as Ctrl-C does: the run is marked interrupted with its finished epochs kept, a grid or
    # sweep stops cleanly, exit 130
    interrupt_on_stop_signals()
    try:
        code = app(standalone_mode=False)
    except Exception as e:
        # Typer's usage errors (a bad option value, an unknown option or command) print as a box of
        # several lines; dlexp's convention is one line and exit 2. (Typer vendors click, so its
        # exception classes are matched by their interface rather than imported.)
        if type(e).__name__ == "Abort":
            sys.exit(130)
        if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
            raise
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            sys.exit(0)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        from dlexp.errors import one_line
        from dlexp.masking import mask

        print(f"error: {one_line(mask(e.format_message()))}{where}", file=sys.stderr)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
