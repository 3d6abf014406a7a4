"""Faults injected for real: SIGKILL and --resume, Ctrl-C (SIGINT) to a run and to a grid, two grids
writing one results folder at once, an unwritable and a full results folder, damaged run folders.

Every fault here is real: signals go to real `python -m dlexp` subprocesses, the full disk is a tiny
tmpfs (or RLIMIT_FSIZE where mounting is not permitted), the read-only folder a read-only mount.
Settings are the smallest that still leave time for a signal to land mid-training.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import SHARED_DATA, SMALL, run_dirs, wait_for

# rows per epoch on digits (classification, train/val/test): train loss, acc, lr, epoch_s; val and test loss, acc
ROWS_PER_EPOCH = 8
# long enough (~70 ms per epoch here) that a signal sent after the first epoch lands mid-run
LONG = ["trainer.epochs=30", "trainer.batch_size=16", "model.hidden=[32]", "trainer.device=cpu", "--quiet"]




def only_run(results_dir: Path) -> Path:
    dirs = run_dirs(results_dir)
    return dirs[0] if len(dirs) == 1 else None


def has(results_dir: Path, name: str) -> bool:
    d = only_run(results_dir)
    return d is not None and (d / name).is_file()


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are dlexp's, not warnings from libraries."""
    return [l for l in stderr.splitlines() if l.strip() and "Warning" not in l and not l.startswith(" ")]


