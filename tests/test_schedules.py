"""Schedules: hand-written target tables, agreement with torch.optim.lr_scheduler, bad inputs, configs.

t is the number of schedule units completed (see dlexp.schedules); torch's scheduler reports the
same quantity as get_last_lr() after t calls to scheduler.step().
"""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import dlexp.schedules
from dlexp.errors import ConfigError
from dlexp.schedules import SCHEDULES, make_schedule

CONF = Path(__file__).resolve().parents[1] / "conf" / "schedule"
STEPS = 500

# Torch's schedulers update recursively (lr <- lr * ratio) and accumulate rounding; the closed forms
# here do not. Largest relative mismatch measured over 500 steps (float64 lrs): MultiStepLR 0,
# ExponentialLR 6e-15 (lam form) / 1e-15 (gamma form), PolynomialLR 4e-15, CosineAnnealingLR 6e-15,
# SequentialLR(LinearLR, CosineAnnealingLR) 5e-15; 1e-10 still separates any real bug from rounding.
REL, ABS = 1e-10, 1e-15


def sched(**cfg):
    base_lr = cfg.pop("base_lr", 1.0)
    total = cfg.pop("total", 100)
    return make_schedule(OmegaConf.create({"unit": "step", **cfg}), base_lr=base_lr, total=total)


# ------------------------------------------------------------------------------------------------
# hand-written tables: each target is the formula with concrete numbers, worked out here


def test_constant_table():
    f = sched(name="constant", base_lr=0.05)
    assert [f(t) for t in (0, 1, 99, 10_000)] == [0.05] * 4


def test_piecewise_boundaries_values_table():
    # values multiply base_lr 0.2: [0.2 * 1, 0.2 * 0.5, 0.2 * 0.1]; the switch happens at t == boundary
    f = sched(name="piecewise", base_lr=0.2, boundaries=[3, 6], values=[1.0, 0.5, 0.1])
    want = [0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.02, 0.02, 0.02]
    assert [f(t) for t in range(9)] == pytest.approx(want, rel=1e-15)


def test_piecewise_milestones_factor_table():
    # base 1, factor 0.1: 1 before 2, 0.1 on [2, 4), 0.01 from 4
    f = sched(name="piecewise", milestones=[2, 4], factor=0.1)
    want = [1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.01]
    assert [f(t) for t in range(7)] == pytest.approx(want, rel=1e-15)


def test_exponential_lam_and_gamma_tables():
    # lam = ln 2 and gamma = 1/2 both halve the lr every unit: 0.8, 0.4, 0.2, 0.1, 0.05
    want = [0.8, 0.4, 0.2, 0.1, 0.05]
    f = sched(name="exponential", base_lr=0.8, lam=math.log(2.0), gamma=None)
    g = sched(name="exponential", base_lr=0.8, lam=None, gamma=0.5)
    assert [f(t) for t in range(5)] == pytest.approx(want, rel=1e-14)
    assert [g(t) for t in range(5)] == want


def test_polynomial_d2l_table():
    # 0.1 * (1 * t + 1) ** -0.5: t=0 -> 0.1, t=3 -> 0.1 / 2, t=8 -> 0.1 / 3, t=99 -> 0.1 / 10
    f = sched(name="polynomial", base_lr=0.1, form="d2l", alpha=0.5, beta=1.0)
    assert [f(t) for t in (0, 3, 8, 99)] == pytest.approx([0.1, 0.05, 0.1 / 3, 0.01], rel=1e-14)
    # beta 0.5, alpha 1: 0.1 / (0.5 t + 1): t=2 -> 0.05, t=6 -> 0.025
    g = sched(name="polynomial", base_lr=0.1, form="d2l", alpha=1.0, beta=0.5)
    assert [g(t) for t in (0, 2, 6)] == pytest.approx([0.1, 0.05, 0.025], rel=1e-14)


def test_polynomial_torch_table():
    # 0.2 + 0.8 * (1 - min(t, 4) / 4) ** 2: t=1 -> 0.2 + 0.8 * 9/16 = 0.65, t=2 -> 0.4, t=3 -> 0.25
    f = sched(name="polynomial", form="torch", power=2.0, total_iters=4, final_lr=0.2)
    want = [1.0, 0.65, 0.4, 0.25, 0.2, 0.2, 0.2]
    assert [f(t) for t in range(7)] == pytest.approx(want, rel=1e-14)


def test_polynomial_torch_uses_run_length_when_total_iters_is_null():
    # linear decay from 1 to 0 over the run's 10 units: t=5 -> 0.5
    f = sched(name="polynomial", form="torch", power=1.0, total_iters=None, final_lr=0.0, total=10)
    assert [f(t) for t in (0, 5, 10, 11)] == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-15)


