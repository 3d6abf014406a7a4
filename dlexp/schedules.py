"""Learning-rate schedules (d2l 12.11) as pure functions `t -> lr`, one small factory each.

What t is. Every schedule is a function of t, the number of schedule units *completed* so far,
starting at 0. With `unit: step` a unit is one optimizer update; with `unit: epoch` it is one pass
over the training data. f(t) is the absolute learning rate for the next update: the loop uses f(0)
for the first update and, with `unit: step`, f(t) for update t+1 (t updates done); with
`unit: epoch`, f(e) for every update of epoch e+1 (e epochs done). This is torch.optim.lr_scheduler's
convention: f(t) == scheduler.get_last_lr()[0] after t calls to scheduler.step().

`total` is the run's length in the same unit (epochs, or epochs * steps_per_epoch updates; the loop
computes it). Schedules that need an end point (cosine's `max_update`, polynomial's `total_iters`)
use it where theirs is null. All `*_lr` parameters are absolute learning rates, as in d2l;
piecewise `values` and `factor` multiply `base_lr` (the optimizer's `lr`), so sweeping `lr` scales
the whole piecewise schedule.

Entry point: `make_schedule(cfg, base_lr=..., total=...)` with cfg from `conf/schedule/<name>.yaml`
(keys `name`, `unit` and the factory's keyword arguments). `SCHEDULES` is the registry:
file name == registry name == the `name:` key. Bad parameters raise `ConfigError` naming the key.
"""

from __future__ import annotations

import bisect
import inspect
import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from dlexp.errors import ConfigError

Schedule = Callable[[int], float]  # t (units completed, from 0) -> absolute learning rate
UNITS = ("epoch", "step")


# ---------------------------------------------------------------------------------------------
# argument checks: each names the config key it checks


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"schedule.{key}: must be a finite number, got {value!r}")
    return float(value)


def _nonneg(key: str, value: Any) -> float:
    x = _number(key, value)
    if x < 0:
        raise ConfigError(f"schedule.{key}: must be >= 0, got {value!r}")
    return x


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"schedule.{key}: must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"schedule.{key}: must be >= {minimum}, got {value!r}")
    return int(value)


def _boundaries(key: str, value: Any) -> list[int]:
    """Positive, strictly increasing integers (a schedule unit count each)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"schedule.{key}: must be a list of integers, got {value!r}")
    items = list(value)
    if not items:
        raise ConfigError(f"schedule.{key}: must not be empty")
    if any(isinstance(b, bool) or not isinstance(b, Integral) for b in items):
        raise ConfigError(f"schedule.{key}: must be integers, got {items}")
    if any(b <= 0 for b in items):
        raise ConfigError(f"schedule.{key}: must be positive, got {items}")
    if any(b >= c for b, c in zip(items, items[1:])):
        raise ConfigError(f"schedule.{key}: must be strictly increasing, got {items}")
    return [int(b) for b in items]


def _base_lr(base_lr: Any) -> float:
    if isinstance(base_lr, bool) or not isinstance(base_lr, Real) or not math.isfinite(base_lr) or base_lr < 0:
        raise ConfigError(f"optimizer.lr: the schedule's base_lr must be a finite number >= 0, got {base_lr!r}")
    return float(base_lr)


def _end(key: str, value: Any, total: int) -> int:
    """An end point in schedule units: the configured one, or the run's `total` when null."""
    if value is None:
        if isinstance(total, bool) or not isinstance(total, Integral) or total < 1:
            raise ConfigError(
                f"schedule.{key}: null means the run's length in schedule units, but that is {total!r}; "
                f"set schedule.{key} or train for longer"
            )
        return int(total)
    return _int(key, value, 1)


def _final_lr(final_lr: Any, base_lr: float) -> float:
    final = _nonneg("final_lr", final_lr)
    if final > base_lr:
        # an absolute lr, as in d2l; above the base lr the "decay" would rise
        raise ConfigError(f"schedule.final_lr: must be <= optimizer.lr ({base_lr}), got {final_lr!r}")
    return final


# ---------------------------------------------------------------------------------------------
# schedules


def constant(base_lr: float, total: int) -> Schedule:
    """A constant learning rate.

    eta_t = eta_0

    Args:
      base_lr: eta_0, the optimizer's lr.
      total: the run's length (unused).

    Example:
      >>> constant(0.1, total=10)(7)
      0.1

    Reference: torch.optim.lr_scheduler.ConstantLR with factor=1; d2l 12.11.
    """
    lr = _base_lr(base_lr)
    return lambda t: lr


