"""Hyperparameter search with Optuna: a search space from `conf/sweep/<name>.yaml`, one ordinary run per trial.

A search space file lists parameters under `params:`; each key is a config key (an override) or a
config group (its values are choices of that group), in the order they are sampled:

    # Optimizer choice, learning rate, and SGD's momentum
    params:
      optimizer: [sgd, adam, rmsprop]                  # a plain list: a categorical
      optimizer.lr: {float: [1.0e-4, 1.0], log: true}  # float: [low, high], optional log or step
      trainer.batch_size: {int: [32, 256], step: 32}   # int: [low, high], optional step or log
      optimizer.momentum: {float: [0.0, 0.99], when: {optimizer: sgd}}
      decay: {categorical: [none, l2], override: false}
      optimizer.weight_decay: {float: [1.0e-6, 1.0e-2], log: true, when: {decay: l2}, otherwise: 0.0}

`when: {param: value | [values]}` samples a parameter only when every named (earlier) parameter took
one of the given values; `otherwise: v` then sets the key to the fixed `v` (without it, the key keeps
its config value). `override: false` marks a switch that only drives `when` and is no config key.

The objective of a trial is the final-epoch value of the metric (e.g. `val/acc`) of its run, or the
mean over folds with `--cv`. Data flow: sweep -> config.compose -> runner.execute -> results/.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dlexp import config
from dlexp.errors import ConfigError

SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc")
# Optuna stores a categorical's choices with every trial, and dlexp composes a config per choice before
# the first trial; a space of 10**6 choices would run silently for minutes. Past these bounds a space
# is refused: a range of numbers is an int or float parameter with a step, not a list.
MAX_CHOICES = 1000
MAX_GRID = 100_000
PRUNERS = ("median", "hyperband", "wilcoxon", "none")
# A trial counts towards --trials once it is finished: complete or pruned. Failed trials do not.
FINISHED = ("COMPLETE", "PRUNED")
_UNSET = object()


@dataclass
class Param:
    """One searched parameter. `kind` is float | int | categorical."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)
    when: dict[str, list[Any]] = field(default_factory=dict)
    otherwise: Any = _UNSET
    override: bool = True

    @property
    def group(self) -> bool:
        return self.name in config.GROUPS


@dataclass
class Space:
    name: str
    description: str
    params: list[Param]

    def keys(self) -> set[str]:
        return {p.name for p in self.params if p.override}


# ---------------------------------------------------------------------------------------------------
# search spaces


def available(config_dir: str | Path | None = None) -> dict[str, Path]:
    """Sweep name -> file, from `sweep/` in the user's --config-dir and in dlexp's conf/."""
    return config.choices("sweep", config_dir)


def load_space(name: str, config_dir: str | Path | None = None) -> Space:
    files = available(config_dir)
    if name not in files:
        raise ConfigError(f"sweep={name}: unknown search space; choose one of: {', '.join(files) or '(none)'}")
    path = files[name]
    try:
        data = config.read_yaml(path)  # bounded: an anchor bomb or a 5 GB file is refused
    except ConfigError as e:
        raise ConfigError(f"sweep={name}: {e}") from None
    return parse_space(data, name, config.describe(path), config_dir)


def parse_space(data: Any, name: str, description: str = "", config_dir: str | Path | None = None) -> Space:
    """Check a search space (the YAML's content) and return it; every error names the parameter."""
    where = f"sweep {name}"
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or not data["params"]:
        raise ConfigError(f"{where}: expected a mapping `params:` of at least one parameter")
    unknown = set(data) - {"params"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}; only `params:`")
    params: list[Param] = []
    for key, spec in data["params"].items():
        p = _param(str(key), spec, f"{where}: {key}")
        for other, values in p.when.items():
            earlier = next((q for q in params if q.name == other), None)
            if earlier is None:
                raise ConfigError(f"{where}: {key}: `when` names {other}, which is not a parameter declared before it")
            if earlier.kind != "categorical":
                raise ConfigError(f"{where}: {key}: `when` needs {other} to be categorical")
            bad = [v for v in values if v not in earlier.choices]
            if bad:
                raise ConfigError(f"{where}: {key}: `when: {{{other}: {bad[0]}}}` is not one of {other}'s choices {earlier.choices}")
        if p.group:
            if p.kind != "categorical":
                raise ConfigError(f"{where}: {key}: a config group takes a list of its choices")
            existing = config.choices(p.name, config_dir)
            bad = [c for c in p.choices if c not in existing]
            if bad:
                raise ConfigError(f"{where}: {key}: unknown choice {bad[0]!r}; choose among: {', '.join(existing)}")
        params.append(p)
    return Space(name, description, params)


