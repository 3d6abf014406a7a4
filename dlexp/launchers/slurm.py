"""Slurm job arrays through submitit: submit a list of work items, watch them, cancel them, report.

The caller (the study engine) hands over an importable function and a list of items. `submit`
packs the items `runs_per_job` at a time into jobs and sends all jobs as ONE Slurm job array
(`max_parallel` is the array throttle, `%N`); each job calls the function on its items one after
another. `Batch.wait` polls Slurm and the job folders and reports item counts to a callback until
every item is settled; `Batch.cancel` is `scancel`. What this module does not do is decide what
to run: which items are done, to skip or to resume is the caller's business.

What becomes of an item (`ItemResult.status`):

    pending      its job has not started it yet
    running      its job is working on it
    done         the function returned (its value is kept)
    failed       the function raised (the error is kept, the job goes on with its next item)
    interrupted  the job was told to stop (scancel, the time limit, preemption: SIGTERM, or the
                 USR2 warning submitit asks Slurm for) while the function worked on it: the function
                 got a KeyboardInterrupt, as dlexp's runs do on Ctrl-C, and could save a checkpoint
    lost         the job ended without a word about it (SIGKILL, node failure, cancelled before the
                 item started, out of memory): rerun it

Inside a job, SIGTERM and SIGINT become a KeyboardInterrupt in the function (submitit itself only
logs SIGTERM), so the current item ends `interrupted` and no further item starts. Slurm sends the
USR2 warning `signal_delay_s` before the time limit: the item is interrupted the same way, then
submitit's checkpoint support requeues the job (at most `max_requeues` times), and the requeued
job goes on with the items that are not done, the interrupted one first (a dlexp run resumes from
its checkpoint when the caller's function does that).

Files, all under the folder the caller gives (it must be on a file system the nodes share):

    <folder>/<array>.json                what was submitted: the item indices of each job, when
    <folder>/<array>/<array>_submission.sh   the sbatch script
    <folder>/<array>_<task>/             one folder per job: submitit's log (`*_log.out`, `*_log.err`),
                                         submitit's pickles of the function and its items, and
                                         `item-<i>.started` and `item-<i>.json` (the outcome)

Job states come from `squeue` (and `sacct` once squeue has forgotten a job); a cluster without an
accounting database works as long as the caller looks within MinJobAge (default 5 min) of the end.
Nothing here imports submitit at module level: the CLI stays fast and the options can be checked
without it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from dlexp.errors import ConfigError

STATUSES = ("pending", "running", "done", "failed", "interrupted", "lost")
# squeue/sacct states (https://slurm.schedmd.com/squeue.html#lbAG) of a job that has not started,
# or is waiting to start again after a requeue
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"}
ACTIVE = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"}
# any other state is an ended job: COMPLETED, CANCELLED, FAILED, TIMEOUT, NODE_FAIL, PREEMPTED,
# BOOT_FAIL, DEADLINE, OUT_OF_MEMORY, SPECIAL_EXIT, REVOKED

# sbatch options the launcher writes itself: an extra `--sbatch` line may not change them
OWNED = {"array", "output", "error", "open-mode", "signal", "wrap", "parsable"}


# --- options -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmOptions:
    """What to ask Slurm for, per job. None leaves a choice to the cluster's defaults."""

    partition: str | None = None  # None: the cluster's default partition
    time: str | None = None  # per job, in Slurm's format (minutes, H:MM:SS, D-HH:MM); None: the partition's default
    cpus_per_task: int = 1
    mem: str | None = None  # per job, e.g. 4G or 500M; None: the partition's default
    gpus: int = 0  # per job (--gpus-per-node)
    account: str | None = None
    qos: str | None = None
    sbatch: tuple[str, ...] = ()  # any other sbatch option: "--constraint=a100", "--mail-type=END"
    setup: tuple[str, ...] = ()  # shell lines run in each job before Python starts (module load, venv)
    max_parallel: int | None = None  # jobs of the array running at once (the array throttle); None: no limit
    runs_per_job: int = 1  # items one job works through (a process start costs ~2 s of imports)
    signal_delay_s: int = 90  # USR2 this long before the time limit: interrupt, checkpoint, requeue
    max_requeues: int = 3  # requeues after that signal before a job gives up
    poll_s: float = 5.0  # seconds between two looks at the queue while waiting
    python: str | None = None  # the Python command on the nodes; None: this interpreter (a shared venv)
    job_name: str = "dlexp"


