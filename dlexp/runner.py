"""One run end to end: config -> data -> train loop -> files under `<results_dir>/runs/<run_id>/`.

`dlexp run`, `kfold` and `sweep` all come through `execute`; none of them re-implements the loop.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import re
import threading
import sys
import time
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dlexp import results
from dlexp.config import to_yaml
from dlexp.errors import ConfigError, echo
from dlexp.masking import mask, mask_argv


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
        "command": mask_argv(sys.argv),  # a password on the command line is not recorded
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

    def write_all(self, items: list[tuple[Path, bytes]]) -> None:
        """Several files, one after another by one thread (a group's checkpoints: written together)."""
        self.join()

        def go() -> None:
            try:
                for path, data in items:
                    results.atomic_write(path, data, parents=False)  # a deleted run folder is not made again
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


class RunFolderGone(ResultsWriteError):
    """The run's folder was deleted while it trained: the run stops as failed, nothing is made again."""


def _write_error(path: Path, e: OSError) -> ResultsWriteError:
    if not path.is_dir():
        return RunFolderGone(f"results_dir: run folder {path} was deleted during the run; the run stopped (failed) "
                             "and nothing was written again")
    return ResultsWriteError(f"results_dir: writing to {path} failed: {e.strerror or e}; earlier files are intact")


class RunLock:
    """An exclusive lock on a run folder (flock on the folder itself) while a process trains in it, so
    that `--resume` of a live run is refused. The kernel drops it when the process dies, kill -9
    included; `release` (or the object's end) drops it when the run is done."""

    def __init__(self, path: Path):
        self.fd = None
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"--resume: run {path.name} is being trained by another process (its folder is locked); "
                              "wait for it to end, or stop it first") from None
        except OSError:  # a file system without locks (some network mounts): no lock, as before
            os.close(fd)
            return
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        if self.fd is not None:
            self._closer()
            self.fd = None


def _release(state: dict[str, Any]) -> None:
    lock = state.pop("lock", None)
    if lock is not None:
        lock.release()


# atomic_write's temporary files (.<name>.<random>.tmp), left behind by a write that was killed
TEMP_FILE = re.compile(r"^\..+\.tmp$")
# a run with one of these statuses is a result: --resume leaves it as it is
FINISHED = ("ok", "diverged", "pruned")
CHECKPOINT_KEYS = {"epoch": int, "step": int, "elapsed": (int, float), "model": dict, "optimizer": dict,
                   "records": list, "rng": dict}
RNG_KEYS = ("torch", "cuda", "shuffle", "numpy", "python")


def config_digest(text: str | bytes) -> str:
    return "sha1:" + hashlib.sha1(text.encode() if isinstance(text, str) else text).hexdigest()


def data_fingerprint(splits) -> str:
    """What identifies the data a run trains on (recorded in meta.json, compared by --resume)."""
    if getattr(splits, "fingerprint", None):
        return splits.fingerprint
    from dlexp.data import content_digest

    return content_digest(*(t for pair in (splits.train, splits.val, splits.test) for t in (pair or (None, None))))


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """A run's meta.json, or a one-line ConfigError for each way it can be damaged."""
    path = Path(run_dir) / "meta.json"
    if path.is_symlink():
        raise ConfigError(f"--resume: {path} is a symlink; a run folder holds plain files")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--resume: {path} is missing; without the run's record it cannot be resumed") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--resume: {path} is not UTF-8 text (damaged)") from None
    except (OSError, ValueError) as e:  # ValueError: not JSON
        raise ConfigError(f"--resume: {path} is not readable JSON ({type(e).__name__}: {echo(str(e), 120)})") from None
    if not isinstance(info, dict):
        raise ConfigError(f"--resume: {path} is not a JSON object (damaged)")
    return info


def finished_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The summary of a run that ended with a result (ok, diverged, pruned), else None."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") in FINISHED else None


