"""`dlexp sweep`: an Optuna study over a search space in conf/sweep/<name>.yaml, one run per trial."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dlexp.cli import slurm_options as so
from dlexp.cli.common import err, fail, out, user_errors


def sweep(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="sweep=NAME (a file of conf/sweep/) and Hydra overrides that fix the rest: optimizer=adam model=mlp trainer.epochs=20", show_default=False)] = None,
    trials: Annotated[int, typer.Option("--trials", "-n", help="Finished trials (complete or pruned) the study should have in total, over all workers and reruns.")] = 20,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Start no new trial after this many seconds.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe | random | grid (a finite space) | cmaes (needs `pip install cmaes`) | qmc; seeded by --seed.")] = "tpe",
    pruner: Annotated[str, typer.Option("--pruner", help="median | hyperband | none | wilcoxon (with --cv: compares fold scores).")] = "median",
    metric: Annotated[Optional[str], typer.Option("--metric", help="Objective, final epoch (or mean over folds): default val/acc for classification, val/log_rmse (positive targets) or val/rmse for regression.")] = None,
    direction: Annotated[Optional[str], typer.Option("--direction", help="maximize | minimize; default: the metric's (acc up, losses and errors down).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Trials at once on this machine, each worker its own process on the same storage.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Sampler seed: one job and the same seed give the same sequence of trials.")] = 0,
    cv: Annotated[Optional[int], typer.Option("--cv", help="Optimize the K-fold cross-validation score (mean over K folds); pruning sees each fold.")] = None,
    vectorize: Annotated[int, typer.Option("--vectorize", help="Ask Optuna for N trials at once and train those that can share one stacked model as one group (see README, Vectorized runs); --trials keeps its meaning.")] = 1,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Where the study lives: default results/sweeps/<study>.db (SQLite); any Optuna database URL (postgresql+psycopg://user:pw@host/db, shared by workers on several machines); a .db file; or an Optuna journal file: journal:PATH, *.log, *.jsonl (no crash recovery).")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study name; default <sweep>-<hash of the fixed overrides, metric and --cv>, so the same command resumes.")] = None,
    heartbeat: Annotated[int, typer.Option("--heartbeat", help="Seconds between a running trial's liveness records (database storages); a trial silent for 3 beats is failed and retried once.")] = 10,
    config_dir: Annotated[Optional[str], typer.Option("--config-dir", help="A folder of your own configs (sweep/*.yaml too), searched before dlexp's.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live display and no per-trial lines.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks and Optuna's log.")] = False,
    launcher: so.Launcher = "local",
    workers: so.Workers = None,
    partition: so.Partition = None,
    time_limit: Annotated[Optional[str], typer.Option("--time", help="Time limit per worker job: minutes, H:MM:SS or D-HH:MM (default: the partition's).")] = None,
    cpus_per_task: so.CpusPerTask = None,
    mem: so.Mem = None,
    gpus: so.Gpus = None,
    account: so.Account = None,
    qos: so.Qos = None,
    sbatch: so.Sbatch = None,
    max_parallel: so.MaxParallel = None,
    no_wait: so.NoWait = False,
    worker_index: Annotated[int, typer.Option("--worker-index", hidden=True, help="This process's first worker number (sampler seeds); set by --launcher slurm for its worker jobs.")] = 0,
) -> None:
    """Search hyperparameters with Optuna; every trial is an ordinary run under results/runs/.

    Resume: the same command continues its study (same name) until --trials trials have FINISHED in
    total, complete or pruned; failed trials do not count, and a diverged trial (NaN loss) is pruned
    with its reason. Several workers (--jobs, or the same command on other machines with a shared
    --storage) together stop at exactly --trials. A trial whose process died is failed after 3 missed
    heartbeats and retried once. Writes results/sweeps/<study>.trials.csv, <study>.best.yaml (the
    `dlexp run` command of the best trial) and experiment/<study>.yaml
    (dlexp run --config-dir results/sweeps experiment=<study>).

    Seeds: each worker samples with its own seed, derived from --seed and its worker number (one job
    on a fresh study uses --seed itself), so workers started at once do not replay the same trials.
    --launcher slurm --workers N submits N worker jobs sharing the study (it needs --storage
    postgresql+psycopg://... or journal:PATH on the shared file system).

    Examples: dlexp sweep sweep=lr_wd optimizer=adam --trials 50;
    dlexp sweep sweep=optimizers --trials 100 --pruner hyperband --cv 5;
    dlexp sweep sweep=lr_wd --trials 100 --launcher slurm --workers 8 --storage journal:results/sweeps/lr_wd.log
    """
    from dlexp import sweep as sw
    from dlexp.errors import ConfigError

    overrides = list(overrides or [])
    with user_errors(debug):
        try:
            slurm = so.slurm_options(launcher, config_dir, partition=partition, time=time_limit, cpus_per_task=cpus_per_task,
                                     mem=mem, gpus=gpus, account=account, qos=qos, sbatch=sbatch, max_parallel=max_parallel,
                                     no_wait=no_wait, workers=workers)
            plan = _plan(overrides, trials=trials, timeout=timeout, sampler=sampler, pruner=pruner, metric=metric,
                         direction=direction, jobs=jobs, seed=seed, cv=cv, storage=storage, study=study,
                         heartbeat=heartbeat, config_dir=config_dir, debug=debug, slurm=slurm, workers=1 if workers is None else workers,
                         no_wait=no_wait, worker_index=worker_index, vectorize=vectorize)
        except ConfigError as e:
            raise ConfigError(sw.mask(str(e), storage)) from None
        raise typer.Exit(_execute(plan, quiet=quiet))


def _plan(overrides: list[str], **o) -> dict[str, Any]:
    """Check every input and open the study, before any trial: a bad input is one line and exit 2."""
    from dlexp import config
    from dlexp import sweep as sw
    from dlexp.errors import ConfigError

    if o["trials"] < 1:
        raise ConfigError(f"--trials: must be >= 1, got {o['trials']}")
    if o["jobs"] < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {o['jobs']}")
    if not 0 <= o["seed"] < 2**32:  # Optuna's samplers seed numpy's legacy generator
        raise ConfigError(f"--seed: must be in [0, 2**32), got {o['seed']}")
    if o["timeout"] is not None and not 0 < o["timeout"] < float("inf"):
        raise ConfigError(f"--timeout: must be > 0 seconds, got {o['timeout']}")
    if o["heartbeat"] < 1:
        raise ConfigError(f"--heartbeat: must be >= 1 second, got {o['heartbeat']}")
    if o["sampler"] not in sw.SAMPLERS:
        raise ConfigError(f"--sampler {o['sampler']}: unknown; choose one of: {', '.join(sw.SAMPLERS)}")
    if o["pruner"] not in sw.PRUNERS:
        raise ConfigError(f"--pruner {o['pruner']}: unknown; choose one of: {', '.join(sw.PRUNERS)}")
    if o["cv"] is not None and o["cv"] < 2:
        raise ConfigError(f"--cv: K must be >= 2, got {o['cv']}")
    if o["pruner"] == "wilcoxon" and not o["cv"]:
        raise ConfigError("--pruner wilcoxon: compares per-fold scores, so it needs --cv K")
    if o["pruner"] == "wilcoxon" and o["cv"] < 5:
        # Optuna's WilcoxonPruner prunes at p < 0.1; with 3 folds the smallest one-sided p is 1/8, and
        # with 4 only the last fold can reach it: it would never save a fold
        raise ConfigError(f"--pruner wilcoxon: needs --cv 5 or more to ever prune (got --cv {o['cv']}); use median")
    if o["direction"] is not None and o["direction"] not in ("maximize", "minimize"):
        raise ConfigError(f"--direction: expected maximize or minimize, got {o['direction']!r}")
    if o["study"] is not None:
        config.check_name(o["study"], "--study", 100)  # it names files under results/sweeps/
    if o["workers"] < 1:
        raise ConfigError(f"--workers: must be >= 1, got {o['workers']}")
    if o["vectorize"] < 1:
        raise ConfigError(f"--vectorize: the trials asked at once, must be >= 1, got {o['vectorize']}")
    if o["vectorize"] > 1 and o["cv"]:
        raise ConfigError("--vectorize: not with --cv (a trial's folds train one after another); "
                          "use dlexp kfold --vectorize to stack folds")
    if o["worker_index"] < 0:
        raise ConfigError(f"--worker-index: must be >= 0, got {o['worker_index']}")
    if o["slurm"] is not None:
        from dlexp.launchers.slurm import check_sweep_storage

        check_sweep_storage(o["storage"])  # before anything is loaded or submitted

    names = [x.split("=", 1)[1] for x in overrides if x.split("=", 1)[0] == "sweep"]
    fixed = [x for x in overrides if x.split("=", 1)[0] != "sweep"]
    spaces = sw.available(o["config_dir"])
    if len(names) != 1:
        raise ConfigError(f"sweep=NAME: {'give one search space' if not names else 'give only one sweep='}; "
                          f"choose one of: {', '.join(spaces) or '(none)'}")
    space = sw.load_space(names[0], o["config_dir"])
    fixed = config.expand(fixed, multirun=False, config_dir=o["config_dir"])[0]
    sw.check_fixed(space, fixed)
    base = config.compose(fixed, o["config_dir"])  # a bad fixed override: exit 2 before any trial
    compose = sw.Composer(space, fixed, o["config_dir"])
    for values in sw.probes(space):  # values a config refuses: exit 2 before any trial
        try:
            compose(values)
        except ConfigError as e:
            tried = " ".join(f"{k}={v}" for k, v in values.items())
            raise ConfigError(f"sweep={space.name}: {e} (with {tried})") from None
    if o["sampler"] != "grid":
        sw.make_sampler(o["sampler"], 0, space)  # cmaes without its package: exit 2 now
    else:
        sw.grid(space)

    from dlexp.data import load_source

    source = load_source(base.dataset)
    default, default_direction, known = sw.metric_choices(source.task, source.positive_target, cv=bool(o["cv"]))
    metric = o["metric"] or default
    if metric not in known:
        raise ConfigError(f"--metric {metric}: not a metric of {base.dataset.name} ({source.task}); choose one of: {', '.join(known)}")
    if o["cv"]:
        from dlexp.kfold import make_folds

        try:
            make_folds(source, o["cv"], seed=int(base.dataset.get("split_seed", 0)))
        except ConfigError as e:
            raise ConfigError(str(e).replace("--folds", "--cv")) from None
    if not o["cv"] and metric.startswith("val/") and float(base.dataset.get("val_fraction", 0.0)) <= 0:
        raise ConfigError(f"--metric {metric}: dataset.val_fraction is 0, so there is no validation split; set it > 0 or use --cv K")
    direction = o["direction"] or (known[metric] if o["metric"] else default_direction)
    name = o["study"] or sw.study_name(space.name, fixed, metric, o["cv"])
    kind, target = sw.storage_target(o["storage"], base.results_dir, name)
    return dict(o, space=space, fixed=fixed, metric=metric, direction=direction, study=name, kind=kind, target=target,
                results_dir=str(base.results_dir), argv=[sw.mask(a, target) for a in sys.argv],
                composer=compose)  # its compositions, made by the probes, serve the trials too


def _open_study(plan: dict[str, Any], seed: int | None):
    import optuna

    from dlexp import sweep as sw
    from dlexp.errors import ConfigError

    storage = sw.open_storage(plan["kind"], plan["target"], plan["heartbeat"])
    sampler = sw.make_sampler(plan["sampler"], seed, plan["space"])
    pruner = sw.make_pruner(plan["pruner"], plan["cv"])
    study = sw._retry(lambda: optuna.create_study(storage=storage, study_name=plan["study"], direction=plan["direction"],
                                                  sampler=sampler, pruner=pruner, load_if_exists=True), plan["target"])
    if study.direction.name.lower() != plan["direction"]:
        raise ConfigError(f"--direction {plan['direction']}: study {plan['study']} exists and {study.direction.name.lower()}s; "
                          "use another --study")
    recorded = study.user_attrs.get("metric")
    if recorded is None:
        study.set_user_attr("metric", plan["metric"])
        study.set_user_attr("sweep", plan["space"].name)
        study.set_user_attr("fixed_overrides", plan["fixed"])
    elif recorded != plan["metric"]:
        raise ConfigError(f"--metric {plan['metric']}: study {plan['study']} optimizes {recorded}; use another --study")
    return study


def _objective(plan: dict[str, Any]):
    from dlexp import sweep as sw

    meta = {"command": plan["argv"], "sweep": {"study": plan["study"], "space": plan["space"].name,
                                                 "storage": sw.mask(plan["target"], plan["target"]),
                                                 "metric": plan["metric"], "direction": plan["direction"]}}
    return sw.Objective(plan["space"], plan["fixed"], metric=plan["metric"], n_trials=plan["trials"], study_name=plan["study"],
                        config_dir=plan["config_dir"], cv=plan["cv"], pruner=plan["pruner"], extra_meta=meta,
                        composer=plan.get("composer"))


def _worker_seed(seed: int, worker: int, existing: int) -> int:
    """One job on a fresh study: the seed itself. Other workers and resumed studies get seeds derived
    from it, so they do not replay the trials the first run already sampled."""
    if worker == 0 and existing == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, existing]).generate_state(1)[0])


def _quiet_optuna(debug: bool) -> None:
    import warnings

    import optuna

    # Optuna logs each failed trial with its traceback at WARNING; dlexp prints the trial's one-line
    # reason itself (and keeps it in trials.csv), so only --debug shows Optuna's log
    optuna.logging.set_verbosity(optuna.logging.INFO if debug else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*heartbeat.*")


def _process_worker(plan: dict[str, Any], worker: int, existing: int, threads: int, deadline: float | None) -> str:
    """One --jobs worker in its own process: its own storage connection, data loaded once. It dies
    with the parent (kill -9 of `dlexp sweep` included): its trial ends as interrupted, then it exits."""
    from dlexp.lifeline import die_with_parent
    from dlexp.signals import interrupt_on_stop_signals

    die_with_parent()
    interrupt_on_stop_signals()  # after die_with_parent, whose SIGTERM handler this replaces (a repeat is ignored)
    import torch

    torch.set_num_threads(threads)
    _quiet_optuna(plan["debug"])
    study = _open_study(plan, _worker_seed(plan["seed"], plan["worker_index"] + worker, existing))
    try:
        return _work(study, plan, deadline)
    except KeyboardInterrupt:
        return "interrupted"


def _work(study, plan, deadline, on_trial=None, on_wait=None, on_progress=None) -> str:
    from dlexp import sweep as sw

    objective = _objective(plan)
    objective.on_progress = on_progress
    return sw.work(study, objective, plan["trials"], deadline=deadline, on_trial=on_trial, on_wait=on_wait,
                   vectorize=plan.get("vectorize", 1))


def _execute(plan: dict[str, Any], quiet: bool) -> int:
    from dlexp import sweep as sw
    from dlexp.errors import ConfigError
    from dlexp.results import check_writable

    _quiet_optuna(plan["debug"])
    check_writable(plan["results_dir"])
    try:
        study = _open_study(plan, None)
    except ConfigError as e:
        raise fail(sw.mask(str(e), plan["target"])) from None
    existing = len(study.trials)
    deadline = time.time() + plan["timeout"] if plan["timeout"] else None
    display = _Display(plan, quiet)
    reasons: list[str] = []
    interrupted = False
    broken = None  # the storage failed (a full disk): one line, exit 1, after what can still be written
    display.start(study)
    try:
        if plan["slurm"] is not None:
            on_slurm = _slurm_workers(plan, display)
            reasons += on_slurm.run(lambda w: _worker_argv(plan, w), plan["workers"], lambda: display.update(study))
            if on_slurm.detached:  # --no-wait: the workers run on
                return 0
            reasons += _stopped_early(plan, study, deadline)
        elif plan["jobs"] == 1:
            study = _open_study(plan, _worker_seed(plan["seed"], plan["worker_index"], existing))
            reasons.append(_work(study, plan, deadline, on_trial=lambda t: display.trial(study, t),
                                 on_wait=lambda c: display.update(study, waiting=True), on_progress=lambda: display.progress(study)))
        else:
            reasons += _parallel(plan, study, existing, deadline, display)
    except KeyboardInterrupt:
        interrupted = True
    except sw.StorageError as e:
        broken = e
    finally:
        try:
            display.stop(study)
        except Exception:
            if broken is None:
                raise
    if broken is not None:
        raise fail(f"--storage {sw.mask(plan['target'], plan['target'])}: {broken}", code=1)
    written = sw.write_outputs(study, plan["space"], Path(plan["results_dir"]) / "sweeps", metric=plan["metric"],
                               direction=plan["direction"], config_dir=plan["config_dir"])
    _print_end(study, plan, written, reasons)
    if interrupted or "interrupted" in reasons:
        err.print("interrupted: finished trials are kept; rerun the same command to continue", markup=False)
        return 130
    c = sw.counts(study)
    return 0 if c["COMPLETE"] + c["PRUNED"] >= plan["trials"] or {"timeout", "exhausted"} & set(reasons) else 1


def _parallel(plan, study, existing: int, deadline, display) -> list[str]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from dlexp.study import default_threads

    jobs = plan["jobs"]
    threads = default_threads(jobs)  # $OMP_NUM_THREADS (a Slurm job's CPUs) or the cores this process may use, / jobs
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
    try:
        futures = [pool.submit(_process_worker, plan, w, existing, threads, deadline) for w in range(jobs)]
        while not all(f.done() for f in futures):
            display.update(study)
            time.sleep(1.0)
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _slurm_workers(plan: dict[str, Any], display):
    from dlexp.launchers.slurm_study import SlurmWorkers, study_folder

    storage = f"journal:{plan['target']}" if plan["kind"] == "journal" else plan["storage"]
    return SlurmWorkers(plan["slurm"], study_folder(plan["results_dir"], "sweep", plan["study"]), storage,
                        no_wait=plan["no_wait"], quiet=False, pause=display.pause)


def _worker_argv(plan: dict[str, Any], worker: int) -> list[str]:
    """The `dlexp sweep` command line of Slurm worker number `worker`: this command's study, settings
    and storage, with its own worker index (its sampler seeds) and no display."""
    storage = f"journal:{plan['target']}" if plan["kind"] == "journal" else plan["storage"]
    argv = ["sweep", f"sweep={plan['space'].name}", *plan["fixed"], "--trials", str(plan["trials"]), "--sampler", plan["sampler"],
            "--pruner", plan["pruner"], "--metric", plan["metric"], "--direction", plan["direction"], "--jobs", str(plan["jobs"]),
            "--seed", str(plan["seed"]), "--storage", storage, "--study", plan["study"], "--heartbeat", str(plan["heartbeat"]),
            "--worker-index", str(worker * plan["jobs"]), "--quiet"]
    for flag, key in (("--timeout", "timeout"), ("--cv", "cv"), ("--config-dir", "config_dir"), ("--vectorize", "vectorize")):
        if plan[key] is not None:
            argv += [flag, str(plan[key])]
    return argv + (["--debug"] if plan["debug"] else [])


def _stopped_early(plan: dict[str, Any], study, deadline: float | None) -> list[str]:
    """Why Slurm workers may have stopped short of --trials without failing: the time was up, or a
    grid sampler ran out of points (each worker judged it itself)."""
    from dlexp import sweep as sw

    reasons = []
    if deadline is not None and time.time() >= deadline:
        reasons.append("timeout")
    exhausted = getattr(study.sampler, "is_exhausted", None)
    if exhausted is not None and sw.counts(study)["WAITING"] == 0 and exhausted(study):
        reasons.append("exhausted")
    return reasons


class _Display:
    """Live view on a terminal (trial n of N, states, best so far); one line per trial otherwise."""

    def __init__(self, plan, quiet: bool):
        self.plan, self.quiet = plan, quiet
        self.live = None
        self.seen: set[int] = set()
        self.shown = 0.0  # when the live view was last redrawn (time.monotonic)

    def start(self, study) -> None:
        if self.quiet:
            return
        if sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(self._render(study), console=out, auto_refresh=False, transient=False)
            self.live.start()
        else:
            from dlexp import sweep as sw

            c = sw.counts(study)
            err.print(f"study {self.plan['study']} ({sw.mask(self.plan['target'], self.plan['target'])}): "
                      f"{c['COMPLETE'] + c['PRUNED']} of {self.plan['trials']} trials finished", markup=False)

    def trial(self, study, frozen) -> None:
        if self.quiet or frozen.number in self.seen:
            return
        if self.live is None:
            self.seen.add(frozen.number)  # printed once, whether reported by this worker or seen in update()
            value = f" {frozen.value:.4g}" if frozen.value is not None else ""
            reason = frozen.user_attrs.get("reason")
            params = " ".join(f"{k}={_fmt(v)}" for k, v in frozen.params.items())
            err.print(f"trial {frozen.number}: {frozen.state.name}{value} {params}" + (f" ({reason})" if reason else ""), markup=False)
        else:
            self.update(study)

    def update(self, study, waiting: bool = False) -> None:
        if self.live is not None:
            self.shown = time.monotonic()
            self.live.update(self._render(study, waiting), refresh=True)
        elif not self.quiet:
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in self.seen:
                    self.trial(study, t)

    def progress(self, study) -> None:
        """A running trial here reported an epoch: the live view shows it (at most twice a second)."""
        if self.live is not None and time.monotonic() - self.shown >= 0.5:
            self.update(study)

    def stop(self, study) -> None:
        if self.live is not None:
            self.live.update(self._render(study), refresh=True)
            self.live.stop()
            self.live = None

    def pause(self) -> None:
        """Stop the live view as it is (before a question about the Slurm jobs)."""
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _render(self, study, waiting: bool = False):
        from rich.table import Table

        from dlexp import sweep as sw

        c = sw.counts(study)
        finished = c["COMPLETE"] + c["PRUNED"]
        table = Table(title=f"sweep {self.plan['space'].name}: study {self.plan['study']}", show_header=False)
        table.add_row("trials", f"{finished} of {self.plan['trials']} finished" + (" (waiting for running trials)" if waiting else ""))
        table.add_row("states", ", ".join(f"{k.lower()} {v}" for k, v in c.items() if v))
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state.name == "RUNNING":
                table.add_row(f"trial {t.number}", running_line(t))
        eta = sweep_eta(trials, self.plan["trials"] - finished)
        if eta is not None:
            table.add_row("ETA", eta)
        best = sw.best_trial(study)
        if best is not None:
            table.add_row(f"best {self.plan['metric']}", f"{best.value:.4g} (trial {best.number})")
            table.add_row("best params", " ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
        return table


def running_line(trial) -> str:
    """`epoch 3/20` (or `fold 2/5` with --cv) of a running trial, from what it reported to the study,
    which every worker writes: the same line whether the trial runs here, in a --jobs worker or a Slurm job."""
    unit, total = (trial.user_attrs.get("planned") or ["epoch", None])[:2]
    steps = trial.intermediate_values
    done = (max(steps) + (1 if unit == "fold" else 0)) if steps else 0  # epochs count from 1, folds from 0
    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    return f"{unit} {done}/{total if total is not None else '?'}" + (f"  {params}" if params else "")


def sweep_eta(trials, left: int) -> str | None:
    """Time to finish `left` more trials: the mean wall time of the finished ones, times the rounds
    of as many trials at once as are running now (at least one); None before a trial has finished."""
    import math

    from dlexp.sweep import finished_seconds

    spans = finished_seconds(trials)
    if not spans or left <= 0:
        return None
    at_once = max(1, sum(1 for t in trials if t.state.name == "RUNNING"))
    seconds = sum(spans) / len(spans) * math.ceil(left / at_once)
    return f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {seconds:.0f} s"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_end(study, plan, written: dict[str, Path], reasons: list[str]) -> None:
    from dlexp import sweep as sw

    c = sw.counts(study)
    line = ", ".join(f"{k.lower()} {v}" for k, v in c.items() if v)
    out.print(f"study {plan['study']}: {line} (of {plan['trials']} to finish)", markup=False)
    if "stuck" in reasons and c["RUNNING"] and c["COMPLETE"] + c["PRUNED"] < plan["trials"]:
        # (a worker also stops "stuck" when the others' running trials will finish the study: no message then)
        err.print(f"{c['RUNNING']} trial(s) are RUNNING in a worker that may be gone; a journal storage has no heartbeat "
                  "to fail them, so use a database --storage for crash recovery", markup=False)
    if "exhausted" in reasons:
        err.print(f"the grid is exhausted: every point of the space has been tried", markup=False)
    if "failures" in reasons:
        err.print("stopped: too many failed trials; see the reason column of the trials table", markup=False)
    best = sw.best_trial(study)
    if best is not None:
        out.print(f"best: trial {best.number}, {plan['metric']} {best.value:.4g}: "
                  + " ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()), markup=False)
    for what, path in written.items():
        out.print(f"{what}: {path}", markup=False)
    if "best" in written:
        out.print(f"rerun the best: dlexp run --config-dir {Path(plan['results_dir']) / 'sweeps'} experiment={plan['study']}", markup=False)
