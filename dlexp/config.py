"""The one place that talks to Hydra: command-line overrides -> a composed, validated DictConfig.

Hydra's compose API is used (not `@hydra.main`), so dlexp owns its CLI, its output folders and its
error messages. Every bad input becomes a `ConfigError` whose message names the key and what is
allowed; the CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from dlexp.errors import ConfigError, echo

GROUPS = ("model", "dataset", "optimizer", "schedule", "trainer", "experiment")


def conf_dir() -> Path:
    """The shipped config folder: the repo's top-level `conf/` in a source checkout, else the copy
    installed inside the package (`dlexp/conf`)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(f"dlexp's config folder is missing (looked in {here.parent / 'conf'} and {here / 'conf'})")


def search_dirs(config_dir: str | Path | None = None) -> list[Path]:
    """Config folders in search order: the user's `--config-dir` first, then dlexp's own."""
    dirs = []
    if config_dir is not None:
        try:
            user = Path(config_dir).expanduser().resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a symlink loop so
            raise ConfigError(f"--config-dir: {config_dir} is a symlink loop") from None
        except OSError as e:
            raise ConfigError(f"--config-dir: {config_dir}: {e.strerror or e}") from None
        if not user.is_dir():
            raise ConfigError(f"--config-dir: {config_dir} is not a directory")
        check_user_files(user)
        dirs.append(user)
    dirs.append(conf_dir())
    return dirs


# A user's config file is read by Hydra and OmegaConf, which copy every YAML alias: a file of a few
# lines with nested anchors (a "billion laughs") would expand to 10**9 values and exhaust memory. The
# files of a --config-dir are therefore measured first, on PyYAML's node graph (aliases shared, so
# linear in the file), and refused past these bounds.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64
_CHECKED: dict[Path, tuple] = {}  # file -> its stat when it passed, so each file is measured once


def check_user_files(folder: Path) -> None:
    """Refuse a YAML file under a --config-dir that is too big, too deep, or expands too much."""
    import os

    for root, dirs, files in os.walk(folder):  # symlinked folders are not followed: no loops
        dirs.sort()
        for name in sorted(files):
            if name.endswith((".yaml", ".yml")):
                path = Path(root) / name
                try:
                    st = path.stat()
                except OSError as e:  # a dangling link or a link loop: Hydra would trip on it later
                    raise ConfigError(f"--config-dir: {path}: {e.strerror or e}") from None
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if _CHECKED.get(path) != stamp:
                    read_yaml(path, load=False)
                    _CHECKED[path] = stamp


def read_yaml(path: str | Path, load: bool = True) -> Any:
    """A YAML file of user data, with PyYAML's safe loader, after checking that it is a regular file
    of at most MAX_YAML_BYTES whose aliases expand to at most MAX_YAML_VALUES values nested at most
    MAX_YAML_DEPTH deep. Every problem is a ConfigError naming the file."""
    import yaml

    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES >> 20} MiB; a config file is a few lines")
        text = data.decode("utf-8")
        _measure(yaml.compose(text, Loader=yaml.SafeLoader), path)
        return yaml.safe_load(text) if load else None
    except ConfigError:
        raise
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        place = f", line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}{place}: not valid YAML ({getattr(e, 'problem', None) or _first_line(str(e))})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply (at most {MAX_YAML_DEPTH} levels)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None


def _measure(root, path: Path) -> None:
    """Count the values of a YAML node graph as its aliases expand (each shared node counted once per
    use, memoized by identity, so that the count itself stays linear), and its depth."""
    import yaml

    sizes: dict[int, tuple[int, int]] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:  # iterative post-order: a deep file cannot overflow Python's stack here
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        count = 1 + sum(sizes[id(c)][0] for c in children)
        depth = 1 + max((sizes[id(c)][1] for c in children), default=0)
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep; refused")
        if count > MAX_YAML_VALUES:
            aliased = len(sizes) + 1 < count  # fewer distinct nodes than values: aliases repeat some
            how = " once its aliases expand (nested anchors, a 'billion laughs'?)" if aliased else ""
            raise ConfigError(f"{path}: holds more than {MAX_YAML_VALUES:,} values{how}; refused")
        sizes[id(node)] = (count, depth)


