"""Vectorized groups: compatible runs trained as one stacked model (issue 14, "Vectorized runs").

A study (a grid, a K-fold study, a batch of sweep trials) is many runs of one architecture. Runs that
differ only in numbers the update reads (seed, lr, weight decay, momentum, betas, eps, alpha, rho,
dampening, dropout rates, schedule parameters, the K-fold fold) can share one model whose every
parameter carries a leading member axis, (M, *shape): one batched matrix product per layer serves
all M members (the PyTorch "Model ensembling" recipe, with the single model as the reference).

**Parity is the contract.** A member is the same run as when `dlexp.train.train` trains it alone:
- initial weights: each member's model is built exactly as `train` builds it (seeded with its seed,
  `build`), then the models are stacked (`StackedModel`);
- minibatch order: each member draws its permutation from its own shuffle generator, seeded as its
  single run's;
- dropout masks: each member has its own random stream (`MemberStreams`), which starts where its single
  run's global generator is after building its model; member m's rows go through its own dropout
  layer (nn.Dropout or d2l's `dropout_layer`) while the default generator holds member m's state;
- the update: the optimizer's stacked rule (`dlexp/optim/stacked.py`) with per-member hyperparameters;
- everything else (schedule, weight decay in its three modes, losses, metrics) per member.
The metrics then agree with the single run to float rounding (batched and single matrix products
round differently); `tests/test_vectorize.py` holds every optimizer, both dropout implementations,
the three weight-decay modes and a schedule to it.

The training loop is `dlexp.train.train` itself: given lists (one config and one Splits per member) it
builds a `Group` and trains it through the same lines as a single run. Each member writes an ordinary
run folder through `dlexp.runner` and an ordinary checkpoint (`Group.checkpoints`), so a member can be
resumed alone or with others, and report, load_runs and the K-fold tables cannot tell it from a single
run.

**Grouping** (`group_key`, `plan`): must be equal in a group: the data set and its split, the model's
architecture and shapes (which hidden layers have dropout), the optimizer and the flags that change its
code path (nesterov, centered, amsgrad, maximize, weight_decay_mode, decay_bias), batch size, epochs,
the optimizer steps per epoch (K-fold folds of sizes that straddle a multiple of the batch size go
to two groups), the schedule's kind and unit, device, amp. impl=torch, torch.compile, LeNet and the
objective's point run alone. A group larger than `max_members` (memory) is split.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

# Config keys that may differ between the members of a group (every other key must be equal).
MAY_DIFFER = (
    "seed", "results_dir", "name",
    "optimizer.lr", "optimizer.weight_decay", "optimizer.momentum", "optimizer.betas", "optimizer.eps",
    "optimizer.alpha", "optimizer.rho", "optimizer.dampening", "optimizer.lr_decay",
    "optimizer.initial_accumulator_value",
    "model.dropout", "model.init", "model.init_std",
    "trainer.threads",
)
# of the schedule group, only these must be equal; its parameters may differ (schedules are host functions)
SCHEDULE_KIND = ("name", "unit", "form")
STACKABLE_MODELS = ("softmax", "linear", "mlp")


# ---- grouping ------------------------------------------------------------------------------------


def alone_reason(cfg) -> str | None:
    """Why a config cannot be stacked with others (it then runs alone), or None."""
    from dlexp.optim.stacked import RULES

    if cfg.optimizer.get("impl", "dlexp") != "dlexp":
        return f"optimizer.impl={cfg.optimizer.impl}"
    if cfg.optimizer.name not in RULES:
        return f"optimizer={cfg.optimizer.name}"
    if cfg.optimizer.get("fused"):
        return "optimizer.fused=true"
    if cfg.model.name not in STACKABLE_MODELS:
        return f"model={cfg.model.name}"
    if cfg.trainer.get("compile", False):
        return "trainer.compile=true"
    return None


def group_key(cfg, steps_per_epoch: int | None = None) -> str:
    """A hash of what must be equal within a group: the config without the keys of `MAY_DIFFER` and the
    schedule's parameters, plus which hidden layers have dropout and the steps per epoch."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    for key in MAY_DIFFER:
        node, *rest = key.split(".")
        if rest:
            c.get(node, {}).pop(rest[0], None)
        else:
            c.pop(node, None)
    c["schedule"] = {k: v for k, v in c.get("schedule", {}).items() if k in SCHEDULE_KIND}
    if cfg.model.name == "mlp":
        from dlexp.models import _per_layer

        rates = _per_layer(cfg.model.get("dropout", 0.0), len(cfg.model.hidden), "model.dropout")
        c["dropout_layers"] = [r > 0 for r in rates]
    if cfg.optimizer.name == "rmsprop":  # momentum > 0 is RMSprop's code path with a buffer
        c["momentum_buffer"] = float(cfg.optimizer.get("momentum", 0)) > 0
    c["steps_per_epoch"] = steps_per_epoch
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


