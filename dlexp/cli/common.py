"""What every command shares: stderr console, the one-line error convention, the progress bar."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer
from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
# rich falls back to 80 columns when output is piped; tables of long config labels need more
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def fail(message: str, code: int = 2, details=()) -> typer.Exit:
    """Print `error: message` on one line to stderr (secrets masked, cut to a readable length), and
    `details` as indented lines below it; return the Exit to raise."""
    from rich.markup import escape

    from dlexp.errors import one_line
    from dlexp.masking import mask

    # the message may quote user input ("[red]x=1"): escaped, so rich shows it as typed
    message = one_line(mask(message))  # one line, even when a library's message has several
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    for line in details:
        err.print(f"  {escape(one_line(mask(line)))}", markup=True, highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn ConfigError (and other bad-input errors) into one line and exit 2; --debug shows the traceback."""
    from dlexp.errors import ConfigError

    from dlexp.runner import ResultsWriteError

    try:
        yield
    except ConfigError as e:
        if debug:
            raise
        raise fail(str(e).splitlines()[0] if str(e).strip() else type(e).__name__, details=getattr(e, "details", ())) from None
    except ResultsWriteError as e:  # a write failed mid-run (full disk): exit 1, not a traceback
        if debug:
            raise
        raise fail(str(e), code=1) from None


def progress_bar(quiet: bool):
    """A rich Progress on a terminal, None when output is redirected or --quiet."""
    if quiet or not sys.stdout.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=out, transient=False,
    )


def check_vectorize(vectorize: bool, vectorize_max: int | None, jobs: int, study: bool, what: str) -> None:
    """--vectorize and --vectorize-max: with a study, without --jobs, a group size of at least 1."""
    from dlexp.errors import ConfigError

    if vectorize_max is not None and not vectorize:
        raise ConfigError("--vectorize-max: goes with --vectorize")
    if vectorize_max is not None and vectorize_max < 1:
        raise ConfigError(f"--vectorize-max: must be >= 1, got {vectorize_max}")
    if vectorize and not study:
        raise ConfigError(f"--vectorize: stacks the points of a study; it needs {what}")
    if vectorize and jobs > 1:
        raise ConfigError("--vectorize: trains its groups in this process; use it without --jobs")


def grouped_executor(todo: list, data, vectorize: tuple[bool, int | None], jobs: int, quiet: bool):
    """--vectorize: the points cut into vectorized groups, the grouping line printed first; else None."""
    from dlexp import study
    from dlexp.vectorize import grouping_line

    if not vectorize[0]:
        return None
    groups, alone = study.vectorize_groups(todo, data, vectorize[1])
    if not quiet and todo:
        err.print(grouping_line(groups, alone), markup=False)
    return study.Vectorized(groups, jobs)
