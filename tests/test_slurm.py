"""The Slurm launcher (dlexp/launchers/slurm.py) against a REAL one-node Slurm cluster.

The cluster (tests/slurm_cluster.py) runs munged, slurmctld and slurmd on 127.0.0.1; jobs are real
sbatch job arrays whose steps run dlexp in this checkout's Python. Faults are real: `scancel`,
the USR2 warning Slurm sends before a time limit (`scancel --signal=USR2`, the very signal: Slurm's
own timer sends it up to 30 s late, too slow and uneven for CI), preemption by a job of a
higher-priority partition, a SIGKILL to a job's process, a node that cannot import the function,
SIGINT to a waiting process with and without a terminal.

Threads: every job gets OMP_NUM_THREADS from its CPUs (1 here), and the local reference runs set
OMP_NUM_THREADS=1 too, so "the same metrics" means bit-equal on this one machine.
Runs are small (digits, 1-2 epochs of batch 512) except where a signal has to land mid-run.
"""

from __future__ import annotations

import csv
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from conftest import CONF, SMALL, run_dirs
from slurm_cluster import slurm  # noqa: F401  (the fixture)

from dlexp.cli import slurm_options as so
from dlexp.errors import ConfigError
from dlexp.launchers import slurm as sl

TESTS = Path(__file__).resolve().parent
# fast polling: the cluster is on this machine
FAST = dict(poll_s=0.3)
# ~70 ms an epoch here: long enough for a signal sent after the first checkpoint to land mid-run
SLOW_EPOCHS = ["trainer.batch_size=16", "model.hidden=[32]", "trainer.device=cpu"]
LONG = ["trainer.epochs=30", *SLOW_EPOCHS]