def describe(path: Path) -> str:
    """A config file's one-line description: its first line, a `# ...` comment (cut to MAX_DESCRIPTION characters)."""
    try:
        with open(path, encoding="utf-8") as f:
            for _ in range(2):
                line = f.readline(MAX_DESCRIPTION + 1).strip()
                if line.startswith("# @package"):
                    continue
                text = line.lstrip("#").strip() if line.startswith("#") else ""
                return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION] + "..."
    except (OSError, UnicodeDecodeError) as e:
        return f"(unreadable: {getattr(e, 'strerror', None) or type(e).__name__})"
    return ""


MAX_DESCRIPTION = 300  # a first line longer than this (a 5 MB one) is cut


def choices(group: str, config_dir: str | Path | None = None) -> dict[str, Path]:
    """The choices of one config group: file stem -> file, the user's folder shadowing dlexp's."""
    found: dict[str, Path] = {}
    for d in reversed(search_dirs(config_dir)):
        for f in sorted((d / group).glob("*.yaml")):
            if f.is_file():  # not a dangling link or a link loop
                found[f.stem] = f
    return dict(sorted(found.items()))


class _GroupOptions:
    """What Hydra's `glob(...)` sweep asks its ConfigLoader for: the choices of a config group."""

    def __init__(self, config_dir):
        self.config_dir = config_dir

    def get_group_options(self, group: str, results_filter=None) -> list[str]:
        if group not in GROUPS:
            raise ConfigError(f"{group}: glob() picks among a config group's choices ({', '.join(GROUPS)})")
        return sorted(choices(group, self.config_dir))


