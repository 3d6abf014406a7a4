"""The experiment trackers people already watch: `trainer.loggers=[tensorboard,mlflow]`.

One registry, name -> class. `runner.execute` opens the chosen loggers once the run folder exists
and hands them every epoch's rows and the final status; nothing else in dlexp knows about them.

- **tensorboard**: event files under `<run folder>/tensorboard/` (`tensorboard --logdir results/runs`).
  One scalar per split/metric, tagged as in metrics.csv (`val/acc`, `train/lr`, ...), with the
  epoch (1, 2, ...) as TensorBoard's step; the resolved config as text and as hparams; the status.
- **mlflow**: one MLflow run per dlexp run, named by the run id, in experiment
  `trainer.mlflow_experiment` at `trainer.mlflow_uri` (default: a SQLite store
  `<results_dir>/mlflow/mlflow.db`, artifacts beside it). Params are the flattened resolved config,
  metrics the epoch rows (step = epoch), tags the study columns (study, candidate, repeat, fold,
  trial) and the status; config.yaml is an artifact.

A resumed run continues the same TensorBoard folder (events past the checkpoint are purged) and the
same MLflow run. A logger never fails a run: its first error is one warning on stderr, after which
that logger is dropped for the rest of the run. MLflow talks to its server from a background thread
with bounded retries and timeouts, so a slow or dead server never slows training, and the end of a
run gives up on a call that has had no answer for FINISH_WAIT_S.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from dlexp.errors import ConfigError

# the end of a run waits for a logger's queued calls while none of them has been running for longer
# than this (an MLflow server that stopped answering); the training itself never waits for a logger.
# Longer than MLflow's bounded HTTP retries below (3 tries of 10 s) and than making a new SQLite
# store on a 2-core machine at load average 12 (31 s measured, with the import of mlflow 19 s more)
FINISH_WAIT_S = 60.0

# MLflow's own HTTP defaults retry 7 times with exponential backoff and wait 120 s a request: minutes
# for a server that is down. These bound it; a value the user set in the environment wins.
MLFLOW_HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

# the columns of a study (kfold, sweep) that become MLflow tags (TensorBoard has them among the hparams)
STUDY_COLUMNS = ("study", "candidate", "repeat", "fold", "trial")


def names(trainer_cfg) -> list[str]:
    """`trainer.loggers` as a list of names: a list, one name, or absent / null / [] for none."""
    value = trainer_cfg.get("loggers", None) if hasattr(trainer_cfg, "get") else None
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not hasattr(value, "__iter__") or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"trainer.loggers: expected a list of names such as [tensorboard,mlflow], got {value!r}")
    return list(dict.fromkeys(v.strip() for v in value))


def check(cfg) -> None:
    """Refuse unknown logger names and missing packages at composition, before any run folder exists."""
    trainer = cfg.trainer
    chosen = names(trainer)
    for name in chosen:
        if name not in LOGGERS:
            raise ConfigError(f"trainer.loggers: unknown logger {name!r}; choose from: {', '.join(LOGGERS)}")
        LOGGERS[name].check(cfg)
    uri = trainer.get("mlflow_uri", None)
    if uri is not None and (not isinstance(uri, str) or not uri.strip()):
        raise ConfigError(f"trainer.mlflow_uri: expected a tracking URI (http://host:5000, sqlite:///path.db) or null, got {uri!r}")
    experiment = trainer.get("mlflow_experiment", "dlexp")
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError(f"trainer.mlflow_experiment: expected an experiment name, got {experiment!r}")


def _require(name: str, modules: tuple[str, ...]) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"trainer.loggers: {name} needs the {missing[0]} package: pip install 'dlexp[{name}]'")


def _one_line(error: BaseException, limit: int = 240) -> str:
    """The error on one line, cut at `limit` characters; an OS error's reason ("[Errno 111] Connection
    refused") at the end of a long message (MLflow wraps it in its retries) is kept."""
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > limit:
        cause = re.search(r"\[Errno -?\d+\][^'\")\]]*", text)
        text = text[: limit - 3] + "..." + (f" ({cause.group(0).strip()})" if cause and cause.end() > limit - 3 else "")
    return f"{type(error).__name__}: {text}"


_warned: set[tuple[str, str]] = set()  # one warning per logger and message per process, not one per run of a grid


def _warn(name: str, error: BaseException, run_id: str) -> None:
    message = _mask(_one_line(error))
    if (name, message) in _warned:
        return
    _warned.add((name, message))
    print(f"warning: {name} logger failed for run {run_id}: {message}; the run goes on without it", file=sys.stderr, flush=True)


