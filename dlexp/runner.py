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
        # trainer.threads, or cores / jobs (dlexp.study.set_threads)
        "threads": torch.get_num_threads(),
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

    def write(self, path: Path, data: bytes) -> None:
        self.join()

        def go() -> None:
            try:
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
    import torch

    from dlexp.loggers import Loggers
    from dlexp.train import summarize, train

    from dlexp.claims import HEARTBEAT

    loggers = Loggers(cfg, extra_columns)  # trainer.loggers (TensorBoard, MLflow): see dlexp/loggers.py
    state: dict[str, Any] = {"run_id": None, "path": None, "started": time.perf_counter(), "written": 0}
    extra_columns = extra_columns or {}
    writer = _BackgroundWriter()

    resume = None
    if resume_dir is not None:
        resume = load_checkpoint(resume_dir)

    def on_start(device) -> str:
        if resume_dir is not None:
            path = Path(resume_dir)
            info = json.loads((path / "meta.json").read_text())
            info.setdefault("resumed", []).append(
                {"at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "from_epoch": resume["epoch"], "command": sys.argv}
            )
            results.write_json(path / "meta.json", info)
            (path / "summary.json").unlink(missing_ok=True)  # the run is live again
            state.update(run_id=path.name, path=path, started=time.perf_counter() - float(resume["elapsed"]))
            # the rows of the epochs after the checkpoint (checkpoint_every > 1) are trained again
            rewrite_metrics(resume["records"])
            _beat(path)
            if on_run_dir is not None:
                on_run_dir(path.name, int(resume["epoch"]) + 1)
            return path.name
        run_id, path = results.new_run_dir(cfg.results_dir, cfg.name)
        state.update(run_id=run_id, path=path, started=time.perf_counter())
        results.atomic_write(path / "config.yaml", to_yaml(cfg))
        results.write_json(path / "meta.json", meta(cfg, device, extra_meta))
        _beat(path)
        if on_run_dir is not None:
            on_run_dir(run_id, 1)
        return run_id

    def _beat(path: Path) -> None:
        (path / "heartbeat").touch()
        HEARTBEAT.add(path / "heartbeat")

    def start(device) -> str:
        run_id = on_start(device)
        loggers.start(run_id, state["path"], resumed=resume)
        return run_id

    def _unbeat() -> None:
        if state["path"] is not None:
            HEARTBEAT.remove(state["path"] / "heartbeat")
            (state["path"] / "heartbeat").unlink(missing_ok=True)

    def on_checkpoint(ckpt) -> None:
        # serialized here, while the tensors are this epoch's (the loop changes them next); written and
        # fsynced by a thread meanwhile. torch.save on a full disk raises RuntimeError, atomic_write OSError
        writer.write(state["path"] / "checkpoint.pt", _to_bytes(ckpt))

    def rewrite_metrics(records) -> None:
        rows = [{**r, **extra_columns} for r in records]
        results.atomic_write(state["path"] / "metrics.csv", results.metrics_csv(rows))
        state["written"] = len(records)

    def append_metrics(records) -> None:
        new = records[state["written"]:]
        if not new:
            return
        text = results.metrics_csv([{**r, **extra_columns} for r in new])
        if state["written"]:
            text = text[text.index("\n") + 1:]  # the header is already there
        _append(state["path"] / "metrics.csv", text.encode())
        state["written"] = len(records)

    def write_metrics(records) -> None:
        if state["written"] != len(records):
            rewrite_metrics(records)

    def epoch_hook(epoch, records) -> None:
        append_metrics(records)
        loggers.epoch(epoch, records)
        if on_epoch is not None:
            on_epoch(epoch, records)

    def finish(status, reason, records, epochs, steps) -> dict[str, Any]:
        summary = {
            "run_id": state["run_id"],
            "status": status,
            "reason": reason,
            "epochs_completed": epochs,
            "steps": steps,
            "duration_s": time.perf_counter() - state["started"],
            **extra_columns,
            **summarize(records),
        }
        writer.join()  # the last checkpoint is on disk before the summary says the run ended
        try:
            write_metrics(records)
            results.write_json(state["path"] / "summary.json", summary)
        finally:
            loggers.finish(status, reason)  # never raises; gives up on a call stalled for loggers.FINISH_WAIT_S
        _unbeat()
        return summary

    try:
        res = train(
            cfg, splits, on_start=start, on_epoch=epoch_hook, progress=progress, resume=resume,
            on_checkpoint=on_checkpoint if checkpoints else None,
        )
        writer.join()
    except BaseException as e:
        writer.join(raise_error=False)
        if state["path"] is None:
            raise  # nothing written yet: bad input, or a crash before the first epoch
        if stop_on and isinstance(e, stop_on):
            status = "pruned"
        else:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        records = []
        metrics = state["path"] / "metrics.csv"
        if metrics.exists():
            import csv
            import io

            text = metrics.read_text()
            text = text[: text.rfind("\n") + 1]  # a row cut by a failed write is not a record
            records = [{**r, "epoch": int(r["epoch"]), "value": float(r["value"])} for r in csv.DictReader(io.StringIO(text))]
            state["written"] = len(records)
        reason = {"failed": f"{type(e).__name__}: {e}", "interrupted": "interrupted", "pruned": str(e) or "stopped early"}[status]
        summary = None
        try:
            summary = finish(status, reason, records, max((r["epoch"] for r in records), default=0), None)
            if status == "failed":
                (state["path"] / "error.txt").write_text(traceback.format_exc())
        except OSError:
            pass  # the disk that failed us may refuse this too; the files already there stay intact
        finally:
            _unbeat()
        if isinstance(e, OSError):
            raise ResultsWriteError(f"results_dir: writing to {state['path']} failed: {e.strerror or e}; earlier files are intact") from e
        if summary is not None and (status == "pruned" or (not reraise and status == "failed" and isinstance(e, Exception))):
            return state["run_id"], summary
        raise
    try:
        summary = finish(res.status, res.reason, res.records, res.epochs_completed, res.steps)
        results.atomic_write(state["path"] / "model.pt", _to_bytes(res.model.state_dict()))
    except OSError as e:
        raise ResultsWriteError(f"results_dir: writing to {state['path']} failed: {e.strerror or e}; earlier files are intact") from e
    if on_finish is not None:
        on_finish(res)
    if res.status == "interrupted":
        raise KeyboardInterrupt
    return state["run_id"], summary