_CHECKED: dict[tuple, dict[str, Any]] = {}


def check_resume(cfg, splits, run_dir: str | Path) -> dict[str, Any]:
    """Everything `--resume` relies on, checked before anything in the run folder is touched; returns
    the checkpoint. The checkpoint, config.yaml and the data must belong together: config.yaml as
    written at the start (its digest in meta.json), the data with the fingerprint recorded then, a
    checkpoint of this run that fits the model and optimizer of config.yaml. Each problem is one line."""
    run_dir = Path(run_dir)
    for f in sorted(run_dir.iterdir()):
        if f.is_symlink():
            raise ConfigError(f"--resume: {f} is a symlink; a run folder holds plain files")
    RunLock(run_dir).release()  # a live run: refused now, with nothing read
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None
                  for f in (run_dir / "checkpoint.pt", run_dir / "config.yaml", run_dir / "meta.json"))
    key = (str(run_dir.resolve()), stamp, id(cfg), id(splits))
    if key in _CHECKED:
        return _CHECKED[key]
    info = read_meta(run_dir)
    written = info.get("config_sha1")
    if written is not None and config_digest((run_dir / "config.yaml").read_bytes()) != written:
        raise ConfigError(f"--resume: {run_dir / 'config.yaml'} was edited after the run started (it no longer matches "
                          "meta.json's config_sha1); a resumed run keeps its config: restore it, or start a new run")
    ckpt = load_checkpoint(run_dir)
    if ckpt["epoch"] > int(cfg.trainer.epochs):
        raise ConfigError(f"--resume: checkpoint.pt is after epoch {ckpt['epoch']} but config.yaml asks for "
                          f"{cfg.trainer.epochs} epochs; config.yaml was edited")
    owners = {r.get("run_id") for r in ckpt["records"]} - {run_dir.name, "", None}
    if owners:
        raise ConfigError(f"--resume: checkpoint.pt belongs to run {echo(sorted(owners)[0])}, not {run_dir.name}")
    recorded = info.get("data_fingerprint")
    if recorded is not None and data_fingerprint(splits) != recorded:
        raise ConfigError(f"--resume: the data of run {run_dir.name} changed since it started (their fingerprint no "
                          "longer matches meta.json's data_fingerprint); restore them, or start a new run")
    _check_fit(cfg, splits, ckpt, run_dir)
    _CHECKED.clear()
    _CHECKED[key] = ckpt
    return ckpt


def _check_fit(cfg, splits, ckpt: dict[str, Any], run_dir: Path) -> None:
    """The checkpoint's weights and optimizer state have the shapes of config.yaml's model, and its
    random-number states can be restored."""
    import random

    import numpy as np
    import torch

    from dlexp.train import build, restore_rng

    where = run_dir / "checkpoint.pt"
    model, _, optimizer, _ = build(cfg, splits, torch.device("cpu"))
    want, got = model.state_dict(), ckpt["model"]
    for name in [*want, *got]:
        if name not in got or name not in want:
            raise ConfigError(f"--resume: {where} does not fit the model of config.yaml: "
                              f"{'no weights for' if name not in got else 'weights of no layer'} {echo(name)}")
        if not isinstance(got[name], torch.Tensor) or got[name].shape != want[name].shape:
            shape = tuple(got[name].shape) if isinstance(got[name], torch.Tensor) else type(got[name]).__name__
            raise ConfigError(f"--resume: {where} does not fit the model of config.yaml: {name} is {shape} in the "
                              f"checkpoint, {tuple(want[name].shape)} in the model")
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"--resume: {where} does not fit the model of config.yaml: {_first_line(e)}") from None
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as e:
        raise ConfigError(f"--resume: {where} does not fit the optimizer of config.yaml: {_first_line(e)}") from None
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ConfigError(f"--resume: {where}: optimizer state {name} has shape {tuple(value.shape)} "
                                      f"for a parameter of shape {tuple(p.shape)}")
    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        restore_rng(ckpt["rng"], torch.Generator(), torch.device("cpu"))
    except Exception as e:  # any malformed state: wrong sizes, types, lengths
        raise ConfigError(f"--resume: {where}: its random-number states cannot be restored ({_first_line(e)})") from None
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return echo(lines[0], 200).strip("'\"") if lines else type(e).__name__