def test_cosine_with_warmup_table():
    # base 0.3, final 0.01, warmup 5 from 0, max_update 25: cosine over 20 units
    f = sched(name="cosine", base_lr=0.3, final_lr=0.01, warmup_steps=5, warmup_begin_lr=0.0, max_update=25)
    want = {
        0: 0.0,
        1: 0.06,  # 0 + 0.3 * 1/5
        4: 0.24,  # 0.3 * 4/5
        5: 0.3,  # cos(0) = 1
        10: 0.01 + 0.29 * (1 + math.sqrt(2) / 2) / 2,  # cos(pi/4)
        15: 0.01 + 0.29 / 2,  # cos(pi/2) = 0
        20: 0.01 + 0.29 * (1 - math.sqrt(2) / 2) / 2,  # cos(3pi/4)
        25: 0.01,  # cos(pi) = -1
        26: 0.01,  # stays at final_lr (torch's CosineAnnealingLR would climb back up)
        1000: 0.01,
    }
    assert [f(t) for t in want] == pytest.approx(list(want.values()), rel=1e-14, abs=1e-15)


def test_cosine_max_update_null_means_the_run_length():
    # no warmup, T = total = 4, base 1, final 0: (1 + cos(pi t / 4)) / 2
    f = sched(name="cosine", max_update=None, final_lr=0.0, total=4)
    want = [1.0, (1 + math.sqrt(2) / 2) / 2, 0.5, (1 - math.sqrt(2) / 2) / 2, 0.0, 0.0]
    assert [f(t) for t in range(6)] == pytest.approx(want, abs=1e-15)


def test_docstring_examples_run():
    assert doctest.testmod(dlexp.schedules).failed == 0


# ------------------------------------------------------------------------------------------------
# agreement with torch.optim.lr_scheduler, driving a real optimizer


def torch_lrs(make_scheduler, base_lr: float, steps: int = STEPS) -> list[float]:
    """The lr torch reports before each of `steps` updates: get_last_lr() after t scheduler.step() calls."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        assert opt.param_groups[0]["lr"] == lrs[-1]
        opt.step()
        scheduler.step()
    return lrs


def ours(f, steps: int = STEPS) -> list[float]:
    return [f(t) for t in range(steps)]


@pytest.mark.parametrize("milestones, factor", [([30, 80, 81, 250], 0.5), ([1], 0.1), ([100, 400], 3.0)])
def test_piecewise_matches_torch_multisteplr_over_500_steps(milestones, factor):
    f = sched(name="piecewise", base_lr=0.3, milestones=milestones, factor=factor)
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, gamma=factor), 0.3)
    assert ours(f) == pytest.approx(want, rel=REL, abs=ABS)


def test_piecewise_boundaries_match_torch_multisteplr_when_values_are_powers():
    f = sched(name="piecewise", base_lr=0.3, boundaries=[50, 200], values=[1.0, 0.1, 0.01])
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [50, 200], gamma=0.1), 0.3)
    assert ours(f) == pytest.approx(want, rel=REL, abs=ABS)


@pytest.mark.parametrize("gamma", [0.99, 0.9, 1.0])
def test_exponential_matches_torch_exponentiallr_over_500_steps(gamma):
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=gamma), 0.1)
    f = sched(name="exponential", base_lr=0.1, lam=None, gamma=gamma)
    g = sched(name="exponential", base_lr=0.1, lam=-math.log(gamma), gamma=None)  # gamma = exp(-lam)
    assert ours(f) == pytest.approx(want, rel=REL, abs=ABS)
    assert ours(g) == pytest.approx(want, rel=REL, abs=ABS)


@pytest.mark.parametrize("power, total_iters", [(1.0, 300), (2.0, 499), (0.5, 100), (3.0, 1)])
def test_polynomial_torch_form_matches_torch_polynomiallr_over_500_steps(power, total_iters):
    f = sched(name="polynomial", base_lr=0.1, form="torch", power=power, total_iters=total_iters, final_lr=0.0)
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=total_iters, power=power), 0.1)
    assert ours(f) == pytest.approx(want, rel=REL, abs=ABS)


@pytest.mark.parametrize("final_lr", [0.0, 0.001])
def test_cosine_matches_torch_cosineannealinglr_over_500_steps(final_lr):
    # T_max = 500 covers the whole comparison: past T_max torch's schedule is periodic and ours is flat
    f = sched(name="cosine", base_lr=0.1, max_update=None, final_lr=final_lr, total=STEPS)
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS, eta_min=final_lr), 0.1)
    assert ours(f) == pytest.approx(want, rel=REL, abs=ABS)


@pytest.mark.parametrize("warmup, begin", [(50, 0.001), (1, 0.05), (100, 0.1)])
def test_cosine_with_warmup_matches_torch_sequentiallr_over_500_steps(warmup, begin):
    base, final, max_update = 0.1, 0.002, 450  # 50 steps past max_update: torch's cosine turns back up there
    f = sched(name="cosine", base_lr=base, max_update=max_update, final_lr=final, warmup_steps=warmup, warmup_begin_lr=begin)

    def warmup_then_cosine(o):
        # LinearLR needs start_factor > 0, hence begin > 0 here; d2l's default begin is 0
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=begin / base, end_factor=1.0, total_iters=warmup)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max_update - warmup, eta_min=final)
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, cos], milestones=[warmup])

    want = torch_lrs(warmup_then_cosine, base, steps=max_update + 1)
    assert ours(f, max_update + 1) == pytest.approx(want, rel=REL, abs=ABS)
    assert ours(f)[max_update:] == [final] * (STEPS - max_update)


class D2LCosineScheduler:
    """d2l 12.11's CosineScheduler, verbatim (pytorch tab), as an independent reference with begin = 0."""

    def __init__(self, max_update, base_lr=0.01, final_lr=0, warmup_steps=0, warmup_begin_lr=0):
        self.base_lr_orig = base_lr
        self.max_update = max_update
        self.final_lr = final_lr
        self.warmup_steps = warmup_steps
        self.warmup_begin_lr = warmup_begin_lr
        self.max_steps = self.max_update - self.warmup_steps

    def get_warmup_lr(self, epoch):
        increase = (self.base_lr_orig - self.warmup_begin_lr) * float(epoch) / float(self.warmup_steps)
        return self.warmup_begin_lr + increase

    def __call__(self, epoch):
        if epoch < self.warmup_steps:
            return self.get_warmup_lr(epoch)
        if epoch <= self.max_update:
            self.base_lr = self.final_lr + (self.base_lr_orig - self.final_lr) * (
                1 + math.cos(math.pi * (epoch - self.warmup_steps) / self.max_steps)
            ) / 2
        return self.base_lr


