"""`--resume` checks that a run's checkpoint, config.yaml and data belong together, and never makes a
run worse than it was.

Each test damages a real run folder the way a crash, an editor or a changed file would (a checkpoint
without its summary, a checkpoint missing a part or of other shapes, an edited config.yaml, a changed
CSV, a damaged meta.json, temporary files of a killed write, a run still training) and resumes it
through the CLI. A refusal is one line, exit 2, with every file of the run folder left as it was.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import SMALL, run_dirs

TWO = [*SMALL, "trainer.epochs=2"]


def error_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.strip() and "Warning" not in l and not l.startswith(" ")]


def snapshot(run: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(run.iterdir()) if f.is_file()}


@pytest.fixture
def run2(cli, results_dir, data_env) -> Path:
    """A finished two-epoch run on digits (checkpoint after epoch 2)."""
    r = cli("run", *TWO, f"results_dir={results_dir}", "--quiet")
    assert r.exit_code == 0, r.output
    return run_dirs(results_dir)[0]


def resume(cli, run: Path, results_dir: Path):
    return cli("run", "--resume", run.name, f"results_dir={results_dir}", "--quiet")


def as_killed(run: Path, at_epoch: int | None = None) -> None:
    """Make `run` look killed after the checkpoint of `at_epoch` (default: its last), before summary.json."""
    (run / "summary.json").unlink()
    (run / "model.pt").unlink()
    if at_epoch is not None:
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        assert ckpt["epoch"] >= at_epoch
        # an earlier checkpoint: the same run, cut back (its records, step and epoch)
        ckpt["records"] = [r for r in ckpt["records"] if r["epoch"] <= at_epoch]
        ckpt["epoch"], ckpt["step"] = at_epoch, ckpt["records"][-1]["step"]
        torch.save(ckpt, run / "checkpoint.pt")


def assert_refused(r, *words: str) -> None:
    assert r.exit_code == 2, r.output
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for w in words:
        assert w in lines[0], lines[0]


def test_a_run_killed_between_its_last_checkpoint_and_its_summary_is_finished_with_every_epoch(cli, run2, results_dir):
    before = json.loads((run2 / "summary.json").read_text())
    as_killed(run2)
    r = resume(cli, run2, results_dir)
    assert r.exit_code == 0, r.output
    after = json.loads((run2 / "summary.json").read_text())
    assert after["status"] == "ok" and after["epochs_completed"] == 2 == before["epochs_completed"]
    assert after["final"] == before["final"] and after["steps"] == before["steps"]
    assert (run2 / "model.pt").is_file()


@pytest.mark.parametrize("status", ["ok", "diverged", "pruned"])
def test_a_finished_run_is_left_as_it_was(cli, run2, results_dir, status):
    summary = json.loads((run2 / "summary.json").read_text())
    summary["status"] = status
    (run2 / "summary.json").write_text(json.dumps(summary))
    ckpt = torch.load(run2 / "checkpoint.pt", weights_only=True)
    ckpt["epoch"] = 1  # an earlier checkpoint (checkpoints every few epochs): still nothing to resume
    torch.save(ckpt, run2 / "checkpoint.pt")
    before = snapshot(run2)
    r = resume(cli, run2, results_dir)
    assert r.exit_code == 0 and "nothing to resume" in r.stdout, r.output
    assert snapshot(run2) == before


@pytest.mark.parametrize("part", ["rng", "model", "optimizer", "records", "epoch", "rng.shuffle"])
def test_a_checkpoint_missing_a_part_is_refused_and_the_run_stays_as_it_was(cli, run2, results_dir, part):
    as_killed(run2, at_epoch=1)
    ckpt = torch.load(run2 / "checkpoint.pt", weights_only=True)
    if "." in part:
        del ckpt["rng"][part.split(".")[1]]
    else:
        del ckpt[part]
    torch.save(ckpt, run2 / "checkpoint.pt")
    before = snapshot(run2)
    assert_refused(resume(cli, run2, results_dir), "checkpoint.pt", part.split(".")[-1])
    assert snapshot(run2) == before


@pytest.mark.parametrize("damage", ["weights", "optimizer_state", "rng_state", "records_of_another_run"])
def test_a_checkpoint_that_loads_but_does_not_fit_is_refused(cli, run2, results_dir, damage):
    as_killed(run2, at_epoch=1)
    ckpt = torch.load(run2 / "checkpoint.pt", weights_only=True)
    if damage == "weights":
        name = next(iter(ckpt["model"]))
        ckpt["model"][name] = torch.zeros(3, 3)
    elif damage == "optimizer_state":  # SGD with momentum: a buffer per parameter
        ckpt["optimizer"]["state"] = {0: {"momentum_buffer": torch.zeros(7)}}
    elif damage == "rng_state":
        ckpt["rng"]["shuffle"] = torch.zeros(3, dtype=torch.uint8)
    else:
        for rec in ckpt["records"]:
            rec["run_id"] = "20990101-000000-abcdef"
    torch.save(ckpt, run2 / "checkpoint.pt")
    before = snapshot(run2)
    assert_refused(resume(cli, run2, results_dir), "checkpoint.pt")
    assert snapshot(run2) == before


@pytest.mark.parametrize("edit", [
    lambda c: c["model"].update(hidden=[64]),
    lambda c: c["optimizer"].update(name="adam", betas=[0.9, 0.999], eps=1e-8, amsgrad=False),
    lambda c: c["trainer"].update(epochs=1),
    lambda c: c["optimizer"].update(lr=0.5),
], ids=["hidden_sizes", "another_optimizer", "fewer_epochs_than_run", "another_lr"])
def test_an_edited_config_yaml_is_refused(cli, run2, results_dir, edit):
    as_killed(run2, at_epoch=2 if "epochs" in str(edit) else 1)
    cfg = yaml.safe_load((run2 / "config.yaml").read_text())
    edit(cfg)
    (run2 / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = snapshot(run2)
    assert_refused(resume(cli, run2, results_dir), "config.yaml")
    assert snapshot(run2) == before


def test_an_edited_config_is_caught_by_shapes_and_epochs_even_for_a_run_recorded_before_config_digests(cli, run2, results_dir):
    as_killed(run2, at_epoch=2)
    meta = json.loads((run2 / "meta.json").read_text())
    del meta["config_sha1"]  # an older run: no digest to compare with
    (run2 / "meta.json").write_text(json.dumps(meta))
    cfg = yaml.safe_load((run2 / "config.yaml").read_text())
    cfg["trainer"]["epochs"] = 1
    (run2 / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert_refused(resume(cli, run2, results_dir), "epoch 2", "1 epochs")
    cfg["trainer"]["epochs"], cfg["model"]["hidden"] = 2, [64]
    (run2 / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert_refused(resume(cli, run2, results_dir), "does not fit the model")


def test_a_data_file_changed_since_the_start_is_refused(cli, results_dir, tmp_path, data_env):
    csv = tmp_path / "data.csv"
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    frame["y"] = (frame["a"] > 0).astype(int)
    frame.to_csv(csv, index=False)
    args = ["dataset=csv", f"dataset.path={csv}", "dataset.target=y", "dataset.task=classification", *TWO]
    r = cli("run", *args, f"results_dir={results_dir}", "--quiet")
    assert r.exit_code == 0, r.output
    run = run_dirs(results_dir)[0]
    as_killed(run, at_epoch=1)
    frame.loc[3, "a"] = 123.0  # one cell
    frame.to_csv(csv, index=False)
    before = snapshot(run)
    assert_refused(resume(cli, run, results_dir), "data", "changed")
    assert snapshot(run) == before


@pytest.mark.parametrize("damage", ["missing", "not_utf8", "not_json", "a_list", "symlink"])
def test_a_damaged_meta_json_is_refused_in_one_line(cli, run2, results_dir, tmp_path, damage):
    as_killed(run2, at_epoch=1)
    meta = run2 / "meta.json"
    if damage == "missing":
        meta.unlink()
    elif damage == "not_utf8":
        meta.write_bytes(b"\xff\xfe{\x00")
    elif damage == "not_json":
        meta.write_text("{not json")
    elif damage == "a_list":
        meta.write_text("[1, 2]")
    else:
        elsewhere = tmp_path / "meta.json"
        elsewhere.write_bytes(meta.read_bytes())
        meta.unlink()
        meta.symlink_to(elsewhere)
    before = snapshot(run2) if damage != "symlink" else None
    assert_refused(resume(cli, run2, results_dir), "meta.json")
    if before is not None:
        assert snapshot(run2) == before


def test_temporary_files_of_a_killed_write_are_removed_on_resume(cli, run2, results_dir):
    as_killed(run2, at_epoch=1)
    leftovers = [".metrics.csv.k2j4x9.tmp", ".checkpoint.pt.8dhw1q.tmp", ".summary.json.zz01.tmp"]
    for name in leftovers:
        (run2 / name).write_bytes(b"half a write")
    r = resume(cli, run2, results_dir)
    assert r.exit_code == 0, r.output
    assert not [f.name for f in run2.iterdir() if f.name.endswith(".tmp")]
    assert json.loads((run2 / "summary.json").read_text())["epochs_completed"] == 2
    resumed = json.loads((run2 / "meta.json").read_text())["resumed"][-1]
    assert sorted(resumed["removed_temp_files"]) == sorted(leftovers)


def test_resuming_a_run_that_is_still_training_is_refused(cli_subprocess, results_dir):
    long = ["run", "trainer.epochs=400", "trainer.batch_size=16", "model.hidden=[32]", "trainer.device=cpu", "--quiet",
            f"results_dir={results_dir}"]
    p = cli_subprocess(*long, start=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dirs(results_dir) and (run_dirs(results_dir)[0] / "checkpoint.pt").is_file()):
            assert p.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.01)
        run = run_dirs(results_dir)[0]
        r = cli_subprocess("run", "--resume", run.name, f"results_dir={results_dir}", "--quiet")
        assert p.poll() is None, "the run ended before the resume was tried; it proves nothing"
        assert r.exit_code == 2, r.output
        assert len(error_lines(r.stderr)) == 1 and "another process" in r.stderr
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=120)
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