def piecewise(
    base_lr: float,
    total: int,
    *,
    boundaries: list[int] | None = None,
    values: list[float] | None = None,
    milestones: list[int] | None = None,
    factor: float | None = None,
) -> Schedule:
    """Piecewise constant: the lr jumps at given unit counts.

    boundaries + values:  eta_t = eta_0 * values[i],         i = #{b in boundaries : b <= t}
    milestones + factor:  eta_t = eta_0 * factor ** i,        i = #{m in milestones : m <= t}

    Set one pair, leave the other null. The new value starts *at* t == boundary (torch's MultiStepLR
    and optax; TF's PiecewiseConstantDecay switches one step later, at t == boundary + 1).

    Args:
      base_lr: eta_0, the optimizer's lr.
      total: the run's length (unused).
      boundaries: positive, strictly increasing unit counts.
      values: len(boundaries) + 1 multipliers of base_lr (not cumulative, not absolute lrs), >= 0.
      milestones: positive, strictly increasing unit counts (torch's MultiStepLR milestones).
      factor: > 0, multiplies the lr at every milestone (torch's MultiStepLR gamma; d2l's factor).

    Example:
      >>> f = piecewise(0.5, total=40, milestones=[15, 30], factor=0.5)
      >>> [f(t) for t in (0, 14, 15, 29, 30)]
      [0.5, 0.5, 0.25, 0.25, 0.125]

    Reference: d2l 12.11.2.3 (MultiFactorScheduler); torch.optim.lr_scheduler.MultiStepLR;
    optax.piecewise_constant_schedule.
    """
    lr = _base_lr(base_lr)
    if (boundaries is None) == (milestones is None):
        raise ConfigError(
            "schedule.boundaries: set either boundaries + values or milestones + factor and leave the "
            f"other pair null, got boundaries={boundaries!r}, milestones={milestones!r}"
        )
    if boundaries is not None:
        if factor is not None:
            raise ConfigError(f"schedule.factor: goes with milestones; with boundaries give values and a null factor, got {factor!r}")
        cuts = _boundaries("boundaries", boundaries)
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ConfigError(f"schedule.values: must be a list of {len(cuts) + 1} numbers, got {values!r}")
        scales = [_nonneg("values", v) for v in values]
        if len(scales) != len(cuts) + 1:
            raise ConfigError(
                f"schedule.values: needs len(boundaries) + 1 = {len(cuts) + 1} values, got {len(scales)}: {list(values)}"
            )
    else:
        if values is not None:
            raise ConfigError(f"schedule.values: goes with boundaries; with milestones give a factor and null values, got {values!r}")
        cuts = _boundaries("milestones", milestones)
        f = _number("factor", factor)
        if f <= 0:
            raise ConfigError(f"schedule.factor: must be > 0, got {factor!r}")
        scales = [f**i for i in range(len(cuts) + 1)]
    lrs = [lr * s for s in scales]  # lrs[i]: the lr once i boundaries have been passed
    return lambda t: lrs[bisect.bisect_right(cuts, t)]


def exponential(base_lr: float, total: int, *, lam: float | None = None, gamma: float | None = None) -> Schedule:
    """Exponential decay, in d2l's or torch's parameterisation.

    lam:    eta_t = eta_0 * exp(-lam * t)   (d2l)
    gamma:  eta_t = eta_0 * gamma ** t      (torch ExponentialLR; gamma = exp(-lam))

    Set exactly one of lam and gamma, leave the other null.

    Args:
      base_lr: eta_0, the optimizer's lr.
      total: the run's length (unused).
      lam: decay rate, >= 0.
      gamma: decay factor per unit, in (0, 1].

    Example:
      >>> f = exponential(1.0, total=10, gamma=0.5)
      >>> [f(t) for t in range(4)]
      [1.0, 0.5, 0.25, 0.125]

    Reference: d2l 12.11.3 ("exponential"); torch.optim.lr_scheduler.ExponentialLR.
    """
    lr = _base_lr(base_lr)
    if (lam is None) == (gamma is None):
        raise ConfigError(
            "schedule.lam: set exactly one of lam (d2l: lr * exp(-lam t)) and gamma (torch: lr * gamma^t), "
            f"the other null; got lam={lam!r}, gamma={gamma!r}"
        )
    if lam is not None:
        rate = _nonneg("lam", lam)
        return lambda t: lr * math.exp(-rate * t)
    g = _number("gamma", gamma)
    if not 0.0 < g <= 1.0:
        raise ConfigError(f"schedule.gamma: must be in (0, 1], got {gamma!r}")
    return lambda t: lr * g**t


