"""Process plumbing shared by the commands and their worker processes: the signals that end a run as
`interrupted`, and worker processes that die with their parent."""

from __future__ import annotations

import os
import signal
import threading
import time

# Signals that ask a process to stop, each of which would otherwise kill it on the spot and leave its
# run without a status: a closed terminal or ssh session (SIGHUP), `kill PID` and batch schedulers
# (SIGTERM; Slurm's --signal sends SIGUSR1 or SIGUSR2 before the time limit; SIGXCPU at a CPU-time
# limit), Ctrl-\ (SIGQUIT), alarm(1) (SIGALRM), a UPS's power-failure warning (SIGPWR). They end a
# run as Ctrl-C (SIGINT) does: `interrupted`, finished epochs kept, exit 130. Signals that report a
# fault (SIGSEGV, SIGBUS, ...) and profilers' timers (SIGPROF, SIGVTALRM) are left alone; Python
# itself ignores SIGPIPE and SIGXFSZ (a write then fails with an error instead).
STOP_SIGNALS = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGALRM", "SIGPWR")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def interrupt_on_stop_signals() -> None:
    """Make every signal of STOP_SIGNALS raise KeyboardInterrupt (call from the main thread)."""
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)  # SIGPWR is Linux's
        if sig is not None:
            signal.signal(sig, _interrupt)


def die_with_parent(parent: int, grace: float = 10.0, poll: float = 0.5) -> None:
    """In a worker process: once process `parent` is gone (kill -9 included), interrupt the main
    thread as Ctrl-C would, so that the current run is recorded as `interrupted`, then exit after
    `grace` seconds at most: a worker must not train on for nobody, then wait forever on a pipe.

    The parent's death is seen as a change of `os.getppid()` (the orphan is re-parented), polled by a
    daemon thread; `parent` is passed in because the parent may already be gone when this runs."""
    import _thread

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        _thread.interrupt_main()
        time.sleep(grace)
        os._exit(130)

    threading.Thread(target=watch, name="dlexp-parent-watch", daemon=True).start()
