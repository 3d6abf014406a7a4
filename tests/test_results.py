"""Results on disk (dlexp/results.py, dlexp/runner.py): tidy tables in, tidy tables out; unique run
folders across processes; atomic writes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_dirs
from dlexp import results
from dlexp.data import load_splits
from dlexp.runner import execute

METRIC_COLUMNS = ["run_id", "epoch", "step", "split", "metric", "value", "time_s"]


@pytest.fixture
def two_runs(make_cfg, results_dir):
    """Two finished runs (sgd and adam, 2 epochs each) -> [(run_id, summary), ...]."""
    out = []
    for opt in ("sgd", "adam"):
        cfg = make_cfg(f"optimizer={opt}", "trainer.epochs=2", "model.hidden=[32,16]")
        out.append(execute(cfg, load_splits(cfg.dataset)))
    return out


def test_load_runs_gives_one_row_per_run_with_flat_config_and_summary_columns(two_runs, results_dir):
    runs = results.load_runs(results_dir).set_index("run_id")
    assert sorted(runs.index) == sorted(run_id for run_id, _ in two_runs)
    assert runs.loc[two_runs[0][0], "optimizer.name"] == "sgd"
    assert runs.loc[two_runs[1][0], "optimizer.name"] == "adam"
    assert runs.loc[two_runs[0][0], "optimizer.lr"] == 0.1 and runs.loc[two_runs[1][0], "optimizer.lr"] == 0.001
    assert set(runs["trainer.epochs"]) == {2} and set(runs["model.hidden"]) == {"[32, 16]"}
    assert set(runs["status"]) == {"ok"}
    for run_id, summary in two_runs:
        for split in ("train", "val", "test"):
            assert runs.loc[run_id, f"final.{split}/acc"] == summary["final"][f"{split}/acc"]
            assert f"best.{split}/loss" in runs.columns


def test_summary_final_and_best_agree_with_the_metrics_table(two_runs, results_dir):
    metrics = results.load_metrics(results_dir)
    runs = results.load_runs(results_dir).set_index("run_id")
    for run_id, _ in two_runs:
        acc = metrics[(metrics.run_id == run_id) & (metrics.split == "val") & (metrics.metric == "acc")].sort_values("epoch")
        assert list(acc.epoch) == [1, 2]
        assert runs.loc[run_id, "final.val/acc"] == acc.value.iloc[-1]
        assert runs.loc[run_id, "best.val/acc"] == acc.value.max()
        loss = metrics[(metrics.run_id == run_id) & (metrics.split == "val") & (metrics.metric == "loss")]
        assert runs.loc[run_id, "best.val/loss"] == loss.value.min()


def test_load_metrics_concatenates_the_tidy_tables_of_every_run(two_runs, results_dir):
    metrics = results.load_metrics(results_dir)
    assert list(metrics.columns) == [*METRIC_COLUMNS, "examples"]  # examples seen, on every row (dlexp/train.py)
    per_run = [pd.read_csv(results_dir / "runs" / run_id / "metrics.csv") for run_id, _ in two_runs]
    assert len(metrics) == sum(len(m) for m in per_run)
    assert set(metrics.run_id) == {run_id for run_id, _ in two_runs}
    assert set(metrics.split) == {"train", "val", "test"}
    assert {"loss", "acc", "lr", "epoch_s"} <= set(metrics.metric)


def test_metric_values_survive_the_csv_round_trip_exactly(make_cfg, results_dir):
    from dlexp.train import train

    cfg = make_cfg()
    splits = load_splits(cfg.dataset)
    run_id, _ = execute(cfg, splits)
    in_memory = train(cfg, splits).records  # the same seed: the same values (see test_train.py)
    on_disk = results.load_metrics(results_dir)
    assert len(on_disk) == len(in_memory)
    for r, (_, row) in zip(in_memory, on_disk.iterrows()):
        assert (row.epoch, row.split, row.metric) == (r["epoch"], r["split"], r["metric"])
        if r["metric"] != "epoch_s":
            assert row.value == r["value"]  # repr() of a float reads back as the same float


def test_empty_results_folder_gives_empty_tables(tmp_path):
    assert results.load_runs(tmp_path / "nothing").empty
    metrics = results.load_metrics(tmp_path / "nothing")
    assert metrics.empty and list(metrics.columns) == METRIC_COLUMNS


def test_a_run_without_summary_is_skipped_with_a_warning(two_runs, results_dir, capsys):
    unfinished = results_dir / "runs" / two_runs[0][0]
    (unfinished / "summary.json").unlink()
    runs = results.load_runs(results_dir)
    assert list(runs.run_id) == [two_runs[1][0]]
    assert "skipping run " + unfinished.name in capsys.readouterr().err


def test_run_id_carries_the_run_name(results_dir):
    run_id, path = results.new_run_dir(results_dir, "baseline")
    assert "baseline" in run_id and path == results_dir / "runs" / run_id and path.is_dir()


def _make_dirs(results_dir: str, n: int, queue) -> None:
    """In a forked child: the same frozen timestamp and the same token sequence as every sibling, so
    every sibling tries the same ids in the same order and only os.mkdir can keep them apart."""
    import datetime
    import secrets

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2024, 1, 2, 3, 4, 5)

    tokens = iter(f"{i:06x}" for i in range(1000))
    results._dt.datetime = Frozen
    secrets.token_hex = lambda nbytes=None: next(tokens)
    queue.put([results.new_run_dir(results_dir)[0] for _ in range(n)])


def test_run_dirs_are_distinct_across_processes_with_the_same_timestamp(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_make_dirs, args=(str(tmp_path), 5, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    ids = [run_id for _ in procs for run_id in queue.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len(ids) == 20 and len(set(ids)) == 20
    assert all(run_id.startswith("20240102-030405") for run_id in ids)
    assert sorted(p.name for p in run_dirs(tmp_path)) == sorted(ids)


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "summary.json"
    results.write_json(path, {"status": "ok"})
    with pytest.raises(TypeError):
        results.atomic_write(path, 12345)  # neither str nor bytes: the write fails half-way
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left behind


def test_bad_input_leaves_no_run_folder(make_cfg, results_dir):
    from dlexp.errors import ConfigError

    cfg = make_cfg("model=lenet")  # composes, but digits are 8x8, not 1x28x28
    with pytest.raises(ConfigError, match="lenet"):
        execute(cfg, load_splits(cfg.dataset))
    assert run_dirs(results_dir) == []


def test_meta_records_seed_versions_and_device(two_runs, results_dir):
    import torch

    meta = json.loads((results_dir / "runs" / two_runs[0][0] / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["device"] == "cpu" and meta["torch_version"] == torch.__version__


def test_a_run_without_a_summary_is_named_as_running_or_killed_with_how_to_resume(tmp_path, capsys):
    from dlexp.results import load_runs

    run = tmp_path / "runs" / "20260101-000000-abcdef"
    run.mkdir(parents=True)
    (run / "meta.json").write_text("{}")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoint.pt").write_bytes(b"")
    assert load_runs(tmp_path).empty
    err = capsys.readouterr().err
    assert "still running, or killed" in err and "dlexp run --resume 20260101-000000-abcdef" in err
    assert len(err.strip().splitlines()) == 1