def expand(overrides: Iterable[str], multirun: bool, config_dir: str | Path | None = None) -> list[list[str]]:
    """Expand a sweep (`a=1,2 b=range(0,3) optimizer=glob(ada*)`) into one override list per run, with
    Hydra's own parser.

    Without `multirun`, a sweep value is an error (as in Hydra) and exactly one run comes back.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = _bounded(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise _parse_error(overrides, e) from None
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(f"{sweeps[0].get_key_element()}: a sweep ({sweeps[0].input_line}) needs -m/--multirun")
    if any(o.is_hydra_override() for o in parsed):
        raise ConfigError("hydra.*: Hydra's own settings cannot be overridden here; use dlexp's options")
    for o in parsed:
        o.config_loader = _GroupOptions(config_dir)  # for glob()
    try:
        runs = [list(run) for run in itertools.product(*(_texts(o) for o in parsed))]
    except HydraException as e:
        raise ConfigError(_first_line(f"bad override: {e}")) from None
    if not runs:
        raise ConfigError("the grid is empty: a sweep with no values")
    return runs


def _texts(o) -> list[str]:
    """The override text of each value of one override, for one run each: a plain override as typed
    (Hydra's sweeper re-escapes it, which breaks `${oc.decode:"1"}`); a sweep's values as Hydra's
    sweeper writes them, except interpolations, which are quoted so that they parse back as written."""
    from hydra.core.override_parser.types import Transformer

    if not o.is_sweep_override():
        return [o.input_line]
    if not o.is_discrete_sweep():
        from hydra.errors import HydraException

        raise HydraException(f"{o.get_key_element()}: sweeps of type {o.value_type.name} are not supported here")
    key = o.get_key_element()
    texts = []
    for value in o.sweep_iterator(transformer=Transformer.identity):
        text = Transformer.str(value)
        if isinstance(value, str) and "${" in value and "\\" not in value:
            quote = "'" if "'" not in value else '"' if '"' not in value else None
            text = f"{quote}{value}{quote}" if quote else text
        texts.append(f"{key}={text}")
    return texts


# Hydra's parser takes time quadratic in an override's length (a list of 4,000 numbers: 1.4 s, of
# 40,000: minutes); no config value needs more than this
MAX_OVERRIDE = 10_000


def _bounded(overrides: Iterable[str]) -> list[str]:
    overrides = list(overrides)
    for o in overrides:
        if len(o) > MAX_OVERRIDE:
            key = o.split("=", 1)[0][:60]
            raise ConfigError(f"{key if key.isprintable() else repr(key)}: an override of {len(o):,} characters; "
                              f"at most {MAX_OVERRIDE:,}")
    return overrides


def _first_line(text: str) -> str:
    """The first line of a library's message ('' stays '': Hydra raises some errors without one)."""
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def _parse_error(overrides: list[str], error: Exception) -> ConfigError:
    """A grammar error, naming the key of the first override that does not parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except HydraException as e:
            key = o.split("=", 1)[0] if "=" in o else o
            if not key.isprintable():  # a line break in it would cut the one-line message short
                key = repr(key)
            return ConfigError(f"{key}: cannot parse {o!r}: {_first_line(str(e))}")
    return ConfigError(_first_line(f"bad override: {error}"))


def _parsed(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _check_choices(parsed, config_dir) -> None:
    """Unknown group choices, caught before Hydra so the message lists what exists."""
    for o in parsed:
        key = o.get_key_element().lstrip("+~")
        if key in GROUPS and not o.is_delete():
            value = o.value()
            available = choices(key, config_dir)
            if value is None:
                raise ConfigError(f"{key}=null: a config group needs a choice ({', '.join(available)}); "
                                  f"to use none, leave {key} out")
            if not isinstance(value, str) or value not in available:
                raise ConfigError(f"{key}={value}: unknown choice; choose one of: {', '.join(available)}")


def _compose(overrides: list[str], config_dir) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    dirs = search_dirs(config_dir)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(dirs[-1]), version_base="1.3", job_name="dlexp"):
            if config_dir is not None:
                # The user's folder must come BEFORE dlexp's own so that its files shadow ours.
                # `hydra.searchpath` would append it after the primary folder, so prepend it to the
                # loader's search path instead (Hydra has no public API for this).
                loader = GlobalHydra.instance().config_loader()
                loader.config_search_path.prepend("dlexp-user", f"file://{dirs[0]}")
                loader.repository.initialize_sources(loader.config_search_path)
            return compose("config", overrides=overrides)
    except Exception as e:
        import yaml
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(e, yaml.YAMLError):
            # a broken YAML file (a user's --config-dir): one line, with the file and the line number
            where = getattr(e, "problem_mark", None)
            place = f" ({where.name}, line {where.line + 1})" if where is not None else ""
            raise ConfigError(f"config file{place}: {getattr(e, 'problem', None) or _first_line(str(e))}") from None
        if isinstance(e, OmegaConfBaseException) and not isinstance(e, HydraException):
            raise ConfigError(_first_line(f"{_key_of(e, overrides)}: {e}")) from None
        if not isinstance(e, HydraException):
            raise
        message = str(e)
        m = re.search(r"Could not override '([^']+)'", message)
        if m:
            raise ConfigError(f"{m.group(1)}: unknown key{_siblings(m.group(1), overrides, config_dir)}") from None
        m = re.search(r"Could not (?:append|delete)[^']*'([^']+)'", message)
        if m:
            raise ConfigError(f"{m.group(1)}: {_first_line(message)}") from None
        raise ConfigError(_first_line(message) or f"config: Hydra could not compose it ({type(e).__name__}, no message)") from None
    finally:
        GlobalHydra.instance().clear()


def _siblings(key: str, overrides: list[str], config_dir) -> str:
    """'; optimizer (adam) has: a, b, c' for an unknown key: the keys of the file the overrides chose
    for its group (optimizer=adam, or an experiment's choice), not those of the default file."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    chosen = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in GROUPS]
    try:
        cfg = _compose(chosen, config_dir)
    except ConfigError:
        return ""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig):
        name = node.get("name") if parent in GROUPS else None
        which = f"{parent} ({name})" if isinstance(name, str) else parent or "the config"
        return f"; {which} has: {', '.join(str(k) for k in node.keys())}"
    return ""


def compose(overrides: Iterable[str] = (), config_dir: str | Path | None = None) -> Any:
    """Compose `conf/config.yaml` with the overrides of ONE run and validate it."""
    overrides = _bounded(overrides)
    from hydra.errors import HydraException

    try:
        parsed = _parsed(overrides)
    except HydraException as e:
        raise _parse_error(overrides, e) from None
    for o in parsed:
        if not o.key_or_group:  # '=0', '@=1', '~': Hydra reads an empty key as a group and fails deep inside
            raise ConfigError(f"{echo(o.input_line)}: an override needs a key (key=value)")
        if o.is_sweep_override():
            raise ConfigError(f"{o.get_key_element()}: a sweep ({o.input_line}) needs -m/--multirun")
    for o in parsed:
        key = o.get_key_element()
        if key.startswith("+") and key.lstrip("+") not in GROUPS:
            # `+key=value` would add a key no part of dlexp reads: a typo would train silently
            raise ConfigError(f"{key}: dlexp's configs have a fixed set of keys; set an existing one without '+' "
                              "(dlexp run --cfg shows them)")
    _check_choices(parsed, config_dir)
    cfg = _compose(overrides, config_dir)
    _refuse_targets(cfg, config_dir)
    # The same composition with only the group choices: its value types are what the files declare.
    choice_only = [o.input_line for o in parsed if o.get_key_element().lstrip("+~") in GROUPS]
    reference = _compose(choice_only, config_dir)
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.resolve(cfg)  # ${...} interpolations: resolved once, here, so a bad one is a bad input
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:  # '???' (OmegaConf's "no value yet"), given on the command line or left in a file
            raise ConfigError(f"{missing[0]}: has no value ('???'); give it one, e.g. {missing[0]}=VALUE"
                              + (f" (also without a value: {', '.join(missing[1:10])})" if len(missing) > 1 else ""))
        _check_groups(cfg)
        _check_types(cfg, reference)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{_key_of(e, overrides)}: {_first_line(str(e))}") from None
    validate(cfg)
    return cfg


def _refuse_targets(cfg, config_dir) -> None:
    """A `_target_` (Hydra's "build this class") from a user's config file: dlexp builds only its own
    registered classes, and `--resume` refuses such a config, so it is refused here, at composition."""
    from omegaconf import OmegaConf

    targets = _find_targets(OmegaConf.to_container(cfg, resolve=False))
    if targets:
        where = f" (from --config-dir {config_dir})" if config_dir is not None else ""
        raise ConfigError(f"{targets[0]}: refused{where}: dlexp only builds its own registered classes "
                          "(model, dataset, optimizer, schedule by name)")


def _key_of(error: Exception, overrides: list[str]) -> str:
    """The key an OmegaConf error is about: its own, or the first override holding an interpolation
    (`key=${...}`, or `key=$\\{...\\}` as Hydra's sweep expansion escapes it)."""
    interpolated = (o.split("=", 1)[0].lstrip("+~") for o in overrides if re.search(r"\$\\?\{", o.split("=", 1)[-1]))
    return getattr(error, "full_key", None) or next(interpolated, "config")


def compose_grid(grid: list[list[str]], config_dir: str | Path | None = None,
                 on_point: Callable[[int], None] | None = None) -> list[Any]:
    """`compose` of every point of a grid (from `expand`); an error names the point that failed.
    `on_point(i)` after point i (a long grid's progress line)."""
    cfgs, composer = [], GridComposer(config_dir)
    for i, point in enumerate(grid):
        try:
            cfgs.append(composer(point))
        except ConfigError as e:
            raise point_error(grid, i, e) from None
        if on_point is not None:
            on_point(i)
    return cfgs


def point_error(grid: list[list[str]], i: int, error: ConfigError) -> ConfigError:
    """`error` of grid point i, prefixed with the point: its values of the keys that vary."""
    if len(grid) == 1:
        return error
    keys: dict[str, set[str]] = {}
    for point in grid:
        for o in point:
            keys.setdefault(o.split("=", 1)[0], set()).add(o)
    label = " ".join(o for o in grid[i] if len(keys[o.split("=", 1)[0]]) > 1) or " ".join(grid[i])
    return ConfigError(f"grid point {i + 1} of {len(grid)} ({label}): {error}", getattr(error, "details", ()))


def _check_groups(cfg) -> None:
    """Every group is there (`~model` removes one), is a mapping and names its registry entry."""
    from omegaconf import DictConfig

    for group in ("model", "dataset", "optimizer", "schedule", "trainer"):
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            raise ConfigError(f"{group}: missing or not a mapping; every run needs one (dlexp list {group})")
        if group != "trainer" and not isinstance(node.get("name"), str):
            raise ConfigError(f"{group}.name: missing; a {group} config must say which one it is (name: ...)")


# keys whose file declares a number but that also take a list, one value per layer
NUMBER_OR_LIST = {"model.dropout"}
# keys whose file declares a number of epochs but that also take seconds as a string ("60s")
NUMBER_OR_SECONDS = {"trainer.checkpoint_every"}
# keys with a value in their file that take null to select the other form (see the files' comments)
NULLABLE = {"schedule.lam", "schedule.milestones", "schedule.factor"}


def _kind(ref) -> str:
    from omegaconf import ListConfig

    if isinstance(ref, bool):
        return "true or false"
    if isinstance(ref, int):
        return "an integer"
    if isinstance(ref, float):
        return "a number"
    if isinstance(ref, ListConfig):
        return "a list"
    return "a string"


def _check_types(cfg, reference, prefix: str = "") -> None:
    """An override must keep the type its file declares: trainer.epochs=abc is refused, not trained."""
    from omegaconf import DictConfig, ListConfig

    for key in reference.keys() if isinstance(reference, DictConfig) else []:
        if key not in cfg:
            continue
        full = f"{prefix}{key}"
        ref, val = reference[key], cfg[key]
        if isinstance(ref, DictConfig):
            if isinstance(val, DictConfig):
                _check_types(val, ref, full + ".")
            continue
        if ref is None:
            continue  # declared null (name, dataset.root, ...): its consumer checks what it gets
        if val is None:
            if full in NULLABLE:
                continue
            raise ConfigError(f"{full}: expected {_kind(ref)}, got null")
        if isinstance(ref, ListConfig):
            continue  # lists are checked by their consumers (model.hidden, schedule.boundaries, ...)
        if full in NUMBER_OR_LIST and isinstance(val, ListConfig):
            continue  # one value per layer (checked by validate)
        if full in NUMBER_OR_SECONDS and isinstance(val, str):
            continue  # seconds (checked by validate)
        if isinstance(ref, bool):
            if not isinstance(val, bool):
                raise ConfigError(f"{full}: expected true or false, got {val!r}")
        elif isinstance(ref, (int, float)):
            if isinstance(val, bool) or not isinstance(val, (int, float)):
                kind = "an integer" if isinstance(ref, int) else "a number"
                raise ConfigError(f"{full}: expected {kind}, got {val!r}")
        elif isinstance(ref, str) and not isinstance(val, str):
            raise ConfigError(f"{full}: expected a string, got {val!r}")


def _number(cfg, key: str, *, integer: bool = False) -> float:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{key}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value}")
    return value