# The measured rule (benchmarks/vectorize.py, README "Vectorized runs"): on a CPU, stacking pays while a
# member is small: its parameters (the stack's weights, gradients and optimizer state stay in the caches)
# and its step (one member's matrix products alone do not yet keep a core busy). Measured on this
# project's 2-core CPU (shared, load average 1.8-4.9), N members against the same runs one after
# another, 1 thread: the digits MLP (64-256-10, 19 k parameters) 2.1-2.2x at batch 64 (N=16, 1.2 M
# multiply-adds a step), 1.3-1.6x at batch 1024 (19 M); Fashion-MNIST MLPs of 51 k and 102 k parameters
# 1.1-1.4x; d2l's Fashion-MNIST MLP (784-256-10, 204 k parameters) 0.85-1.25x over N = 4, 16, 64 and
# batch 64 and 256, slower in 4 of 7 measurements: no reliable gain, so it runs alone.
CPU_MAX_PARAMS = 150_000  # one member's parameters: between the largest that paid (102 k) and 204 k
CPU_MAX_STEP_WORK = 20_000_000  # multiply-adds of one member's forward pass of one batch (19 M still paid)


def step_work(cfg, splits) -> tuple[int, int]:
    """One member's parameter count and the multiply-adds of its forward pass over one batch (the
    model's weights x batch size)."""
    from dlexp.models import build_model

    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the global RNG alone
        model = build_model(cfg.model, splits.sample_shape, splits.num_outputs)
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    return params, weights * int(cfg.trainer.batch_size)


def pays(cfg, splits, device: torch.device) -> bool:
    """Whether stacking is expected to beat running the members one after another (`CPU_MAX_PARAMS`,
    `CPU_MAX_STEP_WORK`). On a GPU it always does: one d2l-sized model leaves it almost idle."""
    if device.type != "cpu":
        return True
    params, work = step_work(cfg, splits)
    return params <= CPU_MAX_PARAMS and work <= CPU_MAX_STEP_WORK


def member_bytes(cfg, splits, shared_data: bool) -> int:
    """Memory one member adds to a group: parameters, gradients and optimizer state (4 copies of the
    weights at most: Adam's two averages and AMSGrad's maximum), activations of one training batch
    and one evaluation batch, and its own copy of the data where members do not share it (folds)."""
    from dlexp.models import build_model

    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg.model, splits.sample_shape, splits.num_outputs)
    params = sum(p.numel() for p in model.parameters())
    widths = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    rows = int(cfg.trainer.batch_size) * 3 + int(cfg.trainer.eval_batch_size)  # forward, backward, masks; eval
    item = torch.finfo(torch.get_default_dtype()).bits // 8
    total = (5 * params + rows * widths) * item
    if not shared_data:
        total += sum(t.numel() * t.element_size() for pair in (splits.train, splits.val) if pair is not None for t in pair)
    return total