def metric_rows(run_dir: Path) -> list[tuple]:
    """metrics.csv as exact strings (floats are written with repr, so equal strings = equal bits),
    without run_id, the time_s column and the epoch_s rows (wall-clock times)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(r["epoch"], r["step"], r["split"], r["metric"], r["value"]) for r in csv.DictReader(f) if r["metric"] != "epoch_s"]


# --- 1. checkpoints and --resume -----------------------------------------------------------------


def test_sigkilled_run_resumes_bit_identically_to_an_uninterrupted_one(start, cli_subprocess, tmp_path, results_dir):
    same = ["trainer.deterministic=true", "model.dropout=0.3", *LONG]  # dropout: the RNG state matters
    reference = start("run", *same, f"results_dir={tmp_path / 'reference'}")
    victim = start("run", *same, f"results_dir={results_dir}")
    wait_for(lambda: has(results_dir, "checkpoint.pt"), victim)
    time.sleep(0.02)  # into the next epoch: the kill lands between checkpoints
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    run = only_run(results_dir)
    assert victim.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists(), "the run finished before the kill; it proves nothing"
    killed_at = torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= killed_at < 30

    resumed = cli_subprocess("run", "--resume", run.name, f"results_dir={results_dir}", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert f"after epoch {killed_at}" in resumed.stderr
    out, err = reference.communicate(timeout=240)
    assert reference.returncode == 0, err
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"
    got, want = metric_rows(run), metric_rows(run_dirs(tmp_path / "reference")[0])
    assert len(want) == 30 * (ROWS_PER_EPOCH - 1)
    assert got == want
    assert set(pd.read_csv(run / "metrics.csv")["run_id"]) == {run.name}


@pytest.fixture
def finished_run(cli, results_dir) -> Path:
    """One finished one-epoch run (with its checkpoint.pt) under results_dir."""
    r = cli("run", *SMALL, f"results_dir={results_dir}", "--quiet")
    assert r.exit_code == 0, r.output
    return run_dirs(results_dir)[0]


@pytest.fixture
def unfinished_run(finished_run) -> Path:
    """finished_run as if killed after its last checkpoint and before its summary.json."""
    (finished_run / "summary.json").unlink()
    return finished_run


def resume(cli, run: Path, results_dir: Path):
    return cli("run", "--resume", run.name, f"results_dir={results_dir}")


def test_resume_without_a_checkpoint_is_one_line_exit_2(cli, unfinished_run, results_dir):
    (unfinished_run / "checkpoint.pt").unlink()
    r = resume(cli, unfinished_run, results_dir)
    assert r.exit_code == 2, r.output
    assert len(error_lines(r.stderr)) == 1 and "checkpoint" in r.stderr and "Traceback" not in r.output


def test_resume_of_an_unknown_run_is_one_line_exit_2(cli, results_dir):
    r = cli("run", "--resume", "no-such-run", f"results_dir={results_dir}")
    assert r.exit_code == 2 and len(error_lines(r.stderr)) == 1 and "no-such-run" in r.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_refused_in_one_line(cli, unfinished_run, results_dir, damage):
    ckpt = unfinished_run / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(2000), "empty": b""}[damage])
    r = resume(cli, unfinished_run, results_dir)
    assert r.exit_code == 2, r.output
    assert len(error_lines(r.stderr)) == 1 and "checkpoint.pt" in r.stderr and "Traceback" not in r.output


class _WritesAMarker:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class _Arbitrary:
    pass


@pytest.mark.parametrize("payload", ["reduce", "class"])
def test_a_checkpoint_with_a_pickled_object_is_refused_and_runs_no_code(cli, unfinished_run, results_dir, tmp_path, payload):
    marker = tmp_path / "pwned"
    ckpt = unfinished_run / "checkpoint.pt"
    good = torch.load(ckpt, weights_only=True)
    if payload == "reduce":
        good["records"].append(_WritesAMarker(str(marker)))  # inside an otherwise valid checkpoint
        torch.save(good, ckpt)
    else:
        torch.save({"x": _Arbitrary()}, ckpt)
    assert not marker.exists()
    r = resume(cli, unfinished_run, results_dir)
    assert r.exit_code == 2, r.output
    assert len(error_lines(r.stderr)) == 1 and "checkpoint.pt" in r.stderr and "Traceback" not in r.output
    assert not marker.exists(), "loading the checkpoint ran code from it"


def test_a_plain_pickle_as_checkpoint_runs_no_code(cli, unfinished_run, results_dir, tmp_path):
    marker = tmp_path / "pwned"
    (unfinished_run / "checkpoint.pt").write_bytes(pickle.dumps(_WritesAMarker(str(marker))))
    r = resume(cli, unfinished_run, results_dir)
    assert r.exit_code == 2 and not marker.exists()


# --- 2. Ctrl-C -------------------------------------------------------------------------------------


def assert_complete_metrics(run: Path, status: str) -> pd.DataFrame:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == status
    m = pd.read_csv(run / "metrics.csv")
    assert not m.isna().any().any()
    assert set(m["run_id"]) == {run.name}
    per_epoch = m.groupby("epoch").size()
    assert list(per_epoch.index) == list(range(1, len(per_epoch) + 1))
    assert (per_epoch == ROWS_PER_EPOCH).all()
    assert summary["epochs_completed"] == len(per_epoch)
    return m


# SIGTERM (`kill PID`, a scheduler's time limit), SIGHUP (a closed terminal) and SIGUSR1 (Slurm's
# warning before a time limit) end a run as Ctrl-C does; the other stop signals are checked below
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1],
                         ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"])
def test_a_signal_mid_training_is_exit_130_with_an_interrupted_complete_run(start, results_dir, sig):
    p = start("run", *LONG, f"results_dir={results_dir}")
    wait_for(lambda: has(results_dir, "metrics.csv"), p)
    time.sleep(0.02)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    m = assert_complete_metrics(only_run(results_dir), "interrupted")
    assert m["epoch"].max() < 30


def test_every_stop_signal_interrupts_the_main_thread_as_ctrl_c_does(tmp_path):
    from dlexp.signals import STOP_SIGNALS

    # the handling of the first signal (writing a run's files) is not cut short by a repeat
    script = ("import time; from dlexp.signals import interrupt_on_stop_signals; interrupt_on_stop_signals()\n"
              "try:\n    print('ready', flush=True)\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
              "    print('interrupted', flush=True)\n    time.sleep(1)\n    print('cleaned up', flush=True)\n")
    for name in STOP_SIGNALS:
        if not hasattr(signal, name):
            continue
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(getattr(signal, name))
        assert p.stdout.readline().strip() == "interrupted", name
        p.send_signal(getattr(signal, name))  # a repeat, as a dying parent's worker gets
        out, _ = p.communicate(timeout=30)
        assert (p.returncode, out.strip()) == (0, "cleaned up"), name


def test_ctrl_c_during_an_epochs_writes_counts_that_epoch_as_completed(make_cfg, data_env):
    from dlexp.data import load_splits
    from dlexp.train import train

    cfg = make_cfg("trainer.epochs=3")

    def ctrl_c_while_writing(epoch, records):  # where execute writes metrics.csv: the signal lands here
        if epoch == 2:
            raise KeyboardInterrupt

    res = train(cfg, load_splits(cfg.dataset), on_epoch=ctrl_c_while_writing)
    assert res.status == "interrupted"
    assert max(r["epoch"] for r in res.records) == 2
    assert res.epochs_completed == 2


def test_sigint_mid_grid_keeps_finished_runs_and_starts_no_more(start, results_dir, capsys):
    from dlexp.results import load_metrics, load_runs

    p = start("run", "-m", "seed=0,1,2,3", "trainer.epochs=20", "trainer.batch_size=16", "model.hidden=[16]",
              "trainer.device=cpu", "--quiet", f"results_dir={results_dir}")
    # the second run is training once a second folder has metrics: the first one is then finished
    wait_for(lambda: sum((d / "metrics.csv").is_file() for d in run_dirs(results_dir)) == 2 and
             any(not (d / "summary.json").exists() for d in run_dirs(results_dir)), p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    time.sleep(0.2)
    dirs = run_dirs(results_dir)
    assert len(dirs) == 2, "a run was started after Ctrl-C"
    by_seed = {json.loads((d / "meta.json").read_text())["seed"]: d for d in dirs}
    assert set(by_seed) == {0, 1}
    assert_complete_metrics(by_seed[0], "ok")
    assert_complete_metrics(by_seed[1], "interrupted")
    runs, metrics = load_runs(results_dir), load_metrics(results_dir)
    assert "warning" not in capsys.readouterr().err
    assert sorted(runs["status"]) == ["interrupted", "ok"]
    assert set(metrics["run_id"]) == {d.name for d in dirs}


# --- 3. concurrent writers -------------------------------------------------------------------------


def test_two_identical_grids_at_once_run_each_point_exactly_once(start, results_dir):
    args = ["run", "-m", "seed=0,1,2,3", "trainer.epochs=2", "trainer.batch_size=512", "model.hidden=[8]",
            "trainer.device=cpu", "--quiet", f"results_dir={results_dir}"]
    a, b = start(*args), start(*args)  # the same moment, the same folder: the claims share out the points
    for p in (a, b):
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    dirs = run_dirs(results_dir)
    assert len(dirs) == 4 and len({d.name for d in dirs}) == 4
    seeds = sorted(json.loads((d / "meta.json").read_text())["seed"] for d in dirs)
    assert seeds == [0, 1, 2, 3]
    assert not list((results_dir / ".points").glob("*.claim"))  # every claim released
    for d in dirs:
        assert {"config.yaml", "meta.json", "metrics.csv", "summary.json", "model.pt", "checkpoint.pt"} <= {f.name for f in d.iterdir()}
        m = assert_complete_metrics(d, "ok")
        assert len(m) == 2 * ROWS_PER_EPOCH
        assert json.loads((d / "summary.json").read_text())["run_id"] == d.name
        assert not (d / "heartbeat").exists()  # a finished run is not "running"
    assert not [f for f in (results_dir / "runs").iterdir() if f.name.startswith(".")]  # no probe or temp files left


# --- 4. unwritable and full results folder ---------------------------------------------------------


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(options) -> a fresh tmpfs mount point (unmounted in teardown), or None if mount is not permitted."""
    mounted: list[Path] = []

    def mount(options: str) -> Path | None:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if r.returncode != 0:
            return None
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.mark.parametrize("where", ["under_a_file", "read_only_mount"])
def test_an_unwritable_results_dir_is_exit_2_before_training_and_writes_nothing(cli, tmp_path, mount_tmpfs, where):
    # root ignores chmod, so: a path under a file (/dev/null/x: ENOTDIR) and a read-only tmpfs (EROFS)
    if where == "under_a_file":
        target, check = Path("/dev/null/results"), None
    else:
        check = mount_tmpfs("ro,size=64k")
        if check is None:
            pytest.skip("mount is not permitted here")
        target = check / "results"
    r = cli("run", *SMALL, f"results_dir={target}")
    assert r.exit_code == 2, r.output
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "results_dir" in lines[0] and "Traceback" not in r.output
    assert "epochs" not in r.stdout  # no summary table: training never started
    if check is not None:
        assert list(check.iterdir()) == []