def _one_of(cfg, key: str, allowed: Iterable[str]) -> None:
    from omegaconf import OmegaConf

    allowed = list(allowed)
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")


DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


FLOAT32_MAX = 3.4028234663852886e38


def _check_float32(cfg) -> None:
    """The optimizer's numbers meet float32 parameters: one beyond float32's range (lr=1e39) cannot be
    applied at all, so it is bad input. (A product that overflows later, Adam's lr / (1 - beta1^t)
    for lr=1e38, is divergence: see train.)"""
    from omegaconf import ListConfig

    for key, value in cfg.optimizer.items():
        values = list(value) if isinstance(value, ListConfig) else [value]
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > FLOAT32_MAX:
                raise ConfigError(f"optimizer.{key}: {v!r} is beyond float32's range (largest {FLOAT32_MAX:.4g}), which the parameters use")


def validate(cfg) -> None:
    """Range checks on the keys every run uses; each message names the key and the allowed values."""
    if _number(cfg, "trainer.epochs", integer=True) < 1:
        raise ConfigError(f"trainer.epochs: must be >= 1, got {cfg.trainer.epochs}")
    if _number(cfg, "trainer.batch_size", integer=True) < 1:
        raise ConfigError(f"trainer.batch_size: must be >= 1, got {cfg.trainer.batch_size}")
    if _number(cfg, "trainer.eval_batch_size", integer=True) < 1:
        raise ConfigError(f"trainer.eval_batch_size: must be >= 1, got {cfg.trainer.eval_batch_size}")
    # torch.manual_seed takes [-2**63, 2**64); numpy's and Optuna's seeds are non-negative
    if not 0 <= _number(cfg, "seed", integer=True) < 2**64:
        raise ConfigError(f"seed: must be in [0, 2**64), got {cfg.seed}")
    if not isinstance(cfg.trainer.device, str) or not DEVICE.match(cfg.trainer.device):
        raise ConfigError(f"trainer.device: expected auto, cpu, cuda or cuda:N, got {cfg.trainer.device!r}")
    if cfg.trainer.get("amp", "none") not in ("none", "bf16"):
        raise ConfigError(f"trainer.amp: expected none or bf16, got {cfg.trainer.amp!r}")
    if not isinstance(cfg.trainer.get("compile", False), bool):
        raise ConfigError(f"trainer.compile: expected true or false, got {cfg.trainer.compile!r}")
    if not isinstance(cfg.trainer.deterministic, bool):
        raise ConfigError(f"trainer.deterministic: expected true or false, got {cfg.trainer.deterministic!r}")
    checkpoint_schedule(cfg.trainer.get("checkpoint_every", 1))
    threads = cfg.trainer.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"trainer.threads: expected a positive integer, or null for cores / jobs, got {threads!r}")
    if _number(cfg, "optimizer.lr") <= 0:
        raise ConfigError(f"optimizer.lr: must be > 0, got {cfg.optimizer.lr}")
    if _number(cfg, "optimizer.weight_decay") < 0:
        raise ConfigError(f"optimizer.weight_decay: must be >= 0, got {cfg.optimizer.weight_decay}")
    _check_float32(cfg)
    if "betas" in cfg.optimizer:
        betas = cfg.optimizer.betas
        if (not hasattr(betas, "__len__") or isinstance(betas, str) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ConfigError(f"optimizer.betas: expected two numbers in [0, 1) such as [0.9, 0.999], got {betas!r}")
    for key in ("num_train", "num_test"):
        if cfg.dataset.get(key) is not None and _number(cfg, f"dataset.{key}", integer=True) < 1:
            raise ConfigError(f"dataset.{key}: must be >= 1 (or null for all), got {cfg.dataset[key]}")
    w = cfg.dataset.get("w")
    if w is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 for v in (list(w) if hasattr(w, "__len__") and not isinstance(w, str) else [w])):
        raise ConfigError(f"dataset.w: expected a number or a list of numbers, got {w!r}")
    if cfg.dataset.get("noise") is not None and _number(cfg, "dataset.noise") < 0:
        raise ConfigError(f"dataset.noise: must be >= 0, got {cfg.dataset.noise}")
    _one_of(cfg, "optimizer.impl", ("dlexp", "torch"))
    _one_of(cfg, "optimizer.weight_decay_mode", ("coupled", "decoupled", "loss"))
    _one_of(cfg, "schedule.unit", ("epoch", "step"))
    if cfg.model.name == "mlp":
        _one_of(cfg, "model.activation", ("relu", "sigmoid", "tanh"))
        _one_of(cfg, "model.dropout_impl", ("torch", "scratch"))
        hidden = cfg.model.hidden
        if not hasattr(hidden, "__len__") or isinstance(hidden, str) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ConfigError(f"model.hidden: expected a list of positive integers, got {hidden!r}")
        dropout = cfg.model.dropout
        rates = list(dropout) if hasattr(dropout, "__len__") and not isinstance(dropout, str) else [dropout]
        for r in rates:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
                raise ConfigError(f"model.dropout: every rate must be a number in [0, 1), got {dropout!r}")
        if len(rates) > 1 and len(rates) != len(hidden):
            raise ConfigError(f"model.dropout: has {len(rates)} rates but model.hidden has {len(hidden)} layers")
    if "activation" in cfg.model and cfg.model.name == "lenet":
        _one_of(cfg, "model.activation", ("relu", "sigmoid", "tanh"))
    if "init" in cfg.model and cfg.model.name != "point":  # a point's init is its starting point
        _one_of(cfg, "model.init", ("default", "normal", "xavier"))
    if (cfg.dataset.name == "objective") != (cfg.model.name == "point"):
        # an objective is minimized over a point; a point has nothing to fit on samples
        raise ConfigError(f"model={cfg.model.name}: dataset=objective and model=point go together "
                          f"(got dataset={cfg.dataset.name})")
    if "eval_every" in cfg.trainer and _number(cfg, "trainer.eval_every", integer=True) < 0:
        raise ConfigError(f"trainer.eval_every: must be >= 0 (examples; 0 = off), got {cfg.trainer.eval_every}")
    if "loss" in cfg.trainer:
        _one_of(cfg, "trainer.loss", ("auto", "mse", "half_mse"))
    if "init_std" in cfg.model and _number(cfg, "model.init_std") < 0:
        raise ConfigError(f"model.init_std: must be >= 0, got {cfg.model.init_std}")
    for key in ("val_fraction", "test_fraction"):
        if key in cfg.dataset:
            f = cfg.dataset[key]
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
                raise ConfigError(f"dataset.{key}: must be in [0, 1), got {f!r}")
    if "split_seed" in cfg.dataset and not 0 <= _number(cfg, "dataset.split_seed", integer=True) < 2**64:
        raise ConfigError(f"dataset.split_seed: must be in [0, 2**64), got {cfg.dataset.split_seed}")
    if not isinstance(cfg.results_dir, str) or not cfg.results_dir:
        raise ConfigError(f"results_dir: expected a path, got {cfg.results_dir!r}")
    if cfg.name is not None:
        check_name(str(cfg.name), "name", 64)
    from dlexp import loggers

    loggers.check(cfg)  # trainer.loggers: known names, their packages installed (dlexp/loggers.py)


