"""The one exception type that the CLI turns into a one-line message and exit status 2, and the
helpers that keep what such a message quotes short."""

from __future__ import annotations

from typing import Any, Iterable

# an error line quotes user data (a file's header, a value given on the command line); past this many
# characters it is cut, so that a 5 MB CSV header or a file such as /proc/self/environ is not echoed
MAX_ECHO = 80
MAX_LINE = 500


class ConfigError(ValueError):
    """A bad user input: the message names the key and what is allowed. The CLI prints it, exits 2.

    `details` are extra lines (a list of missing files, say) printed indented below the one error line.
    """

    def __init__(self, message: str = "", details: Iterable[str] = ()):
        super().__init__(message)
        self.details = list(details)


def echo(value: Any, limit: int = MAX_ECHO) -> str:
    """`repr(value)` of user data for an error message, cut to about `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def echo_list(values: Iterable[Any], limit: int = 10) -> str:
    """'a, b, c, ... (and 9,997 more)': the first `limit` items of a list of user data, each cut."""
    values = list(values)
    shown = ", ".join(v if isinstance(v, str) and len(v) <= MAX_ECHO and v.isprintable() else echo(v) for v in values[:limit])
    return shown + (f", ... (and {len(values) - limit:,} more)" if len(values) > limit else "")


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` on one line, cut to `limit` characters: what an `error:` line may print. Line breaks
    become spaces; other control characters (a terminal's escape sequences) are shown escaped."""
    text = " ".join(str(text).splitlines())
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit]}... (cut: {len(text):,} characters)"