def _param(key: str, spec: Any, where: str) -> Param:
    if isinstance(spec, list):
        spec = {"categorical": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a list of choices or a mapping with float/int/categorical")
    kinds = [k for k in ("float", "int", "categorical") if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of float: [low, high], int: [low, high], categorical: [...]")
    kind = kinds[0]
    allowed = {kind, "when", "otherwise", "override"} | ({"log", "step"} if kind != "categorical" else set())
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(map(str, extra)))}; allowed: {', '.join(sorted(allowed))}")
    when = spec.get("when", {}) or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{where}: `when` must be a mapping {{param: value or [values]}}")
    when = {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in when.items()}
    if "otherwise" in spec and not when:
        raise ConfigError(f"{where}: `otherwise` needs a `when`")
    override = spec.get("override", True)
    if not isinstance(override, bool):
        raise ConfigError(f"{where}: `override` must be true or false")
    p = Param(key, kind, when=when, otherwise=spec.get("otherwise", _UNSET), override=override)
    if kind == "categorical":
        choices = spec["categorical"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
        if len(choices) > MAX_CHOICES:
            raise ConfigError(f"{where}: {len(choices):,} choices, more than {MAX_CHOICES:,}; for a range of numbers "
                              "use {int: [low, high], step: ...} or {float: [low, high]}")
        # lists (model.hidden: [[64], [128, 128]]) become their override text, since Optuna stores scalars
        p.choices = [_override_text(c) if isinstance(c, (list, dict)) else c for c in choices]
        if len(set(map(repr, p.choices))) != len(p.choices):
            raise ConfigError(f"{where}: repeated choice in {choices}")
        return p
    bounds = spec[kind]
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
        raise ConfigError(f"{where}: {kind} needs [low, high], got {bounds!r}")
    p.low, p.high = bounds
    if not all(math.isfinite(b) for b in bounds):
        raise ConfigError(f"{where}: {kind} bounds must be finite numbers, got {bounds!r}")
    if kind == "int" and not all(isinstance(b, int) for b in bounds):
        raise ConfigError(f"{where}: int bounds must be integers, got {bounds!r}")
    if p.low >= p.high:
        raise ConfigError(f"{where}: low must be < high, got {bounds!r}")
    p.log = spec.get("log", False)
    if not isinstance(p.log, bool):
        raise ConfigError(f"{where}: `log` must be true or false")
    if p.log and p.low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0, got {p.low}")
    p.step = spec.get("step")
    if p.step is not None:
        if isinstance(p.step, bool) or not isinstance(p.step, (int, float)) or p.step <= 0 or (kind == "int" and not isinstance(p.step, int)):
            raise ConfigError(f"{where}: `step` must be a positive {'integer' if kind == 'int' else 'number'}")
        if p.log:
            raise ConfigError(f"{where}: `step` and `log` cannot be combined (as in Optuna)")
    return p


def active(p: Param, values: dict[str, Any]) -> bool:
    return all(values.get(k, _UNSET) in allowed for k, allowed in p.when.items())


def suggest(space: Space, trial) -> dict[str, Any]:
    """Sample the active parameters of `space` on an Optuna trial: {name: value}, in space order."""
    values: dict[str, Any] = {}
    for p in space.params:
        if not active(p, values):
            continue
        if p.kind == "float":
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            values[p.name] = trial.suggest_categorical(p.name, p.choices)
    return values


def _override_text(value: Any) -> str:
    """A value as Hydra override text: true/false/null, repr of numbers, [a,b] for lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_text(v) for v in value) + "]"
    return str(value)


def overrides(space: Space, fixed: list[str], values: dict[str, Any]) -> list[str]:
    """One trial's override list: group choices first (fixed, then sampled), then the fixed keys,
    then the sampled keys (a group choice must come before the keys it provides)."""
    sampled_groups, sampled_keys = [], []
    for p in space.params:
        if not p.override:
            continue
        if p.name in values:
            value = values[p.name]
        elif p.otherwise is not _UNSET and not active(p, values):
            value = p.otherwise
        else:
            continue
        (sampled_groups if p.group else sampled_keys).append(f"{p.name}={_override_text(value)}")
    fixed_groups = [o for o in fixed if _key(o) in config.GROUPS]
    fixed_keys = [o for o in fixed if _key(o) not in config.GROUPS]
    return fixed_groups + sampled_groups + fixed_keys + sampled_keys


def sampled_keys(space: Space, values: dict[str, Any]) -> dict[str, Any]:
    """The config keys (not groups) a trial sets, with their Python values: sampled or `otherwise`."""
    out: dict[str, Any] = {}
    for p in space.params:
        if not p.override or p.group:
            continue
        if p.name in values:
            out[p.name] = values[p.name]
        elif p.otherwise is not _UNSET and not active(p, values):
            out[p.name] = p.otherwise
    return out


def probes(space: Space) -> list[dict[str, Any]]:
    """Sampled-value sets that together touch every parameter's bounds and every choice, so that a
    space whose values a config refuses (an unknown key, a string for a number, a 0-unit layer) is
    refused before the first trial. One set per (parameter, probe value); the others take their
    first probe value, or a value that makes the parameter active (its `when`)."""
    def values_of(p: Param) -> list[Any]:
        if p.kind == "categorical":
            return list(p.choices)
        return [p.low, p.high]

    out = []
    for target in space.params:
        for v in values_of(target):
            values: dict[str, Any] = {}
            for p in space.params:
                if not active(p, values):
                    continue
                if p is target:
                    values[p.name] = v
                else:
                    wanted = target.when.get(p.name)
                    values[p.name] = wanted[0] if wanted else values_of(p)[0]
            if target.name in values:
                out.append(values)
    return out


class Composer:
    """`config.compose` for many trials that differ in a few numbers, at a fraction of its cost.

    Hydra composes each distinct set of group choices (fixed + sampled) once; a trial's sampled keys
    are then set on a copy, type-checked against the composed value and validated with
    `config.validate`. Any sampled string (which Hydra's override grammar might read differently)
    takes the full `config.compose` path. A test checks both paths give the same config.
    """

    def __init__(self, space: Space, fixed: list[str], config_dir: str | Path | None):
        self.space, self.fixed, self.config_dir = space, fixed, config_dir
        self._base: dict[tuple[str, ...], Any] = {}

    def __call__(self, values: dict[str, Any]):
        keys = sampled_keys(self.space, values)
        if any(not (isinstance(v, (int, float)) or v is None) for v in keys.values()):
            return config.compose(overrides(self.space, self.fixed, values), self.config_dir)
        groups = overrides(self.space, self.fixed, {k: v for k, v in values.items() if k in config.GROUPS})
        groups = tuple(o for o in groups if _key(o) not in keys)
        if groups not in self._base:
            self._base[groups] = config.compose(list(groups), self.config_dir)
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(OmegaConf.to_container(self._base[groups]))  # a deep copy, interpolations kept
        OmegaConf.set_struct(cfg, True)
        for key, value in keys.items():
            if OmegaConf.select(cfg, key, default=_UNSET) is _UNSET:
                raise ConfigError(f"{key}: unknown key (searched by sweep={self.space.name})")
            _check_type(key, OmegaConf.select(self._base[groups], key), value)
            OmegaConf.update(cfg, key, value, merge=False)
        config.validate(cfg)
        return cfg


def _check_type(key: str, ref: Any, value: Any) -> None:
    """As `config.compose`: a value keeps the type its file declares (an int key takes no 0.5)."""
    if ref is None or value is None:
        return
    if isinstance(ref, bool) or isinstance(value, bool):
        if not (isinstance(ref, bool) and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {'true or false' if isinstance(ref, bool) else 'a number'}, got {value!r}")
    elif isinstance(ref, int) and not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif isinstance(ref, float) and not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    elif isinstance(ref, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def check_fixed(space: Space, fixed: list[str]) -> None:
    """A key may be fixed on the command line or searched, not both."""
    searched = space.keys()
    for o in fixed:
        if _key(o) in searched:
            raise ConfigError(f"{_key(o)}: fixed on the command line ({o}) and searched by sweep={space.name}; drop one")


def grid(space: Space) -> dict[str, list[Any]]:
    """The finite grid of a space for Optuna's GridSampler; continuous parameters are refused, and
    grids of more than MAX_GRID points (counted before any list is built)."""
    out: dict[str, list[Any]] = {}
    points = 1
    for p in space.params:
        if p.kind == "categorical":
            size = len(p.choices)
        elif p.step is not None:
            size = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
        elif p.kind == "int" and not p.log:
            size = int(p.high) - int(p.low) + 1
        else:
            size = 1  # continuous: refused below, with its own message
        points *= size
        if points > MAX_GRID:
            raise ConfigError(f"--sampler grid: the grid of sweep {space.name} has more than {MAX_GRID:,} points "
                              f"({p.name} alone has {size:,} values); give coarser steps or use another sampler")
    for p in space.params:
        if p.kind == "categorical":
            out[p.name] = list(p.choices)
        elif p.step is not None:
            n = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
            values = [p.low + i * p.step for i in range(n)]
            out[p.name] = [int(v) for v in values] if p.kind == "int" else [float(round(v, 12)) for v in values]
        elif p.kind == "int" and not p.log:
            out[p.name] = list(range(int(p.low), int(p.high) + 1))
        else:
            raise ConfigError(f"--sampler grid: {p.name} is continuous ({p.kind} [{p.low}, {p.high}]{', log' if p.log else ''}); "
                              "give it a `step`, make it categorical, or use another sampler")
    return out


# ---------------------------------------------------------------------------------------------------
# names, storage, sampler, pruner


from dlexp.masking import mask, remember  # noqa: E402,F401  (sweep.mask: what report and the CLI call)




def study_name(sweep: str, fixed: list[str], metric: str, cv: int | None) -> str:
    """`<sweep>-<hash>`: the same command (fixed overrides, metric, --cv) names the same study, so it resumes.
    `results_dir=` is left out: it says where results go, not what is trained."""
    kept = [o for o in fixed if _key(o) != "results_dir"]
    key = "\n".join([*sorted(kept), f"metric={metric}", f"cv={cv or 0}"])
    return f"{sweep}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def storage_target(spec: str | None, results_dir: str | Path, study: str) -> tuple[str, str]:
    """(kind, target) for `--storage`: kind `rdb` (a SQLAlchemy URL) or `journal` (a file path).

    None -> `<results_dir>/sweeps/<study>.db` (SQLite); a URL with `://` -> that database;
    `journal:PATH` or a path ending in .log/.jsonl -> Optuna's journal file; a path ending in
    .db/.sqlite/.sqlite3 -> that SQLite file.
    """
    if spec is None:
        return "rdb", f"sqlite:///{_storage_file(Path(results_dir) / 'sweeps' / f'{study}.db', 'results_dir')}"
    if spec.startswith("journal:"):
        return "journal", str(_storage_file(spec[len("journal:"):], f"--storage {spec}"))
    if "://" in spec:
        remember(spec)
        _check_url(spec)
        return "rdb", spec
    suffix = Path(spec).suffix.lower()
    if suffix in (".log", ".jsonl"):
        return "journal", str(_storage_file(spec, f"--storage {spec}"))
    if suffix in (".db", ".sqlite", ".sqlite3"):
        return "rdb", f"sqlite:///{_storage_file(spec, f'--storage {spec}')}"
    raise ConfigError(f"--storage {mask(spec)}: expected a database URL (sqlite:///..., postgresql+psycopg://...), "
                      "a .db file, or a journal file (journal:PATH, *.log, *.jsonl)")


def _storage_file(path: str | Path, what: str, make: bool = False) -> Path:
    """The absolute path of a storage file, whose folder exists or can be made (not under a file).
    The folder is made only with `make` (when the storage is opened): checking writes nothing."""
    try:
        path = Path(path).expanduser().resolve()
        if make:
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            ancestor = next(p for p in path.parents if p.exists())
            if not ancestor.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(ancestor))
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise ConfigError(f"{what}: cannot make the folder of {path}: {getattr(e, 'strerror', None) or e}") from None
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder; give a file")
    return path


def _check_url(url: str) -> None:
    """A database URL that can work: a SQLite one names a file; a password holds no unencoded '@'
    (SQLAlchemy would take the rest of the password for the host name, and send it to DNS)."""
    from urllib.parse import urlsplit

    scheme = url.split("://", 1)[0]
    if scheme.split("+", 1)[0].lower() == "sqlite":
        path = _sqlite_path(url)
        if not path or ":memory:" in url or "mode=memory" in url:
            raise ConfigError(f"--storage {mask(url, url)}: give a SQLite file, as sqlite:///relative/path.db or "
                              "sqlite:////absolute/path.db (an in-memory study is lost at exit, and --jobs workers could not share it)")
        _storage_file(path, f"--storage {mask(url, url)}")
        return
    try:
        netloc = urlsplit(url).netloc
    except ValueError as e:
        raise ConfigError(f"--storage {mask(url, url)}: not a URL ({e})") from None
    if netloc.count("@") > 1:
        raise ConfigError(f"--storage {mask(url, url)}: the password holds an unencoded '@'; percent-encode it (@ is %40)")


def _sqlite_path(url: str) -> str:
    """The file of a SQLite URL: sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db, and the
    same in SQLite's URI form (sqlite:///file:/abs.db?uri=true); '' for sqlite:// (in memory)."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if not rest.startswith("/"):
        return ""
    path = rest[1:]
    return path[len("file:"):] if path.startswith("file:") else path


def open_storage(kind: str, target: str, heartbeat: int | None = 10):
    """An Optuna storage. RDB storages get a heartbeat: a trial whose process died is failed after
    3 missed beats and retried once (same parameters) by the next worker that asks for a trial."""
    import warnings

    import optuna

    if kind == "journal":
        # Optuna 5's journal storage has no heartbeat: a killed worker's trial stays RUNNING.
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

        try:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(target, lock_obj=JournalFileOpenLock(target)))
        except OSError as e:
            raise ConfigError(f"--storage journal:{target}: {e.strerror or e}") from None
    engine_kwargs: dict[str, Any] = {}
    remember(target)  # a worker process masks what its parent masks
    if target.startswith("sqlite"):
        path = _storage_file(_sqlite_path(target), f"--storage {mask(target, target)}", make=True)
        _sqlite_wal(path)
        # several local workers: wait for the write lock instead of failing with "database is locked"
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        kwargs = {}
        if heartbeat:
            quiet_storage_threads()
            kwargs = dict(heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        return _retry(lambda: optuna.storages.RDBStorage(target, engine_kwargs=engine_kwargs, **kwargs), target)


def _sqlite_wal(path: Path) -> None:
    """WAL journal mode: readers do not block the writer (persistent in the file; optuna-dashboard reads it)."""
    import sqlite3

    def go():
        con = sqlite3.connect(path, timeout=120)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()

    _retry(go, str(path))


def _retry(fn: Callable[[], Any], target: str, tries: int = 8) -> Any:
    """Table creation races between workers starting together; retry a few times before giving up."""
    for i in range(tries):
        try:
            return fn()
        except Exception as e:  # sqlalchemy/sqlite errors of a concurrent create
            text = str(e).lower()
            transient = any(s in text for s in ("locked", "already exists", "duplicate", "unique constraint"))
            if not transient or i == tries - 1:
                # the storage's own words (Optuna wraps a full disk as "invalid data in the commit")
                cause = storage_cause(e) or e
                raise ConfigError(f"--storage {mask(target, target)}: {mask(_cause_text(cause), target)}") from None
            time.sleep(0.2 * (i + 1))


def make_sampler(name: str, seed: int | None, space: Space):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid(space), seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError("--sampler cmaes: needs the `cmaes` package (pip install cmaes)") from None
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(f"--sampler {name}: unknown; choose one of: {', '.join(SAMPLERS)}")


def make_pruner(name: str, cv: int | None):
    import optuna

    if name == "median":
        # 5 unpruned trials first; the earliest prune is after epoch 2 (epoch 1 says little about the end)
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "wilcoxon":
        if not cv:
            raise ConfigError("--pruner wilcoxon: compares per-fold scores, so it needs --cv K")
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name}: unknown; choose one of: {', '.join(PRUNERS)}")


def metric_choices(task: str, positive_target: bool, cv: bool = False) -> tuple[str, str, dict[str, str]]:
    """(default metric, its direction, {metric: direction} of all that can be optimized)."""
    from dlexp.data import CLASSIFICATION, OBJECTIVE

    if task == OBJECTIVE:  # a 2-D objective has no samples to hold out: f at the point reached is the score
        return "train/loss", "minimize", {"train/loss": "minimize"}
    if task == CLASSIFICATION:
        names, default = ("loss", "acc"), "acc"
    else:
        names = ("loss", "rmse", "log_rmse") if positive_target else ("loss", "rmse")
        default = "log_rmse" if positive_target else "rmse"
    splits = ("val",) if cv else ("val", "train")
    found = {f"{s}/{m}": ("maximize" if m == "acc" else "minimize") for s in splits for m in names}
    return f"val/{default}", found[f"val/{default}"], found


# ---------------------------------------------------------------------------------------------------
# the objective and the worker loop


class _Surplus(Exception):
    """This trial started after --trials trials were already finished or running (a race between workers)."""


class Objective:
    """One trial: sample, compose, train through `runner.execute` (or kfold), report, return the value."""

    def __init__(self, space: Space, fixed: list[str], *, metric: str, n_trials: int, study_name: str,
                 config_dir: str | None, cv: int | None, pruner: str, extra_meta: dict[str, Any],
                 composer: Composer | None = None):
        self.space, self.fixed, self.metric, self.n_trials = space, fixed, metric, n_trials
        self.study_name, self.config_dir, self.cv, self.pruner = study_name, config_dir, cv, pruner
        self.extra_meta = extra_meta
        self._data: dict[str, Any] = {}  # dataset YAML -> (source, splits): loaded once per process
        self.compose = composer or Composer(space, fixed, config_dir)
        self.on_progress: Callable[[], None] | None = None  # after each reported epoch or fold (a live display)

    def data(self, dataset_cfg):
        from dlexp.data import holdout_indices, load_source, make_splits

        key = config.to_yaml(dataset_cfg)
        if key not in self._data:
            source = load_source(dataset_cfg)
            idx = holdout_indices(source, float(dataset_cfg.get("val_fraction", 0.1)), int(dataset_cfg.get("split_seed", 0)))
            self._data[key] = (source, make_splits(source, *idx))
        return self._data[key]

    def claim(self, trial) -> None:
        from optuna.trial import TrialState

        ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
                 if t.state != TrialState.RUNNING or t.number < trial.number]
        if len(ahead) >= self.n_trials:
            raise _Surplus(f"surplus: {self.n_trials} trials were already finished or running when trial {trial.number} started")

    def __call__(self, trial) -> float:
        try:
            self.claim(trial)
            values = suggest(self.space, trial)
            trial_overrides = overrides(self.space, self.fixed, values)
            trial.set_user_attr("overrides", trial_overrides)
            cfg = self.compose(values)
            if self.cv:
                return self._cross_validate(trial, cfg)
            return self._run(trial, cfg)
        except KeyboardInterrupt:
            trial.set_user_attr("status", "interrupted")
            trial.set_user_attr("reason", "interrupted (Ctrl-C)")
            raise
        except Exception as e:
            import optuna

            if not isinstance(e, optuna.TrialPruned):
                trial.set_user_attr("status", "surplus" if isinstance(e, _Surplus) else "failed")
                trial.set_user_attr("reason", mask(f"{type(e).__name__}: {e}" if not isinstance(e, _Surplus) else str(e)))
            raise

    def _run(self, trial, cfg) -> float:
        import optuna

        from dlexp.runner import execute

        _, splits = self.data(cfg.dataset)
        columns = {"study": self.study_name, "trial": trial.number}
        run_id, summary = execute(
            cfg, splits, extra_meta=self.extra_meta, extra_columns=columns, on_epoch=self._pruning(trial, cfg), stop_on=(optuna.TrialPruned,)
        )
        return self._conclude(trial, run_id, summary)

    def _pruning(self, trial, cfg) -> Callable[[int, list[dict[str, Any]]], None]:
        """A trial run's `on_epoch`: report the metric, raise TrialPruned when the pruner says so."""
        import optuna

        split, metric = self.metric.split("/", 1)
        trial.set_user_attr("planned", ["epoch", int(cfg.trainer.epochs)])  # what a live display counts in

        def on_epoch(epoch: int, records: list[dict[str, Any]]) -> None:
            value = next((r["value"] for r in reversed(records) if r["epoch"] == epoch and r["split"] == split and r["metric"] == metric), None)
            if value is None or not math.isfinite(value):
                return  # a diverged epoch: execute returns status "diverged" right after this
            trial.report(value, epoch)
            if self.on_progress is not None:
                self.on_progress()
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.metric} {value:.4g}")

        return on_epoch

    def _conclude(self, trial, run_id: str | None, summary: dict[str, Any]) -> float:
        """The trial's value from its run's summary; a pruned or diverged run raises TrialPruned."""
        import optuna

        if summary["status"] == "pruned":  # the pruner stopped it: the run folder says so too
            trial.set_user_attr("run_id", run_id)
            trial.set_user_attr("epochs", summary["epochs_completed"])
            trial.set_user_attr("train_s", summary.get("duration_s"))
            trial.set_user_attr("status", "pruned")
            trial.set_user_attr("reason", summary["reason"])
            raise optuna.TrialPruned(summary["reason"])
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("epochs", summary["epochs_completed"])
        trial.set_user_attr("train_s", summary["duration_s"])
        trial.set_user_attr("status", summary["status"])
        value = summary["final"].get(self.metric)
        if summary["status"] == "diverged" or value is None or not math.isfinite(value):
            # divergence is a result, not a crash: pruned (it counts as finished, and TPE learns to
            # avoid the region) with the reason kept on the trial
            reason = summary.get("reason") or f"{self.metric} is {value}"
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(f"diverged: {reason}")
        return float(value)

    def _failed(self, trial, e: BaseException) -> None:
        """The trial's status and reason for an exception, as `__call__` records them."""
        import optuna

        if isinstance(e, KeyboardInterrupt):
            trial.set_user_attr("status", "interrupted")
            trial.set_user_attr("reason", "interrupted (Ctrl-C)")
        elif not isinstance(e, optuna.TrialPruned):
            trial.set_user_attr("status", "surplus" if isinstance(e, _Surplus) else "failed")
            trial.set_user_attr("reason", mask(f"{type(e).__name__}: {e}" if not isinstance(e, _Surplus) else str(e)))

    def batch(self, study, n: int, on_trial: Callable[[Any], None] | None = None) -> list[Any]:
        """`--vectorize N`: n trials at once (Optuna's ask/tell). Each is sampled and composed as
        `__call__` does; those whose configs can share a stacked model train as one vectorized group
        (dlexp.vectorize; a member the pruner stops, or that diverges, is frozen while the others go
        on), the others alone; each trial is then told its own value, pruned or failed. Returns the
        frozen trials."""
        import contextlib

        import optuna
        from optuna.storages._heartbeat import get_heartbeat_thread
        from optuna.trial import TrialState

        from dlexp.runner import Member, execute_group

        trials = [study.ask() for _ in range(n)]
        frozen: dict[int, Any] = {}

        def tell(trial, value: float | None = None, error: BaseException | None = None) -> None:
            if error is not None:
                self._failed(trial, error)
            state = TrialState.COMPLETE if error is None else TrialState.PRUNED if isinstance(error, optuna.TrialPruned) else TrialState.FAIL
            frozen[trial.number] = study.tell(trial, value if error is None else None, state=state, skip_if_finished=True)
            if on_trial is not None:
                on_trial(frozen[trial.number])

        with contextlib.ExitStack() as beats:
            for trial in trials:  # a database storage's liveness record, as study.optimize keeps one
                beats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
            try:
                ready = []
                for trial in trials:
                    try:
                        self.claim(trial)
                        values = suggest(self.space, trial)
                        trial.set_user_attr("overrides", overrides(self.space, self.fixed, values))
                        ready.append((trial, self.compose(values)))
                    except Exception as e:
                        tell(trial, error=e)
                for group in _stackable(ready, self.data):
                    if len(group) == 1:
                        trial, cfg = group[0]
                        try:
                            tell(trial, self._run(trial, cfg))
                        except Exception as e:
                            tell(trial, error=e)
                        continue
                    cfgs = [cfg for _, cfg in group]
                    members = [Member(extra_meta=self.extra_meta, extra_columns={"study": self.study_name, "trial": t.number},
                                      on_epoch=self._pruning(t, c)) for t, c in group]
                    try:
                        ran = execute_group(cfgs, [self.data(cfgs[0].dataset)[1]] * len(cfgs), members, stop_on=(optuna.TrialPruned,))
                    except Exception as e:
                        for trial, _ in group:
                            tell(trial, error=e)
                        continue
                    for (trial, _), (run_id, summary) in zip(group, ran):
                        try:
                            tell(trial, self._conclude(trial, run_id, summary))
                        except Exception as e:
                            tell(trial, error=e)
            except KeyboardInterrupt as e:
                for trial in trials:
                    if trial.number not in frozen:
                        tell(trial, error=e)
                raise
        return [frozen[t.number] for t in trials]

    def _cross_validate(self, trial, cfg) -> float:
        import optuna

        from dlexp import kfold

        source, _ = self.data(cfg.dataset)
        folds = kfold.make_folds(source, self.cv, seed=int(cfg.dataset.get("split_seed", 0)))
        scores: list[float] = []
        trial.set_user_attr("planned", ["fold", len(folds)])

        def on_fold(i: int, score: float) -> None:
            scores.append(score)
            if not math.isfinite(score):
                return
            # Wilcoxon compares fold by fold; the others see the running mean, step = fold index
            trial.report(score if self.pruner == "wilcoxon" else sum(scores) / len(scores), i)
            if self.on_progress is not None:
                self.on_progress()
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {i}: {self.metric} mean {sum(scores) / len(scores):.4g}")

        columns = {"study": self.study_name, "trial": trial.number}
        try:
            res = kfold.cross_validate(cfg, source, folds, metric=self.metric, extra_columns=columns,
                                       extra_meta=self.extra_meta, on_fold=on_fold)
        except optuna.TrialPruned as e:
            trial.set_user_attr("status", "pruned")
            trial.set_user_attr("reason", str(e))
            trial.set_user_attr("fold_scores", scores)
            raise
        trial.set_user_attr("run_ids", list(res.run_ids))
        trial.set_user_attr("fold_scores", [float(s) for s in res.scores])
        trial.set_user_attr("train_s", float(res.duration_s))
        trial.set_user_attr("status", "ok")
        if not math.isfinite(res.mean):
            trial.set_user_attr("reason", f"{self.metric} mean over folds is {res.mean}")
            raise optuna.TrialPruned(f"diverged: {self.metric} mean over folds is {res.mean}")
        return float(res.mean)


