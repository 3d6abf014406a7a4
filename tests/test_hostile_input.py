"""Hostile input: random overrides of every config key with values of the wrong type or range, random
junk as whole overrides, saved configs and checkpoints that ask dlexp to run code.

The contract: an input either composes, validates and can start a run, or it is a `ConfigError` whose
message is ONE line naming the key (exit 2 on the CLI, no traceback, no run folder). Nothing else
escapes, and nothing read from a results folder can run code.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from conftest import REPO, SMALL, run_dirs
from dlexp.config import GROUPS, compose, expand, flatten, to_yaml
from dlexp.errors import ConfigError

KEYS = sorted(flatten(compose([])))  # every leaf key of the default config: model.hidden, optimizer.lr, ...

SPECIAL = ["null", "~", "[", "]", "{", "}", "[]", "{}", "''", '""', "nan", "inf", "-inf", "1e400", "true", "yes", "no",
           "0x10", "1_000", "${seed}", "${oops}", "???", ",", "=", "\\", "é", "∞", "数字", "\u202e", "\x00", "a b",
           "[1,", "{a:", "'unterminated", "!!python/object/apply:os.system ['true']"]
HUGE = [2**31, 2**63, 2**64, 10**30, -(2**63) - 1]

scalar = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(min_value=-(10**6), max_value=-1).map(str),
    st.sampled_from(HUGE).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
    st.booleans().map(lambda b: str(b).lower()),
)
value = st.one_of(scalar, st.lists(st.one_of(st.integers(-5, 10**4).map(str), st.sampled_from(SPECIAL)), max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"))
override = st.tuples(st.sampled_from(KEYS + list(GROUPS)), value)
junk = st.one_of(st.text(max_size=30), st.from_regex(r"[a-z.+~_]{0,12}=[^\n]{0,20}", fullmatch=True))


def assert_one_line_naming(e: ConfigError, key: str | None) -> None:
    message = str(e)
    assert message and len(message.splitlines()) == 1, f"not one line: {message!r}"
    if key is not None:
        assert key.lstrip("+~") in message, f"{message!r} does not name {key!r}"


class _Started(Exception):
    pass


_SPLITS: dict[str, object] = {}


def dry_start(cfg) -> None:
    """Everything a run builds and checks before its first epoch (data, model, optimizer, schedule),
    through the real train(): its on_start hook is where a run folder would be made."""
    import torch

    from dlexp.data import load_splits
    from dlexp.train import train

    key = to_yaml(cfg.dataset)
    if key not in _SPLITS:
        _SPLITS[key] = load_splits(cfg.dataset)

    def started(device):
        raise _Started

    try:
        train(cfg, _SPLITS[key], on_start=started)
    except _Started:
        pass
    finally:
        torch.use_deterministic_algorithms(False)  # trainer.deterministic=true sets it process-wide


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kv=override)
@example(kv=("trainer.epochs", "abc"))
@example(kv=("model.hidden", "[0]"))
@example(kv=("optimizer.lr", "-1"))
@example(kv=("model.dropout", "~"))
@example(kv=("trainer.device", "cuda:7"))
def test_any_value_for_any_key_composes_or_is_one_line_naming_the_key(kv, data_env):
    key, val = kv
    o = f"{key}={val}"
    try:
        cfg = compose(["trainer.device=cpu", o])
    except ConfigError as e:
        assert_one_line_naming(e, key)
        return
    # accepted: then a run must be able to start with it (or refuse it in one line naming its group)
    hidden = cfg.model.get("hidden", [])
    assume(not isinstance(hidden, (int, str)) and all(not isinstance(h, int) or h <= 4096 for h in hidden))
    try:
        dry_start(cfg)
    except ConfigError as e:
        assert_one_line_naming(e, key.split(".")[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(o=junk)
@example(o="=0")
@example(o="model.dropout=???")
def test_junk_overrides_compose_or_are_one_line_errors(o, data_env):
    try:
        compose(["trainer.device=cpu", o])
    except ConfigError as e:
        assert_one_line_naming(e, None)


@settings(max_examples=300, deadline=None)
@given(os_=st.lists(st.one_of(junk, override.map("=".join)), max_size=4), multirun=st.booleans())
def test_expand_returns_runs_or_a_one_line_error(os_, multirun):
    try:
        runs = expand(os_, multirun)
    except ConfigError as e:
        assert_one_line_naming(e, None)
        return
    assert runs and all(isinstance(r, list) and all(isinstance(x, str) for x in r) for r in runs)
    if not multirun:
        assert len(runs) == 1


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kv=override)
@example(kv=("trainer.batch_size", "-3"))
@example(kv=("model.hidden", "{"))
def test_the_cli_refuses_bad_values_with_exit_2_one_line_and_no_run_folder(kv, cli, tmp_path_factory, data_env):
    key, val = kv
    assume(key not in ("trainer.epochs", "seed", "dataset.split_seed", "results_dir", "dataset", "dataset.name"))
    assume(not (key == "model.hidden" and any(c.isdigit() for c in val) and val.startswith("[")))  # no wide models
    results = tmp_path_factory.mktemp("hostile") / "results"
    r = cli("run", *SMALL, "--quiet", f"results_dir={results}", f"{key}={val}")
    assert "Traceback" not in r.output
    if r.exit_code == 0:  # an acceptable value: one complete run
        assert len(run_dirs(results)) == 1 and (run_dirs(results)[0] / "summary.json").is_file()
        return
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:")
    assert run_dirs(results) == []


# --- bugs the properties found, fixed and kept as regressions -----------------------------------------------------


def test_a_negative_split_seed_is_a_one_line_error(cli, results_dir, data_env):
    r = cli("run", *SMALL, f"results_dir={results_dir}", "dataset.split_seed=-1")
    assert r.exit_code == 2 and "dataset.split_seed" in r.stderr and "Traceback" not in r.output


def test_a_seed_torch_cannot_take_is_a_one_line_error(cli, results_dir, data_env):
    r = cli("run", *SMALL, f"results_dir={results_dir}", "seed=18446744073709551616")
    assert r.exit_code == 2 and "seed" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("fraction", ["2", "-1"])
def test_a_test_fraction_out_of_range_is_an_error_naming_it(cli, results_dir, data_env, fraction):
    r = cli("run", *SMALL, f"results_dir={results_dir}", f"dataset.test_fraction={fraction}")
    assert r.exit_code == 2 and "dataset.test_fraction" in r.stderr


@pytest.mark.parametrize("key", ["dataset.split_seed", "dataset.test_fraction", "model.init_std"])
def test_null_for_a_number_is_a_one_line_error_naming_the_key(cli, results_dir, data_env, key):
    r = cli("run", *SMALL, f"results_dir={results_dir}", f"{key}=null")
    assert r.exit_code == 2 and key in r.stderr and "Traceback" not in r.output


def test_a_line_break_in_an_override_key_still_gives_a_useful_one_line_error(cli, results_dir):
    r = cli("run", f"results_dir={results_dir}", "\x1etrainer.epochs=1")
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "cannot parse" in line


def test_experiment_null_is_a_one_line_error(cli, results_dir):
    r = cli("run", *SMALL, f"results_dir={results_dir}", "experiment=null")
    assert r.exit_code == 2 and "experiment" in r.stderr and "Traceback" not in r.output


def test_a_negative_init_std_is_a_one_line_error(cli, results_dir):
    r = cli("run", *SMALL, f"results_dir={results_dir}", "model.init=normal", "model.init_std=-1")
    assert r.exit_code == 2 and "model.init_std" in r.stderr and "Traceback" not in r.output
    assert run_dirs(results_dir) == []


def test_an_empty_test_split_has_no_test_metrics_rather_than_zeros(cli, results_dir):
    r = cli("run", *SMALL, f"results_dir={results_dir}", "dataset.test_fraction=0")
    assert r.exit_code == 0, r.output
    (run,) = run_dirs(results_dir)
    splits = set(pd.read_csv(run / "metrics.csv")["split"])
    assert splits == {"train", "val"}


@pytest.mark.parametrize("overrides, key", [
    (["~model"], "model"),
    (["~dataset"], "dataset"),
    (["name=${foo}"], "name"),
    (["optimizer.lr=${oc.env:DLEXP_SURELY_UNSET}"], "optimizer.lr"),
    (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas"),
    (["optimizer=adam", "optimizer.betas=[0.9,0.99,0.9]"], "optimizer.betas"),
    (["optimizer.weight_decay=nan"], "optimizer.weight_decay"),
    (["optimizer.lr=inf"], "optimizer.lr"),
    (["model.init_std=nan"], "model.init_std"),
    (["dataset=synthetic", "dataset.noise=-1"], "dataset.noise"),
    (["dataset=synthetic", "dataset.w=abc"], "dataset.w"),
    (["dataset=synthetic", "dataset.num_train=-5"], "dataset.num_train"),
    (["+trainer.epochz=5"], "trainer.epochz"),
    (["model.dropout=???"], "model.dropout"),  # OmegaConf's MISSING: was a MissingMandatoryValue traceback
    (["optimizer.lr=???"], "optimizer.lr"),
    (["=0"], "'=0'"),  # an empty key: was Hydra's ValueError from deep in its defaults list
    (["@=1"], "'@=1'"),
])
def test_inputs_an_audit_found_are_one_line_errors_naming_the_key(cli, results_dir, overrides, key):
    r = cli("run", *SMALL, f"results_dir={results_dir}", *overrides)
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and key in r.stderr and "Traceback" not in r.output
    assert run_dirs(results_dir) == []


@pytest.mark.parametrize("overrides", [
    ["schedule=exponential", "schedule.lam=null", "schedule.gamma=0.9"],
    ["schedule=piecewise", "schedule.milestones=null", "schedule.factor=null", "schedule.boundaries=[1,2]", "schedule.values=[1,0.1,0.01]"],
])
def test_the_documented_null_forms_of_the_schedules_are_accepted(overrides):
    cfg = compose(overrides)
    assert cfg.schedule.name in ("exponential", "piecewise")


def test_a_bad_grid_point_is_refused_before_any_point_trains(cli, results_dir):
    r = cli("run", "-m", *SMALL, f"results_dir={results_dir}", "optimizer.momentum=0,-1")
    assert r.exit_code == 2 and "momentum" in r.stderr
    assert run_dirs(results_dir) == []
    r = cli("kfold", "--folds", "2", "-m", *SMALL, f"results_dir={results_dir}", "optimizer.momentum=0,-1")
    assert r.exit_code == 2 and "momentum" in r.stderr
    assert not results_dir.exists() or not any(results_dir.rglob("*.csv"))


def test_usage_errors_of_the_installed_command_are_one_line(tmp_path):
    import subprocess
    import sys

    for args in (["run", "--jobs", "abc"], ["run", "--bogus"], ["bogus"], ["check-optimizers", "--device", "foo"]):
        r = subprocess.run([sys.executable, "-m", "dlexp", *args], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:"), (args, r.stderr)
    r = subprocess.run([sys.executable, "-m", "dlexp", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "Usage" in r.stdout


def test_the_documented_per_layer_dropout_list_is_accepted_on_the_command_line():
    cfg = compose(["model.hidden=[8,8]", "model.dropout=[0.1,0.2]"])
    assert list(cfg.model.dropout) == [0.1, 0.2]


# --- nothing read from a results folder runs code --------------------------------------------------


def _torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls of torch.load however it is imported: torch.load, <alias>.load, load / <name> from torch."""
    torch_names, load_names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname or a.name for a in node.names if a.name == "torch"}
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "load" and (
            (isinstance(f.value, ast.Name) and f.value.id in torch_names)
            or (isinstance(f.value, ast.Attribute) and f.value.attr == "serialization")
        ):
            calls.append(node)
        elif isinstance(f, ast.Name) and f.id in load_names:
            calls.append(node)
    return calls