def check_name(name: str, what: str, longest: int) -> str:
    """A user-given name that dlexp puts into a file or folder name (a run's `name`, a sweep or K-fold
    `--study`): letters, digits, '.', '_', '-', not starting with '.', so that every path built from
    it stays inside its folder ('..', '/', a hidden file, a newline are impossible)."""
    if not re.fullmatch(rf"[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,{longest - 1}}}", name):
        raise ConfigError(f"{what}: use 1-{longest} letters, digits, '.', '_' or '-', not starting with '.', got {echo(name)}")
    return name


def checkpoint_schedule(value: Any) -> tuple[str, float] | None:
    """`trainer.checkpoint_every`: N (every N epochs), 'Ns' (when N seconds of training have passed
    since the last checkpoint, checked at the end of each epoch), or 0 (never: the run cannot be
    resumed). Returns ('epochs', N), ('seconds', N) or None."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*s\s*", value):
        return "seconds", float(value.strip()[:-1])
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return ("epochs", float(value)) if value > 0 else None
    raise ConfigError(f"trainer.checkpoint_every: expected a number of epochs (1, 5; 0 for never) or of seconds "
                      f"('60s'), got {value!r}")


def to_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=True)


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
    """{'optimizer.lr': 0.1, 'model.hidden': '[256]', ...}: one column per leaf, lists as strings."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    out: dict[str, Any] = {}
    for k, v in container.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = str(v)
        else:
            out[key] = v
    return out


