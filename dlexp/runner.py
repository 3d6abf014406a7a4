"""One run end to end: config -> data -> train loop -> files under `<results_dir>/runs/<run_id>/`.

`dlexp run`, `kfold` and `sweep` all come through `execute`; none of them re-implements the loop.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import threading
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dlexp import results
from dlexp.config import to_yaml



def cpu_name() -> str:
    """The processor's model name ("Intel(R) Xeon(R) ..."): /proc/cpuinfo on Linux, else platform's."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meta(cfg, device, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    import dlexp

    info = {
        "dlexp_version": dlexp.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        # read by OpenMP when torch is imported; dlexp's CLI sets PASSIVE unless the user set it (cli/__init__.py)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "command": sys.argv,
        "seed": int(cfg.seed),
        "amp": cfg.trainer.get("amp", "none"),
        "compile": bool(cfg.trainer.get("compile", False)),
        "deterministic": bool(cfg.trainer.deterministic),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "started_unix": time.time(),  # just before the first batch: benchmarks measure start-up with it
    }
    info["threads"] = torch.get_num_threads()  # trainer.threads, or cores / jobs (dlexp.study.set_threads)
    info["host"], info["pid"] = platform.node(), os.getpid()
    info.update(_git_state())
    info.update(extra or {})
    return info


@functools.lru_cache(maxsize=4)
def _git_state_in(cwd: str) -> dict[str, Any]:
    return results.git_state()


def _git_state() -> dict[str, Any]:
    """results.git_state(), asked once per process and folder: two git subprocesses cost 10-20 ms,
    which a grid point should not pay."""
    return dict(_git_state_in(os.getcwd()))


def _append(path: Path, data: bytes) -> None:
    """Append `data` with one write: a Ctrl-C lands before or after it, so an epoch's rows are whole
    (a SIGKILL or a full disk may cut the last row; the loaders drop a partial last row)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class _BackgroundWriter:
    """Atomic file writes done by one thread, one at a time, in order; errors come back at `join`."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write_all(self, items: list[tuple[Path, bytes]]) -> None:
        """Several files, one after another by one thread (a group's checkpoints: written together)."""
        self.join()

        def go() -> None:
            try:
                for path, data in items:
                    results.atomic_write(path, data)
            except BaseException as e:  # reported to the training thread at its next join
                self._error = e

        self._thread = threading.Thread(target=go, name="dlexp-checkpoint", daemon=True)
        self._thread.start()

    def join(self, raise_error: bool = True) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error


class ResultsWriteError(OSError):
    """A results file could not be written (full disk, lost permission): one line for the user."""