def test_every_torch_load_in_dlexp_passes_weights_only_true():
    found, bad = 0, []
    for path in sorted((REPO / "dlexp").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _torch_load_calls(tree):
            found += 1
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                bad.append(f"{path.relative_to(REPO)}:{call.lineno}")
        for node in ast.walk(tree):  # nor any other unpickler
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & set(names), f"{path}: imports an unpickler"
    assert found >= 1  # load_checkpoint
    assert bad == [], f"torch.load without weights_only=True at {bad}"


@pytest.fixture
def saved_run(cli, results_dir, data_env) -> Path:
    r = cli("run", *SMALL, f"results_dir={results_dir}", "--quiet")
    assert r.exit_code == 0, r.output
    return run_dirs(results_dir)[0]


def _edit(run: Path, change) -> None:
    data = yaml.safe_load((run / "config.yaml").read_text())
    change(data)
    (run / "config.yaml").write_text(yaml.safe_dump(data))


def _target(marker: Path) -> dict:
    return {"_target_": "pathlib.Path.touch", "self": str(marker)}


@pytest.mark.parametrize("where", ["top", "group", "nested", "in_a_list"])
def test_resume_refuses_a_saved_config_with_a_target_anywhere(cli, saved_run, results_dir, tmp_path, where):
    marker = tmp_path / "pwned"
    changes = {
        "top": lambda d: d.update(_target_="os.system"),
        "group": lambda d: d["optimizer"].update(_target_="torch.optim.LBFGS"),
        "nested": lambda d: d["trainer"].update(callback={"inner": _target(marker)}),
        "in_a_list": lambda d: d["model"].update(hidden=[8, _target(marker)]),
    }
    _edit(saved_run, changes[where])
    (saved_run / "summary.json").unlink()  # a killed run, so that resume would continue it
    r = cli("run", "--resume", saved_run.name, f"results_dir={results_dir}")
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "_target_" in r.stderr and "Traceback" not in r.output
    assert not marker.exists()


@pytest.mark.parametrize("group,name", [("model", "os.system"), ("optimizer", "torch.optim.LBFGS"),
                                        ("dataset", "../../etc/passwd"), ("schedule", None)])
def test_resume_refuses_unregistered_names(cli, saved_run, results_dir, group, name):
    _edit(saved_run, lambda d: d[group].update(name=name))
    r = cli("run", "--resume", saved_run.name, f"results_dir={results_dir}")
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and f"{group}.name" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("body", ["!!python/object/apply:pathlib.Path.touch [MARKER]\n", "", "- a list\n", "{unclosed: [\n",
                                  "model: {name: mlp}\n"])
def test_resume_refuses_a_saved_config_that_is_not_a_plain_dlexp_config(cli, saved_run, results_dir, tmp_path, body):
    marker = tmp_path / "pwned"
    (saved_run / "config.yaml").write_text(body.replace("MARKER", str(marker)))
    r = cli("run", "--resume", saved_run.name, f"results_dir={results_dir}")
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not marker.exists()
    assert json.loads((saved_run / "summary.json").read_text())["status"] == "ok"  # the run is left as it was


# --- round two: what a second outside audit broke -------------------------------------------------


def one_error_line(r) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip() and "Warning" not in l and not l.startswith(" ")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


@pytest.mark.parametrize("command", ["run", "list", "sweep", "kfold"])
@pytest.mark.parametrize("loop", ["the_folder", "a_group_file"])
def test_a_config_dir_with_a_symlink_loop_is_one_line(cli, tmp_path, results_dir, command, loop):
    if loop == "the_folder":
        config_dir = tmp_path / "loop"
        config_dir.symlink_to(config_dir)  # loop -> loop
    else:
        config_dir = tmp_path / "mine"
        (config_dir / "model").mkdir(parents=True)
        (config_dir / "model" / "x.yaml").symlink_to(config_dir / "model" / "x.yaml")
    extra = {"run": [*SMALL], "list": [], "sweep": ["sweep=lr_wd", "--trials", "1", *SMALL], "kfold": ["--folds", "2", *SMALL]}
    args = [command, *extra[command], "--config-dir", str(config_dir)]
    if command != "list":
        args.append(f"results_dir={results_dir}")
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert "--config-dir" in one_error_line(r)
    assert run_dirs(results_dir) == []


def _bomb(levels: int = 9, width: int = 10) -> str:
    """A YAML 'billion laughs': `levels` anchors, each a list of `width` aliases of the one before."""
    lines = ["# an anchor bomb", "name: mlp", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["model/bomb.yaml", "sweep/bomb.yaml", "deep/nested.yaml"])
def test_a_yaml_anchor_bomb_or_a_deep_file_in_a_config_dir_is_refused_in_one_line(cli, tmp_path, results_dir, where):
    config_dir = tmp_path / "mine"
    path = config_dir / where
    path.parent.mkdir(parents=True)
    path.write_text(_bomb() if "bomb" in where else "# deep\nname: mlp\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    command = ["sweep", "sweep=bomb", "--trials", "1"] if where.startswith("sweep") else ["run", "model=bomb"]
    r = cli(*command, *SMALL, f"results_dir={results_dir}", "--config-dir", str(config_dir))
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert str(path) in line and ("aliases expand" in line or "deep" in line), line
    assert run_dirs(results_dir) == []


def test_a_target_in_a_config_dir_file_is_refused_at_composition(cli, tmp_path, results_dir):
    config_dir = tmp_path / "mine"
    (config_dir / "model").mkdir(parents=True)
    shipped = yaml.safe_load((REPO / "conf" / "model" / "mlp.yaml").read_text())
    (config_dir / "model" / "evil.yaml").write_text("# evil\n" + yaml.safe_dump({**shipped, "_target_": "os.system"}))
    r = cli("run", *SMALL, "model=evil", f"results_dir={results_dir}", "--config-dir", str(config_dir))
    assert r.exit_code == 2, r.output
    assert "model._target_" in one_error_line(r) and "refused" in r.stderr
    assert run_dirs(results_dir) == []


@pytest.mark.parametrize("overrides", [["trainer.epochs=${oc.decode:\"1\"}"], ["trainer.epochs=${oc.decode:\"1\"},2"],
                                       ["trainer.epochs='${oc.decode:\"1\"}'"]])
def test_an_interpolation_override_survives_the_grid_expansion(overrides):
    runs = expand(overrides, multirun=True)
    assert compose(runs[0]).trainer.epochs == 1  # as `compose` alone gives: not re-escaped to $\{...\}


@pytest.mark.parametrize("overrides, key, chosen, absent", [
    (["optimizer=adam", "optimizer.momentum=0.9"], "optimizer.momentum", "betas", "momentum"),
    (["model=lenet", "model.hidden=[10]"], "model.hidden", "activation", "hidden"),
    (["experiment=d2l_lenet", "model.hidden=[10]"], "model.hidden", "activation", "hidden"),
])
def test_an_unknown_key_lists_the_keys_of_the_chosen_file(overrides, key, chosen, absent):
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    message = str(e.value)
    listed = message.split(" has: ", 1)[1].split(", ")
    assert message.startswith(f"{key}: unknown key") and chosen in listed and absent not in listed


def test_a_grid_error_names_the_point_that_failed(cli, results_dir):
    r = cli("run", "-m", *SMALL, f"results_dir={results_dir}", "optimizer=sgd,adam", "optimizer.momentum=0.9", "seed=1")
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert "grid point 2 of 2 (optimizer=adam)" in line and "optimizer.momentum: unknown key" in line
    assert run_dirs(results_dir) == []


@pytest.mark.parametrize("key", ["optimizer.lr", "optimizer.weight_decay"])
@pytest.mark.parametrize("impl", ["dlexp", "torch"])
def test_a_number_beyond_float32_s_range_is_refused(cli, results_dir, key, impl):
    r = cli("run", *SMALL, f"{key}=1e39", f"optimizer.impl={impl}", f"results_dir={results_dir}")
    assert r.exit_code == 2, r.output
    assert key in one_error_line(r) and "float32" in r.stderr
    assert run_dirs(results_dir) == []


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("impl", ["dlexp", "torch"])
def test_an_update_that_overflows_float32_is_divergence_not_a_crash(cli, results_dir, optimizer, impl):
    # Adam's step size is lr / (1 - beta1^t): 1e38 / 0.1 overflows float32 in the first update
    lr = "3e38" if optimizer == "sgd" else "1e38"
    r = cli("run", *SMALL, f"optimizer={optimizer}", f"optimizer.impl={impl}", f"optimizer.lr={lr}",
            f"results_dir={results_dir}", "--quiet")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    summary = json.loads((run_dirs(results_dir)[0] / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["reason"]


def test_a_model_too_large_for_the_machine_is_refused_before_allocation_saying_how_much_it_needs(cli, results_dir):
    r = cli("run", *SMALL, "model.hidden=[100000,100000]", f"results_dir={results_dir}")
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert "GiB" in line and "available" in line and "model" in line
    need = float(line.split("needs at least ")[1].split(" GiB")[0])
    assert need > 74.5  # 10**10 float32 weights (37.3 GiB) and their gradients, at least
    assert run_dirs(results_dir) == []


@pytest.mark.slow
def test_the_memory_check_honours_an_address_space_limit(tmp_path):
    """ulimit -v (RLIMIT_AS) of 6 GiB in a real subprocess: a model of 2.9 GiB of weights (5.8 GiB with
    its gradients) is refused in one line; one of 0.4 GiB trains."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    def run(hidden: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dlexp", "run", *SMALL, f"model.hidden={hidden}", "--quiet",
                               f"results_dir={tmp_path / 'r'}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, preexec_fn=limit, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})

    big = run("[27000,27000]")  # 27000**2 * 4 B = 2.7 GiB of weights
    assert big.returncode == 2, big.stderr
    assert "available" in big.stderr and len(big.stderr.strip().splitlines()) == 1
    small = run("[10000,10000]")  # 0.37 GiB
    assert small.returncode == 0, small.stderr


def test_a_csv_with_a_5_mb_header_is_echoed_cut(cli, tmp_path, results_dir):
    csv = tmp_path / "wide.csv"
    names = [f"column_{i:04d}_" + "x" * 2600 for i in range(2000)]  # a 5.2 MB header line
    csv.write_text(",".join(names) + "\n" + ",".join("1" for _ in names) + "\n")
    assert csv.stat().st_size > 5_000_000
    r = cli("run", *SMALL, "dataset=csv", f"dataset.path={csv}", "dataset.target=label", "dataset.task=regression",
            f"results_dir={results_dir}")
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert len(r.stderr) < 1000 and "dataset.target" in line and "2,000 columns" in line


def test_a_file_such_as_proc_self_environ_is_refused_without_echoing_it(cli, results_dir, monkeypatch):
    monkeypatch.setenv("DLEXP_TEST_SECRET", "do-not-print-" + "s3cr3t" * 4)
    r = cli("run", *SMALL, "dataset=csv", "dataset.path=/proc/self/environ", "dataset.target=label",
            "dataset.task=classification", f"results_dir={results_dir}")
    assert r.exit_code == 2, r.output
    assert "NUL" in one_error_line(r)
    assert "s3cr3t" not in r.output and "PATH=" not in r.output


@pytest.mark.parametrize("value", ["\x1b[31m" + "9" * 9000, "[" + ",".join(["7"] * 4000) + "]]"])
def test_any_error_line_is_cut_and_shows_control_characters_escaped(cli, results_dir, value):
    r = cli("run", *SMALL, f"trainer.epochs={value}", f"results_dir={results_dir}")
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert len(line) < 700 and "\x1b" not in r.stderr and "trainer.epochs" in line


def test_a_huge_override_is_refused_before_the_parser_spends_minutes_on_it(cli, results_dir):
    r = cli("run", "-m", *SMALL, "model.hidden=[" + ",".join(["1"] * 50_000) + "]", f"results_dir={results_dir}")
    assert r.exit_code == 2, r.output
    assert "model.hidden: an override of 100,014 characters" in one_error_line(r)


@pytest.mark.parametrize("args", [["run", "name=.."], ["run", "name=.hidden"], ["sweep", "sweep=lr_wd", "--study", ".."],
                                  ["sweep", "sweep=lr_wd", "--study", "../x"], ["kfold", "--folds", "2", "--study", ".."],
                                  ["kfold", "--folds", "2", "--study", "a/../../b"]])
def test_a_name_that_would_leave_its_folder_is_refused(cli, tmp_path, args):
    results = tmp_path / "deep" / "results"
    r = cli(*args, *SMALL, f"results_dir={results}")
    assert r.exit_code == 2, r.output
    assert ("--study" if "--study" in args else "name") in one_error_line(r)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written, inside or outside