class TensorBoard:
    """Event files in `<run folder>/tensorboard/` through torch's SummaryWriter; step = epoch."""

    name = "tensorboard"

    @staticmethod
    def check(cfg) -> None:
        _require("tensorboard", ("tensorboard",))

    def __init__(self, cfg, run_id: str, run_dir: Path, columns: dict[str, Any], resumed: dict[str, Any] | None):
        from torch.utils.tensorboard import SummaryWriter

        from dlexp.config import flatten, to_yaml

        # purge_step: a run killed after logging epoch k but before its checkpoint redoes epoch k on
        # resume; TensorBoard hides the events at and after the first epoch that is run again
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=None if resumed is None else int(resumed["epoch"]) + 1)
        # a password in trainer.mlflow_uri is masked here as everywhere dlexp prints or records
        self.hparams = {k: _hparam(v) for k, v in {**flatten(cfg), **columns}.items()}
        self.hparams_written = False
        text = "\n".join("    " + line for line in _mask(to_yaml(cfg)).splitlines())  # indented: markdown code
        self.writer.add_text("config", f"run {run_id}\n\n{text}", global_step=0)

    def epoch(self, epoch: int, rows: list[dict[str, Any]]) -> None:
        if not self.hparams_written:
            # the HParams dashboard: the config as hyperparameters, every split/metric as a metric
            from torch.utils.tensorboard.summary import hparams

            experiment, start, _ = hparams(self.hparams, {f"{r['split']}/{r['metric']}": 0.0 for r in rows})
            for summary in (experiment, start):
                self.writer.file_writer.add_summary(summary)
            self.hparams_written = True
        for r in rows:
            self.writer.add_scalar(f"{r['split']}/{r['metric']}", r["value"], global_step=epoch)
        self.writer.flush()  # visible in a running TensorBoard after every epoch

    def finish(self, status: str, reason: str | None, epoch: int) -> None:
        self.writer.add_text("status", status + (f": {reason}" if reason else ""), global_step=epoch)
        self.writer.file_writer.add_summary(_session_end(status))
        self.writer.close()


def _hparam(value: Any) -> Any:
    """A config value as TensorBoard takes it: numbers stay numbers, the rest (bools, null) as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return _mask(str(value))


def _session_end(status: str):
    """The HParams plugin's end-of-session summary with dlexp's status (torch only writes SUCCESS)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    # the plugin knows SUCCESS, FAILURE, RUNNING and UNKNOWN: a diverged or pruned run finished (its
    # status is a result); an interrupted one did neither (the "status" text says which)
    code = {"ok": "STATUS_SUCCESS", "diverged": "STATUS_SUCCESS", "pruned": "STATUS_SUCCESS",
            "failed": "STATUS_FAILURE"}.get(status, "STATUS_UNKNOWN")
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(code), end_time_secs=time.time()),
                                version=PLUGIN_DATA_VERSION)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])


def default_mlflow_uri(results_dir: str | Path) -> str:
    """`sqlite:///<results_dir>/mlflow/mlflow.db`, absolute. MLflow 3 refuses its old file store
    (./mlruns) unless MLFLOW_ALLOW_FILE_STORE is set; SQLite is its own default now."""
    return "sqlite:///" + str(Path(results_dir).resolve() / "mlflow" / "mlflow.db")


def _tracking_uri(cfg) -> str | None:
    """`trainer.mlflow_uri`, else $MLFLOW_TRACKING_URI (MLflow's own variable), else None (the default)."""
    return cfg.trainer.get("mlflow_uri", None) or os.environ.get("MLFLOW_TRACKING_URI") or None


def _mask(text: str) -> str:
    from dlexp.sweep import mask

    return mask(text)