def polynomial(
    base_lr: float,
    total: int,
    *,
    form: str = "d2l",
    alpha: float = 0.5,
    beta: float = 1.0,
    power: float = 1.0,
    total_iters: int | None = None,
    final_lr: float = 0.0,
) -> Schedule:
    """Polynomial decay, d2l's unbounded form or torch's form that ends at T.

    form=d2l:    eta_t = eta_0 * (beta * t + 1) ** (-alpha)
    form=torch:  eta_t = final_lr + (eta_0 - final_lr) * (1 - min(t, T) / T) ** power,  T = total_iters

    `form` picks the formula; the other form's keys are ignored. form=torch with final_lr=0 is torch's
    PolynomialLR (which has no floor); with T null it decays over the whole run.

    Args:
      base_lr: eta_0, the optimizer's lr.
      total: the run's length, used as T when total_iters is null.
      form: "d2l" or "torch".
      alpha: d2l exponent, >= 0 (0.5: d2l's square-root schedule).
      beta: d2l time scale, >= 0.
      power: torch exponent, >= 0 (1: linear decay).
      total_iters: torch's T, >= 1 units; null means `total`.
      final_lr: torch form's floor, an absolute lr in [0, base_lr].

    Example:
      >>> f = polynomial(0.1, total=10, form="d2l", alpha=0.5, beta=1.0)
      >>> round(f(3), 12)
      0.05
      >>> g = polynomial(1.0, total=4, form="torch", power=2.0, final_lr=0.2)
      >>> [round(g(t), 12) for t in (0, 2, 4, 9)]
      [1.0, 0.4, 0.2, 0.2]

    Reference: d2l 12.11.3 ("polynomial decay", SquareRootScheduler); torch.optim.lr_scheduler.PolynomialLR;
    optax.polynomial_schedule.
    """
    lr = _base_lr(base_lr)
    if form == "d2l":
        a, b = _nonneg("alpha", alpha), _nonneg("beta", beta)
        return lambda t: lr * (b * t + 1.0) ** (-a)
    if form == "torch":
        p = _nonneg("power", power)
        end = _end("total_iters", total_iters, total)
        final = _final_lr(final_lr, lr)
        return lambda t: final + (lr - final) * (1.0 - min(t, end) / end) ** p
    raise ConfigError(f"schedule.form: must be 'd2l' or 'torch', got {form!r}")


def cosine(
    base_lr: float,
    total: int,
    *,
    max_update: int | None = None,
    final_lr: float = 0.0,
    warmup_steps: int = 0,
    warmup_begin_lr: float = 0.0,
) -> Schedule:
    """Cosine decay with linear warmup (d2l's CosineScheduler).

    t <  W:            eta_t = warmup_begin_lr + (eta_0 - warmup_begin_lr) * t / W
    W <= t <= T:       eta_t = final_lr + (eta_0 - final_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2
    t >  T:            eta_t = final_lr
    with W = warmup_steps, T = max_update (both in schedule units, epochs or updates, per `unit`).

    Unlike torch's CosineAnnealingLR, which is periodic and climbs back up after T_max, the lr stays
    at final_lr after max_update.

    Args:
      base_lr: eta_0, the optimizer's lr (reached at the end of warmup).
      total: the run's length, used as T when max_update is null.
      max_update: T, the unit count where the decay ends; null means `total`.
      final_lr: absolute lr at and after T, in [0, base_lr].
      warmup_steps: W, units of linear warmup, 0 <= W < T.
      warmup_begin_lr: absolute lr at t = 0 when W > 0, >= 0.

    Example:
      >>> f = cosine(0.3, total=20, final_lr=0.01, warmup_steps=5)
      >>> [round(f(t), 4) for t in (0, 1, 5, 20, 30)]
      [0.0, 0.06, 0.3, 0.01, 0.01]

    Reference: d2l 12.11.3.4 (CosineScheduler, after Loshchilov & Hutter 2016);
    torch.optim.lr_scheduler.CosineAnnealingLR; optax.warmup_cosine_decay_schedule.
    """
    lr = _base_lr(base_lr)
    end = _end("max_update", max_update, total)
    final = _final_lr(final_lr, lr)
    warm = _int("warmup_steps", warmup_steps, 0)
    begin = _nonneg("warmup_begin_lr", warmup_begin_lr)
    if warm >= end:
        raise ConfigError(f"schedule.warmup_steps: must be < max_update ({end}), got {warm}")
    span = end - warm

    def schedule(t: int) -> float:
        if t < warm:
            return begin + (lr - begin) * t / warm
        if t <= end:
            return final + (lr - final) * (1.0 + math.cos(math.pi * (t - warm) / span)) / 2.0
        return final

    return schedule


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "piecewise": piecewise,
    "exponential": exponential,
    "polynomial": polynomial,
    "cosine": cosine,
}


def make_schedule(schedule_cfg: DictConfig | Mapping, *, base_lr: float, total: int) -> Schedule:
    """The schedule named by `schedule_cfg.name`: a function t -> absolute lr (t as in the module docstring).

    Args:
      schedule_cfg: conf/schedule/<name>.yaml: `name`, `unit` (epoch | step), the factory's keywords.
      base_lr: the optimizer's lr.
      total: the run's length in `unit`s (epochs, or epochs * steps_per_epoch updates).

    Example:
      >>> f = make_schedule({"name": "exponential", "unit": "epoch", "lam": None, "gamma": 0.5}, base_lr=0.1, total=10)
      >>> f(2)
      0.025
    """
    cfg = OmegaConf.to_container(schedule_cfg, resolve=True) if isinstance(schedule_cfg, DictConfig) else dict(schedule_cfg)
    name = cfg.pop("name", None)
    unit = cfg.pop("unit", None)
    if name not in SCHEDULES:
        raise ConfigError(f"schedule.name: unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    if unit not in UNITS:
        raise ConfigError(f"schedule.unit: must be 'epoch' or 'step', got {unit!r}")
    factory = SCHEDULES[name]
    allowed = [p.name for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for key in cfg:
        if key not in allowed:
            expected = ", ".join(["name", "unit", *allowed])
            raise ConfigError(f"schedule.{key}: not a parameter of schedule {name!r}; expected keys: {expected}")
    return factory(base_lr, total, **cfg)
