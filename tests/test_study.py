"""The study engine (`dlexp.study`): grids and K-fold studies that continue where they stopped, claims,
the --jobs worker pool and its event stream, workers that die with their parent, `dlexp status`.

Faults are real: SIGKILL and SIGINT go to real `python -m dlexp` processes. The settings are the
smallest that still leave time for a signal to land mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import SMALL, run_dirs, wait_for

# ~30 epochs of ~70 ms on digits: a signal sent after the first checkpoint lands mid-run
LONG = ["trainer.epochs=30", "trainer.batch_size=16", "model.hidden=[32]", "trainer.device=cpu", "--quiet"]




def meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


# ---- composition -------------------------------------------------------------------------------


GRID_POINTS = [
    ["seed=3"],
    ["optimizer=adam", "optimizer.lr=0.01", "seed=1"],
    ["model=mlp", "model.hidden=[16,8]", "model.dropout=[0.1,0.2]", "trainer.epochs=2"],
    ["experiment=d2l_mlp", "trainer.epochs=1", "dataset=digits"],
    ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true", "name=abc"],
    ["schedule=cosine", "trainer.batch_size=32", "trainer.checkpoint_every=5s"],
    ["+model.extra=1"],  # refused: the full path's message
    ["trainer.epochs=abc"],  # refused
    ["optimizer.lr=-1"],  # refused
    ["trainer.epochs=${seed}", "seed=2"],  # an interpolation: the full path
]


@pytest.mark.parametrize("overrides", GRID_POINTS, ids=[" ".join(p) for p in GRID_POINTS])
def test_the_grid_composer_gives_what_compose_gives(overrides, results_dir):
    from dlexp.config import GridComposer, compose, to_yaml
    from dlexp.errors import ConfigError

    overrides = [*overrides, f"results_dir={results_dir}"]
    composer = GridComposer()
    try:
        want = to_yaml(compose(overrides))
    except ConfigError as e:
        with pytest.raises(ConfigError) as got:
            composer(overrides)
        assert str(got.value) == str(e)
        return
    composer(["seed=99", f"results_dir={results_dir}"])  # the cache holds other choices too
    assert to_yaml(composer(overrides)) == want
    assert to_yaml(composer(overrides)) == want  # from the cache


def test_a_huge_grid_is_refused_in_one_line_before_anything_runs(cli, results_dir):
    t0 = time.perf_counter()
    res = cli("run", "-m", "seed=range(0,100000)", *SMALL, f"results_dir={results_dir}")
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "100000" in lines[0] and "--max-points" in lines[0]
    assert not results_dir.exists() or run_dirs(results_dir) == []
    print(f"refused in {time.perf_counter() - t0:.2f} s")


# ---- grids continue ----------------------------------------------------------------------------


def test_a_rerun_skips_what_is_done_and_fresh_runs_everything_again(cli, results_dir):
    args = ["run", "-m", "seed=0,1", *SMALL, f"results_dir={results_dir}"]
    assert cli(*args, "-q").exit_code == 0
    first = {d.name for d in run_dirs(results_dir)}
    assert len(first) == 2
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert "2 points: 2 done, 0 to resume, 0 to run" in again.stderr
    assert {d.name for d in run_dirs(results_dir)} == first
    more = cli("run", "-m", "seed=0,1,2", *SMALL, f"results_dir={results_dir}")  # a grown grid: only the new point
    assert more.exit_code == 0 and "3 points: 2 done, 0 to resume, 1 to run" in more.stderr
    assert len(run_dirs(results_dir)) == 3
    fresh = cli(*args, "--fresh", "-q")
    assert fresh.exit_code == 0, fresh.output
    assert len(run_dirs(results_dir)) == 5


def test_a_config_changed_between_two_commands_makes_new_points(cli, results_dir, tmp_path):
    from conftest import CONF

    conf = tmp_path / "myconf" / "optimizer"
    conf.mkdir(parents=True)
    sgd = (CONF / "optimizer" / "sgd.yaml").read_text()
    assert "\nlr: 0.1\n" in sgd
    (conf / "mine.yaml").write_text(sgd.replace("\nlr: 0.1\n", "\nlr: 0.05\n"))
    args = ["run", "-m", "seed=0,1", "optimizer=mine", *SMALL, f"results_dir={results_dir}", "--config-dir", str(tmp_path / "myconf")]
    first = cli(*args, "-q")
    assert first.exit_code == 0, first.output
    (conf / "mine.yaml").write_text((conf / "mine.yaml").read_text().replace("lr: 0.05", "lr: 0.07"))
    res = cli(*args)
    assert res.exit_code == 0 and "2 points: 0 done, 0 to resume, 2 to run" in res.stderr, res.output
    assert sorted(json.loads((d / "summary.json").read_text())["final"]["train/lr"] for d in run_dirs(results_dir)) == [0.05, 0.05, 0.07, 0.07]


def test_a_killed_grid_rerun_resumes_the_killed_point_and_runs_nothing_twice(start, cli_subprocess, results_dir):
    # checkpoint_every=2: the killed run resumes from an even epoch and trains the rows after it again
    args = ["run", "-m", "seed=0,1,2", "trainer.checkpoint_every=2", *LONG, f"results_dir={results_dir}"]
    p = start(*args)
    second = lambda: [d for d in run_dirs(results_dir) if (d / "checkpoint.pt").is_file() and meta(d)["seed"] == 1]
    wait_for(lambda: bool(second()), p)
    time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    (killed,) = second()
    assert not (killed / "summary.json").exists(), "the point finished before the kill; it proves nothing"
    done_before = {d.name: (d / "metrics.csv").read_bytes() for d in run_dirs(results_dir) if (d / "summary.json").exists()}
    assert len(done_before) == 1  # seed 0
    at = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]

    res = cli_subprocess(*[a for a in args if a != "--quiet"])  # the same command, not quiet: the plan line
    assert res.exit_code == 0, res.output
    assert "3 points: 1 done, 1 to resume, 1 to run" in res.stderr
    dirs = run_dirs(results_dir)
    assert len(dirs) == 3 and sorted(meta(d)["seed"] for d in dirs) == [0, 1, 2]  # nothing run twice
    assert all(summary(d)["status"] == "ok" for d in dirs)
    for name, metrics in done_before.items():
        assert (results_dir / "runs" / name / "metrics.csv").read_bytes() == metrics  # the done point untouched
    resumed = meta(killed)["resumed"]
    assert len(resumed) == 1 and resumed[0]["from_epoch"] == at and at % 2 == 0
    m = pd.read_csv(killed / "metrics.csv")
    assert sorted(m["epoch"].unique()) == list(range(1, 31))
    assert not m.duplicated(["epoch", "split", "metric"]).any()  # the rows after the checkpoint were replaced, not doubled


def test_an_interrupted_kfold_study_continues_where_it_stopped(start, cli_subprocess, results_dir):
    args = ["kfold", "--folds", "3", *LONG, f"results_dir={results_dir}", "--study", "k"]
    p = start(*args)
    wait_for(lambda: sum((d / "checkpoint.pt").is_file() for d in run_dirs(results_dir)) >= 2 and len(run_dirs(results_dir)) >= 2, p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    before = run_dirs(results_dir)
    assert 2 <= len(before) < 3 or any(not (d / "summary.json").exists() or summary(d)["status"] == "interrupted" for d in before)
    res = cli_subprocess(*args)
    assert res.exit_code == 0, res.output
    dirs = run_dirs(results_dir)
    assert len(dirs) == 3 and all(summary(d)["status"] == "ok" for d in dirs)
    assert sorted(summary(d)["fold"] for d in dirs) == [0, 1, 2]
    folds = pd.read_csv(results_dir / "kfold" / "k" / "folds.csv")
    assert sorted(folds["fold"]) == [0, 1, 2] and set(folds["status"]) == {"ok"}
    assert json.loads((results_dir / "kfold" / "k" / "study.json").read_text())["complete"] is True


# ---- the pool ----------------------------------------------------------------------------------


def test_pool_workers_send_epoch_events_to_the_parent_and_run_each_point_once(make_cfg):
    from dlexp import study

    cfgs = [make_cfg(f"seed={i}", "trainer.epochs=3", "trainer.threads=1") for i in range(3)]
    points = [study.Point(index=i, overrides=[f"seed={i}"], cfg=c, key=study.identity(c)) for i, c in enumerate(cfgs)]
    study.plan(points, cfgs[0].results_dir)
    events: list[dict] = []
    study.Pool(2, parent_trains=False).run(study.pending(points), study.DataCache(), events.append)
    finished = [e for e in events if e["kind"] == "finish"]
    assert sorted(e["index"] for e in finished) == [0, 1, 2]
    assert all(e["outcome"].summary["status"] == "ok" and e["outcome"].pid != os.getpid() for e in finished)
    for i in range(3):
        epochs = [e["epoch"] for e in events if e["kind"] == "epoch" and e["index"] == i]
        assert epochs == [1, 2, 3]  # every epoch of every point, in order, from a worker
        assert {e["pid"] for e in events if e.get("index") == i and "pid" in e} - {os.getpid()}
    starts = {e["index"]: e["run_id"] for e in events if e["kind"] == "start"}
    assert {starts[e["index"]] for e in finished} == {e["outcome"].run_id for e in finished}
    assert len(run_dirs(Path(cfgs[0].results_dir))) == 3


def test_workers_die_with_their_parent_and_leave_their_runs_resumable(start, results_dir):
    p = start("run", "-m", "seed=0,1,2,3,4,5", "--jobs", "3", *LONG, f"results_dir={results_dir}")

    def worker_runs():
        return [d for d in run_dirs(results_dir) if (d / "meta.json").is_file() and meta(d)["pid"] != p.pid
                and (d / "checkpoint.pt").is_file()]

    wait_for(lambda: len(worker_runs()) >= 2, p, timeout=180)
    pids = {meta(d)["pid"] for d in worker_runs()}
    p.send_signal(signal.SIGKILL)
    p.communicate()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids), "a worker outlived its parent"
    for d in worker_runs():
        if (d / "summary.json").exists():  # SIGTERM from the kernel (parent-death signal): marked interrupted
            assert summary(d)["status"] in ("interrupted", "ok")


# ---- dlexp status --------------------------------------------------------------------------------


def test_status_groups_runs_by_study_and_says_how_to_continue(cli, start, results_dir, monkeypatch):
    monkeypatch.setenv("DLEXP_HEARTBEAT_S", "0.2")  # here and in the killed command: stale after 1.2 s
    assert cli("run", "-m", "seed=0,1", *SMALL, f"results_dir={results_dir}", "-q").exit_code == 0
    assert cli("kfold", "--folds", "2", *SMALL, f"results_dir={results_dir}", "--study", "kf", "-q").exit_code == 0
    assert cli("sweep", "sweep=lr_wd", "--trials", "2", *SMALL, f"results_dir={results_dir}", "--study", "sw", "-q").exit_code == 0
    # a grid whose process was killed: one point killed mid-run, one never started
    p = start("run", "-m", "seed=7,8", *LONG, f"results_dir={results_dir}", extra_env={"DLEXP_HEARTBEAT_S": "0.2"})
    wait_for(lambda: any((d / "checkpoint.pt").is_file() and meta(d)["seed"] == 7 for d in run_dirs(results_dir)), p)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    time.sleep(1.5)  # older than 6 heartbeats of 0.2 s: killed, not running
    res = cli("status", str(results_dir))
    assert res.exit_code == 0, res.output
    text = res.stdout
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in text.splitlines()
            if line.startswith("│") and len(line.split("│")) > 9}
    grids = [r for k, r in rows.items() if k.startswith("grid ")]
    assert ["2", "", "", "", "", "", "", ""] in grids  # the finished grid: 2 ok, nothing left
    assert ["", "", "", "", "", "", "1", "2"] in grids  # the killed grid: 1 killed, 2 points left
    assert rows["kfold kf"][0] == "2"
    assert rows["sweep sw"][0] != "" or rows["sweep sw"][2] != ""  # ok or pruned trials
    assert "continue grid" in text and "seed=7,8" in text  # the command that continues the killed grid
    assert "sw" in text.split("sweep studies")[-1]  # the list of sweep studies


def test_splits_built_inside_the_pool_equal_the_copied_ones(make_cfg):
    # load_splits gathers the training rows inside the pool's own memory (no second copy of the pool)
    import numpy as np

    from dlexp.data import holdout_indices, load_source, make_splits

    cfg = make_cfg().dataset
    train_idx, val_idx = holdout_indices(load_source(cfg), 0.1, 0)
    copied = make_splits(load_source(cfg), train_idx, val_idx)
    source = load_source(cfg)
    pool = source.x
    moved = make_splits(source, train_idx, val_idx, consume=True)
    assert moved.train[0].data_ptr() == pool.data_ptr()  # the same memory, not a copy
    for a, b in zip((*copied.train, *copied.val, *copied.test), (*moved.train, *moved.val, *moved.test)):
        assert torch.equal(a, b)
    assert source.x is None  # consumed: nobody can use the moved rows by mistake
    assert len(np.intersect1d(train_idx, val_idx)) == 0