def free_memory(device: torch.device) -> int:
    """Bytes free for a group: CUDA's free memory on a GPU; MemAvailable (Linux) on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30  # unknown: assume 4 GiB


MEMORY_SHARE = 0.5  # of the free memory, what a group may take
MAX_MEMBERS = 256  # beyond this the per-member Python work (dropout draws, permutations) dominates


def max_members(cfg, splits, device: torch.device, shared_data: bool = True) -> int:
    """`--vectorize-max`'s default: half the free memory over what one member takes, at most
    MAX_MEMBERS."""
    return max(1, min(MAX_MEMBERS, int(MEMORY_SHARE * free_memory(device) // max(1, member_bytes(cfg, splits, shared_data)))))


def chunks(items: list, size: int) -> list[list]:
    """`items` cut into groups of at most `size`, as equal as possible (33 by 16: 11, 11, 11)."""
    n = math.ceil(len(items) / size)
    base, extra = divmod(len(items), n)
    out, i = [], 0
    for k in range(n):
        step = base + (k < extra)
        out.append(items[i : i + step])
        i += step
    return out


def grouping_line(groups: list[list[Any]], alone: dict[str, int]) -> str:
    """'32 runs in 2 vectorized groups of 16' (and the runs that run alone, by reason). `groups` holds
    every run, those alone as groups of one."""
    stacked = [g for g in groups if len(g) > 1]
    n = sum(len(g) for g in groups)
    runs = f"{n} run{'s' if n != 1 else ''}"
    if stacked:
        sizes = " or ".join(str(s) for s in sorted({len(g) for g in stacked}, reverse=True))
        line = f"{runs} in {len(stacked)} vectorized group{'s' if len(stacked) != 1 else ''} of {sizes}"
    else:
        line = f"{runs}, none vectorized"
    if alone:
        line += "; alone: " + ", ".join(f"{k} ({why})" for why, k in alone.items())
    return line


# ---- the stacked model ---------------------------------------------------------------------------


class MemberStreams:
    """One random stream per member (dropout masks), kept as generator states of the device's default
    generator. `member(m)` runs a block with member m's state in the default generator and keeps the
    state it leaves: whatever draws inside draws exactly what member m's single run draws."""

    def __init__(self, device: torch.device, states: list[torch.Tensor]):
        self.device, self.states = device, list(states)
        self.rows: list[int] | None = None  # valid rows per member in the current batch (ragged last batch)

    @contextlib.contextmanager
    def member(self, m: int):
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(self.states[m], self.device)
            try:
                yield
            finally:
                self.states[m] = torch.cuda.get_rng_state(self.device)
        else:
            torch.set_rng_state(self.states[m])
            try:
                yield
            finally:
                self.states[m] = torch.get_rng_state()

    def keep(self, idx: list[int]) -> None:
        self.states = [self.states[i] for i in idx]


class StackedLinear(nn.Module):
    """M nn.Linear layers of one shape as one: weight (M, out, in), bias (M, out).

    Input (M, B, in), each member its own rows: one batched product (baddbmm). Input (B, in) shared
    by every member (an evaluation set, or one data order for all): one product with the members'
    weights side by side, (B, in) @ (in, M * out)."""

    def __init__(self, layers: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([l.weight.detach() for l in layers]))
        self.bias = nn.Parameter(torch.stack([l.bias.detach() for l in layers])) if layers[0].bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, out_features, _ = self.weight.shape
        if x.ndim == 2:  # shared input
            y = (x @ self.weight.flatten(0, 1).t()).view(x.shape[0], m, out_features).transpose(0, 1)
            return y + self.bias.unsqueeze(1) if self.bias is not None else y
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class MemberFlatten(nn.Module):
    """nn.Flatten of each sample, shared (B, *sample) or per member (M, B, *sample)."""

    def __init__(self, sample_ndim: int):
        super().__init__()
        self.sample_ndim = sample_ndim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(x.ndim - self.sample_ndim)


class MemberDropout(nn.Module):
    """The dropout layers of the members: in train mode, member m's rows go through member m's own
    layer (its model's nn.Dropout or ScratchDropout module, with its own rate) while the default
    generator holds member m's stream, so its mask is its single run's mask; eval mode is the
    identity, as for the layers themselves.

    Each member draws for its own valid rows only (`streams.rows`, the ragged last batch of a K-fold
    group), as its single run draws for its smaller batch; padding rows pass through unchanged."""

    def __init__(self, layers: Sequence[nn.Module], streams: MemberStreams):
        super().__init__()
        self.members, self.streams = nn.ModuleList(layers), streams

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (M, B, features)
        if not self.training:
            return x
        rows = self.streams.rows
        out = []
        for m, layer in enumerate(self.members):
            b = x.shape[1] if rows is None else rows[m]
            with self.streams.member(m):
                y = layer(x[m, :b])
            out.append(y if b == x.shape[1] else torch.cat([y, x[m, b:]]))
        return torch.stack(out)

    def keep(self, idx: list[int]) -> None:
        self.members = nn.ModuleList([self.members[i] for i in idx])


