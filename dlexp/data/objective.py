"""The 2-D objectives of d2l's optimization chapter (12.3-12.8) as a data set with no samples.

An objective f(x1, x2) is minimized over the point x itself: `dataset=objective` pairs with
`model=point`, whose one parameter is x and whose output is x. The data set holds one empty sample
(shape (0,)), so that with any batch size an epoch is exactly one update, and it supplies the loss:
f of the model's output. Every optimizer, schedule and sweep then runs on an objective through the
one training loop, unchanged.

`dataset.noise = sigma` adds sigma * N(0, 1) to each coordinate of the gradient, not to f, as d2l's
`sgd` of 12.4 does (`g1 += torch.normal(0.0, 1, (1,))`): the recorded f(x) stays exact. The noise is
drawn from torch's global generator in the backward pass, so a run's seed fixes it and `--resume`
continues it bit-identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dlexp.data import OBJECTIVE, Source, register
from dlexp.errors import ConfigError


@dataclass(frozen=True)
class Function:
    """f(x1, x2) (elementwise on tensors), its minimizers, and d2l's plotting window (x1 range, x2 range)."""

    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    minima: tuple[tuple[float, float], ...]  # () for a saddle: no minimum
    window: tuple[tuple[float, float], tuple[float, float]]
    formula: str


FUNCTIONS: dict[str, Function] = {
    # d2l 12.6-12.8's f_2d: very flat along x1
    "ill_conditioned": Function(lambda x1, x2: 0.1 * x1**2 + 2 * x2**2, ((0.0, 0.0),),
                                ((-5.5, 1.0), (-3.0, 1.0)), "0.1 x1^2 + 2 x2^2"),
    # d2l 12.3-12.4's f_2d
    "quadratic": Function(lambda x1, x2: x1**2 + 2 * x2**2, ((0.0, 0.0),), ((-5.5, 1.0), (-3.0, 1.0)), "x1^2 + 2 x2^2"),
    "rosenbrock": Function(lambda x1, x2: (1 - x1) ** 2 + 100 * (x2 - x1**2) ** 2, ((1.0, 1.0),),
                           ((-5.5, 2.0), (-3.0, 30.0)), "(1 - x1)^2 + 100 (x2 - x1^2)^2"),
    "saddle": Function(lambda x1, x2: x1**2 - x2**2, (), ((-5.5, 1.0), (-3.0, 3.0)), "x1^2 - x2^2"),
    "himmelblau": Function(lambda x1, x2: (x1**2 + x2 - 11) ** 2 + (x1 + x2**2 - 7) ** 2,
                           ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)),
                           ((-5.5, 5.5), (-5.5, 5.5)), "(x1^2 + x2 - 11)^2 + (x1 + x2^2 - 7)^2"),
    "beale": Function(lambda x1, x2: (1.5 - x1 + x1 * x2) ** 2 + (2.25 - x1 + x1 * x2**2) ** 2 + (2.625 - x1 + x1 * x2**3) ** 2,
                      ((3.0, 0.5),), ((-5.5, 4.5), (-4.5, 4.5)), "(1.5 - x1 + x1 x2)^2 + (2.25 - x1 + x1 x2^2)^2 + (2.625 - x1 + x1 x2^3)^2"),
}


class _NoisyGradient(torch.autograd.Function):
    """The identity forward; backward adds sigma * N(0, 1) to the incoming gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sigma: float) -> torch.Tensor:
        ctx.sigma = sigma
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad + ctx.sigma * torch.randn_like(grad), None


def objective_loss(name: str, noise: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of `dataset=objective`: f at the point the model outputs, (batch, 2) -> scalar.

    `target` is ignored (the samples are empty); every row of the batch is the same point, so the
    mean is f(x) itself.
    """
    f = FUNCTIONS[name].f

    def loss(point: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if noise > 0 and torch.is_grad_enabled():
            point = _NoisyGradient.apply(point, noise)
        return f(point[:, 0], point[:, 1]).mean()

    return loss


@register("objective")
def objective(cfg) -> Source:
    name = cfg.get("function")
    if name not in FUNCTIONS:
        raise ConfigError(f"dataset.function: unknown function {name!r}; choose one of: {', '.join(FUNCTIONS)}")
    noise = float(cfg.get("noise", 0.0))
    if not noise >= 0:  # also refuses nan
        raise ConfigError(f"dataset.noise: must be >= 0, got {cfg.get('noise')}")
    # one empty sample: the model (the point) ignores its input, and one sample makes one update an epoch
    x, y = torch.zeros(1, 0), torch.zeros(1, 0)
    return Source(name="objective", task=OBJECTIVE, x=x, y=y, num_outputs=2, loss=objective_loss(name, noise))
