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
    app()
