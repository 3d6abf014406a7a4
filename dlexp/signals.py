"""The signals that end a run as `interrupted`, for the commands and their worker processes.
(Workers that die with their parent: `dlexp.lifeline`.)"""

from __future__ import annotations

import signal
import time

# Signals that ask a process to stop, each of which would otherwise kill it on the spot and leave its
# run without a status: a closed terminal or ssh session (SIGHUP), `kill PID` and batch schedulers
# (SIGTERM; Slurm's --signal sends SIGUSR1 or SIGUSR2 before the time limit; SIGXCPU at a CPU-time
# limit), Ctrl-\ (SIGQUIT), alarm(1) (SIGALRM), a UPS's power-failure warning (SIGPWR). They end a
# run as Ctrl-C (SIGINT) does: `interrupted`, finished epochs kept, exit 130. Signals that report a
# fault (SIGSEGV, SIGBUS, ...) and profilers' timers (SIGPROF, SIGVTALRM) are left alone; Python
# itself ignores SIGPIPE and SIGXFSZ (a write then fails with an error instead).
STOP_SIGNALS = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGALRM", "SIGPWR")


_FIRST: list[float] = []  # when the first stop signal came


def _interrupt(signum, frame) -> None:
    # A repeat within a few seconds is ignored: it would land in the handling of the first and cut
    # the run's files short (a worker gets SIGTERM twice when its parent dies: the kernel's
    # parent-death signal, then its watchdog's). A repeat later still interrupts.
    now = time.monotonic()
    if _FIRST and now - _FIRST[0] < REPEAT_IGNORED_S:
        return
    _FIRST[:] = [now]
    raise KeyboardInterrupt


REPEAT_IGNORED_S = 10.0


def interrupt_on_stop_signals() -> None:
    """Make every signal of STOP_SIGNALS raise KeyboardInterrupt (call from the main thread)."""
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)  # SIGPWR is Linux's
        if sig is not None:
            signal.signal(sig, _interrupt)