def remove_temp_files(run_dir: Path) -> list[str]:
    """Delete what a killed atomic write left in a run folder (`.metrics.csv.x1y2.tmp`, ...)."""
    removed = []
    for f in run_dir.iterdir():
        if TEMP_FILE.match(f.name) and f.is_file():
            f.unlink(missing_ok=True)
            removed.append(f.name)
    return sorted(removed)


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

    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(f"--resume: {run_dir} has no checkpoint.pt (no epoch finished, or checkpoints were off)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, garbage, or not a plain-data checkpoint
        raise ConfigError(f"--resume: cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    # a checkpoint that loads but lacks a part would fail mid-resume, after the run folder was changed
    if not isinstance(ckpt, dict):
        raise ConfigError(f"--resume: {path} is not a dlexp checkpoint (not a mapping)")
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            raise ConfigError(f"--resume: {path} lacks a valid {key!r} (not a dlexp checkpoint, or damaged)")
    missing = [k for k in RNG_KEYS if k not in ckpt["rng"]]
    if missing:
        raise ConfigError(f"--resume: {path} lacks the random-number state {missing[0]!r} (damaged)")
    columns = ("run_id", "epoch", "step", "split", "metric", "value", "time_s")
    if ckpt["epoch"] < 1 or any(not isinstance(r, dict) or not all(c in r for c in columns)
                                or not isinstance(r["epoch"], int) or r["epoch"] > ckpt["epoch"] for r in ckpt["records"]):
        raise ConfigError(f"--resume: {path} holds damaged metric records for its epoch {ckpt['epoch']!r}")
    return ckpt


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
    member = Member(extra_meta=extra_meta, extra_columns=dict(extra_columns or {}), on_epoch=on_epoch, on_finish=on_finish,
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

    def __init__(self, cfg, splits, spec: Member, stop_on: tuple[type[BaseException], ...], group: dict[str, Any] | None):
        from dlexp.loggers import Loggers

        self.cfg, self.splits, self.spec, self.stop_on, self.group = cfg, splits, spec, stop_on, group
        self.columns = spec.extra_columns if spec.extra_columns is not None else {}
        self.run_id: str | None = None
        self.path: Path | None = None
        self.lock: RunLock | None = None  # held while this process trains in the folder
        self.config_sha1: str | None = None
        self.started = time.perf_counter()
        self.written = 0
        # checkpoint, config.yaml and data belong together: every check before the folder is touched
        self.resume = check_resume(cfg, splits, spec.resume_dir) if spec.resume_dir is not None else None
        if self.resume is not None and not self.columns:
            # a sweep trial's or a fold's columns stay
            self.columns.update(read_meta(Path(spec.resume_dir)).get("columns") or {})
        self.loggers = Loggers(cfg, self.columns)  # trainer.loggers (TensorBoard, MLflow): see dlexp/loggers.py

    def create(self, device) -> str:
        """The run folder: a new one (config.yaml, meta.json), or the resumed run's own."""
        if self.spec.resume_dir is not None:
            path = Path(self.spec.resume_dir)
            self.lock = RunLock(path)
            info = read_meta(path)
            info.setdefault("resumed", []).append(
                {"at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "from_epoch": self.resume["epoch"],
                 "command": mask_argv(sys.argv), "removed_temp_files": remove_temp_files(path)}
            )
            try:
                results.write_json(path / "meta.json", info, parents=False)
                (path / "summary.json").unlink(missing_ok=True)  # the run is live again
            except OSError as e:
                raise _write_error(path, e) from e
            self.run_id, self.path, self.started = path.name, path, time.perf_counter() - float(self.resume["elapsed"])
            # the rows of the epochs after the checkpoint (checkpoint_every > 1) are trained again
            self.rewrite_metrics(self.resume["records"])
        else:
            self.run_id, self.path = results.new_run_dir(self.cfg.results_dir, self.cfg.name)
            self.started = time.perf_counter()
            self.lock = RunLock(self.path)
            text = to_yaml(self.cfg)
            results.atomic_write(self.path / "config.yaml", text, parents=False)
            self.config_sha1 = config_digest(text)
        return self.run_id

    def discard(self) -> None:
        """A new run folder that could not be written (a disk full from the start): removed, so that no
        empty or half-written folder is left behind."""
        import shutil

        self.release()
        if self.spec.resume_dir is None and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def start(self, device, group_runs: list[str] | None = None) -> None:
        """meta.json of a new run (with its group: an id, the member count, this member's index and
        the members' run ids), the heartbeat, the loggers; then the caller's `on_run_dir`."""
        from dlexp.claims import HEARTBEAT

        if self.spec.resume_dir is None:
            extra = dict(self.spec.extra_meta or {})
            if self.group is not None:
                extra["group"] = {**self.group, "runs": group_runs}
            info = meta(self.cfg, device, extra)
            info.update(config_sha1=self.config_sha1, data_fingerprint=data_fingerprint(self.splits), columns=self.columns)
            results.write_json(self.path / "meta.json", info, parents=False)
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
        results.atomic_write(self.path / "metrics.csv", results.metrics_csv(rows), parents=False)
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
            results.write_json(self.path / "summary.json", summary, parents=False)
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
    folders = [_RunFolder(c, s, m, stop_on, {**info, "member": i} if info else None)
               for i, (c, s, m) in enumerate(zip(cfgs, splits, members))]
    writer = _BackgroundWriter()

    def on_start(device):
        try:
            run_ids = [f.create(device) for f in folders]
            for f in folders:
                f.start(device, run_ids)
        except OSError as e:
            if any(f.spec.resume_dir is not None for f in folders):
                raise _write_error(folders[0].path, e) from e
            # a disk full from the start: no run folder is left behind, empty or half-written
            for f in folders:
                f.unbeat()
                f.discard()
                f.path = None
            where = folders[0].path.parent if folders[0].path is not None else Path(folders[0].cfg.results_dir) / "runs"
            raise ResultsWriteError(f"results_dir: cannot write a run folder under {where}: {e.strerror or e}; "
                                    "nothing was kept") from e
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
        reason = "interrupted" if status == "interrupted" else mask(f"{type(e).__name__}: {e}")
        summaries = []
        for f in folders:
            summary = None
            try:
                records = f.records_on_disk()
                summary = f.finish(status, reason, records, max((r["epoch"] for r in records), default=0), None, writer)
                if status == "failed":
                    (f.path / "error.txt").write_text(mask(traceback.format_exc()))
            except OSError:
                pass  # the disk that failed us may refuse this too; the files already there stay intact
            finally:
                f.unbeat()
                f.release()
            summaries.append((f.run_id, summary))
        if isinstance(e, OSError):
            raise _write_error(folders[0].path, e) from e
        if all(s is not None for _, s in summaries) and not reraise and status == "failed" and isinstance(e, Exception):
            return summaries
        raise
    results_ = res if group else [res]
    out = []
    try:
        for f, r in zip(folders, results_):
            summary = f.finish(r.status, r.reason, r.records, r.epochs_completed, r.steps, writer)
            results.atomic_write(f.path / "model.pt", _to_bytes(r.model.state_dict()), parents=False)
            out.append((f.run_id, summary))
    except OSError as e:
        raise _write_error(f.path, e) from e
    finally:
        for f in folders:
            f.release()
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