class StackedModel(nn.Module):
    """M models of one architecture (nn.Sequential of Flatten, Linear, activations and dropout, as
    `dlexp.models` builds softmax, linear and the MLP) as one. Its parameters, in the order of the
    single model's `parameters()`, are the single model's stacked; `names[i]` is the single model's
    name of the i-th. Output (M, B, outputs)."""

    def __init__(self, models: Sequence[nn.Sequential], streams: MemberStreams, sample_ndim: int):
        super().__init__()
        from dlexp.models import ACTIVATIONS, ScratchDropout

        layers: list[nn.Module] = []
        self.names: list[str] = []
        for i, layer in enumerate(models[0]):
            if isinstance(layer, nn.Linear):
                layers.append(StackedLinear([m[i] for m in models]))
                self.names += [f"{i}.weight"] + ([f"{i}.bias"] if layer.bias is not None else [])
            elif isinstance(layer, nn.Flatten):
                layers.append(MemberFlatten(sample_ndim))
            elif isinstance(layer, tuple(ACTIVATIONS.values())):
                layers.append(layer)  # elementwise: the same on stacked input
            elif isinstance(layer, (nn.Dropout, ScratchDropout)):
                layers.append(MemberDropout([m[i] for m in models], streams))
            else:
                raise ValueError(f"cannot stack a {type(layer).__name__} layer")
        self.layers = nn.ModuleList(layers)
        self.template = copy.deepcopy(models[0])  # a single model: the shape of each member's result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's weights as its single model's state_dict."""
        return {name: p[m].detach().clone() for name, p in zip(self.names, self.parameters())}

    def member_model(self, m: int) -> nn.Module:
        """Member m as a single model (what its run's `model.pt` holds)."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(self.member_state(m))
        return model

    @torch.no_grad()
    def keep(self, positions: list[int]) -> dict[nn.Parameter, nn.Parameter]:
        """Keep only the members at these stack positions: new parameters (a parameter's shape is part
        of the autograd graph it was used in), returned as {old: new}."""
        idx = torch.tensor(positions, device=next(self.parameters()).device)
        replaced = {}
        for layer in self.layers:
            if isinstance(layer, MemberDropout):
                layer.keep(positions)
            for name, p in list(layer.named_parameters(recurse=False)):
                replaced[p] = nn.Parameter(p.detach().index_select(0, idx))
                setattr(layer, name, replaced[p])
        return replaced


# ---- losses and data ----------------------------------------------------------------------------


def valid_mask(rows: list[int], width: int, device: torch.device) -> torch.Tensor:
    """(M, width) True where a row is one of member m's first rows[m] rows."""
    return torch.arange(width, device=device) < torch.tensor(rows, device=device).unsqueeze(1)