def _run_with_fsize_limit(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    """The fallback full disk: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored)."""
    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "DLEXP_OFFLINE": "1", "DLEXP_DATA": str(SHARED_DATA), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dlexp", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=240, preexec_fn=limit_writes)


def test_a_full_disk_mid_run_is_exit_1_in_one_line_and_keeps_earlier_files(cli_subprocess, tmp_path, mount_tmpfs):
    args = ["run", "trainer.epochs=2000", "trainer.batch_size=512", "model.hidden=[4]", "trainer.device=cpu", "--quiet"]
    disk = mount_tmpfs("size=64k")
    if disk is not None:  # mechanism: a 64 KiB tmpfs (ENOSPC); metrics.csv and checkpoint.pt outgrow it
        results = disk / "results"
        r = cli_subprocess(*args, f"results_dir={results}")
        code, stderr, errno_text = r.exit_code, r.stderr, "No space left"
    else:  # mechanism: RLIMIT_FSIZE of 48 KiB in the child (EFBIG), where mount is not permitted
        results = tmp_path / "results"
        p = _run_with_fsize_limit([*args, f"results_dir={results}"], tmp_path, 48 * 1024)
        code, stderr, errno_text = p.returncode, p.stderr, "too large"
    assert code == 1, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and "results_dir" in lines[0] and errno_text in lines[0], stderr
    assert "Traceback" not in stderr
    run = only_run(results)
    m = pd.read_csv(run / "metrics.csv")  # the last complete version
    assert not m.isna().any().any() and 1 <= m["epoch"].max() < 2000
    assert (m.groupby("epoch").size() == ROWS_PER_EPOCH).all()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] >= 1
    assert json.loads((run / "meta.json").read_text())["seed"] == 0
    assert not [f.name for f in run.iterdir() if f.name.endswith(".tmp")]  # no half-written temp file left


