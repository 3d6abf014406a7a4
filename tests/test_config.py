"""Config composition: every file of every group composes and trains a couple of steps; grid expansion.

The choices are read from `conf/<group>/*.yaml` at collection time, so a new file is a new test case.
Each case trains one epoch of large batches on the CPU: only that the choice builds and takes a few
finite steps matters here (whether it learns is tested in test_train.py and the optimizer tests).
"""

from __future__ import annotations

import math

import pytest
import yaml

from conftest import CONF, conf_choices
from dlexp.config import compose, expand
from dlexp.errors import ConfigError

# a model needs data of its shape: lenet takes 1x28x28 images, point an objective, sparse_linear
# feature ids; every other model takes any real features (and so the sparse_features data set goes
# with sparse_linear)
MODEL_DATASET = {"lenet": "fashion_mnist", "point": "objective", "sparse_linear": "sparse_features"}
# sparse_linear's sparse gradients need sgd or adagrad: model.sparse=false lets Adam train it too
DATASET_MODEL = {"sparse_features": ["model=sparse_linear", "model.sparse=false"]}
IMAGE_LIMITS = ["dataset.num_train=2048", "dataset.num_test=512", "trainer.batch_size=1024"]


def dataset_overrides(name: str, tmp_path) -> list[str]:
    """What it takes to make one dataset choice cheap (or usable at all, for csv)."""
    spec = yaml.safe_load((CONF / "dataset" / f"{name}.yaml").read_text())
    out = [f"dataset={name}"]
    if name == "objective":  # minimized over a point, not fitted by a model
        out.append("model=point")
    if "num_train" in spec and spec["num_train"] is None:  # a big dataset: use its first rows only
        out += IMAGE_LIMITS
    if name == "csv":  # needs a file: a tiny classification table with a categorical column
        path = tmp_path / "tiny.csv"
        rows = ["id,x1,x2,colour,label"] + [
            f"{i},{i % 7 * 0.5},{(i * 3) % 5},{'red' if i % 2 else 'blue'},{'yes' if i % 3 else 'no'}" for i in range(60)
        ]
        path.write_text("\n".join(rows) + "\n")
        out += [f"dataset.path={path}", "dataset.target=label", "dataset.task=classification", "dataset.drop=[id]"]
    return out


def train_a_few_steps(cfg):
    from dlexp.data import load_splits
    from dlexp.train import train

    splits = load_splits(cfg.dataset)
    result = train(cfg, splits)
    result.extra["splits"] = splits
    assert result.status == "ok", result.reason
    assert result.steps >= 1 and result.epochs_completed == 1
    # one train/loss per epoch trained (an objective also records its starting point as epoch 0)
    train_loss = [r["value"] for r in result.records if (r["split"], r["metric"]) == ("train", "loss") and r["epoch"] >= 1]
    assert len(train_loss) == 1 and math.isfinite(train_loss[0])
    return result


@pytest.mark.parametrize("model", conf_choices("model"))
def test_every_model_composes_and_trains(model, make_cfg, data_env, tmp_path):
    data = MODEL_DATASET.get(model)
    extra = dataset_overrides(data, tmp_path) if data else []
    cfg = make_cfg(f"model={model}", *extra)
    assert cfg.model.name == model
    train_a_few_steps(cfg)


@pytest.mark.parametrize("dataset", conf_choices("dataset"))
def test_every_dataset_composes_and_trains(dataset, make_cfg, data_env, tmp_path):
    # Adam: its step is bounded by lr whatever the target's scale (SGD at lr 0.1 overflows at once on
    # house_prices' raw SalePrice targets, ~1e5, which is a finding about lr, not about the dataset)
    cfg = make_cfg("optimizer=adam", *DATASET_MODEL.get(dataset, []), *dataset_overrides(dataset, tmp_path))
    assert cfg.dataset.name == dataset
    train_a_few_steps(cfg)


@pytest.mark.parametrize("impl", ["dlexp", "torch"])
@pytest.mark.parametrize("optimizer", conf_choices("optimizer"))
def test_every_optimizer_composes_and_trains(optimizer, impl, make_cfg):
    import torch

    from dlexp.models import build_model

    cfg = make_cfg(f"optimizer={optimizer}", f"optimizer.impl={impl}")
    assert cfg.optimizer.name == optimizer and cfg.optimizer.impl == impl
    result = train_a_few_steps(cfg)
    # every parameter moved away from its initial value (the same seed builds the same initial model)
    splits = result.extra["splits"]
    torch.manual_seed(int(cfg.seed))
    initial = build_model(cfg.model, splits.sample_shape, splits.num_outputs)
    for (name, p0), p1 in zip(initial.named_parameters(), result.model.parameters()):
        assert not torch.equal(p0, p1), f"{name} did not move"