class MLflow:
    """One MLflow run per dlexp run; every call goes through a background thread (see `_Sender`)."""

    name = "mlflow"

    @staticmethod
    def check(cfg) -> None:
        uri = _tracking_uri(cfg) or "sqlite:"
        # a database store (the default SQLite, PostgreSQL, ...) needs SQLAlchemy and Alembic besides the client
        sql = uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql")
        _require("mlflow", ("mlflow", "sqlalchemy", "alembic") if sql else ("mlflow",))

    def __init__(self, cfg, run_id: str, run_dir: Path, columns: dict[str, Any], resumed: dict[str, Any] | None):
        from dlexp.config import flatten

        for key, value in MLFLOW_HTTP_BOUNDS.items():
            os.environ.setdefault(key, value)
        self.uri = _tracking_uri(cfg) or default_mlflow_uri(cfg.results_dir)
        self.experiment = str(cfg.trainer.get("mlflow_experiment", "dlexp"))
        # the default store keeps its artifacts beside it; another store decides for itself
        self.artifacts = None if _tracking_uri(cfg) else (Path(cfg.results_dir).resolve() / "mlflow" / "artifacts").as_uri()
        self.run_id, self.run_dir = run_id, run_dir
        # the epochs a resumed run already has: the killed process may not have sent them all (see _open)
        self.done = None if resumed is None else list(resumed["records"])
        self.params = {k: _mask(str(v)) for k, v in flatten(cfg).items()}
        self.tags = {"dlexp.run_id": run_id, **{k: str(columns[k]) for k in STUDY_COLUMNS if k in columns}}
        self.client = None
        self.mlflow_run = None
        import mlflow  # noqa: F401  (here, not on the sender's thread: its ~1 s import is part of the start)

        if self.uri.startswith("sqlite:"):
            # a local store: opening it is CPU work (SQLAlchemy, the schema check) that on the sender's
            # thread would take the GIL from the training loop; it waits for no network, so do it now
            self._open()
        self.sender = _Sender(f"mlflow logger of {run_id}", self._failed)
        if self.mlflow_run is None:
            self.sender.call(self._open)  # a server: its answer (or its retries) must not hold up the run

    def _failed(self, error: BaseException) -> None:
        _warn(self.name, error, self.run_id)

    def _open(self) -> None:
        self.client, experiment_id = _mlflow_client(self.uri, self.experiment, self.artifacts)
        from mlflow.entities import Param

        logged = 0  # the last epoch the MLflow run has
        found = [] if self.done is None else self.client.search_runs(
            [experiment_id], filter_string=f"tags.`dlexp.run_id` = '{self.run_id}'", max_results=1)
        if found:  # a resumed run continues its MLflow run
            self.mlflow_run = found[0].info.run_id
            self.client.update_run(self.mlflow_run, status="RUNNING")
            if self.done:
                key = f"{self.done[0]['split']}/{self.done[0]['metric']}"  # each epoch is one batch: one key tells
                logged = max((m.step for m in self.client.get_metric_history(self.mlflow_run, key)), default=0)
        else:
            self.mlflow_run = self.client.create_run(experiment_id, run_name=self.run_id, tags=self.tags).info.run_id
            params = [Param(k, v) for k, v in self.params.items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.mlflow_run, params=params[i : i + 100])
            self.client.log_artifact(self.mlflow_run, str(self.run_dir / "config.yaml"))
        # the epochs before the checkpoint that the killed process had not sent yet (its calls were queued)
        missing = _metrics([r for r in self.done or [] if r["epoch"] > logged])
        for i in range(0, len(missing), 1000):  # at most 1000 metrics per batch
            self.client.log_batch(self.mlflow_run, metrics=missing[i : i + 1000])

    def epoch(self, epoch: int, rows: list[dict[str, Any]]) -> None:
        metrics = _metrics(rows)
        self.sender.call(lambda: self.client.log_batch(self.mlflow_run, metrics=metrics))

    def finish(self, status: str, reason: str | None, epoch: int) -> None:
        state = {"failed": "FAILED", "interrupted": "KILLED"}.get(status, "FINISHED")

        def close() -> None:
            self.client.set_tag(self.mlflow_run, "status", status)
            if reason:
                self.client.set_tag(self.mlflow_run, "reason", _mask(reason)[:5000])
            self.client.set_terminated(self.mlflow_run, status=state)

        self.sender.call(close)
        self.sender.close(FINISH_WAIT_S)