def _to_bytes(obj) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """A run's last checkpoint, loaded with weights_only=True (tensors and plain data only: a
    checkpoint file cannot run code)."""
    import torch

    from dlexp.errors import ConfigError

    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(f"--resume: {run_dir} has no checkpoint.pt (no epoch finished, or checkpoints were off)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, garbage, or not a plain-data checkpoint
        raise ConfigError(f"--resume: cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def execute(
    cfg,
    splits,
    *,
    extra_meta: dict[str, Any] | None = None,
    extra_columns: dict[str, Any] | None = None,
    on_epoch: Callable[[int, list[dict[str, Any]]], None] | None = None,
    on_finish: Callable[[Any], None] | None = None,
    progress: Any = None,
    resume_dir: str | Path | None = None,
    checkpoints: bool = True,
    reraise: bool = True,
    stop_on: tuple[type[BaseException], ...] = (),
    on_run_dir: Callable[[str, int], None] | None = None,
) -> tuple[str | None, dict[str, Any]]:
    """Train one config and write its run folder. Returns (run_id, summary).

    Bad input (ConfigError) raises before any folder exists. An exception during training is
    recorded as status `failed` with its reason, then re-raised; divergence and Ctrl-C are
    statuses, not exceptions (Ctrl-C is re-raised after the files are written).
    `on_finish(result)` receives the loop's Result (with the trained model) once the files are written.

    An exception of a `stop_on` type raised by `on_epoch` (a sweep's pruner) ends the run early
    with status `pruned` and its message as the reason; the summary is returned, not raised.
    With `reraise=False`, an exception during training (other than Ctrl-C and failed writes) is
    recorded and returned as a `failed` summary instead, so that a study can go on without it.
    With `checkpoints`, `checkpoint.pt` is rewritten atomically every `trainer.checkpoint_every`
    epochs (or seconds), by a background thread once its bytes are taken; `resume_dir` continues such a
    run in its own folder from its last checkpoint (see `load_checkpoint`). `on_run_dir(run_id,
    first_epoch)` is called once the run folder exists (a study records the point's run there).

    metrics.csv is appended once per epoch (one write of that epoch's rows), never rewritten while
    the run trains; a run that ends with other records than the file holds (Ctrl-C while an epoch was
    being written, a resume) gets the file rewritten whole, atomically. While the run trains, its
    folder's `heartbeat` file is touched every few seconds (`dlexp.claims`): `dlexp status` tells a
    running run from a killed one by its age.
    """
    member = Member(extra_meta=extra_meta, extra_columns=extra_columns, on_epoch=on_epoch, on_finish=on_finish,
                    resume_dir=resume_dir, on_run_dir=on_run_dir)
    return execute_group([cfg], [splits], [member], progress=progress, checkpoints=checkpoints, reraise=reraise,
                         stop_on=stop_on, group=False)[0]


@dataclass
class Member:
    """What the caller of `execute_group` says about one of its runs (as `execute`'s keywords)."""

    extra_meta: dict[str, Any] | None = None
    extra_columns: dict[str, Any] | None = None
    on_epoch: Callable[[int, list[dict[str, Any]]], None] | None = None
    on_finish: Callable[[Any], None] | None = None
    resume_dir: str | Path | None = None
    on_run_dir: Callable[[str, int], None] | None = None


class _RunFolder:
    """One run's folder while it trains: created when training starts, metrics appended each epoch,
    checkpoints, the summary at the end (for a single run, or for each member of a group)."""

    def __init__(self, cfg, spec: Member, stop_on: tuple[type[BaseException], ...], group: dict[str, Any] | None):
        from dlexp.loggers import Loggers

        self.cfg, self.spec, self.stop_on, self.group = cfg, spec, stop_on, group
        self.loggers = Loggers(cfg, spec.extra_columns)  # trainer.loggers (TensorBoard, MLflow): see dlexp/loggers.py
        self.columns = spec.extra_columns or {}
        self.run_id: str | None = None
        self.path: Path | None = None
        self.started = time.perf_counter()
        self.written = 0
        self.resume = load_checkpoint(spec.resume_dir) if spec.resume_dir is not None else None

    def create(self, device) -> str:
        """The run folder: a new one (config.yaml, meta.json), or the resumed run's own."""
        if self.spec.resume_dir is not None:
            path = Path(self.spec.resume_dir)
            info = json.loads((path / "meta.json").read_text())
            info.setdefault("resumed", []).append(
                {"at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "from_epoch": self.resume["epoch"], "command": sys.argv}
            )
            results.write_json(path / "meta.json", info)
            (path / "summary.json").unlink(missing_ok=True)  # the run is live again
            self.run_id, self.path, self.started = path.name, path, time.perf_counter() - float(self.resume["elapsed"])
            # the rows of the epochs after the checkpoint (checkpoint_every > 1) are trained again
            self.rewrite_metrics(self.resume["records"])
        else:
            self.run_id, self.path = results.new_run_dir(self.cfg.results_dir, self.cfg.name)
            self.started = time.perf_counter()
            results.atomic_write(self.path / "config.yaml", to_yaml(self.cfg))
        return self.run_id

    def start(self, device, group_runs: list[str] | None = None) -> None:
        """meta.json of a new run (with its group: an id, the member count, this member's index and
        the members' run ids), the heartbeat, the loggers; then the caller's `on_run_dir`."""
        from dlexp.claims import HEARTBEAT

        if self.spec.resume_dir is None:
            extra = dict(self.spec.extra_meta or {})
            if self.group is not None:
                extra["group"] = {**self.group, "runs": group_runs}
            results.write_json(self.path / "meta.json", meta(self.cfg, device, extra))
        (self.path / "heartbeat").touch()
        HEARTBEAT.add(self.path / "heartbeat")
        if self.spec.on_run_dir is not None:
            self.spec.on_run_dir(self.run_id, int(self.resume["epoch"]) + 1 if self.resume is not None else 1)
        self.loggers.start(self.run_id, self.path, resumed=self.resume)

    def unbeat(self) -> None:
        from dlexp.claims import HEARTBEAT

        if self.path is not None:
            HEARTBEAT.remove(self.path / "heartbeat")
            (self.path / "heartbeat").unlink(missing_ok=True)

    def rewrite_metrics(self, records) -> None:
        rows = [{**r, **self.columns} for r in records]
        results.atomic_write(self.path / "metrics.csv", results.metrics_csv(rows))
        self.written = len(records)

    def append_metrics(self, records) -> None:
        new = records[self.written:]
        if not new:
            return
        text = results.metrics_csv([{**r, **self.columns} for r in new])
        if self.written:
            text = text[text.index("\n") + 1:]  # the header is already there
        _append(self.path / "metrics.csv", text.encode())
        self.written = len(records)

    def epoch(self, epoch, records) -> None:
        """After each epoch: its rows appended, the loggers, the caller's `on_epoch` (whose `stop_on`
        exception ends this run: train.Stop)."""
        from dlexp.train import Stop

        self.append_metrics(records)
        self.loggers.epoch(epoch, records)
        if self.spec.on_epoch is not None:
            try:
                self.spec.on_epoch(epoch, records)
            except self.stop_on as e:
                raise Stop("pruned", str(e) or "stopped early") from None

    def finish(self, status, reason, records, epochs, steps, writer: "_BackgroundWriter") -> dict[str, Any]:
        summary = {
            "run_id": self.run_id,
            "status": status,
            "reason": reason,
            "epochs_completed": epochs,
            "steps": steps,
            "duration_s": time.perf_counter() - self.started,
            **self.columns,
            **_summarize(records),
        }
        writer.join()  # the last checkpoint is on disk before the summary says the run ended
        try:
            if self.written != len(records):
                self.rewrite_metrics(records)
            results.write_json(self.path / "summary.json", summary)
        finally:
            self.loggers.finish(status, reason)  # never raises; gives up on a call stalled for loggers.FINISH_WAIT_S
        self.unbeat()
        return summary

    def records_on_disk(self) -> list[dict[str, Any]]:
        """The records metrics.csv holds (a row cut by a failed write is not one)."""
        import csv
        import io

        metrics = self.path / "metrics.csv"
        if not metrics.exists():
            return []
        text = metrics.read_text()
        text = text[: text.rfind("\n") + 1]
        records = [{**r, "epoch": int(r["epoch"]), "value": float(r["value"])} for r in csv.DictReader(io.StringIO(text))]
        self.written = len(records)
        return records


def _summarize(records):
    from dlexp.train import summarize

    return summarize(records)


def execute_group(
    cfgs: list,
    splits: list,
    members: list[Member],
    *,
    progress: Any = None,
    checkpoints: bool = True,
    reraise: bool = True,
    stop_on: tuple[type[BaseException], ...] = (),
    group: bool = True,
) -> list[tuple[str | None, dict[str, Any]]]:
    """`execute` for a vectorized group (dlexp.vectorize): the configs train as one stacked model, and
    each member writes an ordinary run folder exactly as `execute` writes a single run's, its meta.json
    recording the group (`group`: an id, the member count, the member's index, the members' run ids).
    Returns each member's (run_id, summary), in order.

    The members' checkpoints are ordinary checkpoints, written together (one background write of all
    of them), so a member can be resumed with the group (`members[m].resume_dir`, every member at the
    same epoch) or alone. A member that diverges or is stopped by its `on_epoch` ends with its status
    while the others go on; an exception during training (a crash, Ctrl-C, a failed write) ends every
    member as `execute` ends a single run. `group=False` with one config is `execute` itself.
    """
    import torch  # noqa: F401  (train imports it; a failure here is an install problem, not a run's)

    from dlexp.train import train

    info = {"id": _group_id(), "members": len(cfgs)} if group else None
    folders = [_RunFolder(c, m, stop_on, {**info, "member": i} if info else None) for i, (c, m) in enumerate(zip(cfgs, members))]
    writer = _BackgroundWriter()

    def on_start(device):
        run_ids = [f.create(device) for f in folders]
        for f in folders:
            f.start(device, run_ids)
        return run_ids if group else run_ids[0]

    def on_checkpoint(states) -> None:
        # serialized here, while the tensors are this epoch's (the loop changes them next); written and
        # fsynced by a thread meanwhile. torch.save on a full disk raises RuntimeError, atomic_write OSError
        if not group:
            states = [(0, states)]
        writer.write_all([(folders[m].path / "checkpoint.pt", _to_bytes(state)) for m, state in states])

    resume = [f.resume for f in folders]
    try:
        res = train(
            cfgs if group else cfgs[0], splits if group else splits[0], on_start=on_start,
            on_epoch=[f.epoch for f in folders] if group else folders[0].epoch, progress=progress,
            resume=(resume if any(r is not None for r in resume) else None) if group else resume[0],
            on_checkpoint=on_checkpoint if checkpoints else None,
        )
        writer.join()
    except BaseException as e:
        writer.join(raise_error=False)
        if all(f.path is None for f in folders):
            raise  # nothing written yet: bad input, or a crash before the first epoch
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        reason = "interrupted" if status == "interrupted" else f"{type(e).__name__}: {e}"
        summaries = []
        for f in folders:
            summary = None
            try:
                records = f.records_on_disk()
                summary = f.finish(status, reason, records, max((r["epoch"] for r in records), default=0), None, writer)
                if status == "failed":
                    (f.path / "error.txt").write_text(traceback.format_exc())
            except OSError:
                pass  # the disk that failed us may refuse this too; the files already there stay intact
            finally:
                f.unbeat()
            summaries.append((f.run_id, summary))
        if isinstance(e, OSError):
            path = folders[0].path if len(folders) == 1 else folders[0].path.parent
            raise ResultsWriteError(f"results_dir: writing to {path} failed: {e.strerror or e}; earlier files are intact") from e
        if all(s is not None for _, s in summaries) and not reraise and status == "failed" and isinstance(e, Exception):
            return summaries
        raise
    results_ = res if group else [res]
    out = []
    try:
        for f, r in zip(folders, results_):
            summary = f.finish(r.status, r.reason, r.records, r.epochs_completed, r.steps, writer)
            results.atomic_write(f.path / "model.pt", _to_bytes(r.model.state_dict()))
            out.append((f.run_id, summary))
    except OSError as e:
        raise ResultsWriteError(f"results_dir: writing to {f.path} failed: {e.strerror or e}; earlier files are intact") from e
    for f, r in zip(folders, results_):
        if f.spec.on_finish is not None:
            f.spec.on_finish(r)
    if any(r.status == "interrupted" for r in results_):
        raise KeyboardInterrupt
    return out


def _group_id() -> str:
    """A vectorized group's id: the time it started and a random part (two groups never share one)."""
    import secrets

    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
