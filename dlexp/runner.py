"""One run end to end: config -> data -> train loop -> files under `<results_dir>/runs/<run_id>/`.

`dlexp run`, `kfold` and `sweep` all come through `execute`; none of them re-implements the loop.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
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
    info.update(results.git_state())
    info.update(extra or {})
    return info


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
    With `checkpoints`, `checkpoint.pt` is rewritten atomically after every epoch; `resume_dir`
    continues such a run in its own folder from its last checkpoint (see `load_checkpoint`).
    """
    import torch

    from dlexp.loggers import Loggers
    from dlexp.train import summarize, train

    loggers = Loggers(cfg, extra_columns)  # trainer.loggers (TensorBoard, MLflow): see dlexp/loggers.py
    state: dict[str, Any] = {"run_id": None, "path": None, "started": time.perf_counter()}
    extra_columns = extra_columns or {}

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
            return path.name
        run_id, path = results.new_run_dir(cfg.results_dir, cfg.name)
        state.update(run_id=run_id, path=path, started=time.perf_counter())
        results.atomic_write(path / "config.yaml", to_yaml(cfg))
        results.write_json(path / "meta.json", meta(cfg, device, extra_meta))
        return run_id

    def start(device) -> str:
        run_id = on_start(device)
        loggers.start(run_id, state["path"], resumed=resume)
        return run_id

    def on_checkpoint(ckpt) -> None:
        # serialized in memory first: torch.save on a full disk raises RuntimeError, atomic_write OSError
        results.atomic_write(state["path"] / "checkpoint.pt", _to_bytes(ckpt))

    def write_metrics(records) -> None:
        rows = [{**r, **extra_columns} for r in records]
        results.atomic_write(state["path"] / "metrics.csv", results.metrics_csv(rows))

    def epoch_hook(epoch, records) -> None:
        write_metrics(records)
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
        try:
            write_metrics(records)
            results.write_json(state["path"] / "summary.json", summary)
        finally:
            loggers.finish(status, reason)  # never raises; gives up on a call stalled for loggers.FINISH_WAIT_S
        return summary

    try:
        res = train(
            cfg, splits, on_start=start, on_epoch=epoch_hook, progress=progress, resume=resume,
            on_checkpoint=on_checkpoint if checkpoints else None,
        )
    except BaseException as e:
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

            with open(metrics, newline="") as f:
                records = [{**r, "epoch": int(r["epoch"]), "value": float(r["value"])} for r in csv.DictReader(f)]
        reason = {"failed": f"{type(e).__name__}: {e}", "interrupted": "interrupted", "pruned": str(e) or "stopped early"}[status]
        summary = None
        try:
            summary = finish(status, reason, records, max((r["epoch"] for r in records), default=0), None)
            if status == "failed":
                (state["path"] / "error.txt").write_text(traceback.format_exc())
        except OSError:
            pass  # the disk that failed us may refuse this too; the files already there stay intact
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
