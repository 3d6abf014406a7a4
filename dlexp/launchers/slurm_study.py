"""The study engine on Slurm: a grid's or K-fold study's points as ONE job array, a sweep's workers
as Slurm jobs (`--launcher slurm`).

`SlurmArray` is an executor of `dlexp.study` like `InProcess` and `Pool` (`run(points, data,
on_event)`): it sends the points to `dlexp.launchers.slurm.submit`, `runs_per_job` to a job, and
each job runs its points through `study.run_point` (`run_item` here), the one per-point function:
the claim, the skip / resume / run decision taken again under it, and `runner.execute`. No second
loop, no second run writer. The submitting process watches the jobs and turns what it sees into the
engine's events, so the live display is the one of local studies:

    start / epoch   each job writes `item-<i>.progress` in its folder (the run id, its epoch; at
                    most once a second), read at every look at the queue;
    finish          the item's outcome (`item-<i>.json`, written by the job), or what Slurm says of
                    the job when it ended without one.

What becomes of a point (the study's statuses):

    done            the job ran it: its run's status (ok, diverged, failed), or `skipped` / `busy`
                    when another process had finished or held it meanwhile (claims);
    interrupted     scancel, the time limit, preemption: the run ended `interrupted` with its
                    checkpoint; the same command again resumes it;
    killed          the job died without a word (SIGKILL, node failure, out of memory) during the
                    run: no summary, the last checkpoint stays; the same command again resumes it;
    not started     the job ended before it reached the point: nothing to report, it runs next time.

Any interrupted or not-started point makes the command end as interrupted (exit 130, "rerun to
continue"), as Ctrl-C does.

Files, under `<results_dir>/slurm/<kind>/<name>/` (kind: grid, kfold, sweep; `dlexp status` lists
them per study): the launcher's (`<array>.json`, one folder per job with its logs), plus
`<array>.keys`, the point key of each item, so that the same command, given again while jobs of
an earlier one are still queued (`--no-wait`, or Ctrl-C that left them), waits for those jobs
instead of submitting their points a second time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from dlexp import study
from dlexp.launchers import slurm

FOLDER = "slurm"


def study_folder(results_dir: str | Path, kind: str, name: str) -> Path:
    """Where the jobs of one study (kind grid | kfold | sweep) keep their files and logs."""
    return (Path(results_dir) / FOLDER / kind / name).absolute()


def command() -> list[str]:
    """This command line as meta.json records it (passwords in URLs masked)."""
    from dlexp.sweep import mask

    return [mask(a) for a in sys.argv]


# ---- inside a job ---------------------------------------------------------------------------------

_DATA: study.DataCache | None = None  # a job's data sets, loaded once for all the points it runs


def _enter(item: dict[str, Any]) -> None:
    """The job works where the command was given (relative results_dir, --config-dir, data paths)."""
    try:
        os.chdir(item["cwd"])
    except OSError as e:
        raise RuntimeError(f"the folder the command was given in, {item['cwd']}, is not visible on node "
                           f"{socket.gethostname()} ({e.strerror}): run dlexp from a folder on the file system "
                           "that the nodes share") from None


def run_item(item: dict[str, Any]) -> dict[str, Any]:
    """One point in a Slurm job, through `study.run_point` as in a `--jobs` worker. Returns the
    Outcome as plain data; Ctrl-C (SIGTERM from Slurm, see `slurm.JobFunction`) is raised after the
    run folder says `interrupted`."""
    import submitit

    global _DATA
    env = submitit.JobEnvironment()
    folder = Path(env.paths.folder)
    _enter(item)
    point = study.from_wire(item["point"])
    # meta.json names the job and its log, for `dlexp status`
    point.meta = {**point.meta, "slurm": {"job_id": env.job_id, "log": str(folder / f"{env.job_id}_{env.global_rank}_log.err")}}
    progress = folder / f"item-{item['slot']}.progress"
    if point.fresh and read_progress(progress) is not None:
        point.fresh = False  # a requeued job (time limit, preemption): resume the run --fresh started, not a new one
    if _DATA is None:
        _DATA = study.DataCache()
    saved = sys.argv
    sys.argv = list(item["command"])  # meta.json records the command that continues the study
    try:
        outcome = study.run_point(point, _DATA, jobs=1, on_event=_Progress(progress))
    finally:
        sys.argv = saved
    return dataclasses.asdict(outcome)


class _Progress:
    """The engine's start/epoch events of one point, kept in a small file the submitter reads: the
    run id when the run starts, then its epoch at most once a second (an epoch can take 50 ms)."""

    def __init__(self, path: Path):
        self.path, self.state, self.written = path, {}, 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("kind") == "start":
            self.state = {"run_id": event["run_id"], "epochs": event["epochs"], "first_epoch": event["first_epoch"],
                          "epoch": event["first_epoch"] - 1}
        elif event.get("kind") == "epoch":
            self.state["epoch"] = event["epoch"]
            if time.monotonic() - self.written < 1.0:
                return
        else:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:  # progress only: no fsync, and a failed write costs nothing but a stale display
            tmp.write_text(json.dumps(self.state))
            os.replace(tmp, self.path)
        except OSError:
            pass
        self.written = time.monotonic()


def read_progress(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and "run_id" in data else None
    except (OSError, ValueError):
        return None


def sweep_worker(item: dict[str, Any]) -> int:
    """One sweep worker in a Slurm job: `dlexp sweep ...` in the job's process. Its exit status is
    returned (0, or 1 when it stopped before the study had its trials: the submitter judges the
    study, not each worker); 130 raises KeyboardInterrupt (the item is `interrupted`); any other
    status raises (bad input on the node, such as a data set it cannot read: see the job's log)."""
    from dlexp.cli import invoke

    _enter(item)
    saved = sys.argv
    sys.argv = list(item["command"])  # trials' meta.json record the command that continues the sweep
    try:
        code = invoke(list(item["argv"]), prog_name="dlexp")
    finally:
        sys.argv = saved
    if code == 130:
        raise KeyboardInterrupt
    if code not in (0, 1):
        raise RuntimeError(f"dlexp sweep exited with status {code}")
    return code


# ---- the submitting side ----------------------------------------------------------------------------


def _keys_file(folder: Path, array_id: str) -> Path:
    return folder / f"{array_id}.keys"  # not *.json: slurm.Batch.load reads those


def earlier_batches(folder: Path, options: slurm.SlurmOptions) -> list[slurm.Batch]:
    """The submissions recorded in a study's folder, oldest first."""
    out = []
    for f in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []:
        try:
            b = slurm.Batch.load(folder, f.stem)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a submission record
        b.poll_s, b.settle_s = options.poll_s, min(15.0, max(1.0, 3 * options.poll_s))
        out.append(b)
    return out


class SlurmArray:
    """`--launcher slurm`: the points as ONE Slurm job array, `runs_per_job` points to a job, each
    through `study.run_point` in the job (see the module's docstring). Waits and reports the
    engine's events unless `no_wait`; Ctrl-C asks whether to cancel the jobs (`slurm.stop_dialog`),
    after `pause()` (the live display stops, so the question shows)."""

    def __init__(self, options: slurm.SlurmOptions, folder: Path, *, no_wait: bool = False, quiet: bool = False,
                 pause: Callable[[], None] | None = None, echo: Callable[[str], None] | None = None,
                 ask: Callable[[str], bool] | None = None):
        self.options, self.folder, self.no_wait, self.quiet = options, Path(folder), no_wait, quiet
        self.pause = pause or (lambda: None)
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.ask = ask
        self.detached = False  # True once the jobs are submitted and --no-wait returned
        self.batches: list[slurm.Batch] = []

    def run(self, points: Iterable[study.Point], data: study.DataCache, on_event: Callable[[dict], None]) -> None:
        points = list(points)
        if not points:
            return
        watched = self._attach(points)  # (array, slot) -> point: queued by an earlier command
        attached = {p.key for p in watched.values()}
        earlier = sorted({array_id for array_id, _ in watched})
        new = self._still_to_run([p for p in points if p.key not in attached], on_event)
        if new:
            cwd, cmd = os.getcwd(), command()
            items = [{"slot": i, "point": study.to_wire(p), "cwd": cwd, "command": cmd} for i, p in enumerate(new)]
            batch = slurm.submit(run_item, items, self.options, self.folder)
            from dlexp.atomic import atomic_write

            atomic_write(_keys_file(self.folder, batch.array_id), json.dumps([p.key for p in new]))
            self.batches.append(batch)
            watched.update({(batch.array_id, i): p for i, p in enumerate(new)})
            if not self.quiet or self.no_wait:
                self.echo(f"slurm: {len(new)} point(s) as {len(batch.jobs)} job(s) of array {batch.array_id}; "
                          f"watch: squeue -j {batch.array_id}; cancel: scancel {batch.array_id}; "
                          f"job logs: {self.folder}/{batch.array_id}_<task>/")
        if attached and (not self.quiet or self.no_wait):
            self.echo(f"slurm: {len(attached)} point(s) are still queued in array(s) {', '.join(earlier)} from an earlier "
                      "command: waiting for those jobs instead of submitting them again")
        if self.no_wait:
            self.detached = True
            results_dir = points[0].cfg.results_dir
            self.echo(f"not waiting (--no-wait): `dlexp status {results_dir}` shows how far the study got; the same "
                      "command again submits only what these jobs leave unfinished, and without --no-wait waits for them")
            return
        self._watch(watched, on_event)

    def _still_to_run(self, points: list[study.Point], on_event: Callable[[dict], None]) -> list[study.Point]:
        """The plan again, just before submitting: a job of an earlier command may have finished or
        taken a point since this command made its plan (jobs would only skip it, but a job start
        costs seconds in the queue)."""
        out = []
        for p in points:
            results_dir = p.cfg.results_dir
            run_id = None if p.fresh else study.last_run(results_dir, p.key)
            state, summary = study.run_state(results_dir, run_id, p.key) if run_id else ("run", None)
            if state == "done":
                on_event({"kind": "finish", "index": p.index, "outcome": study.Outcome(p.index, run_id, summary, "skipped")})
            elif state == "running":
                on_event({"kind": "finish", "index": p.index, "outcome": study.Outcome(
                    p.index, None, {"status": "running", "reason": "claimed by another process"}, "busy")})
            else:
                out.append(p)
        return out

    def _attach(self, points: list[study.Point]) -> dict[tuple[str, int], study.Point]:
        """The points still queued (or running) in live jobs of earlier submissions of this study."""
        by_key = {p.key: p for p in points}
        found: dict[tuple[str, int], study.Point] = {}
        taken: set[str] = set()
        for batch in reversed(earlier_batches(self.folder, self.options)):  # the newest submission first
            try:
                keys = json.loads(_keys_file(self.folder, batch.array_id).read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(keys, list) or not (set(keys) & (set(by_key) - taken)):
                continue
            states = slurm.job_states(batch.array_id, batch.jobs)
            live = batch.live(states)  # a job that ended is not waited for, whatever its files say yet
            mine = False
            for r in batch.results(states) if live else []:
                key = keys[r.index] if r.index < len(keys) else None
                if key in by_key and key not in taken and r.job_id in live and r.status in ("pending", "running"):
                    found[(batch.array_id, r.index)] = by_key[key]
                    taken.add(key)
                    mine = True
            if mine:
                self.batches.append(batch)
        self.batches.reverse()
        return found

    def _watch(self, watched: dict[tuple[str, int], study.Point], on_event: Callable[[dict], None]) -> None:
        batches = {b.array_id: b for b in self.batches}
        shown: dict[tuple[str, int], dict[str, Any]] = {}  # what the display was told of each running point
        settled: set[tuple[str, int]] = set()
        stopped: list[str] = []  # points whose job was stopped (scancel, time limit) or died before them
        try:
            while len(settled) < len(watched):
                for array_id, batch in batches.items():
                    if all((array_id, i) in settled for a, i in watched if a == array_id):
                        continue
                    for r in batch.results():
                        slot = (array_id, r.index)
                        if slot not in watched or slot in settled:
                            continue
                        p = watched[slot]
                        if r.status in ("pending", "running"):
                            self._progress(batch, r, p, shown.setdefault(slot, {}), on_event)
                            continue
                        settled.add(slot)
                        outcome = self._outcome(batch, r, p)
                        if outcome is None:
                            stopped.append(f"{p.label or p.key}: {r.error or 'not started'}")
                            continue
                        if outcome.summary.get("status") == "interrupted":
                            stopped.append(f"{p.label or p.key}: interrupted")
                        on_event({"kind": "finish", "index": p.index, "outcome": outcome})
                if len(settled) < len(watched):
                    time.sleep(self.options.poll_s)
        except KeyboardInterrupt:
            self.pause()
            slurm.stop_dialog(list(batches.values()), self.echo, self.ask)
        if stopped:
            self.pause()
            self.echo(f"slurm: {len(stopped)} point(s) did not finish: their jobs were cancelled, stopped at the time "
                      f"limit or lost before the end ({stopped[0]}{'; ...' if len(stopped) > 1 else ''})")
            raise slurm.Interrupted(cancelled=False)

    def _progress(self, batch: slurm.Batch, r: slurm.ItemResult, p: study.Point, shown: dict[str, Any],
                  on_event: Callable[[dict], None]) -> None:
        if r.status != "running":
            return
        state = read_progress(batch.job_folder(r.job_id) / f"item-{r.index}.progress")
        if state is None:
            return
        if shown.get("run_id") != state["run_id"]:
            on_event({"kind": "start", "index": p.index, "run_id": state["run_id"], "epochs": state["epochs"],
                      "first_epoch": state["first_epoch"], "pid": 0})
            shown.update(run_id=state["run_id"], epoch=state["first_epoch"] - 1)
        if state["epoch"] != shown.get("epoch"):
            on_event({"kind": "epoch", "index": p.index, "epoch": state["epoch"], "epochs": state["epochs"], "pid": 0})
            shown["epoch"] = state["epoch"]

    def _outcome(self, batch: slurm.Batch, r: slurm.ItemResult, p: study.Point) -> study.Outcome | None:
        """What a settled item means for its point; None for a point its job never started."""
        results_dir = p.cfg.results_dir
        run_id = study.last_run(results_dir, p.key)
        summary = study.read_summary(Path(results_dir) / "runs" / run_id) if run_id else None
        log = f" (job log: {r.log})" if r.log else ""
        if r.status == "done":
            if isinstance(r.value, dict) and isinstance(r.value.get("summary"), dict):
                v = r.value
                return study.Outcome(p.index, v.get("run_id"), v["summary"], str(v.get("how", "ran")), int(v.get("pid") or 0))
            # the job could not save the outcome (see its error): the run folder says what happened
            return study.Outcome(p.index, run_id, summary or {"status": "failed", "reason": f"{r.error}{log}", "final": {},
                                                             "duration_s": 0.0}, "ran")
        if r.status == "failed":  # run_point raised: bad input on the node, a results folder it cannot write
            return study.Outcome(p.index, None, {"status": "failed", "reason": f"{r.error}{log}", "final": {}, "duration_s": 0.0}, "ran")
        started = (batch.job_folder(r.job_id) / f"item-{r.index}.started").exists()
        if r.status == "interrupted":
            if summary is not None and summary.get("status") == "interrupted":
                return study.Outcome(p.index, run_id, summary, "ran")
            return None  # stopped before its run began
        # lost: the job ended without a word about this point
        if not started:
            return None
        state = batch.state(r.job_id) or "gone"
        reason = (f"its Slurm job {r.job_id} ended {state} without a word during the run (killed, node failure, out of "
                  f"memory){log}; the same command again resumes it from its last checkpoint")
        return study.Outcome(p.index, run_id, {"status": "killed", "reason": reason, "final": {}}, "ran")


# ---- dlexp status ---------------------------------------------------------------------------------


def arrays(results_dir: str | Path, kind: str, name: str) -> list[dict[str, Any]]:
    """The Slurm arrays of one study, newest first: array id, jobs, the job logs' folder."""
    folder = study_folder(results_dir, kind, name)
    out = []
    for f in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []:
        try:
            record = json.loads(f.read_text())
            out.append({"array_id": str(record["array_id"]), "jobs": list(record["jobs"]), "folder": folder,
                        "submitted": record.get("submitted", "")})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def job_summary(array: dict[str, Any]) -> str:
    """'3 jobs: 1 RUNNING, 2 PENDING' as Slurm says now ('ended' for jobs it forgot; '' where
    Slurm cannot be asked from here)."""
    from dlexp.errors import ConfigError

    try:
        states = slurm.job_states(array["array_id"], array["jobs"])
    except ConfigError:  # no Slurm commands on this machine: the logs are still worth naming
        return f"{len(array['jobs'])} job(s)"
    if states is None:
        return f"{len(array['jobs'])} job(s)"
    counts: dict[str, int] = {}
    for job in array["jobs"]:
        state = states.get(job, "ended")
        counts[state] = counts.get(state, 0) + 1
    return f"{len(array['jobs'])} job(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# ---- sweeps ---------------------------------------------------------------------------------------


def _last_error(log: Path | None) -> str | None:
    """The last `error: ...` line a job printed (dlexp's one-line errors go to its log)."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines() if log else []
    except OSError:
        return None
    return next((line for line in reversed(lines) if line.startswith("error: ")), None)


class SlurmWorkers:
    """`dlexp sweep --launcher slurm --workers N`: N Slurm jobs, each a `dlexp sweep` worker
    (`sweep_worker`) on the one shared study, which stops them at exactly --trials finished trials.

    The same command again, while worker jobs of an earlier one are still queued or running, waits
    for those and submits only the missing ones. Each worker ever submitted for the study gets its
    own index, from which its sampler seed is derived (`dlexp sweep --worker-index`)."""

    def __init__(self, options: slurm.SlurmOptions, folder: Path, storage: str | None, *, no_wait: bool = False,
                 quiet: bool = False, pause: Callable[[], None] | None = None, echo: Callable[[str], None] | None = None,
                 ask: Callable[[str], bool] | None = None):
        self.options, self.folder, self.storage = options, Path(folder), storage
        self.no_wait, self.quiet = no_wait, quiet
        self.pause = pause or (lambda: None)
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.ask = ask
        self.detached = False

    def run(self, argv_of: Callable[[int], list[str]], workers: int, on_poll: Callable[[], None]) -> list[str]:
        """Submit (or find) the workers and wait for them, calling `on_poll` at every look; returns
        what stopped them early: interrupted | failed | lost (one entry per worker)."""
        earlier = earlier_batches(self.folder, self.options)
        used = sum(b.items for b in earlier)  # worker indices already given out for this study
        watched: set[tuple[str, int]] = set()  # (array, worker item)
        batches: dict[str, slurm.Batch] = {}
        for b in earlier:
            states = slurm.job_states(b.array_id, b.jobs)
            jobs = b.live(states)
            live = {(b.array_id, r.index) for r in b.results(states) if r.job_id in jobs and r.status in ("pending", "running")} if jobs else set()
            if live:
                watched |= live
                batches[b.array_id] = b
        missing = max(0, workers - len(watched))
        if watched and (not self.quiet or self.no_wait):
            self.echo(f"slurm: {len(watched)} worker(s) of an earlier command are still queued or running in array(s) "
                      f"{', '.join(batches)}: waiting for them" + (f", and {missing} more" if missing else ""))
        if missing:
            cwd, cmd = os.getcwd(), command()
            items = [{"argv": argv_of(used + w), "cwd": cwd, "command": cmd} for w in range(missing)]
            batch = slurm.submit_workers(items, self.options, self.folder, self.storage, fn=sweep_worker)
            batches[batch.array_id] = batch
            watched |= {(batch.array_id, i) for i in range(missing)}
            if not self.quiet or self.no_wait:
                self.echo(f"slurm: {missing} sweep worker(s) as array {batch.array_id}; watch: squeue -j {batch.array_id}; "
                          f"cancel: scancel {batch.array_id}; job logs: {self.folder}/{batch.array_id}_<task>/")
        if self.no_wait:
            self.detached = True
            return []
        reasons: list[str] = []
        settled: set[tuple[str, int]] = set()
        try:
            while len(settled) < len(watched):
                on_poll()
                for b in batches.values():
                    for r in b.results():
                        slot = (b.array_id, r.index)
                        if slot not in watched or slot in settled or r.status in ("pending", "running"):
                            continue
                        settled.add(slot)
                        if r.status == "done":
                            continue
                        reasons.append(r.status)
                        if r.status != "interrupted":
                            said = _last_error(r.log)  # dlexp's own one line, as the worker printed it
                            self.echo(f"slurm: sweep worker {r.job_id} {r.status}: {r.error}" + (f": {said}" if said else "")
                                      + f" (job log: {r.log})")
                if len(settled) < len(watched):
                    time.sleep(self.options.poll_s)
        except KeyboardInterrupt:
            self.pause()
            slurm.stop_dialog(list(batches.values()), self.echo, self.ask)
        on_poll()
        return reasons
