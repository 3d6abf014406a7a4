"""`--launcher slurm` on `dlexp run -m`, `dlexp kfold` and `dlexp sweep` (dlexp/launchers/slurm_study.py),
against a REAL one-node Slurm cluster (tests/slurm_cluster.py), through the real command line.

Every command is a real `python -m dlexp` process; its jobs are real sbatch job arrays whose steps run
this checkout's Python. Faults are real: `scancel` of a job, SIGKILL of a job's process, SIGINT to the
waiting command.

Threads: "the same metrics as locally" is bit-equality on this one machine, so both sides fix
`trainer.threads=1` (a job would otherwise take its CPUs from Slurm, the local run from this machine).
Runs are small (digits, 1-2 epochs of batch 512) except where a signal has to land mid-run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SHARED_DATA, SMALL, run_dirs
from slurm_cluster import slurm  # noqa: F401  (the fixture)

# one thread on both sides: bit-equal metrics (see the module docstring)
ONE = ["trainer.threads=1"]
# ~70 ms an epoch here: a signal sent after the first checkpoint lands mid-run
LONG = ["trainer.epochs=30", "trainer.batch_size=16", "model.hidden=[32]", "trainer.device=cpu", *ONE]


@pytest.fixture
def fast(tmp_path) -> list[str]:
    """A --config-dir whose launcher/slurm.yaml looks at the queue every 0.3 s (the cluster is here)."""
    folder = tmp_path / "conf"
    (folder / "launcher").mkdir(parents=True)
    (folder / "launcher" / "slurm.yaml").write_text("# the test cluster: look at the queue often\npoll_s: 0.3\n")
    return ["--config-dir", str(folder)]


@pytest.fixture
def dlexp(tmp_path):
    """dlexp("run", ...) -> CompletedProcess of `python -m dlexp` in tmp_path, no terminal;
    start=True returns the Popen. Jobs left by a test are cancelled at its end."""
    env = {**os.environ, "DLEXP_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "DLEXP_HEARTBEAT_S": "0.5"}
    if SHARED_DATA.is_dir():
        env["DLEXP_DATA"] = str(SHARED_DATA)
    procs: list[subprocess.Popen] = []

    def call(*args: str, start: bool = False, timeout: float = 300):
        p = subprocess.Popen([sys.executable, "-m", "dlexp", *args], cwd=tmp_path, env=env, text=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(p)
        if start:
            return p
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    yield call
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()
    subprocess.run(["scancel", f"--user={os.getuid()}"], capture_output=True)  # the cluster is this session's


def meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def metric_rows(run: Path) -> list[tuple]:
    """metrics.csv as exact strings (floats are written with repr: equal strings = equal bits),
    without the wall-clock rows (epoch_s)."""
    with open(run / "metrics.csv", newline="") as f:
        return [(r["epoch"], r["step"], r["split"], r["metric"], r["value"]) for r in csv.DictReader(f) if r["metric"] != "epoch_s"]


def arrays(results: Path, kind: str) -> list[dict]:
    """The submissions recorded for the studies of one kind under results/slurm/."""
    return [json.loads(f.read_text()) for f in sorted((results / "slurm" / kind).glob("*/*.json"))]


def wait_until(predicate, proc: subprocess.Popen | None = None, timeout: float = 180, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended (rc {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- bad input: one line, exit 2, nothing submitted (no cluster needed) -------------------------------


@pytest.mark.parametrize("args, says", [
    (["run", "-m", "seed=0,1", "--runs-per-job", "2"], "--runs-per-job: Slurm options need --launcher slurm"),
    (["run", "-m", "seed=0,1", "--no-wait"], "--no-wait: Slurm options need --launcher slurm"),
    (["kfold", "--folds", "2", "--partition", "gpu"], "--partition: Slurm options need --launcher slurm"),
    (["sweep", "sweep=lr_wd", "--workers", "2"], "--workers: Slurm options need --launcher slurm"),
    (["run", "seed=1", "--launcher", "slurm"], "add -m"),
    (["run", "-m", "seed=0,1", "--launcher", "slurm", "--jobs", "2"], "--jobs 2: processes on this machine"),
    (["kfold", "--folds", "2", "--launcher", "slurm", "--jobs", "2"], "--jobs 2: processes on this machine"),
    (["run", "--resume", "x", "--launcher", "slurm"], "--resume: continues one run on this machine"),
    (["run", "-m", "results_dir=a,b", "--launcher", "slurm"], "every point of the grid must write to the same results_dir"),
    (["run", "-m", "seed=0,1", "--launcher", "slurm", "--runs-per-job", "0"], "--runs-per-job: expected an integer >= 1"),
    (["run", "-m", "seed=0,1", "--launcher", "slurm", "--time", "soon"], "--time soon"),
    (["sweep", "sweep=lr_wd", "--launcher", "slurm"], "SQLite on a network file system is not safe"),
    (["sweep", "sweep=lr_wd", "--launcher", "slurm", "--storage", "sqlite:///x.db"], "SQLite on a network file system is not safe"),
    (["sweep", "sweep=lr_wd", "--launcher", "slurm", "--workers", "0", "--storage", "journal:s.log"], "--workers: must be >= 1"),
])
def test_what_the_slurm_launcher_cannot_take_is_one_line_and_exit_2_before_anything_is_written(cli, tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    res = cli(*args, *SMALL)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], res.stderr
    assert not any(tmp_path.iterdir())  # no results folder, no job files, no study


def test_each_sweep_worker_samples_with_its_own_seed_derived_from_the_seed():
    from dlexp.cli.sweep import _worker_seed

    # workers started at once see the same number of existing trials (0 on a fresh study)
    seeds = [_worker_seed(7, w, 0) for w in range(16)]
    assert len(set(seeds)) == 16  # no two workers replay each other's trials
    assert seeds[0] == 7  # one worker on a fresh study: --seed itself (the same command gives the same trials)
    assert seeds == [_worker_seed(7, w, 0) for w in range(16)]  # derived, not random
    assert set(seeds).isdisjoint(_worker_seed(8, w, 0) for w in range(16))


# --- on the cluster --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_six_point_grid_two_runs_per_job_ends_with_the_metrics_of_the_same_grid_run_locally(slurm, dlexp, tmp_path, fast):
    on_slurm, here = tmp_path / "slurm", tmp_path / "local"
    grid = ["run", "-m", "optimizer=sgd,adam", "seed=0,1,2", *SMALL, "trainer.epochs=2", *ONE]
    res = dlexp(*grid, f"results_dir={on_slurm}", "--launcher", "slurm", "--runs-per-job", "2", *fast)
    assert res.returncode == 0, res.stderr
    assert "6 points: 0 done, 0 to resume, 6 to run" in res.stderr
    (submitted,) = arrays(on_slurm, "grid")  # ONE array of 3 jobs of 2 points
    assert sorted(map(len, submitted["jobs"].values())) == [2, 2, 2]
    assert f"as 3 job(s) of array {submitted['array_id']}" in res.stderr
    runs = run_dirs(on_slurm)
    assert len(runs) == 6 and {summary(r)["status"] for r in runs} == {"ok"}
    assert {meta(r)["slurm"]["job_id"] for r in runs} == set(submitted["jobs"])  # every run in one of its jobs
    assert all(Path(meta(r)["slurm"]["log"]).is_file() for r in runs)  # the job's log, under the results folder
    assert all(meta(r)["threads"] == 1 for r in runs)

    ref = dlexp(*grid, f"results_dir={here}", "--quiet")
    assert ref.returncode == 0, ref.stderr
    point = lambda run: (meta(run)["point"])
    remote, local = {point(r): r for r in run_dirs(on_slurm)}, {point(r): r for r in run_dirs(here)}
    assert sorted(remote) == sorted(local)  # the same six points (results_dir does not count)
    for key in remote:
        assert metric_rows(remote[key]) == metric_rows(local[key]), key

    status = dlexp("status", str(on_slurm))
    assert status.returncode == 0, status.stderr
    assert f"slurm array {submitted['array_id']} (3 job(s)" in status.stdout
    assert f"job logs: {on_slurm / 'slurm' / 'grid'}" in status.stdout.replace("\n", "")

    again = dlexp(*grid, f"results_dir={on_slurm}", "--launcher", "slurm", "--runs-per-job", "2", *fast)
    assert again.returncode == 0 and "6 points: 6 done, 0 to resume, 0 to run" in again.stderr
    assert len(arrays(on_slurm, "grid")) == 1  # nothing submitted


@pytest.mark.slow
def test_a_cancelled_job_and_a_killed_one_are_continued_by_the_same_command_and_nothing_runs_twice(slurm, dlexp, tmp_path, fast):
    res = tmp_path / "results"
    grid = ["run", "-m", "seed=0,1", *LONG, f"results_dir={res}", "--launcher", "slurm", *fast]
    proc = dlexp(*grid, start=True)
    # both runs mid-way, each in its own job (one job per point: the cluster has 2 CPUs)
    wait_until(lambda: len([r for r in run_dirs(res) if (r / "checkpoint.pt").is_file()]) == 2, proc, what="two checkpoints")
    by_seed = {meta(r)["seed"]: r for r in run_dirs(res)}
    slurm.run("scancel", meta(by_seed[0])["slurm"]["job_id"])  # SIGTERM: the run ends interrupted
    os.kill(meta(by_seed[1])["pid"], signal.SIGKILL)  # no word at all: as the OOM killer or a dead node
    out, err = proc.communicate(timeout=180)

    assert proc.returncode == 130, err  # the study did not finish: rerun to continue
    cancelled, killed = by_seed[0], by_seed[1]
    s = summary(cancelled)
    assert s["status"] == "interrupted" and 1 <= s["epochs_completed"] < 30, "the cancel did not land mid-run"
    assert not (killed / "summary.json").exists() and (killed / "checkpoint.pt").is_file()
    assert "killed" in out and "ended" in err  # the table and the line say what became of each

    wait_until(lambda: "killed (no summary" in dlexp("status", str(res)).stdout, what="the killed run's heartbeat to age")
    status = dlexp("status", str(res)).stdout
    assert f"killed (no summary, no heartbeat): {killed.name}" in status
    assert f"job log of {killed.name}: {meta(killed)['slurm']['log']}" in status
    assert f"job log of {cancelled.name}: {meta(cancelled)['slurm']['log']}" in status
    assert "continue grid" in status and "--launcher slurm" in status

    again = dlexp(*grid)
    assert again.returncode == 0, again.stderr
    assert "2 points: 0 done, 2 to resume, 0 to run" in again.stderr
    assert run_dirs(res) == sorted([cancelled, killed])  # continued in place: nothing ran twice
    for run in (cancelled, killed):
        s = summary(run)
        assert s["status"] == "ok" and s["epochs_completed"] == 30
        (resumed,) = meta(run)["resumed"]
        assert resumed["from_epoch"] >= 1  # from its checkpoint, not from scratch


@pytest.mark.slow
def test_the_time_limit_warning_requeues_the_job_and_it_resumes_its_point_within_the_same_command(slurm, dlexp, tmp_path, fast):
    res = tmp_path / "results"
    # --fresh too: the requeued job must resume the run it started, not start another
    proc = dlexp("run", "-m", "seed=0", *LONG, f"results_dir={res}", "--launcher", "slurm", "--time", "10", "--fresh", *fast,
                 start=True)
    wait_until(lambda: any((r / "checkpoint.pt").is_file() for r in run_dirs(res)), proc, what="the first checkpoint")
    (run,) = run_dirs(res)
    job = meta(run)["slurm"]["job_id"]
    # what Slurm sends `signal_delay_s` before the time limit (sbatch --signal=USR2@90); its own
    # timer sends it up to 30 s late, too slow and uneven for a test
    slurm.run("scancel", "--signal=USR2", job)
    wait_until(lambda: slurm.states().get(job) in ("PENDING", "REQUEUED"), proc, what="the requeue")
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")  # Slurm holds a requeued job a while
    out, err = proc.communicate(timeout=180)

    assert proc.returncode == 0, err
    assert run_dirs(res) == [run]  # one run folder: resumed in place
    s = summary(run)
    assert s["status"] == "ok" and s["epochs_completed"] == 30
    (resumed,) = meta(run)["resumed"]
    assert 1 <= resumed["from_epoch"] < 30, "the warning did not land mid-run"
    assert "ok (resumed)" in out


@pytest.mark.slow
def test_no_wait_then_the_same_command_waits_for_the_queued_jobs_instead_of_submitting_them_again(slurm, dlexp, tmp_path, fast):
    res = tmp_path / "results"
    # one job at a time, each a few seconds: the second command finds some of them still queued
    grid = ["run", "-m", "seed=0,1,2", *LONG, "trainer.epochs=10", f"results_dir={res}", "--launcher", "slurm", "--max-parallel", "1", *fast]
    first = dlexp(*grid, "--no-wait")
    assert first.returncode == 0, first.stderr
    assert "not waiting (--no-wait)" in first.stderr and f"dlexp status {res}" in first.stderr
    (submitted,) = arrays(res, "grid")

    # the same command, waiting this time, interrupted (no terminal): it leaves the jobs running
    waiting = dlexp(*grid, start=True)
    wait_until(lambda: "waiting for those jobs" in (waiting.stderr.readline() or ""), waiting, what="the command to attach")
    waiting.send_signal(signal.SIGINT)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 130
    assert f"cancel them with: scancel {submitted['array_id']}" in err and "[y/N]" not in err
    assert len(arrays(res, "grid")) == 1  # it had submitted nothing

    last = dlexp(*grid)
    assert last.returncode == 0, last.stderr
    assert len(arrays(res, "grid")) == 1  # still the first array: it waited for those jobs
    runs = run_dirs(res)
    assert len(runs) == 3 and {summary(r)["status"] for r in runs} == {"ok"}
    assert {meta(r)["slurm"]["job_id"].split("_")[0] for r in runs} == {submitted["array_id"]}


@pytest.mark.slow
def test_a_kfold_study_on_slurm_gives_the_fold_scores_of_the_same_study_run_locally(slurm, dlexp, tmp_path, fast):
    study = ["kfold", "--folds", "3", "-m", "optimizer.lr=0.1,0.5", *SMALL, "trainer.epochs=2", *ONE, "--study", "cv"]
    on_slurm = dlexp(*study, f"results_dir={tmp_path / 'slurm'}", "--launcher", "slurm", "--runs-per-job", "3", *fast)
    assert on_slurm.returncode == 0, on_slurm.stderr
    local = dlexp(*study, f"results_dir={tmp_path / 'local'}", "--quiet")
    assert local.returncode == 0, local.stderr
    (submitted,) = arrays(tmp_path / "slurm", "kfold")
    assert len(submitted["jobs"]) == 2  # 6 folds, 3 to a job

    def folds(root: Path) -> list[tuple]:
        with open(root / "kfold" / "cv" / "folds.csv", newline="") as f:
            return sorted((r["candidate"], r["repeat"], r["fold"], r["status"], r["score"], r["train_score"]) for r in csv.DictReader(f))

    assert len(folds(tmp_path / "slurm")) == 6
    assert folds(tmp_path / "slurm") == folds(tmp_path / "local")
    ranking = lambda root: (root / "kfold" / "cv" / "summary.csv").read_text().splitlines()
    strip_cost = lambda lines: [",".join(x.split(",")[:-1]) for x in lines]  # the cost column is wall-clock time
    assert strip_cost(ranking(tmp_path / "slurm")) == strip_cost(ranking(tmp_path / "local"))


@pytest.mark.slow
def test_a_sweep_with_two_slurm_workers_on_a_journal_file_ends_with_exactly_the_trials_asked(slurm, dlexp, tmp_path, fast):
    import optuna

    res = tmp_path / "results"
    journal = tmp_path / "study.log"
    sweep = ["sweep", "sweep=lr_wd", "trainer.epochs=2", "trainer.batch_size=512", "model.hidden=[16]", f"results_dir={res}",
             "--trials", "6", "--study", "onslurm", "--storage", f"journal:{journal}", "--seed", "3", "--pruner", "none"]
    done = dlexp(*sweep, "--launcher", "slurm", "--workers", "2", *fast)
    assert done.returncode == 0, done.stderr
    (submitted,) = arrays(res, "sweep")
    assert len(submitted["jobs"]) == 2

    study = optuna.load_study(study_name="onslurm", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 6 and "RUNNING" not in states and "WAITING" not in states
    # each worker has its own sampler seed: no two trials are the same draw (with one --seed for
    # both, the two workers' first trials would be)
    params = [tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"]
    assert len(set(params)) == len(params)
    finished = sorted(t.number for t in study.trials if t.state.name == "COMPLETE")
    assert sorted(summary(r)["trial"] for r in run_dirs(res)) == finished  # one run per trial, none twice
    assert all("--launcher" in meta(r)["command"] for r in run_dirs(res))  # the command that continues it
    assert (res / "sweeps" / "onslurm.trials.csv").is_file()

    again = dlexp(*sweep, "--launcher", "slurm", "--workers", "2", *fast)  # a finished study: the workers stop at once
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="onslurm", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))).trials) == len(study.trials)
