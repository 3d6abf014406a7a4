"""Results on disk: one folder per run under `<results_dir>/runs/<run_id>/`, and loaders that read them.

    config.yaml   the resolved config of the run
    meta.json     versions, device, command line, seed, git commit
    metrics.csv   tidy long table: run_id, epoch, step, split, metric, value, time_s
    summary.json  status (ok | diverged | pruned | interrupted | failed), duration, final and best values
    model.pt      the trained weights (state_dict), for predictions and submissions

Every file is written atomically (a temporary file in the same folder, then os.replace), so a
reader never sees half a file. Run ids come from os.mkdir, which fails if the folder exists, so two
processes starting at the same moment never share one.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

from dlexp.atomic import atomic_write  # noqa: F401  (re-exported: results.atomic_write)

METRIC_COLUMNS = ["run_id", "epoch", "step", "split", "metric", "value", "time_s"]
NUMERIC_METRIC_COLUMNS = ["epoch", "step", "value", "time_s"]
STATUSES = ("ok", "diverged", "pruned", "interrupted", "failed")


def write_json(path: str | Path, obj: Any, *, parents: bool = True) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", parents=parents)


def new_run_dir(results_dir: str | Path, name: str | None = None) -> tuple[str, Path]:
    """Create `<results_dir>/runs/<run_id>/` and return (run_id, path); the id is unique even across processes."""
    runs = Path(results_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    label = f"-{name}" if name else ""
    for _ in range(100):
        run_id = f"{stamp}{label}-{secrets.token_hex(3)}"
        path = runs / run_id
        try:
            os.mkdir(path)  # atomic: exactly one process wins a given id
        except FileExistsError:
            continue
        return run_id, path
    raise RuntimeError(f"could not create a fresh run folder under {runs}")


def check_writable(results_dir: str | Path) -> None:
    """Fail before training if the results folder cannot be created or written."""
    from dlexp.errors import ConfigError

    path = Path(results_dir)
    try:
        (path / "runs").mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path / "runs", prefix=".probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ConfigError(f"results_dir: cannot write to {path}: {e.strerror or e}") from None


def git_state(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git repository around `cwd`, or {} outside one."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def metrics_csv(records: Iterable[dict[str, Any]]) -> str:
    """The tidy table as CSV text (columns in METRIC_COLUMNS order, then any extra columns)."""
    import csv
    import io

    records = list(records)
    extra = sorted({k for r in records for k in r} - set(METRIC_COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS + extra, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _run_dirs(results_dir: str | Path) -> list[Path]:
    runs = Path(results_dir) / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def load_runs(results_dir: str | Path = "results"):
    """One row per run: run_id, flattened config columns (`optimizer.lr`, ...), summary fields, and
    `final.<split>/<metric>` / `best.<split>/<metric>` columns. Runs whose files are missing or
    unreadable are skipped with a warning on stderr.

    >>> import dlexp.results as r; runs = r.load_runs("results")  # doctest: +SKIP
    """
    import pandas as pd
    import yaml

    from dlexp.config import flatten

    rows = []
    for d in _run_dirs(results_dir):
        if not (d / "summary.json").exists() and (d / "meta.json").is_file():
            hint = " (resume it: dlexp run --resume " + d.name + ")" if (d / "checkpoint.pt").is_file() else ""
            print(f"warning: skipping run {d.name}: no summary.json yet: still running, or killed{hint}", file=sys.stderr)
            continue
        try:
            summary = json.loads((d / "summary.json").read_text())
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            if not isinstance(summary, dict) or not isinstance(cfg, dict):
                raise ValueError("summary.json or config.yaml is not a mapping")
            flat = flatten(cfg)
        except (OSError, ValueError, yaml.YAMLError, RecursionError) as e:  # RecursionError: nested too deep to read
            print(f"warning: skipping run {d.name}: {type(e).__name__}: {_clip(_first_line(e))}", file=sys.stderr)
            continue
        row = {"run_id": d.name}
        row.update(flat)
        for k, v in summary.items():
            if isinstance(v, dict):
                row.update({f"{k}.{m}": x for m, x in v.items()})
            elif k != "run_id":
                row[k] = v
        wrong = [k for k, v in row.items() if _numeric_field(k) and v is not None
                 and (isinstance(v, bool) or not isinstance(v, (int, float)))]
        if wrong:
            print(f"warning: skipping run {d.name}: summary.json {_clip(wrong[0])} is not a number ({_show(row[wrong[0]])})", file=sys.stderr)
            continue
        # the fields a report sorts, pairs and groups runs by must be plain values
        fields = {**{k: summary[k] for k in ("status", "study", "trial", "candidate", "repeat", "fold") if k in summary},
                  **({"seed": cfg["seed"]} if "seed" in cfg else {})}
        odd = [k for k, v in fields.items() if (k == "status" and not isinstance(v, str))
               or (v is not None and (isinstance(v, bool) or not isinstance(v, (str, int, float))))]
        if odd:
            print(f"warning: skipping run {d.name}: {'config.yaml' if odd[0] == 'seed' else 'summary.json'} {odd[0]} is not "
                  f"{'a string' if odd[0] == 'status' else 'a plain value'} ({_show(fields[odd[0]])})", file=sys.stderr)
            continue
        rows.append(row)
    return pd.DataFrame(rows)


def _numeric_field(key: str) -> bool:
    return key.startswith(("final.", "best.", "best_epoch.")) or key in ("duration_s", "epochs_completed", "steps")


def _show(value: Any) -> str:
    """A short repr of a value read from a file (its type name if it is nested too deep to print)."""
    try:
        return _clip(repr(value))
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"


def _clip(text: str, limit: int = 200) -> str:
    """At most `limit` characters of text read from a file: a warning never echoes a whole file."""
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_metrics(results_dir: str | Path = "results"):
    """The concatenated tidy metrics of every run: run_id, epoch, step, split, metric, value, time_s."""
    import pandas as pd

    frames = []
    for d in _run_dirs(results_dir):
        path = d / "metrics.csv"
        if not path.is_file():
            continue
        try:
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                # a file cut mid-row (a crash or a full disk while copying): its last row is partial, and
                # pandas would pad it with NaN; keep the complete rows only
                print(f"warning: metrics of run {d.name} end mid-row (the file was cut); dropping the partial last row",
                      file=sys.stderr)
                data = data[: data.rfind(b"\n") + 1]
            frame = pd.read_csv(io.BytesIO(data))
        except (OSError, ValueError) as e:
            print(f"warning: skipping metrics of run {d.name}: {_first_line(e)}", file=sys.stderr)
            continue
        missing = [c for c in METRIC_COLUMNS if c not in frame.columns]  # sweeps and kfold add columns
        if missing:
            print(f"warning: skipping metrics of run {d.name}: no column {missing[0]!r}", file=sys.stderr)
            continue
        if frame.empty:
            continue  # interrupted in its first epoch: a header and no rows
        numbers = frame[NUMERIC_METRIC_COLUMNS].apply(pd.to_numeric, errors="coerce")
        # 'nan' (a diverged run's value) reads as NaN already; only text that is not a number is damage
        damaged = (numbers.isna() & frame[NUMERIC_METRIC_COLUMNS].notna()).any(axis=1)
        if damaged.any():
            print(f"warning: metrics of run {d.name}: dropping {int(damaged.sum())} row(s) whose numbers do not parse",
                  file=sys.stderr)
        frame[NUMERIC_METRIC_COLUMNS] = numbers
        frames.append(frame[~damaged])
    if not frames:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return pd.concat(frames, ignore_index=True)