def test_a_disk_full_at_the_start_leaves_no_run_folder(cli_subprocess, tmp_path, mount_tmpfs):
    disk = mount_tmpfs("size=64k")
    if disk is None:
        pytest.skip("mount is not permitted here")
    (disk / "results" / "runs").mkdir(parents=True)
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill it up: every data block taken
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    r = cli_subprocess("run", *SMALL, f"results_dir={disk / 'results'}", "--quiet")
    assert r.exit_code == 1, r.output
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "results_dir" in lines[0] and "No space left" in lines[0], r.stderr
    assert list((disk / "results" / "runs").iterdir()) == []  # no empty or half-written run folder


def test_a_run_folder_deleted_mid_run_stops_the_run_in_one_line_and_is_not_made_again(start, results_dir):
    import shutil

    p = start("run", *LONG, f"results_dir={results_dir}")
    wait_for(lambda: has(results_dir, "checkpoint.pt"), p)
    run = only_run(results_dir)
    shutil.rmtree(run)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    lines = error_lines(err)
    assert len(lines) == 1 and "deleted" in lines[0] and run.name in lines[0], err
    assert "Traceback" not in err
    assert not run.exists(), "the deleted run folder was made again"


def test_a_cache_folder_that_is_a_file_only_costs_speed(cli_subprocess, tmp_path, results_dir):
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not in the shared data folder")
    cache = tmp_path / "not-a-folder"
    cache.write_text("XDG_CACHE_HOME points here, at a file")
    r = cli_subprocess("run", *SMALL, "dataset=fashion_mnist", "dataset.num_train=600", "dataset.num_test=100",
                       f"results_dir={results_dir}", "--quiet", extra_env={"XDG_CACHE_HOME": str(cache)})
    assert r.exit_code == 0, r.output
    assert json.loads((only_run(results_dir) / "summary.json").read_text())["status"] == "ok"
    assert cache.read_text().startswith("XDG_CACHE_HOME")


# --- 5. report over damaged run folders ------------------------------------------------------------


