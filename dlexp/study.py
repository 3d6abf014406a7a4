"""A study (a grid, a K-fold study) is a set of points, each identified by its resolved config.

Every way of running a study goes through this module and through `run_point`, the one per-point
function: it claims the point, decides whether to skip, resume or start it, and trains it through
`runner.execute` (the one run-folder writer, the one training loop). Executors only decide *where*
`run_point` runs:

- `InProcess`: one point after another in this process;
- `Pool`: `--jobs N`: this process and N-1 persistent worker processes, which import once, keep each
  data set loaded, and take the next point as soon as they are free;
- `dlexp.launchers.slurm_study.SlurmArray`: `--launcher slurm`: one Slurm job array, each job
  calling `run_point` on its points (and reporting the same events through files it writes);
- `Vectorized`: `--vectorize`: the points that can share one stacked model (dlexp/vectorize.py) train
  as groups through `run_group`, which is `run_point` for several points at once.

An executor is any object with `run(points, data, on_event) -> None`; it reports through
`on_event(event)` with plain dicts (they cross process boundaries):

    {"kind": "start",  "index": i, "run_id": ..., "epochs": E, "first_epoch": e0, "pid": ...}
    {"kind": "epoch",  "index": i, "epoch": e, "epochs": E, "pid": ...}
    {"kind": "finish", "index": i, "outcome": Outcome}

**Identity.** A point's key is a hash of its resolved config without the keys that say where or how
a run is done rather than what it computes (`IGNORED`), plus a scope (a K-fold study's name and
fold). Rerunning a command continues its study: a point whose last run ended `ok`, `diverged` or
`pruned` is skipped; one `interrupted` or killed with a checkpoint is resumed from it (`--resume`'s
machinery); one that `failed` or never started runs anew. A config file changed between two commands
changes the resolved configs, hence the keys: those points run again (the earlier runs stay).

**Claims.** Before a point runs, its process claims it (`dlexp.claims`): two identical commands at
once, or several machines sharing the results folder, never run the same point twice. The point's
last run is recorded in `<results_dir>/.points/<key>.run` under the claim, so the decision taken
under the claim sees what other processes did after this one made its plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from dlexp import claims

# Keys that do not count in a point's identity: where results go, a label, and how a run is executed.
IGNORED = ("results_dir", "name", "trainer.threads", "trainer.checkpoint_every")
DONE = ("ok", "diverged", "pruned")


@dataclass
class Point:
    """One run of a study. `data` says which rows it trains on: ("holdout",) for a plain run (the
    config's validation hold-out), or ("fold", repeat, index, train_idx, val_idx) for a K-fold fold."""

    index: int
    overrides: list[str]
    cfg: Any  # the resolved DictConfig (a plain dict while it travels to a worker)
    key: str
    label: str = ""
    columns: dict[str, Any] = field(default_factory=dict)  # extra metrics columns (study, candidate, fold, ...)
    meta: dict[str, Any] = field(default_factory=dict)  # extra meta.json fields (the study)
    data: tuple = ("holdout",)
    action: str = "run"  # the plan's decision: run | resume | done | running
    run_id: str | None = None  # the run to resume or that is done
    fresh: bool = False  # --fresh: a new run whatever exists


@dataclass
class Outcome:
    index: int
    run_id: str | None
    summary: dict[str, Any]
    how: str  # ran | resumed | skipped (done before) | busy (another process holds it)
    pid: int = 0


def identity(cfg, scope: dict[str, Any] | None = None) -> str:
    """The point key: a hash of the resolved config without the IGNORED keys, and of the scope."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else json.loads(json.dumps(cfg))
    for key in IGNORED:
        node = container
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    text = json.dumps({"config": container, "scope": scope or {}}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def study_id(parts: Any) -> str:
    """A short stable id of a study's definition (a grid's override lists, a K-fold study's settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ---- what exists: the last run of each point ---------------------------------------------------


def _record(results_dir: str | Path, key: str) -> Path:
    return Path(results_dir) / claims.CLAIMS / f"{key}.run"


def last_run(results_dir: str | Path, key: str) -> str | None:
    try:
        run_id = _record(results_dir, key).read_text().strip()
    except OSError:
        return None
    return run_id if run_id and "/" not in run_id and run_id not in (".", "..") else None


def run_state(results_dir: str | Path, run_id: str | None, key: str | None = None) -> tuple[str, dict[str, Any] | None]:
    """(state, summary) of a run folder: done | resume | run (failed, or nothing to resume) | running."""
    if run_id is None:
        return "run", None
    d = Path(results_dir) / "runs" / run_id
    if not d.is_dir():
        return "run", None
    summary = read_summary(d)
    if summary is not None:
        status = summary.get("status")
        if status in DONE:
            return "done", summary
        if status == "interrupted" and (d / "checkpoint.pt").is_file():
            return "resume", summary
        return "run", summary
    # no summary: running somewhere, or killed
    if key is not None and claims.holder(results_dir, key) is not None:
        return "running", None
    if key is None and is_running(d):
        return "running", None
    return ("resume" if (d / "checkpoint.pt").is_file() else "run"), None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        s = json.loads((run_dir / "summary.json").read_text())
        return s if isinstance(s, dict) else None
    except (OSError, ValueError):
        return None


def is_running(run_dir: Path) -> bool:
    """A run without summary.json whose heartbeat file is fresh (see runner.execute)."""
    a = claims.age(run_dir / "heartbeat")
    return a is not None and a <= claims.stale_after()


def plan(points: list[Point], results_dir: str | Path, fresh: bool = False) -> dict[str, int]:
    """Decide, for each point, run / resume / done / running (elsewhere); returns the counts."""
    counts = {"done": 0, "resume": 0, "run": 0, "running": 0}
    for p in points:
        p.fresh = fresh
        if fresh:
            p.action, p.run_id = "run", None
        else:
            run_id = last_run(results_dir, p.key)
            state, _ = run_state(results_dir, run_id, p.key)
            p.action, p.run_id = state, (run_id if state != "run" else None)
        counts[p.action] += 1
    return counts


def record_grid(results_dir: str | Path, grid_id: str, points: list[Point], command: list[str]) -> None:
    """`<results_dir>/.points/grid-<id>.json`: the grid's command and point keys, for `dlexp status`."""
    from dlexp.atomic import atomic_write

    path = Path(results_dir) / claims.CLAIMS / f"grid-{grid_id}.json"
    atomic_write(path, json.dumps({"id": grid_id, "command": command, "keys": [p.key for p in points]}))


def plan_line(counts: dict[str, int]) -> str:
    """'100 points: 62 done, 1 to resume, 37 to run' (and how many run elsewhere right now)."""
    n = sum(counts.values())
    line = f"{n} point{'s' if n != 1 else ''}: {counts['done']} done, {counts['resume']} to resume, {counts['run']} to run"
    if counts["running"]:
        line += f", {counts['running']} running in another process (left to it)"
    return line


# ---- data: each data set loaded once per process -------------------------------------------------


class DataCache:
    """The splits a point trains on, loaded once per process: a data set's source and its hold-out
    splits are kept; of K-fold splits, the last fold's (points are ordered fold by fold)."""

    def __init__(self) -> None:
        self.sources: dict[str, Any] = {}
        self.splits: dict[str, Any] = {}
        self.fold: tuple[Any, Any] = (None, None)

    def source(self, dataset_cfg):
        from dlexp.config import to_yaml
        from dlexp.data import load_source

        key = to_yaml(dataset_cfg)
        if key not in self.sources:
            self.sources[key] = load_source(dataset_cfg)
        return self.sources[key]

    def splits_of(self, point: Point):
        from dlexp.config import to_yaml

        key = to_yaml(point.cfg.dataset)
        if point.data[0] == "holdout":
            if key not in self.splits:
                from dlexp.data import load_splits

                self.splits[key] = load_splits(point.cfg.dataset)
            return self.splits[key]
        _, repeat, index, train_idx, val_idx = point.data
        if self.fold[0] != (key, repeat, index):
            from dlexp.kfold import Fold, fold_splits

            self.fold = (None, None)  # the previous fold's tensors are freed before the next is built
            self.fold = ((key, repeat, index), fold_splits(self.source(point.cfg.dataset), Fold(repeat, index, train_idx, val_idx)))
        return self.fold[1]


# ---- the per-point function ----------------------------------------------------------------------


def default_threads(jobs: int = 1) -> int:
    """torch threads per run when `trainer.threads` is null: $OMP_NUM_THREADS where it is set, else
    the cores this process may use (its CPU affinity, which a batch scheduler sets) / jobs."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def set_threads(cfg, jobs: int = 1) -> int:
    """Set torch's thread count for a run: `trainer.threads`, or cores / jobs. Returns it."""
    import torch

    threads = cfg.trainer.get("threads") if "trainer" in cfg else None
    n = int(threads) if threads else default_threads(jobs)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def run_point(point: Point, data: DataCache, *, jobs: int = 1, on_event: Callable[[dict], None] | None = None) -> Outcome:
    """Claim `point`, then skip it (done), resume its run, or start a new one; release the claim.

    The decision is taken again under the claim, from the point's record: another process may have
    run or started it since the plan was made. A crash inside training is recorded in the run folder
    as `failed` and returned, not raised; Ctrl-C (KeyboardInterrupt) is raised after the run folder
    says `interrupted`.
    """
    return run_group([point], data, jobs=jobs, on_event=on_event)[0]


def run_group(points: list[Point], data: DataCache, *, jobs: int = 1, on_event: Callable[[dict], None] | None = None) -> list[Outcome]:
    """`run_point` for several points that train as one vectorized group (dlexp.vectorize): each is
    claimed and decided as `run_point` decides; those to train go through `runner.execute_group`
    together, all fresh or all resumed from checkpoints of one epoch (points that started elsewhere
    meanwhile train in their own batches). One point is `run_point`. Returns an Outcome per point."""
    emit = on_event or (lambda e: None)
    outcomes: dict[int, Outcome] = {}
    held: list[claims.Claim] = []
    todo: list[tuple[Point, Path | None]] = []
    try:
        for point in points:
            results_dir = point.cfg.results_dir
            claim = claims.try_claim(results_dir, point.key, {"label": point.label})
            if claim is None:
                outcomes[point.index] = Outcome(point.index, None, {"status": "running", "reason": "claimed by another process"},
                                                "busy", os.getpid())
                continue
            held.append(claim)
            resume_dir = None
            if not point.fresh:
                run_id = last_run(results_dir, point.key)
                state, summary = run_state(results_dir, run_id)
                if state == "done":
                    outcomes[point.index] = Outcome(point.index, run_id, summary, "skipped", os.getpid())
                    continue
                if state in ("resume", "running"):  # running: a killed run whose heartbeat has not aged yet
                    if (Path(results_dir) / "runs" / run_id / "checkpoint.pt").is_file():
                        resume_dir = Path(results_dir) / "runs" / run_id
            todo.append((point, resume_dir))
        batches: dict[int, list[tuple[Point, Path | None]]] = {}
        for point, resume_dir in todo:  # one batch per starting epoch: a stack starts from one place
            batches.setdefault(start_epoch(resume_dir) if len(todo) > 1 else 0, []).append((point, resume_dir))
        for batch in batches.values():
            for (point, _), outcome in zip(batch, _train(batch, data, jobs, emit)):
                outcomes[point.index] = outcome
    finally:
        for claim in held:
            claim.release()
    return [outcomes[p.index] for p in points]


def start_epoch(resume_dir: str | Path | None) -> int:
    """The epoch a run resumes after (its checkpoint's), or 0 for a new run."""
    if resume_dir is None:
        return 0
    import torch

    try:  # mmap: the epoch without reading the weights
        return int(torch.load(Path(resume_dir) / "checkpoint.pt", map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return -1  # unreadable: execute refuses it in one line, alone


def _train(batch: list[tuple[Point, Path | None]], data: DataCache, jobs: int, emit: Callable[[dict], None]) -> list[Outcome]:
    """Train claimed points (one, or a group) through the run-folder writer; the outcomes in order."""
    from dlexp.runner import Member, execute, execute_group

    set_threads(batch[0][0].cfg, jobs)
    folds: dict[Any, Any] = {}  # each distinct data set or fold built once, shared by its members
    for point, _ in batch:
        if _data_key(point) not in folds:
            folds[_data_key(point)] = data.splits_of(point)
    members, splits = [], []
    for point, resume_dir in batch:
        splits.append(folds[_data_key(point)])
        members.append(Member(extra_meta={**point.meta, "point": point.key}, extra_columns=point.columns,
                              on_epoch=_epoch_event(point, emit), resume_dir=resume_dir, on_run_dir=_record_run(point, emit)))
    try:
        if len(batch) == 1:
            m = members[0]
            ran = [execute(batch[0][0].cfg, splits[0], extra_meta=m.extra_meta, extra_columns=m.extra_columns,
                           on_epoch=m.on_epoch, resume_dir=m.resume_dir, reraise=False, on_run_dir=m.on_run_dir)]
        else:
            ran = execute_group([p.cfg for p, _ in batch], splits, members, reraise=False)
    except Exception as e:
        from dlexp.errors import ConfigError
        from dlexp.runner import ResultsWriteError

        if isinstance(e, (ConfigError, ResultsWriteError)):
            raise  # bad input, or a results folder that can no longer be written: the study stops
        # an exception before the run folder existed (the data, the model on this device)
        return [Outcome(p.index, None, {"status": "failed", "reason": f"{type(e).__name__}: {e}", "final": {}, "duration_s": 0.0},
                        "ran", os.getpid()) for p, _ in batch]
    return [Outcome(p.index, run_id, summary, "resumed" if resume_dir is not None else "ran", os.getpid())
            for (p, resume_dir), (run_id, summary) in zip(batch, ran)]


def _data_key(point: Point) -> tuple:
    """What a point's splits depend on: its data set's config, and its fold."""
    from dlexp.config import to_yaml

    return (to_yaml(point.cfg.dataset), *point.data[:3])


def _record_run(point: Point, emit: Callable[[dict], None]) -> Callable[[str, int], None]:
    """`on_run_dir` of a point: its last run recorded under its claim, and the `start` event."""
    def on_run_dir(run_id: str, first_epoch: int) -> None:
        from dlexp.atomic import atomic_write

        atomic_write(_record(point.cfg.results_dir, point.key), run_id + "\n")
        emit({"kind": "start", "index": point.index, "run_id": run_id, "epochs": int(point.cfg.trainer.epochs),
              "first_epoch": first_epoch, "pid": os.getpid()})

    return on_run_dir


def _epoch_event(point: Point, emit: Callable[[dict], None]) -> Callable[[int, Any], None]:
    def on_epoch(epoch: int, records) -> None:
        emit({"kind": "epoch", "index": point.index, "epoch": epoch, "epochs": int(point.cfg.trainer.epochs), "pid": os.getpid()})

    return on_epoch


# ---- vectorized groups ---------------------------------------------------------------------------


def vectorize_groups(points: list[Point], data: DataCache, max_members: int | None = None) -> tuple[list[list[Point]], dict[str, int]]:
    """`points` cut into vectorized groups (dlexp.vectorize): points whose configs agree on what one
    stacked model needs (`vectorize.group_key`, with the optimizer steps of an epoch) and that start
    from the same place (new, or resumed after the same epoch), at most `max_members` each (default:
    `vectorize.max_members`, from the free memory). A point that cannot be stacked, or for which
    stacking does not pay (`vectorize.pays`), is a group of its own; the second value counts those by
    reason, for the grouping line."""
    import math

    from dlexp import vectorize as vz
    from dlexp.train import resolve_device

    groups: list[list[Point]] = []
    alone: dict[str, int] = {}
    keyed: dict[tuple[str, int], list[Point]] = {}
    for p in points:
        why = vz.alone_reason(p.cfg)
        if why is not None:
            alone[why] = alone.get(why, 0) + 1
            groups.append([p])
            continue
        steps = math.ceil(len(p.data[3]) / int(p.cfg.trainer.batch_size)) if p.data[0] == "fold" else None
        resume = Path(p.cfg.results_dir) / "runs" / p.run_id if p.action == "resume" and p.run_id else None
        keyed.setdefault((vz.group_key(p.cfg, steps), start_epoch(resume)), []).append(p)
    for ps in keyed.values():
        cfg = ps[0].cfg
        splits = data.splits_of(ps[0])
        device = resolve_device(cfg.trainer.device)
        if len(ps) == 1:
            why = "nothing to stack with"
        elif not vz.pays(cfg, splits, device):
            why = f"{cfg.model.name} on {cfg.dataset.name}: stacking does not pay on a CPU for this model and batch size"
        else:
            shared = all(p.data[0] == "holdout" for p in ps)
            cap = max_members or vz.max_members(cfg, splits, device, shared)
            why = None if cap > 1 else "too large to stack in the free memory"
        if why is not None:
            alone[why] = alone.get(why, 0) + len(ps)
            groups += [[p] for p in ps]
            continue
        for chunk in vz.chunks(ps, cap):
            if len(chunk) == 1:
                alone["left over at the group size limit"] = alone.get("left over at the group size limit", 0) + 1
            groups.append(chunk)
    order = {p.index: i for i, p in enumerate(points)}
    return sorted(groups, key=lambda g: order[g[0].index]), alone


# ---- executors -----------------------------------------------------------------------------------


class InProcess:
    """Every point in this process, one after another."""

    def __init__(self, jobs: int = 1):
        self.jobs = jobs

    def run(self, points: Iterable[Point], data: DataCache, on_event: Callable[[dict], None]) -> None:
        for p in points:
            outcome = run_point(p, data, jobs=self.jobs, on_event=on_event)
            on_event({"kind": "finish", "index": p.index, "outcome": outcome})


class Vectorized:
    """`--vectorize`: the points of each group (`vectorize_groups`) train as one stacked model in this
    process (`run_group`), one group after another; a group of one is an ordinary run."""

    def __init__(self, groups: list[list[Point]], jobs: int = 1):
        self.groups, self.jobs = groups, jobs

    def run(self, points: Iterable[Point], data: DataCache, on_event: Callable[[dict], None]) -> None:
        wanted = {p.index for p in points}
        for group in self.groups:
            group = [p for p in group if p.index in wanted]
            if not group:
                continue
            for p, outcome in zip(group, run_group(group, data, jobs=self.jobs, on_event=on_event)):
                on_event({"kind": "finish", "index": p.index, "outcome": outcome})


class Pool:
    """`--jobs N`: this process and N-1 persistent worker processes take the points one at a time.

    Workers are started once (spawned: each imports torch and dlexp once), keep every data set they
    have loaded, and ask for the next point as soon as they finish one; this process starts training
    at once, while the workers are still importing. (Measured, benchmarks/study_overhead.py: 10 digits
    runs of 0.3 s took 0.32x the time of one process on a loaded 2-core machine, but 1.07-1.09x on an
    idle one, where the workers' imports take what the second core gives.)
    Workers die with this process (`dlexp.lifeline`). Ctrl-C or SIGTERM here stops handing out points
    and sends SIGTERM to the workers: their runs end `interrupted` with their checkpoints.
    A worker that dies (killed, out of memory) loses only its point, recorded as `failed`; its run
    folder is resumed by the next identical command.
    """

    def __init__(self, jobs: int, parent_trains: bool = True):
        self.jobs, self.parent_trains = jobs, parent_trains  # parent_trains=False: N worker processes, none here

    def run(self, points: Iterable[Point], data: DataCache, on_event: Callable[[dict], None]) -> None:
        import collections
        import multiprocessing as mp
        import threading

        queue = collections.deque(points)
        lock = threading.Lock()  # the queue and on_event are shared by this thread and the dispatcher
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        threads = default_threads(self.jobs)
        workers = []
        for w in range(self.jobs - 1 if self.parent_trains else self.jobs):
            tasks = ctx.Queue()
            proc = ctx.Process(target=_worker_main, args=(w, threads, self.jobs, tasks, results), daemon=True,
                               name=f"dlexp-worker-{w}")
            proc.start()
            workers.append({"proc": proc, "tasks": tasks, "point": None, "done": False})
        stop = threading.Event()

        def take() -> Point | None:
            with lock:
                return queue.popleft() if queue and not stop.is_set() else None

        def report(event: dict) -> None:
            with lock:
                on_event(event)

        def dispatch() -> None:
            import queue as q

            while not all(w["done"] for w in workers):
                try:
                    kind, w, payload = results.get(timeout=0.5)
                except q.Empty:
                    for wk in workers:  # a worker that died without a word
                        if not wk["done"] and not wk["proc"].is_alive():
                            wk["done"] = True
                            if wk["point"] is not None:
                                p = wk["point"]
                                reason = f"worker process died (exit code {wk['proc'].exitcode}); rerun the command to resume it"
                                report({"kind": "finish", "index": p.index, "outcome": Outcome(
                                    p.index, None, {"status": "failed", "reason": reason, "final": {}, "duration_s": 0.0}, "ran")})
                    continue
                wk = workers[w]
                if kind == "event":
                    report(payload)
                    continue
                if kind in ("done", "interrupted"):
                    report({"kind": "finish", "index": payload.index, "outcome": payload})
                    wk["point"] = None
                if kind == "error":
                    report({"kind": "error", "message": payload})
                if kind in ("ready", "done"):
                    p = take()
                    wk["point"] = p
                    wk["tasks"].put(to_wire(p) if p is not None else None)
                    if p is None:
                        wk["done"] = True
                if kind in ("interrupted", "error", "exit"):
                    wk["done"] = True

        dispatcher = threading.Thread(target=dispatch, name="dlexp-dispatch", daemon=True)
        dispatcher.start()
        try:
            while self.parent_trains and (p := take()) is not None:
                outcome = run_point(p, data, jobs=self.jobs, on_event=report)
                report({"kind": "finish", "index": p.index, "outcome": outcome})
            while dispatcher.is_alive():
                dispatcher.join(timeout=0.2)
        except BaseException:
            stop.set()
            for wk in workers:
                if wk["proc"].is_alive():
                    wk["proc"].terminate()  # SIGTERM: the worker's run ends `interrupted`, its files whole
            dispatcher.join(timeout=60)
            raise
        finally:
            for wk in workers:
                wk["proc"].join(timeout=10)
                if wk["proc"].is_alive():
                    wk["proc"].kill()
                    wk["proc"].join()


def _worker_main(worker: int, threads: int, jobs: int, tasks, results) -> None:
    """A `--jobs` worker: imports once, keeps its data sets, runs points until it is sent None."""
    from dlexp.lifeline import die_with_parent

    die_with_parent(ignore_sigint=True)
    import torch

    torch.set_num_threads(threads)
    data = DataCache()
    results.put(("ready", worker, None))
    try:
        while (p := tasks.get()) is not None:
            p = from_wire(p)
            try:
                outcome = run_point(p, data, jobs=jobs, on_event=lambda e: results.put(("event", worker, e)))
            except KeyboardInterrupt:
                summary = read_summary(Path(p.cfg.results_dir) / "runs" / last_run(p.cfg.results_dir, p.key)) if last_run(
                    p.cfg.results_dir, p.key) else None
                results.put(("interrupted", worker, Outcome(p.index, last_run(p.cfg.results_dir, p.key),
                                                             summary or {"status": "interrupted", "final": {}}, "ran", os.getpid())))
                return
            results.put(("done", worker, outcome))
    except KeyboardInterrupt:
        results.put(("exit", worker, None))
    except Exception as e:  # a results folder that cannot be written, or bad input: the parent stops the study
        results.put(("error", worker, f"{type(e).__name__}: {e}"))


def pending(points: list[Point]) -> list[Point]:
    """The points an executor is given: those not done and not running elsewhere."""
    return [p for p in points if p.action in ("run", "resume")]


def load_outcome(results_dir: str | Path, p: Point) -> Outcome:
    """The outcome of a point the plan found done (its run folder's summary)."""
    summary = read_summary(Path(results_dir) / "runs" / p.run_id) if p.run_id else None
    return Outcome(p.index, p.run_id, summary or {"status": "unknown", "final": {}}, "skipped")


def to_wire(p: Point) -> Point:
    """A copy of `p` that pickles cheaply (the config as a plain dict)."""
    from omegaconf import OmegaConf

    return dataclasses.replace(p, cfg=OmegaConf.to_container(p.cfg, resolve=True))


def from_wire(p: Point) -> Point:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(p.cfg)
    OmegaConf.set_struct(cfg, True)
    return dataclasses.replace(p, cfg=cfg)


def elapsed_since(t0: float) -> float:
    return time.perf_counter() - t0


# ---- what a results folder holds: `dlexp status` -------------------------------------------------

STATUSES = ("ok", "diverged", "pruned", "interrupted", "failed", "running", "killed")


def survey(results_dir: str | Path) -> list[dict[str, Any]]:
    """The runs under `results_dir`, grouped by study: a grid (by its id), a K-fold study, a sweep, or
    single runs. Each group: kind, name, counts by status, the runs left unfinished, and the command
    that continues it. A run without summary.json is `running` while its heartbeat is fresh, else
    `killed` (resumable if it has a checkpoint)."""
    runs = Path(results_dir) / "runs"
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for d in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
        try:
            meta = json.loads((d / "meta.json").read_text())
            meta = meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            meta = {}
        summary = read_summary(d)
        status = summary.get("status") if summary is not None else ("running" if is_running(d) else "killed")
        if status not in STATUSES:
            status = "failed"
        info = meta.get("study") if isinstance(meta.get("study"), dict) else {}
        if info.get("kind") == "grid":
            gk = ("grid", str(info.get("id")))
        elif info.get("kind") == "kfold":
            gk = ("kfold", str(info.get("name")))
        elif isinstance(meta.get("sweep"), dict):
            gk = ("sweep", str(meta["sweep"].get("study")))
        else:
            gk = ("runs", "single runs")
        g = groups.setdefault(gk, {"kind": gk[0], "name": gk[1], "counts": dict.fromkeys(STATUSES, 0),
                                   "keys": set(), "done_keys": set(), "unfinished": [], "command": None, "started": ""})
        g["counts"][status] += 1
        key = meta.get("point")
        if key:
            g["keys"].add(key)
            if status in DONE:
                g["done_keys"].add(key)
        if status in ("interrupted", "failed", "killed"):
            g["unfinished"].append((d.name, status, (d / "checkpoint.pt").is_file()))
            slurm = meta.get("slurm") if isinstance(meta.get("slurm"), dict) else {}
            if slurm.get("log"):  # run in a Slurm job: its log says what the job saw
                g.setdefault("logs", {})[d.name] = str(slurm["log"])
        if isinstance(meta.get("command"), list) and str(meta.get("started", "")) >= g["started"]:
            g["command"], g["started"] = meta["command"], str(meta.get("started", ""))
    done_anywhere = set().union(*(g["done_keys"] for g in groups.values()))  # two grids may share points
    for f in sorted((Path(results_dir) / claims.CLAIMS).glob("grid-*.json")):
        try:
            grid = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        g = groups.setdefault(("grid", grid.get("id")), {"kind": "grid", "name": grid.get("id"), "counts": dict.fromkeys(STATUSES, 0),
                                                         "keys": set(), "done_keys": set(), "unfinished": [], "command": None,
                                                         "started": ""})
        g["grid_keys"] = grid.get("keys", [])
        if g["command"] is None:
            g["command"] = grid.get("command")
    out = []
    for g in groups.values():
        if g["kind"] == "grid" and "grid_keys" in g:
            g["missing"] = max(0, sum(k not in done_anywhere for k in g["grid_keys"]) - g["counts"]["running"])
        elif g["kind"] == "kfold":
            g["missing"] = _kfold_missing(Path(results_dir), g["name"], len(g["done_keys"]), g["counts"]["running"])
        else:
            g["missing"] = 0  # a sweep knows its own count (--trials); single runs have none
        g["continue"] = continue_command(g)
        out.append(g)
    order = {"grid": 0, "kfold": 1, "sweep": 2, "runs": 3}
    return sorted(out, key=lambda g: (order[g["kind"]], g["started"]))


def _kfold_missing(results_dir: Path, name: str, done: int, running: int) -> int:
    try:
        points = json.loads((results_dir / "kfold" / name / "study.json").read_text()).get("points")
    except (OSError, ValueError, AttributeError):
        points = None
    return max(0, points - done - running) if isinstance(points, int) else 0


def continue_command(g: dict[str, Any]) -> str | None:
    """The command that continues an unfinished study: its own command again (a rerun continues it);
    for single runs, `dlexp run --resume` of each resumable one."""
    import shlex

    if g["kind"] == "runs":
        resumable = [r for r, status, ckpt in g["unfinished"] if ckpt and status != "failed"]
        return " ; ".join(f"dlexp run --resume {r}" for r in resumable[:3]) + (" ; ..." if len(resumable) > 3 else "") or None
    if not g["missing"] and not g["unfinished"] or not g["command"]:
        return None
    args = [a for a in g["command"][1:]]
    return "dlexp " + shlex.join(args)


def sweep_studies(results_dir: str | Path) -> list[dict[str, Any]]:
    """The sweep studies stored under `<results_dir>/sweeps/` (SQLite files and journals), with the
    trial counts of their last trials table. Studies in a database server are not listed here."""
    import csv

    folder = Path(results_dir) / "sweeps"
    found: dict[str, dict[str, Any]] = {}
    for f in sorted(folder.glob("*")) if folder.is_dir() else []:
        if f.suffix in (".db", ".log") and f.is_file():
            found.setdefault(f.stem, {"study": f.stem, "storage": str(f), "trials": None, "states": {}, "best": None})
    for f in sorted(folder.glob("*.trials.csv")) if folder.is_dir() else []:
        name = f.name[: -len(".trials.csv")]
        row = found.setdefault(name, {"study": name, "storage": "(a database server)", "trials": None, "states": {}, "best": None})
        try:
            with open(f, newline="") as fh:
                trials = list(csv.DictReader(fh))
        except (OSError, csv.Error):
            continue
        row["trials"] = len(trials)
        for t in trials:
            row["states"][t.get("state", "?")] = row["states"].get(t.get("state", "?"), 0) + 1
    return list(found.values())
