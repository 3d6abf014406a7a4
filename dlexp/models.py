"""Models of the d2l chapters: softmax regression, linear regression, MLP with per-layer dropout, LeNet,
the point of a 2-D objective (d2l 12.3-12.8) and a linear model over sparse feature ids (12.7).

Input and output sizes come from the data (`Splits.sample_shape`, `Splits.num_outputs`);
`build_model(model_cfg, sample_shape, num_outputs)` is the registry entry point.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from dlexp.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def dropout_layer(x: torch.Tensor, p: float) -> torch.Tensor:
    """d2l 5.6's dropout from scratch: keep each unit with probability 1-p and scale it by 1/(1-p).

    E[dropout_layer(x, p)] = x. p = 1 gives zeros (d2l's special case), p = 0 gives x.
    """
    if p == 1.0:
        return torch.zeros_like(x)
    if p == 0.0:
        return x
    mask = (torch.rand_like(x) > p).to(x.dtype)
    return mask * x / (1.0 - p)


class ScratchDropout(nn.Module):
    """`dropout_layer` as a module: active in train mode, the identity in eval mode (like nn.Dropout)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout_layer(x, self.p) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


DROPOUTS: dict[str, Callable[[float], nn.Module]] = {"torch": nn.Dropout, "scratch": ScratchDropout}


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def softmax(sample_shape, num_outputs, cfg) -> nn.Module:
    """Softmax regression (d2l 4.5): one linear layer; the softmax lives in the cross-entropy loss."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(sample_shape), num_outputs))


def linear(sample_shape, num_outputs, cfg) -> nn.Module:
    """Linear regression (d2l 3.5): one linear layer."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(sample_shape), num_outputs))


def _per_layer(value, n: int, key: str) -> list[float]:
    """A dropout rate per hidden layer: a list of n rates, or one rate for every layer."""
    # a config list arrives as an OmegaConf ListConfig, not a list: test for a scalar instead
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rates = [float(value)] * n
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{key}: expected a rate or a list of rates, got {value!r}")
    else:
        rates = [float(v) for v in value]
    if len(rates) != n:
        raise ConfigError(f"{key}: has {len(rates)} rates but model.hidden has {n} layers")
    for r in rates:
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"{key}: every rate must be in [0, 1), got {r}")
    return rates


def mlp(sample_shape, num_outputs, cfg) -> nn.Module:
    """Multilayer perceptron (d2l 5.1-5.2); dropout after each hidden activation (d2l 5.6)."""
    hidden = [int(h) for h in cfg.hidden]
    if any(h < 1 for h in hidden):
        raise ConfigError(f"model.hidden: every layer needs at least 1 unit, got {hidden}")
    rates = _per_layer(cfg.get("dropout", 0.0), len(hidden), "model.dropout")
    act = ACTIVATIONS[cfg.get("activation", "relu")]
    make_dropout = DROPOUTS[cfg.get("dropout_impl", "torch")]
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(sample_shape)
    for h, p in zip(hidden, rates):
        layers += [nn.Linear(width, h), act()]
        if p > 0:
            layers.append(make_dropout(p))
        width = h
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


def lenet(sample_shape, num_outputs, cfg) -> nn.Module:
    """LeNet-5 as in d2l 7.6: two conv + average-pool blocks, three dense layers, sigmoid by default."""
    if tuple(sample_shape) != (1, 28, 28):
        raise ConfigError(
            f"model=lenet: needs 1x28x28 images (dataset=fashion_mnist or mnist), got samples of shape {tuple(sample_shape)}"
        )
    act = ACTIVATIONS[cfg.get("activation", "sigmoid")]
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), act(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), act(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, num_outputs),
    )


class Point(nn.Module):
    """The variable x of an objective f(x) as the model's one parameter; its output is x itself.

    x is a (1, d) weight, so weight decay applies to it as to any weight (lambda/2 ||x||^2 added to f).
    """

    def __init__(self, init: Sequence[float]):
        super().__init__()
        self.x = nn.Parameter(torch.tensor([list(init)], dtype=torch.float32))  # (1, d)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.x.expand(samples.shape[0], -1)  # (batch, d): the same point for each (empty) sample


def point(sample_shape, num_outputs, cfg) -> nn.Module:
    """The point of `dataset=objective`, started at `model.init` (d2l's [-5, -2])."""
    if tuple(sample_shape) != (0,):
        raise ConfigError("model=point: is the variable of an objective; use it with dataset=objective")
    init = cfg.get("init")
    if isinstance(init, (str, bytes)) or not hasattr(init, "__len__") or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in init
    ):
        raise ConfigError(f"model.init: expected the starting point as a list of numbers such as [-5, -2], got {init!r}")
    if len(init) != num_outputs:
        raise ConfigError(f"model.init: has {len(init)} coordinates but the objective takes {num_outputs}")
    return Point([float(v) for v in init])


class SparseLinear(nn.Module):
    """Linear regression over bags of feature ids (d2l 12.7's sparse features): the output is the sum
    of the weights of the sample's features, plus a bias. With `sparse=True` the gradient of the
    weights is a sparse tensor holding only the rows of the features in the batch."""

    def __init__(self, num_features: int, num_outputs: int, sparse: bool):
        super().__init__()
        self.bag = nn.EmbeddingBag(num_features, num_outputs, mode="sum", sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(num_outputs))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: (batch, features_per_sample) int64
        return self.bag(ids) + self.bias