def _stackable(ready: list[tuple[Any, Any]], data: Callable[[Any], Any]) -> list[list[tuple[Any, Any]]]:
    """Trials (trial, cfg) cut into vectorized groups as `dlexp.study.vectorize_groups` cuts a grid's
    points: by `vectorize.group_key`, where stacking pays, at most `vectorize.max_members` each."""
    from dlexp import vectorize as vz
    from dlexp.train import resolve_device

    keyed: dict[str, list[tuple[Any, Any]]] = {}
    groups: list[list[tuple[Any, Any]]] = []
    for trial, cfg in ready:
        if vz.alone_reason(cfg) is not None:
            groups.append([(trial, cfg)])
        else:
            keyed.setdefault(vz.group_key(cfg), []).append((trial, cfg))
    for members in keyed.values():
        cfg = members[0][1]
        splits = data(cfg.dataset)[1]
        device = resolve_device(cfg.trainer.device)
        if len(members) == 1 or not vz.pays(cfg, splits, device):
            groups += [[m] for m in members]
        else:
            groups += vz.chunks(members, vz.max_members(cfg, splits, device))
    return groups


def counts(study) -> dict[str, int]:
    from collections import Counter

    c = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {s: c.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}


def heartbeat_enabled(study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def work(study, objective: Objective, n_trials: int, *, deadline: float | None = None,
         on_trial: Callable[[Any], None] | None = None, on_wait: Callable[[dict[str, int]], None] | None = None,
         max_failures: int | None = None, vectorize: int = 1) -> str:
    """Run trials until the study has `n_trials` finished (complete + pruned) ones, in total over all
    workers. Returns why it stopped: done | exhausted (a grid) | timeout | failures | stuck.

    Before each trial the worker fails stale trials (heartbeat), then: finished >= n -> done; a
    WAITING (retried) trial -> run it; finished + running < n -> run a new one; else wait for the
    running ones (they may fail and free a slot). Without a heartbeat (journal storage) a worker does
    not wait for RUNNING trials, which might belong to a dead process: it stops (`stuck`).
    `vectorize` N > 1: up to N new trials at a time (`Objective.batch`), never more than the study
    still needs.
    """
    try:
        return _work(study, objective, n_trials, deadline, on_trial, on_wait, max_failures, vectorize)
    except Exception as e:
        cause = storage_cause(e)
        if cause is None:
            raise
        # Optuna cannot record a trial's end (a full disk: its finally-block then fails with
        # "AssertionError: Should not reach."): one line naming the storage's own error
        raise StorageError(f"the study's storage failed: {mask(_cause_text(cause))}; finished trials are kept, and "
                           "the same command continues the study once the storage works again") from None


class StorageError(RuntimeError):
    """The study's storage failed while trials ran (a full disk, a lost database server)."""


def storage_cause(error: BaseException) -> BaseException | None:
    """The storage's own error (sqlite3, SQLAlchemy, a database driver, a file system) behind
    `error`, searching its chain of causes deepest first; None if it has none."""
    chain: list[BaseException] = []
    while error is not None and all(error is not c for c in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in reversed(chain):
        module = type(e).__module__ or ""
        if module.startswith(("sqlite3", "sqlalchemy", "psycopg", "pymysql", "optuna.storages")) or isinstance(e, OSError):
            return e
    return None


def finished_seconds(trials) -> list[float]:
    """The wall time of each finished trial (start to end, as the storage recorded them)."""
    return [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
            if t.state.is_finished() and t.datetime_start is not None and t.datetime_complete is not None]


def _peers_running(study, began, waited_s: float) -> bool:
    """Whether a worker without heartbeats (a journal storage) should wait for the RUNNING trials that
    keep it from starting another: yes while one of them was started after this worker began (a peer
    started with it, as `--jobs` and Slurm workers are) and the wait is shorter than 3 mean trial
    times (at least 60 s, in case that peer died). A RUNNING trial older than this worker may be a
    dead process's: no wait (the caller stops `stuck` and says so)."""
    trials = study.get_trials(deepcopy=False)
    spans = finished_seconds(trials)
    patience = max(60.0, 3 * sum(spans) / len(spans)) if spans else 60.0
    return waited_s < patience and any(t.state.name == "RUNNING" and t.datetime_start is not None and t.datetime_start >= began
                                       for t in trials)


def quiet_storage_threads() -> None:
    """Optuna's heartbeat thread writes to the storage too: when the storage fails (a full disk), its
    traceback would be printed beside dlexp's one line about that failure, which the main thread
    reports (`work`). Storage errors in other threads are left to that line; any other goes to
    Python's usual hook."""
    import threading

    default = threading.excepthook
    if getattr(default, "dlexp_storage", False):
        return  # installed already

    def hook(args) -> None:
        if args.exc_value is not None and storage_cause(args.exc_value) is not None:
            return
        default(args)

    hook.dlexp_storage = True
    threading.excepthook = hook


def _cause_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _work(study, objective, n_trials, deadline, on_trial, on_wait, max_failures, vectorize: int = 1) -> str:
    import warnings

    import optuna

    import datetime as dt

    beat = heartbeat_enabled(study)
    interval = study._storage.get_heartbeat_interval() if beat else None
    began = dt.datetime.now()  # Optuna stamps trials with naive local times
    waiting_since: float | None = None
    failures = 0
    max_failures = max_failures or max(5, n_trials)
    last: dict[str, Any] = {}

    def remember(study, frozen) -> None:
        last["trial"] = frozen
        if on_trial is not None:
            on_trial(frozen)

    while True:
        if deadline is not None and time.time() >= deadline:
            return "timeout"
        if beat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        c = counts(study)
        finished = c["COMPLETE"] + c["PRUNED"]
        if finished >= n_trials:
            return "done"
        exhausted = getattr(study.sampler, "is_exhausted", None)  # GridSampler: every point tried
        if exhausted is not None and c["WAITING"] == 0 and exhausted(study):
            return "exhausted"
        if c["WAITING"] == 0 and finished + c["RUNNING"] >= n_trials:
            waiting_since = waiting_since or time.monotonic()
            if not beat and not _peers_running(study, began, time.monotonic() - waiting_since):
                return "stuck"
            if on_wait is not None:
                on_wait(c)
            time.sleep(min(1.0, interval or 1.0))
            continue
        waiting_since = None
        last.clear()
        if vectorize > 1:
            ended = objective.batch(study, max(1, min(vectorize, n_trials - finished - c["RUNNING"])), on_trial=on_trial)
        else:
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[remember], gc_after_trial=False)
            ended = [last["trial"]] if "trial" in last else []
        for frozen in ended:
            if frozen.state.name == "FAIL" and frozen.user_attrs.get("status") != "surplus":
                failures += 1
        if failures >= max_failures:
            return "failures"


# ---------------------------------------------------------------------------------------------------
# outputs


def trials_table(study, space: Space | None = None):
    """Tidy trials table: study, trial, state, <params>, value, duration_s, status, reason, run_id, epochs."""
    import pandas as pd

    names: list[str] = [p.name for p in space.params] if space is not None else []
    rows = []
    for t in study.get_trials(deepcopy=False):
        for k in t.params:
            if k not in names:
                names.append(k)
        duration = t.duration.total_seconds() if t.duration is not None else None
        silent_status, silent_reason = _status_of_silent(t.state.name)
        rows.append({
            "study": study.study_name, "trial": t.number, "state": t.state.name,
            **{k: t.params.get(k) for k in t.params},
            "value": t.value,
            "duration_s": duration,
            "status": t.user_attrs.get("status") or silent_status,
            "reason": t.user_attrs.get("reason") or silent_reason,
            "run_id": t.user_attrs.get("run_id") or ";".join(t.user_attrs.get("run_ids", []) or []) or None,
            "epochs": t.user_attrs.get("epochs"),
            "train_s": t.user_attrs.get("train_s"),
        })
    columns = ["study", "trial", "state", *names, "value", "duration_s", "status", "reason", "run_id", "epochs", "train_s"]
    return pd.DataFrame(rows, columns=columns)


def _status_of_silent(state: str) -> tuple[str | None, str | None]:
    """Status and reason of a trial that recorded none: its worker died (heartbeat) or is running."""
    if state == "FAIL":
        return "failed", "its worker stopped without reporting (killed, or lost the storage); retried once"
    if state == "RUNNING":
        return "running", None
    return None, None


def best_trial(study):
    """The best COMPLETE trial, or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    return study.best_trial


def write_outputs(study, space: Space, sweeps_dir: Path, *, metric: str, direction: str, config_dir: str | None) -> dict[str, Path]:
    """`<study>.trials.csv`, and for the best trial `<study>.best.yaml` (value, params, overrides, the
    `dlexp run` command) plus `experiment/<study>.yaml`, an experiment file that
    `dlexp run --config-dir <sweeps_dir> experiment=<study>` composes to the best trial's exact config."""
    import yaml

    from dlexp.report.tables import to_csv
    from dlexp.results import atomic_write

    sweeps_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    table = trials_table(study, space)
    path = sweeps_dir / f"{study.study_name}.trials.csv"
    atomic_write(path, to_csv(table))  # spreadsheet-safe: a categorical value may start with "="
    written["trials"] = path
    best = best_trial(study)
    if best is None:
        return written
    best_overrides = list(best.user_attrs.get("overrides", []))
    cfg = config.compose(best_overrides, config_dir)
    command = "dlexp run " + " ".join(_shell_quote(o) for o in best_overrides)
    experiment_cmd = f"dlexp run --config-dir {_shell_quote(str(sweeps_dir))} experiment={study.study_name}"
    summary = {
        "study": study.study_name, "trial": best.number, "metric": metric, "direction": direction,
        "value": best.value, "params": dict(best.params), "overrides": best_overrides,
        "run_id": best.user_attrs.get("run_id"), "command": command, "experiment_command": experiment_cmd,
    }
    text = (f"# Best trial {best.number} of study {study.study_name}: {metric} {best.value:.6g} ({direction}); "
            f"rerun with: {command}\n" + yaml.safe_dump(summary, sort_keys=False))
    path = sweeps_dir / f"{study.study_name}.best.yaml"
    atomic_write(path, text)
    written["best"] = path
    written["experiment"] = _write_experiment(cfg, best_overrides, study.study_name, best.number, sweeps_dir, metric, best.value, config_dir)
    return written


def _write_experiment(cfg, trial_overrides: list[str], study: str, number: int, sweeps_dir: Path, metric: str,
                      value: float, config_dir: str | None) -> Path:
    """The best config as a `# @package _global_` experiment: the group choices in the defaults list,
    then every resolved value, so it needs none of the sweep's overrides to reproduce the run."""
    from omegaconf import OmegaConf

    from dlexp.results import atomic_write

    values = OmegaConf.to_container(cfg, resolve=True)
    chosen = {_key(o): o.split("=", 1)[1] for o in trial_overrides if _key(o) in config.GROUPS}
    choices = {g: chosen.get(g) or _choice_of(cfg, g, config_dir) for g in config.GROUPS if g != "experiment"}
    body = {"defaults": [{f"override /{g}": c} for g, c in choices.items() if c is not None], **values}
    header = (f"# @package _global_\n# Best trial {number} of sweep study {study} ({metric} {value:.6g}): "
              f"dlexp run --config-dir {sweeps_dir} experiment={study}\n")
    import yaml

    folder = sweeps_dir / "experiment"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{study}.yaml"
    atomic_write(path, header + yaml.safe_dump(body, sort_keys=False))
    return path


def _choice_of(cfg, group: str, config_dir: str | None) -> str | None:
    """The file a group not chosen by an override came from: its `name` where that is a file of the
    group (dlexp's convention: file name == name); else the root default stays (None)."""
    node = cfg.get(group)
    name = node.get("name") if node is not None and hasattr(node, "get") else None
    return str(name) if name is not None and str(name) in config.choices(group, config_dir) else None


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
