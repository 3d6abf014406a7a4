"""One live progress display per command: runs done, running and failed, each running run's epoch,
and an ETA. It is driven by the study engine's events (`dlexp.study`), which come from this process
or from `--jobs` workers alike.

On a terminal it is a rich Live display; when output is not a terminal it prints one line per
finished run on stderr (as before); with --quiet it prints nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

from dlexp.cli.common import err, out


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StudyDisplay:
    """Progress of a study's points. `event(e)` takes the engine's events; `on_finish(outcome)` is
    called for each finished point (after the display is updated)."""

    def __init__(self, title: str, labels: dict[int, str], epochs: dict[int, int], quiet: bool,
                 on_finish: Callable[[Any], None] | None = None, live: bool | None = None):
        self.title, self.labels, self.epochs, self.quiet = title, labels, epochs, quiet
        self.on_finish = on_finish
        self.total = len(labels)
        self.finished: dict[int, str] = {}  # index -> status
        self.running: dict[int, dict[str, Any]] = {}  # index -> {"run_id", "epoch", "epochs"}
        self.started = time.perf_counter()
        self.live = None
        self.tty = (sys.stdout.isatty() if live is None else live) and not quiet
        self._lock = threading.RLock()  # events come from this thread and the --jobs dispatcher

    # the engine's events ------------------------------------------------------------------------
    def event(self, e: dict[str, Any]) -> None:
        with self._lock:
            kind, i = e.get("kind"), e.get("index")
            if kind == "start":
                self.running[i] = {"run_id": e["run_id"], "epoch": e.get("first_epoch", 1) - 1, "epochs": e["epochs"]}
            elif kind == "epoch":
                self.running.setdefault(i, {"run_id": "", "epochs": e["epochs"]})["epoch"] = e["epoch"]
            elif kind == "finish":
                outcome = e["outcome"]
                self.running.pop(i, None)
                status = outcome.summary.get("status", "?")
                self.finished[i] = status
                if not self.tty and not self.quiet:
                    reason = outcome.summary.get("reason")
                    where = " (running in another process)" if outcome.how == "busy" else ""
                    err.print(f"[{len(self.finished)}/{self.total}] {self.labels.get(i, i)}: {status}{where}"
                              + (f" ({reason})" if reason and outcome.how != "busy" else ""), markup=False)
            elif kind == "error":
                err.print(f"error: {e['message']}", markup=False)
        if e.get("kind") == "finish" and self.on_finish is not None:
            self.on_finish(e["outcome"])

    # the terminal ------------------------------------------------------------------------------------
    def __enter__(self) -> "StudyDisplay":
        if self.tty:
            from rich.live import Live

            self.live = Live(self._render(), console=out, refresh_per_second=4, transient=False,
                             get_renderable=self._render)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live view (its last state stays on screen), e.g. before a question is asked."""
        if self.live is not None:
            self.live.update(self._render(), refresh=True)
            self.live.stop()
            self.live = None

    def eta(self) -> float | None:
        """Seconds left: the elapsed time scaled by the epochs still to train over those trained."""
        total = sum(self.epochs.values())
        done = sum(self.epochs.get(i, 0) for i in self.finished)
        done += sum(r.get("epoch", 0) for r in self.running.values())
        if done <= 0:
            return None
        return (time.perf_counter() - self.started) * max(total - done, 0) / done

    def counts(self) -> dict[str, int]:
        failed = sum(s == "failed" for s in self.finished.values())
        return {"done": len(self.finished) - failed, "failed": failed, "running": len(self.running),
                "waiting": self.total - len(self.finished) - len(self.running)}

    def _render(self):
        # called by rich's refresh thread (4 times a second): never from event(), whose lock it takes
        with self._lock:
            return self._render_now()

    def _render_now(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        c = self.counts()
        eta = self.eta()
        head = Table.grid(padding=(0, 1))
        head.add_row(Text(self.title, style="bold"), ProgressBar(total=max(self.total, 1), completed=len(self.finished), width=30),
                     Text(f"{len(self.finished)}/{self.total} runs: {c['done']} done, {c['failed']} failed, {c['running']} running"
                          f" · {_duration(time.perf_counter() - self.started)} elapsed"
                          + (f" · ETA {_duration(eta)}" if eta is not None else "")))
        rows = Table.grid(padding=(0, 2))
        for i, r in sorted(self.running.items())[:12]:
            rows.add_row(Text(f"  {self.labels.get(i, i)}", overflow="ellipsis", no_wrap=True),
                         Text(r.get("run_id", ""), no_wrap=True), Text(f"epoch {r.get('epoch', 0)}/{r.get('epochs', '?')}"))
        if len(self.running) > 12:
            rows.add_row(Text(f"  ... and {len(self.running) - 12} more running"), Text(""), Text(""))
        return Group(head, rows)