def run_args(results_dir: Path, *overrides: str) -> list[str]:
    return ["run", *SMALL, *overrides, f"results_dir={results_dir}", "--quiet"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def metric_rows(run: Path) -> list[tuple]:
    """metrics.csv as exact strings (floats are written with repr: equal strings = equal bits),
    without run_id, time_s and the epoch_s rows (wall-clock times)."""
    with open(run / "metrics.csv", newline="") as f:
        return [(r["epoch"], r["step"], r["split"], r["metric"], r["value"]) for r in csv.DictReader(f) if r["metric"] != "epoch_s"]


def wait_until(predicate, timeout: float = 120, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def checkpointed(results_dir: Path) -> bool:
    runs = run_dirs(results_dir)
    return len(runs) == 1 and (runs[0] / "checkpoint.pt").is_file()


def local(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m dlexp ...` here, with one thread like the jobs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLEXP_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dlexp", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def batches():
    """Submitted batches, cancelled at the end of the test whatever happened."""
    made: list[sl.Batch] = []
    yield made
    for b in made:
        subprocess.run(["scancel", b.array_id], capture_output=True)


# --- options (no cluster needed) -----------------------------------------------------------------


@pytest.mark.parametrize("spec, want", [
    ("90", 90), ("0", 0), ("1:30", 2), ("0:59", 1), ("2:00:00", 120), ("1:00:01", 61),
    ("1-0", 1440), ("2-12", 3600), ("1-2:30", 1590), ("1-0:0:30", 1441), ("infinite", 0), ("UNLIMITED", 0),
])
def test_slurm_time_formats_become_whole_minutes(spec, want):
    # sbatch(1): "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
    # "days-hours:minutes" and "days-hours:minutes:seconds"; 0 or infinite: no limit; seconds round up
    assert sl.minutes(spec) == want


def test_options_come_from_the_launcher_file_and_the_command_line_wins(tmp_path):
    shipped = sl.load_options()
    assert shipped == sl.SlurmOptions()  # the file and the defaults of the code say the same
    (tmp_path / "launcher").mkdir()
    (tmp_path / "launcher" / "slurm.yaml").write_text(
        "# my cluster\npartition: gpu\ntime: 4:00:00\nmem: 16g\ngpus: 1\nsbatch: ['--constraint=a100']\n"
        "setup: ['module load python/3.11']\nruns_per_job: 4\n")
    mine = sl.load_options(config_dir=tmp_path)
    assert (mine.partition, mine.time, mine.mem, mine.gpus, mine.runs_per_job) == ("gpu", "4:00:00", "16G", 1, 4)
    assert mine.sbatch == ("--constraint=a100",) and mine.setup == ("module load python/3.11",)
    given = sl.load_options(config_dir=tmp_path, partition="long", runs_per_job=2, account=None)
    assert (given.partition, given.runs_per_job, given.time, given.account) == ("long", 2, "4:00:00", None)


@pytest.mark.parametrize("given, names", [
    ({"time": "abc"}, "--time"), ({"time": "1:2:3:4"}, "--time"), ({"cpus_per_task": 0}, "--cpus-per-task"),
    ({"gpus": -1}, "--gpus"), ({"mem": "lots"}, "--mem"), ({"mem": "1.5G"}, "--mem"), ({"mem": "0"}, "--mem"),
    ({"max_parallel": 0}, "--max-parallel"), ({"runs_per_job": 0}, "--runs-per-job"),
    ({"partition": "a b"}, "--partition"), ({"account": "x\ny"}, "--account"), ({"qos": ""}, "--qos"),
    ({"sbatch": ("-C a100",)}, "--sbatch"), ({"sbatch": ("--array=0-3",)}, "--array"),
    ({"sbatch": ("--output=x.log",)}, "--output"), ({"setup": ("a\nb",)}, "--setup"),
    ({"runs_per_job": True}, "--runs-per-job"), ({"poll_s": 0}, "--poll-s"),
])
def test_a_bad_option_is_a_one_line_error_naming_it(given, names):
    with pytest.raises(ConfigError) as e:
        sl.load_options(**given)
    message = str(e.value)
    assert names in message and "\n" not in message


def test_an_unknown_key_in_the_launcher_file_is_named(tmp_path):
    (tmp_path / "launcher").mkdir()
    (tmp_path / "launcher" / "slurm.yaml").write_text("# typo\npartiton: gpu\n")
    with pytest.raises(ConfigError, match="partiton"):
        sl.load_options(config_dir=tmp_path)
    with pytest.raises(ConfigError, match="launcher nope"):
        sl.load_options("nope")


def test_the_options_become_these_sbatch_lines(tmp_path):
    """What sbatch receives, through submitit's own script writer."""
    from submitit.slurm.slurm import _make_sbatch_string

    o = sl.load_options(partition="gpu", time="1:30:00", cpus_per_task=4, mem="16g", gpus=2, account="proj", qos="high",
                        sbatch=("--constraint=a100", "#SBATCH --exclusive", "--mail-type END"),
                        setup=("module load python/3.11",), max_parallel=3)
    script = _make_sbatch_string(command="python -m x", folder=tmp_path / "%j", map_count=10,
                                 **sl._sbatch_parameters(o, sl.minutes(o.time), 10))
    lines = set(script.splitlines())
    for want in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --account=proj", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                 "#SBATCH --exclusive", "#SBATCH --mail-type=END", "#SBATCH --array=0-9%3", "#SBATCH --signal=USR2@90",
                 "module load python/3.11", "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}"):
        assert want in lines, (want, script)
    assert not any(line.startswith("#SBATCH --mem=") and line != "#SBATCH --mem=16G" for line in lines)


@pytest.mark.parametrize("storage, ok", [
    (None, False), ("study.db", False), ("sqlite:////shared/s.db", False),
    ("journal:/shared/s.log", True), ("/shared/s.jsonl", True), ("postgresql+psycopg://u:pw@db/dlexp", True),
])
def test_a_slurm_sweep_needs_postgresql_or_a_journal_file(storage, ok):
    if ok:
        sl.check_sweep_storage(storage)
        return
    with pytest.raises(ConfigError) as e:
        sl.check_sweep_storage(storage)
    assert "SQLite on a network file system is not safe" in str(e.value) and "\n" not in str(e.value)


def test_progress_counts_and_an_eta_at_the_pace_so_far():
    # 4 items settled in 100 s: 25 s each; 6 left -> 150 s
    p = sl.Progress(total=10, pending=4, running=2, done=3, failed=1, elapsed_s=100)
    assert p.eta_s == pytest.approx(150) and not p.finished
    assert p.line() == "3/10 done, 2 running, 4 pending, 1 failed, ETA 2m30s"
    assert sl.Progress(total=3, pending=1, running=2, elapsed_s=5).eta_s is None  # nothing settled yet
    assert sl.Progress(total=2, done=1, lost=1).finished


def test_the_launcher_file_starts_with_a_one_line_description():
    first = (CONF / "launcher" / "slurm.yaml").read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 3


def test_the_cli_and_the_launcher_module_import_no_submitit():
    code = "import sys, dlexp.cli, dlexp.cli.slurm_options, dlexp.launchers.slurm; print('submitit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_cluster_left_by_a_dead_session_is_cleaned_up_and_a_live_one_is_not(tmp_path):
    import tempfile

    import slurm_cluster

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.mkdtemp(prefix=slurm_cluster.PREFIX))
    alive = Path(tempfile.mkdtemp(prefix=slurm_cluster.PREFIX))
    (stale / "owner").write_text(f"{dead.pid} 12345\n")
    (alive / "owner").write_text(f"{os.getpid()} {slurm_cluster._start_time(os.getpid())}\n")
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    # a daemon of the dead session (its folder on the command line), a job of it (its SLURM_CONF),
    # and a process of the live session
    daemon = subprocess.Popen([*sleeper, str(stale / "slurm.conf")])
    job = subprocess.Popen(sleeper, env={**os.environ, "SLURM_CONF": str(stale / "slurm.conf")})
    other = subprocess.Popen(sleeper, env={**os.environ, "SLURM_CONF": str(alive / "slurm.conf")})
    try:
        slurm_cluster.reap_stale()
        assert daemon.wait(timeout=10) == -signal.SIGKILL and job.wait(timeout=10) == -signal.SIGKILL
        assert not stale.exists()
        assert other.poll() is None and alive.is_dir()
    finally:
        for p in (daemon, job, other):
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", str(stale), str(alive)])


# --- on the cluster --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_array_two_runs_per_job_gives_the_metrics_of_the_same_runs_run_locally(slurm, tmp_path, batches):
    on_slurm, here = tmp_path / "slurm", tmp_path / "local"
    items = [run_args(on_slurm, f"seed={s}") for s in range(4)]
    seen: list[sl.Progress] = []
    batch = sl.submit(sl.run_cli, items, sl.SlurmOptions(runs_per_job=2, max_parallel=2, **FAST), on_slurm / "slurm")
    batches.append(batch)
    assert len(batch.jobs) == 2 and sorted(batch.jobs.values()) == [[0, 1], [2, 3]]  # ONE array of two jobs
    assert {j.split("_")[0] for j in batch.jobs} == {batch.array_id}
    assert "ArrayTaskThrottle=2" in slurm.run("scontrol", "show", "job", batch.array_id)
    results = batch.wait(seen.append)

    assert [r.status for r in results] == ["done"] * 4, [(r.status, r.error) for r in results]
    assert [r.value for r in results] == [0] * 4
    assert results[0].job_id == results[1].job_id != results[2].job_id == results[3].job_id
    assert [p.done for p in seen] == sorted(p.done for p in seen) and seen[-1].done == 4 and seen[-1].finished
    for job_id in batch.jobs:  # a log folder per job, with what the job printed
        assert batch.log(job_id).is_file() and (batch.job_folder(job_id) / f"{job_id}_0_log.out").is_file()

    ref = local("run", "-m", *SMALL, "seed=0,1,2,3", f"results_dir={here}", "--quiet")
    assert ref.returncode == 0, ref.stderr
    by_seed = lambda root: {json.loads((r / "meta.json").read_text())["seed"]: r for r in run_dirs(root)}
    remote, reference = by_seed(on_slurm), by_seed(here)
    assert sorted(remote) == sorted(reference) == [0, 1, 2, 3]
    for seed in range(4):
        assert summary(remote[seed])["status"] == "ok"
        assert json.loads((remote[seed] / "meta.json").read_text())["threads"] == 1
        assert metric_rows(remote[seed]) == metric_rows(reference[seed]), seed


@pytest.mark.slow
def test_a_failing_item_is_failed_and_its_job_goes_on_with_the_next(slurm, tmp_path, batches):
    res = tmp_path / "results"
    items = [run_args(res, "optimizer=nope"), run_args(res)]
    batch = sl.submit(sl.run_cli, items, sl.SlurmOptions(runs_per_job=2, **FAST), res / "slurm")
    batches.append(batch)
    bad, good = batch.wait()
    assert bad.status == "failed" and "exited with status 2" in bad.error
    assert "optimizer=nope: unknown choice" in batch.log(bad.job_id).read_text()  # dlexp's one line, in the job's log
    assert good.status == "done" and good.job_id == bad.job_id
    assert [summary(r)["status"] for r in run_dirs(res)] == ["ok"]


def test_a_job_that_cannot_import_its_function_fails_its_items_with_the_import_error(slurm, tmp_path, batches, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the nodes cannot import tests/test_slurm.py
    res = tmp_path / "results"
    batch = sl.submit(run_or_resume, [run_args(res), run_args(res, "seed=1")], sl.SlurmOptions(runs_per_job=2, **FAST), res / "slurm")
    batches.append(batch)
    batch.settle_s = 1.0
    results = batch.wait()
    assert [r.status for r in results] == ["failed", "failed"]
    assert "ModuleNotFoundError: No module named 'test_slurm'" in results[0].error
    assert str(batch.log(results[0].job_id)) in results[0].error  # where to read more
    assert run_dirs(res) == []


@pytest.mark.slow
def test_scancel_mid_run_leaves_it_interrupted_with_a_checkpoint_and_resume_finishes_it(slurm, tmp_path, batches):
    res = tmp_path / "results"
    items = [run_args(res, *LONG), run_args(res, "seed=1")]  # one job: the second item never starts
    batch = sl.submit(sl.run_cli, items, sl.SlurmOptions(runs_per_job=2, **FAST), res / "slurm")
    batches.append(batch)
    batch.settle_s = 1.0
    wait_until(lambda: checkpointed(res), what="the first checkpoint")
    (job_id,) = batch.jobs
    slurm.run("scancel", job_id)
    first, second = batch.wait()

    run = run_dirs(res)[0]
    assert first.status == "interrupted", (first.status, first.error)
    assert second.status == "lost" and "CANCELLED" in second.error
    assert slurm.states()[job_id] == "CANCELLED"
    s = summary(run)
    assert s["status"] == "interrupted" and 1 <= s["epochs_completed"] < 30, "the cancel did not land mid-run"
    assert (run / "checkpoint.pt").is_file()

    resumed = local("run", "--resume", run.name, f"results_dir={res}", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {s['epochs_completed']}" in resumed.stderr
    s = summary(run)
    assert s["status"] == "ok" and s["epochs_completed"] == 30
    assert len(run_dirs(res)) == 1


def run_or_resume(argv: list[str]) -> int:
    """An item function as the study engine's will be: continue the item's run if one was left
    interrupted in its results folder, else start it. (Imported by the job from tests/: PYTHONPATH.)"""
    results_dir = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("results_dir=")))
    for run in run_dirs(results_dir):
        done = (run / "summary.json").is_file() and summary(run)["status"] != "interrupted"
        if (run / "checkpoint.pt").is_file() and not done:
            return sl.run_cli(["run", "--resume", run.name, f"results_dir={results_dir}", "--quiet"])
    return sl.run_cli(argv)


@pytest.fixture
def nodes_import_tests(monkeypatch):
    """The jobs can import item functions from tests/ (as they import an installed package's)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def assert_resumed_once_and_finished(batch: sl.Batch, res: Path, run: Path) -> None:
    (result,) = batch.wait()
    assert result.status == "done", (result.status, result.error)
    assert run_dirs(res) == [run]  # the same run, continued: nothing ran twice
    s = summary(run)
    assert s["status"] == "ok" and s["epochs_completed"] == 30
    resumed = json.loads((run / "meta.json").read_text())["resumed"]
    assert len(resumed) == 1 and resumed[0]["from_epoch"] >= 1


def interrupted_mid_run(res: Path) -> Path:
    (run,) = run_dirs(res)
    wait_until(lambda: (run / "summary.json").is_file(), what="the interrupted run's summary")
    s = summary(run)
    assert s["status"] == "interrupted" and 1 <= s["epochs_completed"] < 30, "the signal did not land mid-run"
    assert (run / "checkpoint.pt").is_file()
    return run


@pytest.mark.slow
def test_the_time_limit_warning_interrupts_the_run_and_the_requeued_job_resumes_it(slurm, tmp_path, batches, nodes_import_tests):
    res = tmp_path / "results"
    batch = sl.submit(run_or_resume, [run_args(res, *LONG)], sl.SlurmOptions(time="10", **FAST), res / "slurm")
    batches.append(batch)
    (job_id,) = batch.jobs
    wait_until(lambda: checkpointed(res), what="the first checkpoint")
    # what Slurm sends `signal_delay_s` before the time limit (sbatch --signal=USR2@90)
    slurm.run("scancel", "--signal=USR2", job_id)
    wait_until(lambda: slurm.states().get(job_id) in sl.WAITING, what="the requeue")
    run = interrupted_mid_run(res)
    # Slurm holds a requeued job for a while before it may start again; this cluster need not wait
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    assert_resumed_once_and_finished(batch, res, run)
    assert "Requeued job" in (batch.job_folder(job_id) / f"{job_id}_0_log.out").read_text()  # by submitit


@pytest.mark.slow
def test_a_preempted_job_is_requeued_by_slurm_and_resumes_its_run(slurm, tmp_path, batches, nodes_import_tests):
    res = tmp_path / "results"
    batch = sl.submit(run_or_resume, [run_args(res, *LONG)], sl.SlurmOptions(**FAST), res / "slurm")
    batches.append(batch)
    (job_id,) = batch.jobs
    wait_until(lambda: checkpointed(res), what="the first checkpoint")
    # a job of a higher-priority partition that needs every CPU: Slurm preempts ours (SIGTERM) and requeues it
    urgent = slurm.run("sbatch", "--parsable", "--partition=urgent", f"--cpus-per-task={slurm.cpus}",
                       f"--output={tmp_path / 'urgent.out'}", "--wrap", "sleep 1").strip()
    wait_until(lambda: slurm.states().get(job_id) in sl.WAITING, what="the preemption")
    run = interrupted_mid_run(res)
    slurm.wait_for(urgent, ("COMPLETED",))
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")  # no requeue hold, as above
    assert_resumed_once_and_finished(batch, res, run)


@pytest.mark.slow
def test_a_job_killed_without_a_word_reports_its_items_lost(slurm, tmp_path, batches):
    res = tmp_path / "results"
    items = [run_args(res, *LONG), run_args(res, "seed=1")]
    batch = sl.submit(sl.run_cli, items, sl.SlurmOptions(runs_per_job=2, **FAST), res / "slurm")
    batches.append(batch)
    batch.settle_s = 1.0
    wait_until(lambda: checkpointed(res), what="the first checkpoint")
    (job_id,) = batch.jobs
    marker = batch.job_folder(job_id) / "item-0.started"
    pid = int(marker.read_text().split()[2])
    os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer or a dying node would: no word
    first, second = batch.wait()

    assert (first.status, second.status) == ("lost", "lost"), [(r.status, r.error) for r in (first, second)]
    assert f"job {job_id} ended" in first.error
    run = run_dirs(res)[0]
    assert not (run / "summary.json").exists() and (run / "checkpoint.pt").is_file()  # resumable: dlexp run --resume


@pytest.mark.slow
def test_sweep_workers_sharing_a_journal_file_end_with_exactly_the_trials_asked(slurm, tmp_path, batches):
    import optuna

    res = tmp_path / "results"
    journal = res / "study.log"
    argv = ["sweep", "sweep=lr_wd", "trainer.epochs=2", "trainer.batch_size=512", "model.hidden=[16]",
            f"results_dir={res}", "--trials", "5", "--study", "onslurm", "--storage", f"journal:{journal}", "--quiet"]
    batch = sl.submit_workers([[*argv, "--seed", str(w)] for w in range(2)], sl.SlurmOptions(**FAST), res / "slurm",
                              storage=f"journal:{journal}")
    batches.append(batch)
    assert len(batch.jobs) == 2
    results = batch.wait()

    assert [r.status for r in results] == ["done", "done"], [(r.status, r.error) for r in results]
    study = optuna.load_study(study_name="onslurm", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 5
    assert "RUNNING" not in states and "WAITING" not in states
    finished = sorted(t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED"))
    assert sorted(summary(r)["trial"] for r in run_dirs(res) if summary(r)["status"] != "failed") == finished


def test_sweep_workers_refuse_sqlite_before_submitting_anything(slurm, tmp_path):
    with pytest.raises(ConfigError, match="not safe"):
        sl.submit_workers([["sweep", "sweep=lr_wd"]], sl.SlurmOptions(), tmp_path / "slurm", storage=None)
    assert not (tmp_path / "slurm").exists()


def test_what_slurm_refuses_is_a_one_line_error(slurm, tmp_path):
    with pytest.raises(ConfigError) as e:  # checked before submitting: the partition's default time is asked
        sl.submit(sl.run_cli, [["run"]], sl.SlurmOptions(partition="nope"), tmp_path / "a")
    assert "--partition nope: no such partition; choose one of: debug, urgent" in str(e.value)
    with pytest.raises(ConfigError) as e:  # refused by sbatch itself
        sl.submit(sl.run_cli, [["run"]], sl.SlurmOptions(mem=f"{slurm.memory_mb * 4}M"), tmp_path / "b")
    message = str(e.value)
    assert message.startswith("--launcher slurm: sbatch refused the jobs:") and "\n" not in message
    assert "emory" in message  # sbatch's own reason: "Memory specification can not be satisfied"
    with pytest.raises(ConfigError) as e:  # more jobs than the cluster's MaxArraySize (10 here)
        sl.submit(sl.run_cli, [["run"]] * 12, sl.SlurmOptions(), tmp_path / "c")
    assert "12 jobs; --runs-per-job packs several runs into one" in str(e.value) and "\n" not in str(e.value)
    assert list((tmp_path / "c").iterdir()) == []  # nothing submitted, nothing left behind


# --- Ctrl-C while waiting --------------------------------------------------------------------------

WAITER = """
import sys
from dlexp.launchers import slurm as sl
batch = sl.Batch.load(sys.argv[1])
print("waiting", flush=True)
try:
    batch.wait(poll_s=0.2)
except sl.Interrupted as e:
    sys.exit(130)
"""


def start_waiter(folder: Path, stdin) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", WAITER, str(folder)], stdin=stdin, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.5)  # in the polling loop
    return p


def long_batch(tmp_path: Path, batches: list) -> sl.Batch:
    res = tmp_path / "results"
    batch = sl.submit(sl.run_cli, [run_args(res, "trainer.epochs=400", *SLOW_EPOCHS)], sl.SlurmOptions(**FAST), res / "slurm")
    batches.append(batch)
    return batch


def test_ctrl_c_while_waiting_without_a_terminal_leaves_the_jobs_running_and_says_how_to_cancel(slurm, tmp_path, batches):
    batch = long_batch(tmp_path, batches)
    (job_id,) = batch.jobs
    slurm.wait_for(job_id, ("RUNNING",))
    waiter = start_waiter(batch.folder, subprocess.DEVNULL)
    waiter.send_signal(signal.SIGINT)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 130, err
    assert f"cancel them with: scancel {batch.array_id}" in err
    assert "[y/N]" not in err  # no question without a terminal
    assert slurm.states()[job_id] == "RUNNING"


def test_ctrl_c_while_waiting_at_a_terminal_asks_and_yes_cancels_the_jobs(slurm, tmp_path, batches):
    batch = long_batch(tmp_path, batches)
    (job_id,) = batch.jobs
    wait_until(lambda: (batch.job_folder(job_id) / "item-0.started").exists(), what="the item to start")
    master, terminal = pty.openpty()
    try:
        waiter = start_waiter(batch.folder, terminal)
        waiter.send_signal(signal.SIGINT)
        os.write(master, b"y\n")
        out, err = waiter.communicate(timeout=60)
    finally:
        os.close(master)
        os.close(terminal)
    assert waiter.returncode == 130, err
    assert f"cancel the Slurm jobs of array {batch.array_id}? [y/N]" in err
    assert f"cancelled the jobs of array {batch.array_id}" in err
    slurm.wait_for(job_id, ("CANCELLED",), timeout=30)
    outcome = batch.job_folder(job_id) / "item-0.json"
    wait_until(outcome.is_file, what="the item's outcome")
    assert json.loads(outcome.read_text())["status"] == "interrupted"


# --- the command-line options the commands will share ----------------------------------------------


def test_the_shared_command_line_options_become_slurm_options(tmp_path):
    from typer.testing import CliRunner

    got = {}
    app = typer.Typer()

    @app.command()
    def grid(launcher: so.Launcher = "local", partition: so.Partition = None, time: so.Time = None,
             cpus_per_task: so.CpusPerTask = None, mem: so.Mem = None, gpus: so.Gpus = None, account: so.Account = None,
             qos: so.Qos = None, sbatch: so.Sbatch = None, max_parallel: so.MaxParallel = None,
             runs_per_job: so.RunsPerJob = None, no_wait: so.NoWait = False) -> None:
        got["options"] = so.slurm_options(launcher, None, partition=partition, time=time, cpus_per_task=cpus_per_task,
                                          mem=mem, gpus=gpus, account=account, qos=qos, sbatch=sbatch,
                                          max_parallel=max_parallel, runs_per_job=runs_per_job, no_wait=no_wait)

    runner = CliRunner()
    r = runner.invoke(app, ["--launcher", "slurm", "--partition", "gpu", "--time", "2:00:00", "--cpus-per-task", "4",
                            "--mem", "8g", "--gpus", "1", "--account", "proj", "--qos", "high", "--sbatch=--constraint=a100",
                            "--sbatch=--exclusive", "--max-parallel", "10", "--runs-per-job", "3", "--no-wait"])
    assert r.exit_code == 0, r.output
    assert got["options"] == sl.SlurmOptions(partition="gpu", time="2:00:00", cpus_per_task=4, mem="8G", gpus=1, account="proj",
                                             qos="high", sbatch=("--constraint=a100", "--exclusive"), max_parallel=10,
                                             runs_per_job=3)
    r = runner.invoke(app, ["--launcher", "slurm"])
    assert got["options"] == sl.load_options()  # nothing given: the file's values
    r = runner.invoke(app, [])
    assert got["options"] is None  # --launcher local
    r = runner.invoke(app, ["--partition", "gpu", "--runs-per-job", "2"])
    assert isinstance(r.exception, ConfigError) and "--partition, --runs-per-job: Slurm options need --launcher slurm" in str(r.exception)