def product(*lists: list[str]) -> list[list[str]]:
    return [list(p) for p in itertools.product(*lists)]


def _find_targets(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        found = [f"{prefix}{k}" for k in node if k == "_target_"]
        for k, v in node.items():
            found += _find_targets(v, f"{prefix}{k}.")
        return found
    if isinstance(node, list):
        return [t for i, v in enumerate(node) for t in _find_targets(v, f"{prefix}{i}.")]
    return []


def load_run_config(path: str | Path) -> Any:
    """A config saved in a results folder (for --resume), checked like a composed one.

    dlexp builds objects only through its registries (model, dataset, optimizer, schedule names); a
    config file from a results folder that asks for anything else, such as a Hydra `_target_`
    pointing at arbitrary code, is refused.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if path.is_symlink():
        raise ConfigError(f"{path}: a symlink; a run folder holds plain files")
    data = read_yaml(path)  # bounded: a config.yaml edited into an anchor bomb is refused too
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a config mapping")
    targets = _find_targets(data)
    if targets:
        raise ConfigError(f"{targets[0]}: refused in {path}: dlexp only builds its own registered classes")
    for group in ("model", "dataset", "optimizer", "schedule", "trainer"):
        if not isinstance(data.get(group), dict):
            raise ConfigError(f"{group}: missing from {path}")
    from dlexp.data import DATASETS
    from dlexp.models import MODELS
    from dlexp.optim import OPTIMIZERS
    from dlexp.schedules import SCHEDULES

    for group, registry in (("model", MODELS), ("dataset", DATASETS), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
        name = data[group].get("name")
        if name not in registry:
            raise ConfigError(f"{group}.name: {name!r} in {path} is not one of dlexp's: {', '.join(sorted(registry))}")
    cfg = OmegaConf.create(data)
    validate(cfg)
    return cfg


class GridComposer:
    """`compose` for the many points of a grid or K-fold study, at a fraction of its cost.

    Hydra composes each distinct set of group choices (`optimizer=adam model=lenet`) once, through
    `compose`, so every check of a composition applies to it. A point's other overrides (plain
    `key=value` with a number, a string, a boolean, null or a list) are then applied to a copy of that
    composition as Hydra applies them (`OmegaConf.update(merge=True)`), interpolations resolved
    afterwards, and checked as `compose` checks them (types against the files, `validate`). Anything
    else (`+key`, `~key`, mappings, interpolations in a value), and any point this path refuses,
    takes the full `compose` path, so an error message is always `compose`'s own. A test checks
    that both paths give the same configs.
    """

    def __init__(self, config_dir: str | Path | None = None):
        self.config_dir = config_dir
        self._base: dict[tuple[str, ...], Any] = {}  # group choices -> unresolved composition, or None

    def __call__(self, overrides: Iterable[str]) -> Any:
        overrides = list(overrides)
        try:
            fast = self._fast(overrides)
        except Exception:
            fast = None
        return fast if fast is not None else compose(overrides, self.config_dir)

    def _fast(self, overrides: list[str]) -> Any:
        from omegaconf import DictConfig, OmegaConf

        parsed = [_parsed_one(o) for o in overrides]
        groups, values = [], []
        for o in parsed:
            if o.is_sweep_override() or o.package is not None or o.is_delete() or o.is_add() or o.is_force_add():
                return None
            if o.key_or_group in GROUPS:
                groups.append(o.input_line)
            elif _plain(o.value()):
                values.append((o.key_or_group, o.value()))
            else:
                return None
        base = self._base_of(tuple(groups))
        if base is None:
            return None
        cfg = OmegaConf.create(OmegaConf.to_container(base))  # a deep copy, interpolations kept
        OmegaConf.set_struct(cfg, True)
        for key, value in values:
            if isinstance(OmegaConf.select(cfg, key, default=None), DictConfig):
                return None  # a mapping replaced by a value: compose says what is wrong
            OmegaConf.update(cfg, key, value, merge=True)
        OmegaConf.resolve(cfg)
        _check_groups(cfg)
        for parent in {key.rsplit(".", 1)[0] if "." in key else "" for key, _ in values}:
            # only the overridden keys can differ from the composition's types: check their groups
            node, ref = (OmegaConf.select(cfg, parent), OmegaConf.select(base, parent)) if parent else (cfg, base)
            if isinstance(node, DictConfig) and isinstance(ref, DictConfig):
                _check_types(node, ref, f"{parent}." if parent else "")
        validate(cfg)
        return cfg

    def _base_of(self, groups: tuple[str, ...]) -> Any:
        if groups not in self._base:
            try:
                compose(list(groups), self.config_dir)  # every check of a composition, once per choice set
                self._base[groups] = _compose(list(groups), self.config_dir)
            except ConfigError:
                self._base[groups] = None  # the defaults alone are refused: each point composes in full
        return self._base[groups]


@functools.lru_cache(maxsize=4096)
def _parsed_one(override: str):
    return _parsed([override])[0]


def _plain(value: Any) -> bool:
    """A value that Hydra sets as it is: a number, a boolean, null, a string without ${...} or escapes,
    or a list of those."""
    if isinstance(value, list):
        return all(_plain(v) and not isinstance(v, list) for v in value)
    if isinstance(value, str):
        return "$" not in value and "\\" not in value
    return value is None or isinstance(value, (int, float, bool))