def _metrics(rows: list[dict[str, Any]]) -> list:
    """Epoch rows as MLflow metrics: key `split/metric`, step = epoch. MLflow keeps NaN as NaN and
    stores +-inf as +-1.8e308 (the largest double): a diverged epoch stays visible."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    return [Metric(f"{r['split']}/{r['metric']}", float(r["value"]), stamp, int(r["epoch"])) for r in rows]


_clients: dict[tuple[str, str], tuple[Any, str]] = {}  # (uri, experiment) -> (client, experiment id), per process
_clients_lock = threading.Lock()


def _mlflow_client(uri: str, experiment: str, artifacts: str | None):
    """A client and the experiment's id, made once per process (a SQLite store checks its schema on
    every new client: about a second). Local stores are created under a file lock, so that the
    worker processes of `--jobs` do not race to create the database and the experiment."""
    with _clients_lock:
        if (uri, experiment) in _clients:
            return _clients[(uri, experiment)]
        import logging

        from mlflow import MlflowClient

        # MLflow's SQL store uses an option SQLAlchemy 2.1 deprecates: not the user's concern
        warnings.filterwarnings("ignore", message=".*``noload`` loader strategy is deprecated", category=DeprecationWarning)
        if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables..."
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(db.parent / ".dlexp-mlflow.lock"):
                client = MlflowClient(tracking_uri=uri)
                experiment_id = _experiment(client, experiment, artifacts)
        else:
            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment(client, experiment, artifacts)
        _clients[(uri, experiment)] = (client, experiment_id)
        return client, experiment_id


def _experiment(client, name: str, artifacts: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:
        found = client.get_experiment_by_name(name)  # another process created it first
        if found is None:
            raise
        return found.experiment_id


class _file_lock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.f = open(self.path, "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()  # releases the lock


class _Sender:
    """Calls run in order on one daemon thread. The first call that raises is reported through
    `on_error` and every later call is dropped. `close(stall)` waits for the queue to empty as long
    as no single call has been running for more than `stall` seconds (a server that stopped
    answering); then it reports a TimeoutError and leaves the thread behind (it dies with the process)."""

    def __init__(self, name: str, on_error: Callable[[BaseException], None]):
        self.calls: queue.Queue = queue.Queue()
        self.on_error = on_error
        self.failed = False
        self.busy_since: float | None = None  # when the call now running started
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], None]) -> None:
        if not self.failed:
            self.calls.put(fn)

    def _work(self) -> None:
        while True:
            fn = self.calls.get()
            if fn is None:
                return
            if self.failed:
                continue
            self.busy_since = time.monotonic()
            try:
                fn()
            except Exception as e:
                self._fail(e)
            self.busy_since = None

    def _fail(self, error: BaseException) -> None:
        with self.lock:  # reported once, whether the call raised or close() stopped waiting for it
            if self.failed:
                return
            self.failed = True
        self.on_error(error)

    def close(self, stall: float) -> None:
        self.calls.put(None)
        while self.thread.is_alive():
            self.thread.join(0.1)
            busy = self.busy_since
            if busy is not None and time.monotonic() - busy > stall and self.thread.is_alive():
                self._fail(TimeoutError(f"a call has had no answer for {stall:.0f} s; what was not sent is lost"))
                return


LOGGERS: dict[str, type] = {"tensorboard": TensorBoard, "mlflow": MLflow}


class Loggers:
    """The loggers chosen by `trainer.loggers` for one run, each behind a guard: its first error is
    one warning and the logger is dropped; nothing a logger does raises into the run."""

    def __init__(self, cfg, columns: dict[str, Any] | None = None):
        self.cfg, self.columns = cfg, dict(columns or {})
        self.chosen = names(cfg.trainer)
        self.active: list[Any] = []
        self.run_id = ""
        self.last_epoch = 0

    def start(self, run_id: str, run_dir: Path, resumed: dict[str, Any] | None = None) -> None:
        """`resumed`: the checkpoint a resumed run continues from (its `epoch` and `records`)."""
        self.run_id, self.last_epoch = run_id, 0 if resumed is None else int(resumed["epoch"])
        for name in self.chosen:
            try:
                self.active.append(LOGGERS[name](self.cfg, run_id, Path(run_dir), self.columns, resumed))
            except Exception as e:
                _warn(name, e, run_id)

    def epoch(self, epoch: int, records: list[dict[str, Any]]) -> None:
        """Hand `epoch`'s rows (the tail of `records`) to every logger."""
        if not self.active:
            return
        rows = []
        for r in reversed(records):
            if r["epoch"] != epoch:
                break
            rows.append(r)
        rows.reverse()
        self.last_epoch = epoch
        self._each(lambda logger: logger.epoch(epoch, rows))

    def finish(self, status: str, reason: str | None) -> None:
        self._each(lambda logger: logger.finish(status, reason, self.last_epoch))
        self.active = []

    def _each(self, fn: Callable[[Any], None]) -> None:
        for logger in list(self.active):
            try:
                fn(logger)
            except Exception as e:
                _warn(logger.name, e, self.run_id)
                self.active.remove(logger)