def test_cosine_matches_d2l_cosinescheduler_through_torch_lambdalr():
    # d2l's example: CosineScheduler(20, warmup_steps=5, base_lr=0.3, final_lr=0.01), driven by LambdaLR
    ref = D2LCosineScheduler(20, warmup_steps=5, base_lr=0.3, final_lr=0.01)
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: ref(t) / 0.3), 0.3, steps=40)
    f = sched(name="cosine", base_lr=0.3, max_update=20, final_lr=0.01, warmup_steps=5, warmup_begin_lr=0.0)
    assert ours(f, 40) == pytest.approx(want, rel=1e-14, abs=1e-15)


# ------------------------------------------------------------------------------------------------
# bad inputs: ConfigError naming the key


BAD = [
    ({"name": "piecewise", "boundaries": [5, 3], "values": [1, 0.5, 0.1]}, "schedule.boundaries: must be strictly increasing, got [5, 3]"),
    ({"name": "piecewise", "boundaries": [5, 5], "values": [1, 0.5, 0.1]}, "schedule.boundaries: must be strictly increasing"),
    ({"name": "piecewise", "boundaries": [0, 3], "values": [1, 0.5, 0.1]}, "schedule.boundaries: must be positive"),
    ({"name": "piecewise", "boundaries": [2.5], "values": [1, 0.5]}, "schedule.boundaries: must be integers"),
    ({"name": "piecewise", "boundaries": [], "values": [1]}, "schedule.boundaries: must not be empty"),
    ({"name": "piecewise", "boundaries": [3, 6], "values": [1, 0.5]}, "schedule.values: needs len(boundaries) + 1 = 3 values, got 2"),
    ({"name": "piecewise", "boundaries": [3], "values": None}, "schedule.values:"),
    ({"name": "piecewise", "boundaries": [3], "values": [1, -0.5]}, "schedule.values: must be >= 0"),
    ({"name": "piecewise", "boundaries": [3], "values": [1, 0.5], "factor": 0.1}, "schedule.factor:"),
    ({"name": "piecewise", "milestones": [3], "factor": 0.1, "values": [1, 0.5]}, "schedule.values:"),
    ({"name": "piecewise"}, "schedule.boundaries: set either"),
    ({"name": "piecewise", "boundaries": [3], "values": [1, 0.5], "milestones": [3], "factor": 0.1}, "schedule.boundaries: set either"),
    ({"name": "piecewise", "milestones": [10, 4], "factor": 0.1}, "schedule.milestones: must be strictly increasing, got [10, 4]"),
    ({"name": "piecewise", "milestones": [4], "factor": 0.0}, "schedule.factor: must be > 0"),
    ({"name": "piecewise", "milestones": [4], "factor": -0.5}, "schedule.factor: must be > 0"),
    ({"name": "piecewise", "milestones": [4], "factor": None}, "schedule.factor: must be a finite number"),
    ({"name": "exponential", "lam": None, "gamma": 1.5}, "schedule.gamma: must be in (0, 1], got 1.5"),
    ({"name": "exponential", "lam": None, "gamma": 0.0}, "schedule.gamma: must be in (0, 1]"),
    ({"name": "exponential", "lam": None, "gamma": -0.9}, "schedule.gamma: must be in (0, 1]"),
    ({"name": "exponential", "lam": -0.1, "gamma": None}, "schedule.lam: must be >= 0"),
    ({"name": "exponential", "lam": float("nan"), "gamma": None}, "schedule.lam: must be a finite number"),
    ({"name": "exponential", "lam": 0.1, "gamma": 0.9}, "schedule.lam: set exactly one"),
    ({"name": "exponential", "lam": None, "gamma": None}, "schedule.lam: set exactly one"),
    ({"name": "exponential", "lam": "fast", "gamma": None}, "schedule.lam: must be a finite number"),
    ({"name": "polynomial", "form": "d2l", "alpha": -0.5}, "schedule.alpha: must be >= 0"),
    ({"name": "polynomial", "form": "d2l", "beta": -1.0}, "schedule.beta: must be >= 0"),
    ({"name": "polynomial", "form": "torch", "power": -1.0}, "schedule.power: must be >= 0"),
    ({"name": "polynomial", "form": "torch", "total_iters": 0}, "schedule.total_iters: must be >= 1"),
    ({"name": "polynomial", "form": "torch", "total_iters": None, "total": 0}, "schedule.total_iters: null means"),
    ({"name": "polynomial", "form": "torch", "final_lr": -0.01}, "schedule.final_lr: must be >= 0"),
    ({"name": "polynomial", "form": "torch", "final_lr": 2.0}, "schedule.final_lr: must be <= optimizer.lr"),
    ({"name": "polynomial", "form": "sqrt"}, "schedule.form: must be 'd2l' or 'torch'"),
    ({"name": "cosine", "warmup_steps": 10, "max_update": 10}, "schedule.warmup_steps: must be < max_update (10), got 10"),
    ({"name": "cosine", "warmup_steps": 10, "max_update": None, "total": 5}, "schedule.warmup_steps: must be < max_update (5)"),
    ({"name": "cosine", "warmup_steps": -1}, "schedule.warmup_steps: must be >= 0"),
    ({"name": "cosine", "warmup_steps": 2.5}, "schedule.warmup_steps: must be an integer"),
    ({"name": "cosine", "max_update": 0}, "schedule.max_update: must be >= 1"),
    ({"name": "cosine", "max_update": None, "total": 0}, "schedule.max_update: null means"),
    ({"name": "cosine", "final_lr": -0.1}, "schedule.final_lr: must be >= 0"),
    ({"name": "cosine", "final_lr": 1.5}, "schedule.final_lr: must be <= optimizer.lr (1.0), got 1.5"),
    ({"name": "cosine", "warmup_steps": 3, "warmup_begin_lr": -0.1}, "schedule.warmup_begin_lr: must be >= 0"),
    ({"name": "cosine", "warmup": 3}, "schedule.warmup: not a parameter of schedule 'cosine'"),
    ({"name": "constant", "gamma": 0.9}, "schedule.gamma: not a parameter of schedule 'constant'"),
    ({"name": "cosine", "unit": "batch"}, "schedule.unit: must be 'epoch' or 'step', got 'batch'"),
    ({"name": "linear"}, "schedule.name: unknown schedule 'linear'"),
    ({"name": "constant", "base_lr": -0.1}, "optimizer.lr:"),
    ({"name": "cosine", "base_lr": float("inf")}, "optimizer.lr:"),
]


