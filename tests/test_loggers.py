"""`trainer.loggers=[tensorboard,mlflow]`: what each tool's OWN reader finds (TensorBoard's
EventAccumulator, `mlflow.MlflowClient`) against metrics.csv, a killed and resumed run, an MLflow server
that is down, and a logger whose package is not installed.

The extras are optional: without them these tests skip, saying what to install; under CI (`$CI` set,
as .ci/run does) a missing extra is a failure, since .ci/run installs them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, SMALL, run_dirs

# the test's own MlflowClient: MLflow's SQL store uses an option that SQLAlchemy 2.1 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:.*``noload`` loader strategy is deprecated:DeprecationWarning")

EXTRAS = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}


def need(extra: str) -> None:
    """Skip (or, under CI, fail) when the packages of `pip install 'dlexp[extra]'` are missing."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        message = f"{missing[0]} is not installed: pip install 'dlexp[{extra}]'"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must run these tests: .ci/run installs the extra)")
        pytest.skip(message)


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """TensorBoard's view of a run: tag -> {step: value}, read by its own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        assert len({e.step for e in events}) == len(events), f"{tag}: a step is there twice"
        out[tag] = {e.step: e.value for e in events}
    return out


def csv_metrics(run: Path) -> dict[str, dict[int, float]]:
    """metrics.csv as tag -> {epoch: value}."""
    df = pd.read_csv(run / "metrics.csv")
    out: dict[str, dict[int, float]] = {}
    for r in df.itertuples():
        out.setdefault(f"{r.split}/{r.metric}", {})[int(r.epoch)] = float(r.value)
    return out


def same(a: float, b: float) -> bool:
    # TensorBoard keeps scalars as float32 (metrics.csv has the float64): equal to float32's precision
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-30)


def test_tensorboard_event_files_hold_every_metric_of_metrics_csv_per_epoch(cli, results_dir):
    need("tensorboard")
    r = cli("run", "trainer.epochs=3", "trainer.batch_size=256", "trainer.device=cpu", f"results_dir={results_dir}",
            "trainer.loggers=[tensorboard]", "optimizer=adam", "--quiet")
    assert r.exit_code == 0, r.output
    run = run_dirs(results_dir)[0]
    got, want = scalars(run), csv_metrics(run)
    assert set(got) == set(want)
    assert {"train/loss", "val/acc", "test/acc", "train/lr"} <= set(got)
    for tag, by_epoch in want.items():
        assert sorted(got[tag]) == sorted(by_epoch) == [1, 2, 3], tag  # TensorBoard's step = the epoch
        assert all(same(got[tag][e], v) for e, v in by_epoch.items()), tag

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    text = {tag: acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert "optimizer:" in text["config/text_summary"] and "name: adam" in text["config/text_summary"]
    assert text["status/text_summary"] == "ok"
    # the HParams dashboard: the resolved config as hyperparameters, every metric of the run named
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.name"].string_value == "adam"
    assert start.hparams["trainer.epochs"].number_value == 3
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == set(want)
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == 1  # STATUS_SUCCESS


def mlflow_runs(results_dir: Path, experiment: str = "dlexp") -> list:
    from mlflow import MlflowClient

    client = MlflowClient("sqlite:///" + str(results_dir.resolve() / "mlflow" / "mlflow.db"))
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def mlflow_metrics(client, run_id: str, keys) -> dict[str, dict[int, float]]:
    """tag -> {step: the last value logged at that step}, as MLflow returns its history."""
    out = {}
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
        out[key] = {m.step: m.value for m in history}
    return out


def test_mlflow_holds_the_config_metrics_tags_and_status_of_every_kfold_run(cli, results_dir):
    need("mlflow")
    from mlflow import MlflowClient

    r = cli("kfold", "--folds", "2", "--study", "mlf", "trainer.epochs=2", "trainer.batch_size=256", "trainer.device=cpu",
            f"results_dir={results_dir}", "trainer.loggers=[mlflow]", "-q")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr
    client = MlflowClient("sqlite:///" + str(results_dir.resolve() / "mlflow" / "mlflow.db"))
    runs = {m.info.run_name: m for m in mlflow_runs(results_dir)}
    folders = run_dirs(results_dir)
    assert set(runs) == {d.name for d in folders} and len(folders) == 2
    from omegaconf import OmegaConf

    from dlexp.config import flatten

    for d in folders:
        m = runs[d.name]
        df = pd.read_csv(d / "metrics.csv")
        assert m.info.status == "FINISHED"
        assert m.data.tags["status"] == json.loads((d / "summary.json").read_text())["status"] == "ok"
        for column in ("study", "candidate", "repeat", "fold"):
            assert m.data.tags[column] == str(df[column].iloc[0]), column
        assert m.data.tags["dlexp.run_id"] == d.name
        assert m.data.params == {k: str(v) for k, v in flatten(OmegaConf.load(d / "config.yaml")).items()}
        want = csv_metrics(d)
        got = mlflow_metrics(client, m.info.run_id, want)
        assert got == want  # float64 both sides: equal values, epoch = MLflow's step
        artifact = client.download_artifacts(m.info.run_id, "config.yaml", str(d.parent.parent / f"dl-{d.name}"))
        assert Path(artifact).read_text() == (d / "config.yaml").read_text()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_mlflow_server_warns_once_and_every_run_ends_ok(cli_subprocess, results_dir):
    need("mlflow")
    uri = f"http://user:s3cretpw@127.0.0.1:{closed_port()}"
    r = cli_subprocess("run", "-m", "seed=0,1", *SMALL, "trainer.epochs=2", f"results_dir={results_dir}",
                       "trainer.loggers=[mlflow]", f"trainer.mlflow_uri={uri}", "--quiet")
    assert r.exit_code == 0, r.output
    statuses = [json.loads((d / "summary.json").read_text())["status"] for d in run_dirs(results_dir)]
    assert statuses == ["ok", "ok"]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: mlflow")]
    assert len(warnings) == 1, r.stderr  # once for the whole grid, not once per run or per epoch
    assert "the run goes on without it" in warnings[0] and "s3cretpw" not in r.output


def mlflow_steps(results_dir: Path) -> int:
    """The last epoch in the MLflow store, read with sqlite3 in read-only mode (an MlflowClient here
    would race the run's own process to create the database's tables)."""
    import sqlite3

    db = results_dir / "mlflow" / "mlflow.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("SELECT COALESCE(MAX(step), 0) FROM metrics").fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet


def poll(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the run to log its first epochs")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_and_resumed_run_continues_its_tensorboard_folder_and_mlflow_run(cli_subprocess, results_dir):
    need("tensorboard")
    need("mlflow")
    # ~0.1 s an epoch: MLflow (imported and started in a background thread) logs the first epochs long before the end
    args = ["trainer.epochs=60", "trainer.batch_size=8", "model.hidden=[32]", "trainer.device=cpu",
            f"results_dir={results_dir}", "trainer.loggers=[tensorboard,mlflow]", "--quiet"]
    victim = cli_subprocess("run", *args, start=True)
    try:
        def logged_two_epochs() -> bool:
            runs = run_dirs(results_dir)
            return len(runs) == 1 and (runs[0] / "checkpoint.pt").exists() and mlflow_steps(results_dir) >= 2

        poll(logged_two_epochs, victim)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.communicate()
    run = run_dirs(results_dir)[0]
    assert not (run / "summary.json").exists(), "the run finished before the kill; it proves nothing"
    assert mlflow_runs(results_dir)[0].info.status == "RUNNING"

    resumed = cli_subprocess("run", "--resume", run.name, f"results_dir={results_dir}", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert "warning" not in resumed.stderr
    want = csv_metrics(run)
    assert sorted(want["val/acc"]) == list(range(1, 61))

    got = scalars(run)  # one folder, two event files; events past the checkpoint are purged
    assert len(list((run / "tensorboard").iterdir())) == 2
    for tag, by_epoch in want.items():
        if tag != "train/epoch_s":  # the killed epoch's time is measured again
            assert sorted(got[tag]) == sorted(by_epoch) and all(same(got[tag][e], v) for e, v in by_epoch.items()), tag

    from mlflow import MlflowClient

    runs = mlflow_runs(results_dir)
    assert len(runs) == 1 and runs[0].info.run_name == run.name  # the same MLflow run, continued
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["status"] == "ok"
    client = MlflowClient("sqlite:///" + str(results_dir.resolve() / "mlflow" / "mlflow.db"))
    history = mlflow_metrics(client, runs[0].info.run_id, ["val/acc", "train/loss"])
    for tag in history:
        assert history[tag] == want[tag], tag


@pytest.mark.slow
def test_ctrl_c_ends_the_tensorboard_and_mlflow_records_as_interrupted(cli_subprocess, results_dir):
    need("tensorboard")
    need("mlflow")
    run = cli_subprocess("run", "trainer.epochs=200", "trainer.batch_size=16", "model.hidden=[32]", "trainer.device=cpu",
                         f"results_dir={results_dir}", "trainer.loggers=[tensorboard,mlflow]", "--quiet", start=True)
    try:
        poll(lambda: len(run_dirs(results_dir)) == 1 and mlflow_steps(results_dir) >= 1, run)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=240)
    finally:
        run.kill()
    assert run.returncode == 130, err
    assert "warning" not in err
    folder = run_dirs(results_dir)[0]
    assert json.loads((folder / "summary.json").read_text())["status"] == "interrupted"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    assert acc.Tensors("status/text_summary")[-1].tensor_proto.string_val[0].decode().startswith("interrupted")
    end = plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_end_info"])
    assert end.session_end_info.status == 0  # STATUS_UNKNOWN: neither a success nor a failure
    (m,) = mlflow_runs(results_dir)
    assert m.info.status == "KILLED" and m.data.tags["status"] == "interrupted"


def python_without(tmp_path: Path, prefixes: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """A real environment in which the distributions named by `prefixes` are not installed: this
    venv's site-packages, every entry linked into a folder except theirs, used with `python -S`."""
    site = Path(sysconfig.get_paths()["purelib"])
    farm = tmp_path / "site-packages"
    farm.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().replace("-", "_").startswith(prefixes):
            (farm / entry.name).symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(farm)]), "DLEXP_OFFLINE": "1"}
    return [sys.executable, "-S", "-m", "dlexp"], env