@pytest.mark.parametrize("schedule", conf_choices("schedule"))
def test_every_schedule_composes_and_trains(schedule, make_cfg):
    cfg = make_cfg(f"schedule={schedule}")
    assert cfg.schedule.name == schedule
    result = train_a_few_steps(cfg)
    lrs = [r["value"] for r in result.records if r["metric"] == "lr"]
    assert lrs and all(math.isfinite(v) and 0 <= v <= cfg.optimizer.lr for v in lrs)


def test_every_yaml_file_starts_with_a_one_line_description():
    for group in ("model", "dataset", "optimizer", "schedule", "trainer"):
        for name in conf_choices(group):
            first = (CONF / group / f"{name}.yaml").read_text().splitlines()[0]
            assert first.startswith("# ") and len(first) > 3, f"conf/{group}/{name}.yaml"


# --- grid expansion ---------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_of_the_sweeps():
    grid = expand(["optimizer=sgd,adam", "seed=0,1", "trainer.epochs=3"], multirun=True)
    assert sorted(grid) == sorted(
        [[f"optimizer={o}", f"seed={s}", "trainer.epochs=3"] for o in ("sgd", "adam") for s in (0, 1)]
    )


def test_range_sweep_gives_one_point_per_value():
    grid = expand(["seed=range(0,3)"], multirun=True)
    assert sorted(grid) == [["seed=0"], ["seed=1"], ["seed=2"]]


def test_no_sweep_gives_exactly_one_run_with_or_without_multirun():
    assert expand(["seed=4"], multirun=False) == [["seed=4"]]
    assert expand(["seed=4"], multirun=True) == [["seed=4"]]


def test_sweep_without_multirun_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="seed"):
        expand(["seed=0,1"], multirun=False)
    with pytest.raises(ConfigError, match="seed"):
        compose(["seed=0,1"])


def test_each_grid_point_composes_to_its_own_values(results_dir):
    grid = expand(["optimizer=sgd,adam", "optimizer.lr=0.5,0.05", f"results_dir={results_dir}"], multirun=True)
    cfgs = [compose(o) for o in grid]
    assert sorted((c.optimizer.name, c.optimizer.lr) for c in cfgs) == [
        ("adam", 0.05), ("adam", 0.5), ("sgd", 0.05), ("sgd", 0.5)]
    # a non-swept key from the adam file comes along with adam only
    assert all(("betas" in c.optimizer) == (c.optimizer.name == "adam") for c in cfgs)


# --- composition and validation ----------------------------------------------------------------------


def test_unknown_choice_lists_every_file_of_the_group():
    with pytest.raises(ConfigError) as e:
        compose(["schedule=cosinus"])
    assert "schedule" in str(e.value)
    assert all(name in str(e.value) for name in conf_choices("schedule"))


def test_an_int_where_a_float_is_declared_is_accepted(results_dir):
    cfg = compose(["optimizer.lr=1", f"results_dir={results_dir}"])
    assert cfg.optimizer.lr == 1


@pytest.mark.parametrize("override,key", [
    ("trainer.deterministic=maybe", "trainer.deterministic"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
    ("optimizer.weight_decay_mode=l2", "optimizer.weight_decay_mode"),
    ("optimizer.impl=jax", "optimizer.impl"),
    ("schedule.unit=batch", "schedule.unit"),
    ("model.hidden=[0]", "model.hidden"),
    ("dataset.val_fraction=1.0", "dataset.val_fraction"),
    ("seed=1.5", "seed"),
])
def test_out_of_range_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([override])


def test_users_config_dir_shadows_a_shipped_choice(tmp_path, results_dir):
    (tmp_path / "optimizer").mkdir()
    sgd = (CONF / "optimizer" / "sgd.yaml").read_text().replace("lr: 0.1", "lr: 0.0123")
    (tmp_path / "optimizer" / "sgd.yaml").write_text(sgd)
    assert compose(["optimizer=sgd"], config_dir=tmp_path).optimizer.lr == 0.0123
    assert compose(["optimizer=sgd"]).optimizer.lr == 0.1


def test_missing_config_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config-dir"):
        compose([], config_dir=tmp_path / "nope")


def test_glob_sweeps_a_config_group_including_the_users_own_choices(tmp_path):
    from dlexp.config import expand

    runs = expand(["optimizer=glob(ada*)", "seed=0"], multirun=True)
    assert [r[0] for r in runs] == ["optimizer=adadelta", "optimizer=adagrad", "optimizer=adam", "optimizer=adamw"]
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer" / "adamine.yaml").write_text("# mine\nname: adam\nlr: 0.1\n")
    runs = expand(["optimizer=glob(adam*)"], multirun=True, config_dir=tmp_path)
    assert [r[0] for r in runs] == ["optimizer=adam", "optimizer=adamine", "optimizer=adamw"]
    with pytest.raises(ConfigError, match="optimizer.lr: glob"):
        expand(["optimizer.lr=glob(a*)"], multirun=True)
