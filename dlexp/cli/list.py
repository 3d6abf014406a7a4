"""`dlexp list`: the choices of each config group, read from the YAML files (no torch import)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from dlexp.cli.common import fail, out


def list_choices(
    group: Annotated[Optional[str], typer.Argument(help="One group: model, dataset, optimizer, schedule, trainer, experiment, or sweep (search spaces for dlexp sweep).")] = None,
    config_dir: Annotated[Optional[str], typer.Option("--config-dir", help="Also list the choices in this config folder.")] = None,
) -> None:
    """Show the choices of each config group with a one-line description."""
    from dlexp.config import GROUPS, choices, describe
    from dlexp.errors import ConfigError

    # sweep/ holds dlexp sweep's search spaces (sweep=NAME), not a group of the run config
    listed = (*GROUPS, "sweep")
    if group is not None and group not in listed:
        raise fail(f"group {group!r}: unknown; choose one of: {', '.join(listed)}")
    table = Table(title="config choices (use as GROUP=CHOICE)", show_lines=False)
    table.add_column("group")
    table.add_column("choice")
    table.add_column("description")
    try:
        for g in [group] if group else listed:
            for name, path in choices(g, config_dir).items():
                table.add_row(g, name, describe(path))
    except ConfigError as e:
        raise fail(str(e)) from None
    # piped (a file, grep, a test): the table at its natural width, no description wrapped (the shared
    # console caps piped output at 160 columns, and print() cannot widen it)
    (out if out.is_terminal else Console(highlight=False, width=1000)).print(table)
