"""Vectorized groups (dlexp/vectorize.py): a member is the same run as when trained alone.

Each test trains a few configs one by one with `dlexp.train.train` and the same configs as one group
(`train` given lists), then compares every record (epoch, step, examples, split, metric and value; not
the wall-clock `time_s` and `epoch_s`), the status and the final weights. One torch thread throughout
(fixed by a fixture), so that a product's summation order is one and the same in every run.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from dlexp.data import load_splits
from dlexp.train import Stop, train

# The contract: 1e-5 relative in float32, 1e-9 in float64, over 5 epochs. Measured on these runs (one
# thread): at most 1.8e-6 in float32 (RMSprop; 1.3e-7 to 2.9e-7 for the others) and 2.2e-15 in
# float64. The weights and the update are bit-identical at first (the stacked rules round as the single
# run's kernels, tests/test_vectorize_optim.py); what differs is the recorded loss (a member's mean of
# the per-row losses and the single run's cross-entropy sum them in different orders).
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}


# bit-level claims: one torch thread (conftest.one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def as_dtype(splits, dtype):
    """The splits with real-valued tensors in `dtype` (a float64 run: model and data in float64)."""
    def cast(pair):
        return None if pair is None else tuple(t.to(dtype) if t.is_floating_point() else t for t in pair)

    splits.train, splits.val, splits.test = cast(splits.train), cast(splits.val), cast(splits.test)
    return splits


def comparable(result):
    return [(r["epoch"], r["step"], r["examples"], r["split"], r["metric"]) for r in result.records if r["metric"] != "epoch_s"]


def values(result):
    return [r["value"] for r in result.records if r["metric"] != "epoch_s"]


def rel_diff(a: list[float], b: list[float]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        if math.isnan(x) and math.isnan(y) or x == y:
            continue
        worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-12))
    return worst


def assert_same_runs(singles, grouped, tolerance):
    """Every member's status, records and weights against its single run; returns the worst relative
    difference of the recorded values."""
    assert len(singles) == len(grouped)
    worst = 0.0
    for a, b in zip(singles, grouped):
        assert (b.status, b.reason, b.epochs_completed, b.steps) == (a.status, a.reason, a.epochs_completed, a.steps)
        assert comparable(b) == comparable(a)
        worst = max(worst, rel_diff(values(a), values(b)))
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sb[k].dtype == sa[k].dtype and sb[k].shape == sa[k].shape
            scale = sa[k].abs().max().clamp_min(1e-12)
            worst = max(worst, ((sa[k] - sb[k]).abs().max() / scale).item())
    assert worst <= tolerance, f"largest relative difference {worst:.3e} > {tolerance:.0e}"
    return worst


def run_both(make_cfg, members: list[list[str]], *common: str, dtype=torch.float32, splits=None):
    """Each member's config trained alone, then all of them as one group."""
    with default_dtype(dtype):
        cfgs = [make_cfg("trainer.epochs=5", "trainer.batch_size=64", *common, *m) for m in members]
        splits = splits or as_dtype(load_splits(cfgs[0].dataset), dtype)
        singles = [train(c, splits) for c in cfgs]
        grouped = train(cfgs, [splits] * len(cfgs))
    return singles, grouped