# command-line spelling of each option, for the one-line errors
def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


_TIME = re.compile(r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$")
_MEM = re.compile(r"^(?P<n>\d+)\s*(?P<unit>[KMGT]?)B?$", re.IGNORECASE)
_WORD = re.compile(r"^[A-Za-z0-9_.+@:/-]{1,200}$")


def minutes(spec: str) -> int:
    """Slurm's time formats -> whole minutes (rounded up); 0 for no limit.

    "90" -> 90, "1:30" -> 2 (minutes:seconds), "2:00:00" -> 120, "1-0" -> 1440 (days-hours),
    "1-2:30" -> 1590, "1-0:0:30" -> 1441, "infinite"/"unlimited" -> 0.
    """
    text = str(spec).strip()
    if text.lower() in ("infinite", "unlimited"):
        return 0
    m = _TIME.match(text)
    if m is None:
        raise ConfigError(f"--time {spec}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    g = {k: int(v) if v is not None else 0 for k, v in m.groupdict().items()}
    if m.group("d") is not None:
        seconds = ((g["d"] * 24 + g["dh"]) * 60 + g["dm"]) * 60 + g["ds"]
    elif m.group("c") is not None:  # H:M:S
        seconds = (g["a"] * 60 + g["b"]) * 60 + g["c"]
    else:  # M or M:S
        seconds = g["a"] * 60 + g["b"]
    return math.ceil(seconds / 60)


def _sbatch_option(line: str) -> tuple[str, Any]:
    """One extra sbatch option, `--key=value`, `--key value`, `--flag` or `#SBATCH --key=value`,
    as (key, value) for submitit (True for a flag)."""
    text = line.strip()
    if text.upper().startswith("#SBATCH"):
        text = text[len("#SBATCH"):].strip()
    m = re.match(r"^--(?P<key>[a-z][a-z0-9-]*)(?:(?:=|\s+)(?P<value>\S.*))?$", text)
    if m is None:
        raise ConfigError(f"--sbatch {line!r}: expected a long sbatch option such as --constraint=a100 or --exclusive")
    key = m.group("key")
    if key in OWNED:
        raise ConfigError(f"--sbatch {line!r}: dlexp sets --{key} itself")
    value = m.group("value")
    return key, True if value is None else value.strip()


def check(options: SlurmOptions) -> SlurmOptions:
    """The options as they will be used, or a one-line ConfigError naming the first bad one."""
    o = options
    for key in ("partition", "account", "qos", "job_name"):
        value = getattr(o, key)
        if value is not None and not _WORD.match(str(value)):
            raise ConfigError(f"{_flag(key)}: expected one word (letters, digits, _.+@:/-), got {value!r}")
    for key, low in (("cpus_per_task", 1), ("gpus", 0), ("runs_per_job", 1), ("signal_delay_s", 0), ("max_requeues", 0)):
        value = getattr(o, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{_flag(key)}: expected an integer >= {low}, got {value!r}")
    if o.max_parallel is not None and (isinstance(o.max_parallel, bool) or not isinstance(o.max_parallel, int) or o.max_parallel < 1):
        raise ConfigError(f"--max-parallel: expected an integer >= 1, got {o.max_parallel!r}")
    if isinstance(o.poll_s, bool) or not isinstance(o.poll_s, (int, float)) or not 0 < o.poll_s < 3600:
        raise ConfigError(f"--poll-s: expected seconds between 0 and 3600, got {o.poll_s!r}")
    if o.time is not None:
        minutes(o.time)
    mem = o.mem
    if mem is not None:
        m = _MEM.match(str(mem).strip())
        if m is None or int(m.group("n")) == 0:
            raise ConfigError(f"--mem {mem}: expected a whole size such as 4G, 500M or 16000 (megabytes)")
        mem = m.group("n") + (m.group("unit").upper() or "M")
    for line in o.sbatch:
        _sbatch_option(str(line))
    for line in o.setup:
        if "\n" in str(line):
            raise ConfigError(f"--setup {line!r}: one shell line per entry")
    return replace(o, mem=mem, sbatch=tuple(str(x) for x in o.sbatch), setup=tuple(str(x) for x in o.setup),
                   time=None if o.time is None else str(o.time))


def load_options(name: str = "slurm", config_dir: str | Path | None = None, **given: Any) -> SlurmOptions:
    """Options from `conf/launcher/<name>.yaml` (the user's --config-dir shadows dlexp's), then the
    command line's `given` values on top (None means not given)."""
    import yaml

    from dlexp.config import choices

    files = choices("launcher", config_dir)
    if name not in files:
        raise ConfigError(f"--launcher {name}: no launcher/{name}.yaml; choose one of: {', '.join(['local', *files])}")
    path = files[name]
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        if isinstance(data, dict) and data.get("time") is not None:
            # as written: YAML 1.1 reads an unquoted 1:30:00 as the base-60 number 5400
            data["time"] = yaml.load(text, Loader=yaml.BaseLoader)["time"]
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of Slurm options")
    known = {f.name for f in fields(SlurmOptions)}
    for key in [*data, *given]:
        if key not in known:
            raise ConfigError(f"{path if key in data else 'slurm option'}: unknown key {key!r}; known: {', '.join(sorted(known))}")
    merged = {**data, **{k: v for k, v in given.items() if v is not None and v != ()}}
    for key in ("sbatch", "setup"):
        value = merged.get(key) or ()
        merged[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    return check(SlurmOptions(**merged))


def check_sweep_storage(storage: str | None) -> None:
    """Sweep workers on several nodes share one Optuna study: SQLite on a network file system is not
    safe (its locks do not hold there), so Slurm sweeps need PostgreSQL/MySQL or a journal file."""
    from dlexp.sweep import storage_target

    kind, target = storage_target(storage, ".", "study")
    if kind == "rdb" and target.startswith("sqlite"):
        raise ConfigError("--launcher slurm: sweep workers on several nodes need --storage postgresql+psycopg://... "
                          "or journal:PATH on the shared file system (SQLite on a network file system is not safe)")


# --- talking to Slurm ------------------------------------------------------------------------------


def _slurm(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ConfigError(f"--launcher slurm: {cmd[0]} is not on PATH: run dlexp on a machine that can submit "
                          "Slurm jobs (a login node)") from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(cmd), 1, "", f"{cmd[0]} did not answer within {timeout:.0f} s")


def partition_time(partition: str | None) -> int:
    """The time limit a job gets in `partition` (None: the default partition) when it asks for none,
    in minutes (0: no limit), checking that the partition exists."""
    res = _slurm("sinfo", "--noheader", "--format=%P|%L|%l")
    if res.returncode != 0:
        raise ConfigError(f"--launcher slurm: sinfo failed: {' '.join((res.stderr or res.stdout).split())}")
    table = {}
    default = None
    for line in res.stdout.split():
        name, default_time, max_time = (line.split("|") + ["", ""])[:3]
        if name.endswith("*"):
            name = name[:-1]
            default = name
        table[name] = default_time if default_time not in ("n/a", "") else max_time
    wanted = partition or default
    if wanted is None:
        raise ConfigError("--partition: this cluster has no default partition; choose one of: " + ", ".join(table))
    if wanted not in table:
        raise ConfigError(f"--partition {wanted}: no such partition; choose one of: {', '.join(table)}")
    return minutes(table[wanted] or "infinite")


def _sbatch_parameters(o: SlurmOptions, limit_min: int, jobs: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "job_name": o.job_name,
        "time": limit_min,  # 0 is Slurm's "no limit"
        "cpus_per_task": o.cpus_per_task,
        "signal_delay_s": o.signal_delay_s,
        "array_parallelism": o.max_parallel or jobs,
        # threads of torch/OpenMP follow the CPUs Slurm gave the job, not the node's core count
        "setup": ["export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}", *o.setup],
    }
    for key, value in (("partition", o.partition), ("mem", o.mem), ("account", o.account), ("qos", o.qos)):
        if value is not None:
            params[key] = value
    if o.gpus:
        params["gpus_per_node"] = o.gpus
    extra = dict(_sbatch_option(line) for line in o.sbatch)
    if extra:
        params["additional_parameters"] = extra
    return params


def job_states(array_id: str, wanted: Iterable[str] = ()) -> dict[str, str] | None:
    """job id (`<array>_<task>`, or `<id>` for a batch of one job) -> its Slurm state, for every job
    squeue still knows, and from sacct for those of `wanted` it forgot; None when Slurm could not
    be asked (no news, not "gone")."""
    states: dict[str, str] = {}
    res = _slurm("squeue", "--array", "--noheader", "--states=all", "--format=%i|%T", f"--jobs={array_id}")
    if res.returncode == 0:
        for line in res.stdout.split():
            job, _, state = line.partition("|")
            if state:
                states[job] = state.upper()
    elif "invalid job id" not in (res.stderr + res.stdout).lower():  # not "forgotten": squeue failed
        return None
    if set(wanted) <= set(states):
        return states
    acct = _slurm("sacct", "--allocations", "--noheader", "--parsable2", "--format=JobID,State", f"--jobs={array_id}")
    if acct.returncode == 0:  # fails where there is no accounting database
        for line in acct.stdout.splitlines():
            job, _, state = line.partition("|")
            if state and "[" not in job:  # a pending range such as 12_[3-5] is in squeue's answer
                states.setdefault(job, state.split()[0].upper())  # "CANCELLED by 0" -> CANCELLED
    return states


# --- inside a job --------------------------------------------------------------------------------


class JobFunction:
    """What one Slurm job runs: `fn` on each of its (index, item) pairs, one after another.

    Each item's outcome is written to `item-<index>.json` in the job's folder as soon as it is known,
    so a job killed later still reports the items it finished, and a requeued job skips them.
    It has submitit's `checkpoint` method, so submitit requeues it after the USR2 warning.
    """

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)  # the same items: finished ones are skipped

    def __call__(self, items: Sequence[tuple[int, Any]]) -> list[dict[str, Any]]:
        import submitit

        env = submitit.JobEnvironment()
        folder = env.paths.folder
        usr = env._usr_sig()  # submitit's warning signal (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)
        requeue = signal.getsignal(usr)  # submitit's handler: checkpoint(), then scontrol requeue
        stop: dict[str, Any] = {"signals": set(), "in_item": False}

        def on_signal(signum, frame) -> None:
            stop["signals"].add(signum)
            if stop["in_item"]:
                # once: the function gets one KeyboardInterrupt and time to write what it must
                stop["in_item"] = False
                raise KeyboardInterrupt
        for sig in (signal.SIGTERM, signal.SIGINT, usr):
            signal.signal(sig, on_signal)

        outcomes = []
        for index, item in items:
            path = folder / f"item-{index}.json"
            old = _read_outcome(path)
            if old is not None and old["status"] in ("done", "failed"):
                outcomes.append(old)  # finished before a requeue
                continue
            if stop["signals"]:
                break  # told to stop: no further item starts
            path.unlink(missing_ok=True)
            _atomic(folder / f"item-{index}.started", f"{env.job_id} {socket.gethostname()} {os.getpid()} {time.time()}\n".encode())
            outcome = {"index": index, "job_id": env.job_id, "host": socket.gethostname(), "value": None, "error": None}
            t0 = time.time()
            try:
                stop["in_item"] = True
                if stop["signals"]:  # it came while this item was being prepared: do not start it
                    raise KeyboardInterrupt
                outcome["value"] = self.fn(item)
                outcome["status"] = "done"
            except KeyboardInterrupt:
                outcome["status"] = "interrupted"
            except Exception as e:
                outcome["status"] = "failed"
                outcome["error"] = f"{type(e).__name__}: {e}"
                print(f"item {index} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            finally:
                stop["in_item"] = False
            if stop["signals"]:
                # a stop signal during the item: whatever the function made of it, the item did not
                # run undisturbed, and the caller's rerun decides what is left to do
                outcome["status"] = "interrupted"
            outcome["seconds"] = time.time() - t0
            _write_outcome(path, outcome)
            outcomes.append(outcome)
            if outcome["status"] == "interrupted":
                break

        if usr in stop["signals"] and callable(requeue):
            # the requeue cancels this job step with SIGTERM: nothing is left to interrupt
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            requeue(usr, None)  # exits after `scontrol requeue`, or raises once out of requeues
        return outcomes


def _atomic(path: Path, data: bytes) -> None:
    from dlexp.atomic import atomic_write

    atomic_write(path, data)


def _plain(value: Any) -> Any:
    """numpy scalars and paths as JSON can hold them; anything else is refused (TypeError)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not plain data")


def _write_outcome(path: Path, outcome: dict[str, Any]) -> None:
    # JSON, not a pickle: the caller reads it back without running anything that was written there
    try:
        text = json.dumps(outcome, default=_plain)
    except (TypeError, ValueError) as e:  # the item is done; its value is not kept
        outcome = {**outcome, "value": None, "error": f"its value could not be saved as JSON: {e}"}
        text = json.dumps(outcome, default=_plain)
    _atomic(path, (text + "\n").encode())


def _read_outcome(path: Path) -> dict[str, Any] | None:
    try:
        outcome = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # cut or unreadable: as if the item had not finished
        return None
    return outcome if isinstance(outcome, dict) and outcome.get("status") in STATUSES else None


# --- the caller's side -----------------------------------------------------------------------------


@dataclass
class ItemResult:
    index: int
    status: str  # one of STATUSES
    job_id: str
    value: Any = None
    error: str | None = None  # failed: the exception; lost: what Slurm said about the job
    log: Path | None = None  # the job's stderr log


@dataclass(frozen=True)
class Progress:
    total: int
    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    interrupted: int = 0
    lost: int = 0
    elapsed_s: float = 0.0

    @property
    def finished(self) -> bool:
        return self.pending == 0 and self.running == 0

    @property
    def eta_s(self) -> float | None:
        """Seconds until every item is settled at the pace so far (items settled per second since
        the submission, queue time included); None before the first item settles."""
        settled = self.total - self.pending - self.running
        if settled == 0:
            return None
        return self.elapsed_s / settled * (self.pending + self.running)

    def line(self) -> str:
        parts = [f"{self.done}/{self.total} done", f"{self.running} running"]
        parts += [f"{getattr(self, s)} {s}" for s in ("pending", "failed", "interrupted", "lost") if getattr(self, s)]
        if self.eta_s is not None and not self.finished:
            parts.append(f"ETA {_duration(self.eta_s)}")
        return ", ".join(parts)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while waiting; `cancelled` says whether the jobs were cancelled or left running."""

    def __init__(self, cancelled: bool) -> None:
        super().__init__("cancelled" if cancelled else "left running")
        self.cancelled = cancelled


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Batch:
    """The jobs of one submission: one job array, item indices per job."""

    folder: Path
    array_id: str
    jobs: dict[str, list[int]]  # job id -> the indices of its items
    submitted_at: float = field(default_factory=time.time)
    poll_s: float = 5.0
    settle_s: float = 15.0  # an ended job may still be requeued, and its files arrive late on NFS
    _seen: dict[str, str] = field(default_factory=dict)  # the last state squeue gave each job
    _ended_at: dict[str, float] = field(default_factory=dict)

    @property
    def items(self) -> int:
        return sum(len(v) for v in self.jobs.values())

    @property
    def job_ids(self) -> list[str]:
        return list(self.jobs)

    def cancel_command(self) -> str:
        return f"scancel {self.array_id}"

    def describe(self) -> str:
        n = len(self.jobs)
        return (f"submitted {self.items} item(s) as {n} Slurm job(s), array {self.array_id}; "
                f"watch: squeue -j {self.array_id}; cancel: {self.cancel_command()}; logs: {self.folder}")

    def job_folder(self, job_id: str) -> Path:
        return self.folder / job_id

    def log(self, job_id: str) -> Path:
        return self.job_folder(job_id) / f"{job_id}_0_log.err"

    # -- reading the state --

    def results(self, states: dict[str, str] | None = None) -> list[ItemResult]:
        """Every item's status now (one squeue call unless `states` is given)."""
        now = time.time()
        if states is None:
            states = job_states(self.array_id, self.jobs)
        out: list[ItemResult] = []
        for job_id, indices in self.jobs.items():
            state = self._state(job_id, states, now)
            ended = state is not None and state not in WAITING | ACTIVE
            if not ended:
                self._ended_at.pop(job_id, None)
            settled = ended and now - self._ended_at.setdefault(job_id, now) >= self.settle_s
            folder = self.job_folder(job_id)
            for i in indices:
                r = ItemResult(index=i, status="pending", job_id=job_id, log=self.log(job_id))
                outcome = _read_outcome(folder / f"item-{i}.json")
                if outcome is not None:
                    r.value, r.error = outcome.get("value"), outcome.get("error")
                started = (folder / f"item-{i}.started").exists()
                if outcome is not None and outcome["status"] in ("done", "failed"):
                    r.status = outcome["status"]
                elif ended and settled:
                    if outcome is not None:
                        r.status = outcome["status"]  # interrupted
                    else:
                        crash = self._job_error(job_id)  # Python failed outside the items (import, unpickling)
                        how = "is no longer known to Slurm" if state == "GONE" else f"ended {state}"
                        r.status = "failed" if crash else "lost"
                        r.error = crash or f"job {job_id} {how} before this item finished"
                elif started and (state in ACTIVE or ended):
                    # an ended job may still be requeued (preemption, node failure), and its last files
                    # may still be on their way: its items settle `settle_s` after Slurm says it ended
                    r.status = "running"
                out.append(r)
        return sorted(out, key=lambda r: r.index)

    def _state(self, job_id: str, states: dict[str, str] | None, now: float) -> str | None:
        """The job's state, or None while it is not visible yet."""
        if states is None:  # Slurm did not answer: what we knew
            return self._seen.get(job_id)
        state = states.get(job_id)
        if state is not None:
            self._seen[job_id] = state
            return state
        before = self._seen.get(job_id)
        if before is not None:
            # squeue forgot it (MinJobAge) and there is no sacct: it ended; how, only if we saw it end
            return before if before not in WAITING | ACTIVE else "GONE"
        if now - self.submitted_at > 60:
            self._ended_at.setdefault(job_id, self.submitted_at)  # long gone, from an earlier process
            return "GONE"
        return None

    def _job_error(self, job_id: str) -> str | None:
        """The error of a job whose Python failed outside the items (an import, the unpickling of
        the function), as its log shows it; None if it did not."""
        try:
            log = self.log(job_id).read_text(errors="replace")
        except OSError:
            return None
        if "Submitted job triggered an exception" not in log:  # submitit's word for it
            return None
        raised = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception)\b.*)$", log, re.MULTILINE)
        return (raised[-1] if raised else "the job's Python failed before its items ran") + f" (see {self.log(job_id)})"

    def progress(self, results: list[ItemResult] | None = None) -> Progress:
        results = self.results() if results is None else results
        counts = {s: 0 for s in STATUSES}
        for r in results:
            counts[r.status] += 1
        return Progress(total=len(results), elapsed_s=time.time() - self.submitted_at, **counts)

    # -- acting --

    def cancel(self) -> None:
        """scancel the whole array: running items end `interrupted`, pending ones never start."""
        res = _slurm("scancel", self.array_id)
        if res.returncode != 0:
            raise RuntimeError(f"scancel {self.array_id} failed: {' '.join((res.stderr or res.stdout).split())}")

    def wait(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        poll_s: float | None = None,
        echo: Callable[[str], None] = _stderr,
        ask: Callable[[str], bool] | None = None,
    ) -> list[ItemResult]:
        """Poll until every item is done, failed, interrupted or lost; `on_progress` hears each
        change of the counts. Ctrl-C: `ask` (by default a y/N question where stdin is a terminal)
        whether to cancel the jobs; with no terminal they are left running, and either way the
        command that cancels them is printed; then `Interrupted` (a KeyboardInterrupt) is raised."""
        last = None
        try:
            while True:
                results = self.results()
                p = self.progress(results)
                counts = (p.pending, p.running, p.done, p.failed, p.interrupted, p.lost)
                if on_progress is not None and counts != last:
                    on_progress(p)
                last = counts
                if p.finished:
                    return results
                time.sleep(self.poll_s if poll_s is None else poll_s)
        except KeyboardInterrupt:
            stop_dialog([self], echo, ask)

    def live(self, states: dict[str, str] | None = None) -> set[str]:
        """The jobs that have not ended: queued, running, or submitted and not yet visible (one
        squeue call unless `states` is given). A job Slurm cannot be asked about counts as live."""
        now = time.time()
        if states is None:
            states = job_states(self.array_id, self.jobs)
        return {job_id for job_id in self.jobs if (state := self._state(job_id, states, now)) is None or state in WAITING | ACTIVE}

    def state(self, job_id: str) -> str | None:
        """The last state Slurm gave for `job_id` (None before it was seen): CANCELLED, TIMEOUT, ..."""
        return self._seen.get(job_id)

    # -- on disk --

    def save(self) -> Path:
        from dlexp.atomic import atomic_write

        record = {"array_id": self.array_id, "jobs": self.jobs, "submitted_at": self.submitted_at,
                  "submitted": _dt.datetime.fromtimestamp(self.submitted_at).astimezone().isoformat(timespec="seconds")}
        return atomic_write(self.folder / f"{self.array_id}.json", json.dumps(record, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, array_id: str | None = None) -> Batch:
        """A submission recorded in `folder` (the latest one unless `array_id` says which)."""
        folder = Path(folder)
        files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        if array_id is not None:
            files = [p for p in files if p.stem == str(array_id)]
        if not files:
            raise ConfigError(f"{folder}: no Slurm submission recorded here" + (f" with array {array_id}" if array_id else ""))
        record = json.loads(files[-1].read_text())
        return cls(folder=folder, array_id=str(record["array_id"]), jobs={k: list(v) for k, v in record["jobs"].items()},
                   submitted_at=float(record["submitted_at"]))


def stop_dialog(batches: Sequence[Batch], echo: Callable[[str], None] = _stderr,
                ask: Callable[[str], bool] | None = None) -> None:
    """What Ctrl-C while waiting does: `ask` (by default a y/N question where stdin is a terminal)
    whether to cancel the jobs of `batches`; with no terminal they are left running. Either way the
    command that cancels them is printed; then `Interrupted` (a KeyboardInterrupt) is raised."""
    if ask is None and sys.stdin is not None and sys.stdin.isatty():
        ask = _ask_terminal
    ids = " ".join(b.array_id for b in batches)
    what = f"array{'s' if len(batches) > 1 else ''} {', '.join(b.array_id for b in batches)}"
    cancel = False
    if ask is not None:
        try:
            cancel = ask(f"cancel the Slurm jobs of {what}? [y/N] ")
        except (KeyboardInterrupt, EOFError):
            cancel = False  # a second Ctrl-C at the question: leave them
    if cancel:
        for b in batches:
            b.cancel()
        echo(f"cancelled the jobs of {what}; running items end interrupted (rerun to continue)")
    else:
        echo(f"the jobs of {what} are left running; watch: squeue -j {ids.replace(' ', ',')}; cancel them with: scancel {ids}")
    raise Interrupted(cancelled=cancel)


def _ask_terminal(question: str) -> bool:
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def submit(fn: Callable[[Any], Any], items: Iterable[Any], options: SlurmOptions, folder: str | Path) -> Batch:
    """Submit `fn(item)` for every item as one job array, `options.runs_per_job` items per job.

    `fn` must be importable on the nodes (a module-level function of an installed package), and
    `folder` must be on a file system the nodes share. Returns at once: `Batch.wait` watches."""
    try:
        import submitit
        from submitit.core.utils import FailedJobError, FailedSubmissionError
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install 'dlexp[slurm]'") from None

    options = check(options)
    items = list(items)
    if not items:
        raise ValueError("submit: no items")
    limit = minutes(options.time) if options.time is not None else partition_time(options.partition)
    k = options.runs_per_job
    chunks = [list(range(i, min(i + k, len(items)))) for i in range(0, len(items), k)]
    folder = Path(folder).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=options.max_requeues, python=options.python)
    executor.update_parameters(**_sbatch_parameters(options, limit, len(chunks)))
    job_fn = JobFunction(fn)
    before = set(folder.iterdir())
    try:
        with executor.batch():
            jobs = [executor.submit(job_fn, [(i, items[i]) for i in chunk]) for chunk in chunks]
    except (FailedJobError, FailedSubmissionError) as e:
        for path in set(folder.iterdir()) - before:  # the pickles and script of what was refused
            if path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
        message = " ".join(str(e).split()) or type(e).__name__
        if "array" in message.lower():  # MaxArraySize (default 1001) and friends
            message += f" ({len(chunks)} jobs; --runs-per-job packs several runs into one)"
        raise ConfigError(f"--launcher slurm: sbatch refused the jobs: {message}") from None
    ids = [j.job_id for j in jobs]
    # an ended job's items settle after 3 looks at the queue (at most 15 s): time for a requeue to show
    batch = Batch(folder=folder, array_id=ids[0].split("_")[0], jobs=dict(zip(ids, chunks)), poll_s=options.poll_s,
                  settle_s=min(15.0, max(1.0, 3 * options.poll_s)))
    batch.save()
    return batch


# --- ready-made item functions -------------------------------------------------------------------


def run_cli(argv: Sequence[str]) -> int:
    """One item = one dlexp command line, run in the job's process (`["sweep", "sweep=lr_wd", ...]`).

    Exit 0 returns 0; exit 130 (interrupted) raises KeyboardInterrupt; any other exit raises, so the
    item is `failed` with the status in its error."""
    from dlexp.cli import invoke

    saved = sys.argv
    sys.argv = ["dlexp", *argv]  # what meta.json records as the command
    try:
        code = invoke(list(argv), prog_name="dlexp")
    finally:
        sys.argv = saved
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise RuntimeError(f"dlexp {' '.join(argv[:1])} exited with status {code}")
    return code


def submit_workers(argvs: Sequence[Any], options: SlurmOptions, folder: str | Path,
                   storage: str | None = None, fn: Callable[[Any], Any] = run_cli) -> Batch:
    """One job per item, all at once: a sweep's workers sharing one Optuna study through `storage`
    (checked first, see `check_sweep_storage`). Each worker has its own command line so that the
    caller can give each its own sampler seed; `fn` runs it (default `run_cli`)."""
    check_sweep_storage(storage)
    argvs = list(argvs)
    options = replace(options, runs_per_job=1, max_parallel=options.max_parallel or len(argvs))
    return submit(fn, argvs, options, folder)