@pytest.mark.parametrize("cfg, message", BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_parameters_raise_configerror_naming_the_key(cfg, message):
    with pytest.raises(ConfigError) as err:
        sched(**cfg)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)  # the CLI prints it as one line


def test_configerror_is_a_valueerror():
    with pytest.raises(ValueError):
        sched(name="exponential", lam=None, gamma=2.0)


# ------------------------------------------------------------------------------------------------
# the config files


YAMLS = sorted(CONF.glob("*.yaml"))


def test_every_registered_schedule_has_a_yaml_and_back():
    assert {p.stem for p in YAMLS} == set(SCHEDULES)


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_every_schedule_yaml_composes_and_gives_positive_finite_lrs(path):
    text = path.read_text()
    assert text.startswith("# ") and "\n" in text  # `dlexp list` shows the first line
    cfg = OmegaConf.load(path)
    assert cfg.name == path.stem and cfg.unit in ("epoch", "step")
    for base_lr, total in [(0.1, 1), (0.1, 7), (1.0, 200), (3e-4, 5000)]:
        f = make_schedule(cfg, base_lr=base_lr, total=total)
        lrs = [f(t) for t in range(total)]  # t = 0 .. total-1: the lrs the run actually uses
        assert all(math.isfinite(lr) and 0 < lr <= base_lr for lr in lrs), (path.stem, total, lrs[:5])
        assert lrs[0] == pytest.approx(base_lr)  # none of the defaults warms up
        assert isinstance(lrs[-1], float)


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_every_schedule_yaml_accepts_a_plain_dict(path):
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert make_schedule(cfg, base_lr=0.1, total=10)(0) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------
# property: after warmup, every decaying schedule is monotone non-increasing