@pytest.fixture
def damaged(cli, results_dir) -> dict[str, Path]:
    """Five finished runs; three damaged: metrics.csv cut mid-row, garbage summary.json, empty config.yaml."""
    r = cli("run", "-m", "seed=0,1,2,3,4", *SMALL, "trainer.epochs=2", f"results_dir={results_dir}", "--quiet")
    assert r.exit_code == 0, r.output
    dirs = run_dirs(results_dir)
    runs = dict(zip(["good", "truncated", "garbage", "empty", "good2"], dirs))
    text = (runs["truncated"] / "metrics.csv").read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    cut = len(text.rstrip("\n")) - len(last) + last.index(",", last.index(",", last.index(",") + 1) + 1) + 1
    (runs["truncated"] / "metrics.csv").write_text(text[:cut])  # the last row stops after `epoch,step,`
    (runs["garbage"] / "summary.json").write_bytes(b"\x00\xff{not json" + os.urandom(64))
    (runs["empty"] / "config.yaml").write_text("")
    return runs


def test_report_skips_damaged_run_folders_and_names_them(cli, damaged, results_dir):
    r = cli("report", "--results-dir", str(results_dir), "--target", "val/acc=0.1", "--format", "csv")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    warned = [l for l in r.stderr.splitlines() if l.startswith("warning")]
    assert any(damaged["garbage"].name in l for l in warned) and any(damaged["empty"].name in l for l in warned)
    table = pd.read_csv(__import__("io").StringIO(r.stdout))
    assert table["n"].sum() == 3  # good, good2 and the run whose metrics were cut (its summary is intact)


def test_load_metrics_warns_about_a_metrics_csv_cut_mid_row(damaged, results_dir, capsys):
    from dlexp.results import load_metrics

    m = load_metrics(results_dir)
    err = capsys.readouterr().err
    mine = m[m["run_id"] == damaged["truncated"].name]
    assert damaged["truncated"].name in err and "mid-row" in err
    assert len(mine) > 0 and not mine.isna().any().any()


@pytest.fixture
def more_damage(cli, results_dir) -> dict[str, Path]:
    """Four finished runs: one interrupted in its first epoch (a header-only metrics.csv), one with text
    in a metrics value, one whose summary.json has a string for a number, one good."""
    r = cli("run", "-m", "seed=0,1,2,3", *SMALL, "trainer.epochs=2", f"results_dir={results_dir}", "--quiet")
    assert r.exit_code == 0, r.output
    runs = dict(zip(["header_only", "text_value", "wrong_type", "good"], run_dirs(results_dir)))
    path = runs["header_only"] / "metrics.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    path = runs["text_value"] / "metrics.csv"
    lines = path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[5] = "high"  # the value column
    path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    summary = json.loads((runs["wrong_type"] / "summary.json").read_text())
    summary["final"]["test/acc"] = "high"
    (runs["wrong_type"] / "summary.json").write_text(json.dumps(summary))
    return runs


def test_report_plots_and_tables_survive_header_only_text_and_wrongly_typed_files(cli, more_damage, results_dir, tmp_path):
    r = cli("report", "--results-dir", str(results_dir), "--plots", "curves,lr,final", "--out", str(tmp_path / "rep"),
            "--format", "csv", "--target", "val/acc=0.1")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    warned = [l for l in r.stderr.splitlines() if l.startswith("warning")]
    assert any(more_damage["wrong_type"].name in l and "test/acc" in l for l in warned)
    assert any(more_damage["text_value"].name in l and "do not parse" in l for l in warned)
    assert len(list((tmp_path / "rep").glob("*.png"))) == 4  # curves vs epoch and vs time, lr, final


def test_load_metrics_keeps_numbers_numeric_and_drops_only_damaged_rows(more_damage, results_dir):
    from dlexp.results import load_metrics

    m = load_metrics(results_dir)
    assert all(pd.api.types.is_numeric_dtype(m[c]) for c in ("epoch", "step", "value", "time_s"))
    per_run = m.groupby("run_id").size()
    assert more_damage["header_only"].name not in per_run
    assert per_run[more_damage["text_value"].name] == per_run[more_damage["good"].name] - 1