def sparse_linear(sample_shape, num_outputs, cfg) -> nn.Module:
    """`SparseLinear` for `dataset=sparse_features` (`model.num_features` is the data set's)."""
    num_features = cfg.get("num_features")
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ConfigError(f"model.num_features: expected the number of feature ids (an integer >= 1), got {num_features!r}")
    if len(sample_shape) != 1:
        raise ConfigError(f"model=sparse_linear: needs bags of feature ids (dataset=sparse_features), got samples of shape {tuple(sample_shape)}")
    sparse = cfg.get("sparse", True)
    if not isinstance(sparse, bool):
        raise ConfigError(f"model.sparse: expected true or false, got {sparse!r}")
    return SparseLinear(num_features, num_outputs, sparse)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "softmax": softmax, "linear": linear, "mlp": mlp, "lenet": lenet, "point": point, "sparse_linear": sparse_linear,
}


def check_inputs(model_cfg, x: torch.Tensor) -> None:
    """Feature ids (integers) go to `sparse_linear`, which takes nothing else."""
    ids = not torch.is_floating_point(x)
    if ids and model_cfg.name != "sparse_linear":
        raise ConfigError(f"model={model_cfg.name}: the data set's samples are feature ids; use model=sparse_linear")
    if not ids and model_cfg.name == "sparse_linear":
        raise ConfigError("model=sparse_linear: needs feature ids (dataset=sparse_features), got real-valued features")


def init_weights(model: nn.Module, init: str, std: float) -> None:
    """`default` keeps torch's init; `normal` is d2l's N(0, std^2) weights with zero biases; `xavier` is
    Glorot-uniform weights with zero biases (d2l 5.4)."""
    if init == "default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.EmbeddingBag)):
            if init == "normal":
                nn.init.normal_(m.weight, mean=0.0, std=std)
            else:
                nn.init.xavier_uniform_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def build_model(model_cfg, sample_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """The model named by `model_cfg.name`, sized for the data, initialised as configured."""
    name = model_cfg.name
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    model = MODELS[name](tuple(sample_shape), num_outputs, model_cfg)
    if name != "point":  # a point's `init` is where it starts, not a scheme
        init_weights(model, model_cfg.get("init", "default"), float(model_cfg.get("init_std", 0.01)))
    return model


def memory_needed(model_cfg, sample_shape: Sequence[int], num_outputs: int, batch_size: int) -> tuple[int, int] | None:
    """(parameter bytes, activation bytes of one training batch) of the model `model_cfg` names, measured
    on PyTorch's "meta" device: the model is built and run on shapes only, so nothing is allocated.
    None for a model that cannot be built or run there (one that reads values while it is built)."""
    try:
        return _measure_on_meta(model_cfg, sample_shape, num_outputs, batch_size)
    except ConfigError:
        raise
    except Exception:  # a memory estimate must never stop a model that would train
        return None


def _measure_on_meta(model_cfg, sample_shape, num_outputs, batch_size) -> tuple[int, int]:
    with torch.device("meta"):
        model = MODELS[model_cfg.name](tuple(sample_shape), num_outputs, model_cfg)
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        activations = 0

        def count(module, inputs, output) -> None:
            nonlocal activations
            if isinstance(output, torch.Tensor):
                activations += output.numel() * output.element_size()

        leaves = [m for m in model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(count) for m in leaves]
        try:
            model(torch.empty((batch_size, *sample_shape)))
        finally:
            for h in hooks:
                h.remove()
    return params, activations


def available_memory(device: torch.device) -> int | None:
    """Bytes this process can still allocate on `device`, or None where that cannot be told: on CUDA
    the free device memory; on the CPU the least of the system's available memory, the cgroup's
    (container's) limit minus its usage, and the address-space limit (ulimit -v) minus what is mapped."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    limits = []
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        limits.append(int(info["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            with open(f"/sys/fs/cgroup/{limit_file}") as f:
                limit = f.read().strip()
            with open(f"/sys/fs/cgroup/{usage_file}") as f:
                usage = int(f.read().strip())
            if limit.isdigit() and int(limit) < 1 << 60:
                limits.append(int(limit) - usage)
        except (OSError, ValueError):
            pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            limits.append(soft - mapped)
    except (ImportError, OSError, ValueError, StopIteration):
        pass
    return max(0, min(limits)) if limits else None


def check_memory(model_cfg, sample_shape: Sequence[int], num_outputs: int, batch_size: int, device: torch.device,
                 data_bytes: int = 0) -> None:
    """Refuse, before anything is allocated, a model that cannot fit: its parameters, their gradients
    and the activations of one batch (a lower bound: the optimizer's state comes on top) against the
    memory available on `device`, plus `data_bytes` of data still to be moved there."""
    measured = memory_needed(model_cfg, sample_shape, num_outputs, batch_size)
    if measured is None:
        return
    params, activations = measured
    needed = 2 * params + activations + data_bytes
    free = available_memory(device)
    if free is not None and needed > free:
        gib = lambda b: f"{b / 2**30:.1f} GiB"
        data = f" + data {gib(data_bytes)}" if data_bytes else ""
        raise ConfigError(
            f"model: needs at least {gib(needed)} (parameters {gib(params)} + their gradients + activations "
            f"{gib(activations)} for a batch of {batch_size}{data}; the optimizer's state comes on top), "
            f"but {device.type} has {gib(free)} available; make model.hidden or trainer.batch_size smaller"
        )