def _nonincreasing(f, start: int, stop: int) -> bool:
    lrs = [f(t) for t in range(start, stop)]
    return all(b <= a * (1 + 1e-12) + 1e-300 for a, b in zip(lrs, lrs[1:]))


rates = st.floats(0.0, 5.0, allow_nan=False)
base_lrs = st.floats(1e-6, 10.0, allow_nan=False)


@st.composite
def decaying(draw):
    """A (schedule config, base_lr, total, warmup) whose lr cannot rise after warmup."""
    base = draw(base_lrs)
    total = draw(st.integers(1, 300))
    kind = draw(st.sampled_from(["constant", "milestones", "boundaries", "lam", "gamma", "d2l", "torch", "cosine"]))
    if kind == "constant":
        return {"name": "constant"}, base, total, 0
    if kind in ("milestones", "boundaries"):
        cuts = sorted(draw(st.sets(st.integers(1, 400), min_size=1, max_size=6)))
        if kind == "milestones":
            return {"name": "piecewise", "milestones": cuts, "factor": draw(st.floats(1e-3, 1.0))}, base, total, 0
        values = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=len(cuts) + 1, max_size=len(cuts) + 1)), reverse=True)
        return {"name": "piecewise", "boundaries": cuts, "values": values}, base, total, 0
    if kind == "lam":
        return {"name": "exponential", "lam": draw(rates), "gamma": None}, base, total, 0
    if kind == "gamma":
        return {"name": "exponential", "lam": None, "gamma": draw(st.floats(1e-3, 1.0))}, base, total, 0
    if kind == "d2l":
        return {"name": "polynomial", "form": "d2l", "alpha": draw(rates), "beta": draw(rates)}, base, total, 0
    final = draw(st.floats(0.0, 1.0)) * base
    if kind == "torch":
        cfg = {"name": "polynomial", "form": "torch", "power": draw(rates), "final_lr": final,
               "total_iters": draw(st.none() | st.integers(1, 400))}
        return cfg, base, total, 0
    max_update = draw(st.none() | st.integers(1, 400))
    warmup = draw(st.integers(0, (max_update or total) - 1))
    cfg = {"name": "cosine", "max_update": max_update, "final_lr": final, "warmup_steps": warmup,
           "warmup_begin_lr": draw(st.floats(0.0, 1.0)) * base}
    return cfg, base, total, warmup


@settings(max_examples=150, deadline=None)
@given(decaying())
def test_decay_is_monotone_nonincreasing_after_warmup(case):
    cfg, base, total, warmup = case
    f = sched(**cfg, base_lr=base, total=total)
    assert _nonincreasing(f, warmup, max(total, 450) + 20)
    assert all(0.0 <= f(t) <= base * (1 + 1e-12) for t in range(warmup, total))


@settings(max_examples=60, deadline=None)
@given(base=base_lrs, warmup=st.integers(1, 100), extra=st.integers(1, 100), frac=st.floats(0.0, 1.0))
def test_cosine_warmup_rises_linearly_to_base_lr(base, warmup, extra, frac):
    begin = frac * base
    f = sched(name="cosine", base_lr=base, max_update=warmup + extra, warmup_steps=warmup, warmup_begin_lr=begin)
    lrs = [f(t) for t in range(warmup + 1)]
    assert lrs[0] == begin and lrs[-1] == pytest.approx(base, rel=1e-12)
    assert all(b >= a for a, b in zip(lrs, lrs[1:]))
