"""Worker processes that die with their parent.

A `--jobs` worker that outlives its parent (killed with SIGKILL, or its terminal closed) would train
to the end and then wait forever on a pipe nobody reads. `die_with_parent()`, called first thing in a
worker, prevents that in two ways:

- Linux's parent-death signal (prctl PR_SET_PDEATHSIG): the kernel sends the worker SIGTERM the
  moment its parent exits. dlexp handles SIGTERM like Ctrl-C, so the worker's run is marked
  `interrupted` with its checkpoint, and the next identical command resumes it.
- A watchdog thread for everything else (other systems, or a parent that is gone before prctl was
  called): it checks every second whether the parent is still the one that started the worker, and
  sends the worker SIGTERM when it is not; if the worker is still there `grace` seconds later (stuck
  in native code), it is ended with SIGKILL.

Used by `dlexp run -m --jobs`, `dlexp kfold --jobs` and `dlexp sweep --jobs` workers.
"""

from __future__ import annotations

import os
import signal
import threading
import time


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # as dlexp's own SIGTERM handler: the run ends as `interrupted`


def die_with_parent(grace: float = 30.0, ignore_sigint: bool = False) -> None:
    """Make this (worker) process end when the process that started it ends.

    With `ignore_sigint`, Ctrl-C (which a terminal sends to the whole process group) is left to the
    parent, which then stops its workers with SIGTERM."""
    parent = os.getppid()
    signal.signal(signal.SIGTERM, _terminate)
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_pdeathsig(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="dlexp-lifeline", daemon=True).start()


def _set_pdeathsig(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig) on Linux; False elsewhere (the watchdog still works)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