def member_losses(name: str, task: str) -> Callable[..., torch.Tensor]:
    """The loss of `dlexp.train.make_loss`, one value per member: (M, B, outputs) -> (M,), the mean over
    each member's valid rows (`rows`: each member's count, None when all B are). The gradient of a
    member's loss is its single run's: each row gets 1/B (or 1/rows[m]) of the per-row loss's."""
    from dlexp.data import CLASSIFICATION

    def per_row(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (M, B)
        if name == "auto" and task == CLASSIFICATION:
            y = y.expand(out.shape[0], -1) if y.ndim == 1 else y
            return nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(out.shape[:2])
        sq = nn.functional.mse_loss(out, y.expand_as(out), reduction="none").flatten(2).mean(2)
        return sq / 2 if name == "half_mse" else sq

    def loss(out: torch.Tensor, y: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        values = per_row(out, y)
        if rows is None:
            return values.mean(1)
        mask = valid_mask(rows, values.shape[1], values.device)
        return torch.where(mask, values, 0.0).sum(1) / torch.tensor(rows, device=values.device, dtype=values.dtype)

    return loss


class Rows:
    """A split of every member: one tensor pair all share (a hold-out split), or the members' own
    (K-fold folds; members of one fold share its pair). Distinct pairs are stacked, each padded to the
    longest with copies of its first row: `stacked` is (D, n_max, ...) and member m's rows are those of
    pair `which[m]`; `sizes[m]` is member m's row count. `x`/`y` are what the loop gathers batches
    from: the shared tensors, or the stacked ones viewed as (D * n_max, ...), whose member m's rows
    start at `offsets[m]`."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device):
        self.device = device
        self.sizes = [int(p[0].shape[0]) for p in pairs]
        self.shared = all(p is pairs[0] for p in pairs)
        if self.shared:
            self.x, self.y = (t.to(device) for t in pairs[0])
            return
        distinct: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.which = []
        for p in pairs:
            found = next((i for i, d in enumerate(distinct) if d is p), None)
            if found is None:
                distinct.append(p)
                found = len(distinct) - 1
            self.which.append(found)
        n = max(self.sizes)

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t[:1].expand(n - len(t), *t.shape[1:])]) if len(t) < n else t

        self.stacked = tuple(torch.stack([padded(d[k]) for d in distinct]).to(device) for k in (0, 1))
        self._views()

    def _views(self) -> None:
        n = self.stacked[0].shape[1]
        self.x, self.y = self.stacked[0].flatten(0, 1), self.stacked[1].flatten(0, 1)
        self.index = torch.tensor(self.which, device=self.device)
        self.offsets = self.index.unsqueeze(1) * n

    def eval_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What an evaluation feeds the model: the shared tensors, or (M, n_max, ...) per member."""
        if self.shared:
            return self.x, self.y
        if self.which == list(range(len(self.which))):
            return self.stacked
        return tuple(s.index_select(0, self.index) for s in self.stacked)

    def rows_at(self, start: int, width: int) -> list[int] | None:
        """Each member's valid rows among positions [start, start + width), or None if all are."""
        if self.shared or all(n >= start + width for n in self.sizes):
            return None
        return [max(0, min(width, n - start)) for n in self.sizes]

    def keep(self, idx: list[int]) -> None:
        self.sizes = [self.sizes[i] for i in idx]
        if not self.shared:
            self.which = [self.which[i] for i in idx]
            self._views()


class GroupSchedule:
    """The members' schedules as one: `__call__(t)` is the (M,) float64 lr tensor on the device for
    schedule unit t (units completed, as `dlexp.schedules`), `values(t)` the same as floats. The
    device rows are made `chunk` units at a time, so that a per-step schedule on a GPU copies one
    table an epoch instead of one lr a step (each copy from the host synchronizes)."""

    def __init__(self, schedules: list[Callable[[int], float]], device: torch.device, chunk: int):
        self.schedules, self.device, self.chunk = list(schedules), device, max(1, chunk)
        self._first, self._table = -1, None

    def values(self, t: int) -> list[float]:
        return [float(s(t)) for s in self.schedules]

    def __call__(self, t: int) -> torch.Tensor:
        if self._table is None or not self._first <= t < self._first + self.chunk:
            rows = [self.values(u) for u in range(t, t + self.chunk)]
            self._first, self._table = t, torch.tensor(rows, dtype=torch.float64).to(self.device)
        return self._table[t - self._first]

    def keep(self, idx: list[int]) -> None:
        self.schedules = [self.schedules[i] for i in idx]
        self._table = None


# ---- the group -----------------------------------------------------------------------------------


def _rng_now(device: torch.device) -> dict[str, Any]:
    """The global generators' states as a single run's checkpoint records them (`train.checkpoint_state`)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


class Group:
    """The members of a vectorized group, built and stacked for `dlexp.train.train`.

    Member m is built exactly as `train` builds a single run (`seed_everything(seed)`, `build`), or
    restored from its own checkpoint (`resume[m]`, a single run's checkpoint), then the members are
    stacked: the model (`StackedModel`), the optimizer state (`Stacked`), the schedules
    (`GroupSchedule`), the data (`Rows`). `alive` maps stack positions to member indices: a member that
    stops early (diverged, pruned) leaves the stack (`keep`), and the others go on unaffected.
    """

    def __init__(self, cfgs: list, splits: list, device: torch.device, resume: list[dict[str, Any] | None] | None = None):
        from dlexp.optim.stacked import Stacked, member_hparams
        from dlexp.train import build, seed_everything

        self.cfgs, self.device, self.m = list(cfgs), device, len(cfgs)
        cfg = cfgs[0]
        self.resume = list(resume) if resume is not None else [None] * self.m
        models, optimizers, schedules, self.rng, self.shuffles, self.param_groups, self.order = [], [], [], [], [], [], []
        for c, s, ck in zip(cfgs, splits, self.resume):
            seed_everything(int(c.seed), bool(c.trainer.deterministic))
            model, _, optimizer, schedule = build(c, s, device)
            names = {id(p): n for n, p in model.named_parameters()}
            self.order.append([names[id(p)] for g in optimizer.param_groups for p in g["params"]])
            self.param_groups.append(optimizer.state_dict()["param_groups"])
            shuffle = torch.Generator(device=device).manual_seed(int(c.seed))
            rng = _rng_now(device)
            if ck is not None:  # a single run's checkpoint: the state `train` restores
                model.load_state_dict(ck["model"])
                optimizer.load_state_dict(ck["optimizer"])
                shuffle.set_state(ck["rng"]["shuffle"])
                rng = {k: ck["rng"][k] for k in ("torch", "cuda", "numpy", "python")}
            models.append(model)
            optimizers.append(optimizer)
            schedules.append(schedule)
            self.shuffles.append(shuffle)
            self.rng.append(rng)
        # the dropout streams: the default generator of the device, where each member's left it
        self.index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
        starts = [r["cuda"][self.index] if device.type == "cuda" else r["torch"] for r in self.rng]
        self.streams = MemberStreams(device, starts)
        self.model = StackedModel(models, self.streams, len(splits[0].sample_shape)).to(device)
        params = dict(zip(self.model.names, self.model.parameters()))
        decay_bias = bool(cfg.optimizer.get("decay_bias", False))
        self.decay_params = [p for n, p in params.items() if p.ndim - 1 >= 2 or decay_bias]
        no_decay = [p for p in params.values() if all(p is not q for q in self.decay_params)]
        opt_cfg = cfg.optimizer
        self.wd_mode = opt_cfg.weight_decay_mode
        wds = [float(c.optimizer.weight_decay) for c in cfgs]
        coupled = self.wd_mode == "coupled" and any(wds)
        groups = [{"params": self.decay_params, "weight_decay": wds if coupled else [0.0] * self.m}]
        if no_decay and coupled:
            groups.append({"params": no_decay, "weight_decay": [0.0] * self.m})
        elif no_decay:
            groups[0]["params"] = list(params.values())  # as `build`: one group when nothing decays in the optimizer
        hparams = [member_hparams(opt_cfg.name, o.param_groups[0]) for o in optimizers]
        self.optimizer = Stacked(groups, opt_cfg.name, hparams)
        self.momenta = [h.get("momentum", 0.0) for h in hparams]
        for name, p in params.items():  # the members' optimizer states (Adagrad's initial sum, a resume)
            own = [o.state.get(dict(m.named_parameters())[name], {}) for o, m in zip(optimizers, models)]
            keys = sorted({k for s in own for k in s})
            if keys:
                ref = {k: next(s[k] for s in own if k in s) for k in keys}
                self.optimizer.state[p] = {
                    k: torch.stack([s[k] if k in s else torch.zeros_like(ref[k]) for s in own]).to(device) for k in keys
                }
        self.weight_decay = torch.tensor(wds, dtype=torch.float64, device=device)
        self.decays = any(wds)
        n_train = [int(s.train[0].shape[0]) for s in splits]
        steps_per_epoch = math.ceil(n_train[0] / int(cfg.trainer.batch_size))
        chunk = 1 if cfg.schedule.unit == "epoch" else steps_per_epoch
        self.schedule = GroupSchedule(schedules, device, chunk)
        self.train_rows = Rows([s.train for s in splits], device)
        self.evals: dict[str, Rows] = {}
        for name in ("val", "test"):
            pairs = [getattr(s, name) for s in splits]
            if all(p is not None and len(p[0]) > 0 for p in pairs):
                self.evals[name] = Rows(pairs, device)
        # one data order for all: members with one seed on shared rows draw the same permutation, so
        # their batches are one tensor and every first-layer product is a single matrix product
        self.one_order = self.train_rows.shared and len({int(c.seed) for c in cfgs}) == 1
        self.loss_fn = member_losses(cfg.trainer.get("loss", "auto"), splits[0].task)
        self.alive = list(range(self.m))
        del models, optimizers  # the stacked copies are the group's from here

    # the loop's per-member operations ------------------------------------------------------------

    def permutation(self) -> torch.Tensor:
        """This epoch's row order: each member's `torch.randperm` from its own generator (as its single
        run), (M, n_max) indices into `train_rows.x` (padded with each member's first row), or (n,)
        when all members share one order."""
        perms = [torch.randperm(self.train_rows.sizes[i], device=self.device, generator=g) for i, g in enumerate(self.shuffles)]
        if self.one_order:
            return perms[0]
        n = max(self.train_rows.sizes)
        perm = torch.stack([torch.cat([p, p.new_zeros(n - len(p))]) if len(p) < n else p for p in perms])
        return perm if self.train_rows.shared else perm + self.train_rows.offsets

    def squared_norms(self, params: list[torch.Tensor]) -> torch.Tensor:
        """||w||^2 of each member's decaying weights, (M,): `train`'s loss-mode weight decay."""
        return sum((p * p).flatten(1).sum(1) for p in params)

    @torch.no_grad()
    def scale(self, params: list[torch.Tensor], factor: torch.Tensor) -> None:
        """w <- factor[m] * w for each member m (decoupled weight decay, one factor per member)."""
        for p in params:
            p.mul_(factor.to(p.dtype).view(-1, *([1] * (p.ndim - 1))))

    def keep(self, positions: list[int]) -> None:
        """Keep the members at these stack positions, in this order; the others leave the stack."""
        idx = torch.tensor(positions, device=self.device)
        replaced = self.model.keep(positions)
        self.decay_params[:] = [replaced[p] for p in self.decay_params]  # in place: the loop holds this list
        for group in self.optimizer.param_groups:
            group["params"] = [replaced[p] for p in group["params"]]
        states = dict(self.optimizer.state)
        self.optimizer.state.clear()
        for old, state in states.items():
            self.optimizer.state[replaced[old]] = {k: v.index_select(0, idx) for k, v in state.items()}
        for group in self.optimizer.param_groups:
            for k in self.optimizer.per_member:
                group[k] = group[k].index_select(0, idx)
        self.weight_decay = self.weight_decay.index_select(0, idx)
        self.schedule.keep(positions)
        self.streams.keep(positions)
        self.train_rows.keep(positions)
        for rows in self.evals.values():
            rows.keep(positions)
        self.shuffles = [self.shuffles[i] for i in positions]
        self.alive = [self.alive[i] for i in positions]

    def checkpoint(self, pos: int, epoch: int, step: int, records: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
        """The member at stack position `pos` as a single run's checkpoint (`train.checkpoint_state`):
        its weights, its optimizer's state_dict (as its own optimizer holds it: no momentum buffer at
        momentum 0), its generators."""
        member = self.alive[pos]
        params = dict(zip(self.model.names, self.model.parameters()))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for i, name in enumerate(self.order[member]):
            own = self.optimizer.state.get(params[name], {})
            entry = {}
            for k, v in own.items():
                if k == "momentum_buffer" and self.momenta[member] == 0:
                    continue  # SGD and RMSprop keep no buffer at momentum 0
                entry[k] = v[pos].detach().cpu().clone() if k == "step" else v[pos].detach().clone()
            if entry:
                state[i] = entry
        rng = dict(self.rng[member])
        if self.device.type == "cuda":
            rng["cuda"] = list(rng["cuda"])
            rng["cuda"][self.index] = self.streams.states[pos]
        else:
            rng["torch"] = self.streams.states[pos]
        return {
            "epoch": epoch, "step": step, "elapsed": elapsed,
            "model": self.model.member_state(pos),
            "optimizer": {"state": state, "param_groups": copy.deepcopy(self.param_groups[member])},
            "records": [dict(r) for r in records],
            "rng": {**rng, "shuffle": self.shuffles[pos].get_state()},
        }