@pytest.mark.parametrize("logger, hidden", [("tensorboard", ("tensorboard",)), ("mlflow", ("mlflow",)),
                                            ("mlflow", ("sqlalchemy", "alembic"))])
def test_a_missing_logger_package_is_one_line_exit_2_before_any_run_folder(tmp_path, results_dir, logger, hidden):
    cmd, env = python_without(tmp_path, hidden)
    p = subprocess.run([*cmd, "run", *SMALL, f"results_dir={results_dir}", f"trainer.loggers=[{logger}]"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer.loggers:"), p.stderr
    assert f"pip install 'dlexp[{logger}]'" in lines[0] and hidden[0] in lines[0]
    assert not results_dir.exists() or run_dirs(results_dir) == []


@pytest.mark.parametrize("value", ["[wandb]", "[tensorboard,nope]", "{a:1}"])
def test_an_unknown_logger_is_one_line_exit_2(cli, results_dir, value):
    r = cli("run", *SMALL, f"results_dir={results_dir}", f"trainer.loggers={value}")
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "trainer.loggers" in r.stderr
    assert run_dirs(results_dir) == []


def test_a_single_logger_name_without_brackets_is_a_list_of_one():
    from omegaconf import OmegaConf

    from dlexp.loggers import names

    assert names(OmegaConf.create({"loggers": "tensorboard"})) == ["tensorboard"]
    assert names(OmegaConf.create({"loggers": ["mlflow", "tensorboard", "mlflow"]})) == ["mlflow", "tensorboard"]
    assert names(OmegaConf.create({"loggers": None})) == names(OmegaConf.create({})) == []