# three members: their own seeds and learning rates, and the optimizer's other numbers varied too
MEMBERS = {
    "sgd": [["seed=0", "optimizer.lr=0.1", "optimizer.momentum=0.9", "optimizer.dampening=0.1"],
            ["seed=1", "optimizer.lr=0.05", "optimizer.momentum=0.0", "optimizer.dampening=0.5"],
            ["seed=2", "optimizer.lr=0.2", "optimizer.momentum=0.5", "optimizer.dampening=0.0"]],
    "adagrad": [["seed=0", "optimizer.lr=0.05"], ["seed=1", "optimizer.lr=0.02", "optimizer.eps=1e-6"],
                ["seed=2", "optimizer.lr=0.1", "optimizer.lr_decay=0.01", "optimizer.initial_accumulator_value=0.1"]],
    "rmsprop": [["seed=0", "optimizer.lr=0.001"], ["seed=1", "optimizer.lr=0.0005", "optimizer.alpha=0.9", "optimizer.momentum=0.5"],
                ["seed=2", "optimizer.lr=0.002", "optimizer.eps=1e-6"]],
    "adadelta": [["seed=0", "optimizer.lr=1.0"], ["seed=1", "optimizer.lr=0.5", "optimizer.rho=0.5"],
                 ["seed=2", "optimizer.lr=2.0", "optimizer.eps=1e-5"]],
    "adam": [["seed=0", "optimizer.lr=0.001"], ["seed=1", "optimizer.lr=0.002", "optimizer.betas=[0.8,0.99]"],
             ["seed=2", "optimizer.lr=0.0005", "optimizer.eps=1e-6"]],
    "adamw": [["seed=0", "optimizer.lr=0.001", "optimizer.weight_decay=0.01"],
              ["seed=1", "optimizer.lr=0.002", "optimizer.betas=[0.8,0.99]", "optimizer.weight_decay=0.0"],
              ["seed=2", "optimizer.lr=0.0005", "optimizer.weight_decay=0.1"]],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("optimizer", sorted(MEMBERS))
def test_every_optimizer_member_is_its_single_run(make_cfg, optimizer, dtype):
    singles, grouped = run_both(make_cfg, MEMBERS[optimizer], f"optimizer={optimizer}", dtype=dtype)
    assert_same_runs(singles, grouped, TOLERANCE[dtype])
    assert all(r.status == "ok" for r in grouped)


@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_dropout_masks_are_each_members_own(make_cfg, impl):
    """Each member draws its masks from its own stream, as nn.Dropout / d2l's dropout_layer draw them
    in its single run; rates differ per member (the layers stay the same)."""
    members = [["seed=0", "model.dropout=0.5"], ["seed=1", "model.dropout=0.2"], ["seed=2", "model.dropout=0.5"]]
    singles, grouped = run_both(make_cfg, members, "model.hidden=[64,32]", f"model.dropout_impl={impl}")
    assert_same_runs(singles, grouped, TOLERANCE[torch.float32])


@pytest.mark.parametrize("mode", ["coupled", "decoupled", "loss"])
def test_weight_decay_in_every_mode(make_cfg, mode):
    members = [["seed=0", "optimizer.weight_decay=0.01"], ["seed=1", "optimizer.weight_decay=0.0"],
               ["seed=2", "optimizer.weight_decay=0.05", "optimizer.decay_bias=false"]]
    singles, grouped = run_both(make_cfg, members, f"optimizer.weight_decay_mode={mode}", "optimizer.momentum=0.9")
    assert_same_runs(singles, grouped, TOLERANCE[torch.float32])


def test_schedule_parameters_may_differ(make_cfg):
    members = [["seed=0", "schedule.warmup_steps=10", "schedule.final_lr=0.01"],
               ["seed=1", "schedule.warmup_steps=0", "optimizer.lr=0.05"],
               ["seed=2", "schedule.warmup_steps=30", "schedule.warmup_begin_lr=0.01"]]
    singles, grouped = run_both(make_cfg, members, "schedule=cosine", "schedule.unit=step")
    assert_same_runs(singles, grouped, TOLERANCE[torch.float32])
    lrs = [[r["value"] for r in g.records if r["metric"] == "lr"] for g in grouped]
    assert lrs[0] != lrs[1] != lrs[2]  # three schedules, one per member


def test_one_seed_for_all_members_shares_one_data_order(make_cfg):
    """Members of one seed draw the same permutation: the group trains on one batch tensor (the first
    layer is then one matrix product) and each member is still its single run."""
    members = [["optimizer.lr=0.1"], ["optimizer.lr=0.05"], ["optimizer.lr=0.3"]]
    singles, grouped = run_both(make_cfg, members, "seed=7", "model.dropout=0.3")
    assert_same_runs(singles, grouped, TOLERANCE[torch.float32])


def test_regression_with_half_mse(make_cfg, data_env):
    members = [["seed=0", "optimizer.lr=0.01"], ["seed=1", "optimizer.lr=0.02"]]
    singles, grouped = run_both(make_cfg, members, "dataset=house_prices", "model=linear", "optimizer=adam",
                                "trainer.loss=half_mse")
    assert_same_runs(singles, grouped, TOLERANCE[torch.float32])
    assert "log_rmse" in {r["metric"] for r in grouped[0].records}


def test_kfold_members_each_train_on_their_own_fold(make_cfg):
    """Folds of 1,797 digits are 359 and 360 rows: the members' training sets differ in size by one
    row, so the last batch of an epoch is ragged (each member's loss, metrics and dropout masks over
    its own rows) and the validation sets too."""
    from dlexp.data import load_source
    from dlexp.kfold import fold_splits, make_folds

    cfgs_overrides = [["seed=0", "optimizer.lr=0.1"], ["seed=1", "optimizer.lr=0.05"], ["seed=0", "optimizer.lr=0.2"]]
    cfg = make_cfg("trainer.epochs=5", "trainer.batch_size=64", "model.dropout=0.3")
    source = load_source(cfg.dataset)
    folds = make_folds(source, 5, seed=0)
    chosen = [folds[0], folds[3], folds[4]]
    sizes = {len(f.train_idx) for f in chosen}
    assert len(sizes) == 2, sizes  # the case this test is about
    member_splits = [fold_splits(source, f) for f in chosen]
    cfgs = [make_cfg("trainer.epochs=5", "trainer.batch_size=64", "model.dropout=0.3", *o) for o in cfgs_overrides]
    singles = [train(c, s) for c, s in zip(cfgs, member_splits)]
    grouped = train(cfgs, member_splits)
    assert_same_runs(singles, grouped, TOLERANCE[torch.float32])
    assert {r["examples"] for r in grouped[0].records} != {r["examples"] for r in grouped[1].records}


def test_a_diverging_member_is_frozen_and_the_others_are_unaffected(make_cfg):
    """lr=1e10 makes member 1's loss non-finite in its first epoch: it ends `diverged` there, with the
    same records as its single run, and leaves the stack; members 0 and 2 train on, each equal to its
    single run."""
    members = [["seed=0", "optimizer.lr=0.1"], ["seed=1", "optimizer.lr=1e10"], ["seed=2", "optimizer.lr=0.05"]]
    singles, grouped = run_both(make_cfg, members)
    assert [r.status for r in grouped] == ["ok", "diverged", "ok"]
    assert grouped[1].epochs_completed < 5 and grouped[0].epochs_completed == 5
    assert_same_runs(singles, grouped, TOLERANCE[torch.float32])


def test_a_member_stopped_by_its_callback_ends_pruned_and_the_others_go_on(make_cfg):
    cfgs = [make_cfg("trainer.epochs=4", f"seed={s}") for s in range(3)]
    splits = load_splits(cfgs[0].dataset)
    seen = {0: [], 1: [], 2: []}

    def callback(m):
        def on_epoch(epoch, records):
            seen[m].append(epoch)
            if m == 1 and epoch == 2:
                raise Stop("pruned", "pruned after epoch 2")
        return on_epoch

    results = train(cfgs, [splits] * 3, on_epoch=[callback(m) for m in range(3)])
    assert [r.status for r in results] == ["ok", "pruned", "ok"]
    assert seen == {0: [1, 2, 3, 4], 1: [1, 2], 2: [1, 2, 3, 4]}
    assert results[1].epochs_completed == 2 and max(r["epoch"] for r in results[1].records) == 2
    single = train(cfgs[2], splits)
    assert rel_diff(values(single), values(results[2])) <= TOLERANCE[torch.float32]


def _structure(obj):
    """The shape of a checkpoint: its keys, nested, and the types, dtypes and shapes of its leaves."""
    if isinstance(obj, dict):
        return {k: _structure(v) for k, v in obj.items() if k != "records"}
    if isinstance(obj, (list, tuple)):
        return [_structure(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return ("tensor", obj.dtype, tuple(obj.shape))
    return type(obj).__name__


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad"])
def test_a_members_checkpoint_is_a_single_runs_checkpoint(make_cfg, optimizer):
    """Same keys, same tensors (dtype, shape), same optimizer state layout; SGD's momentum-0 member has
    no buffer, as its own optimizer keeps none."""
    overrides = [["seed=0", "optimizer.momentum=0.9"], ["seed=1", "optimizer.momentum=0.0"]] if optimizer == "sgd" else [["seed=0"], ["seed=1"]]
    cfgs = [make_cfg("trainer.epochs=1", f"optimizer={optimizer}", "optimizer.weight_decay=0.01", *o) for o in overrides]
    splits = load_splits(cfgs[0].dataset)
    singles, grouped = [], []
    for c in cfgs:
        train(c, splits, on_checkpoint=singles.append)
    train(cfgs, [splits, splits], on_checkpoint=lambda states: grouped.extend(s for _, s in states))
    for a, b in zip(singles, grouped):
        assert _structure(b) == _structure(a)


def test_a_group_resumed_from_its_checkpoints_continues_bit_identically(make_cfg):
    """Killed after epoch 2 and resumed (every member from its own checkpoint), the group ends exactly
    where the uninterrupted group ends: same records, same weights, bit for bit (one thread)."""
    cfgs = [make_cfg("trainer.epochs=4", "trainer.batch_size=64", f"seed={s}", "model.dropout=0.3", "optimizer=adam",
                     f"optimizer.lr={lr}") for s, lr in ((0, 0.001), (1, 0.002), (2, 0.003))]
    splits = load_splits(cfgs[0].dataset)
    saved = {}

    def keep(states):  # serialized as runner.execute_group does, so nothing shares memory with the loop
        import io

        buf = io.BytesIO()
        torch.save(dict(states), buf)
        saved[states[0][1]["epoch"]] = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)

    full = train(cfgs, [splits] * 3, on_checkpoint=keep)
    resumed = train(cfgs, [splits] * 3, resume=[saved[2][m] for m in range(3)])
    for a, b in zip(full, resumed):
        assert values(a) == values(b) and comparable(a) == comparable(b)
        for k, v in a.model.state_dict().items():
            assert torch.equal(v, b.model.state_dict()[k])
    # a member resumed alone goes on as its single run would
    alone = train(cfgs[1], splits, resume=saved[2][1])
    single = train(cfgs[1], splits)
    assert comparable(alone) == comparable(single)
    assert rel_diff(values(alone), values(single)) <= TOLERANCE[torch.float32]


def test_a_group_whose_members_all_end_in_one_epoch_ends_there(make_cfg):
    members = [["seed=0", "optimizer.lr=1e10"], ["seed=1", "optimizer.lr=1e12"]]
    singles, grouped = run_both(make_cfg, members)
    assert [r.status for r in grouped] == ["diverged", "diverged"]
    assert_same_runs(singles, grouped, TOLERANCE[torch.float32])
