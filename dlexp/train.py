"""The training loop: one function, read top to bottom. It returns tidy records; it writes nothing.

Conventions (said once, here):
- A *step* is one optimizer update; `step` counts updates completed, starting at 0.
- `train/*` metrics are averages over the epoch's minibatches, taken while training (d2l's
  `train_epoch_ch3` convention: train mode, dropout on, the parameters moving). `val/*` and `test/*`
  are evaluated in eval mode after the epoch. An objective (one update an epoch) is the exception:
  its `train/*` is f and the coordinates at the point the update reached, and epoch 0 is the start.
- `train_eval/*` (with `trainer.eval_every=N`): the whole training set evaluated in eval mode at the
  current weights, before the first update (epoch 0) and each time the examples seen pass a multiple
  of N (d2l 12.5's `evaluate_loss` every 200 examples); their `epoch` is the epoch in progress.
- Every row carries `examples`, the training examples seen so far, and `time_s`, the seconds since
  the start (evaluations included).
- Loss values are accumulated on the device and read once per epoch: no host synchronisation per step.
- The lr recorded for an epoch is the one its last update used.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from dlexp.config import checkpoint_schedule
from dlexp.data import CLASSIFICATION, OBJECTIVE, REGRESSION, Splits
from dlexp.errors import ConfigError
from dlexp.models import build_model, check_inputs, check_memory
from dlexp.optim import OPTIMIZERS, check_sparse_gradients
from dlexp.schedules import make_schedule


@dataclass
class Result:
    status: str  # ok | diverged | interrupted | failed
    records: list[dict[str, Any]]
    model: nn.Module
    epochs_completed: int
    steps: int
    duration_s: float
    reason: str | None = None
    device: str = "cpu"
    extra: dict = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when present, else cpu; cuda without CUDA is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device: {name} was asked for but CUDA is not available here; use cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device: {name} does not exist; this machine has {torch.cuda.device_count()} CUDA devices")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.are_deterministic_algorithms_enabled():
        # only when needed: the call imports torch._inductor, which costs ~1.5 s of start-up
        torch.use_deterministic_algorithms(False)


def param_groups(model: nn.Module, weight_decay: float, decay_bias: bool) -> list[dict[str, Any]]:
    """Two groups, as nanoGPT does: weights (ndim >= 2) decay; biases decay only with decay_bias."""
    decay = [p for p in model.parameters() if p.requires_grad and (p.ndim >= 2 or decay_bias)]
    no_decay = [p for p in model.parameters() if p.requires_grad and not (p.ndim >= 2 or decay_bias)]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(opt_cfg, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The registry row named by the config, hand-written (impl=dlexp) or torch.optim (impl=torch)."""
    spec = OPTIMIZERS.get(opt_cfg.name)
    if spec is None:
        raise ConfigError(f"optimizer.name: unknown optimizer {opt_cfg.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    cls = spec.optimizer_class(opt_cfg.impl)
    kwargs = {}
    for key in spec.hparams:
        if key == "weight_decay" or key not in opt_cfg:
            continue  # weight decay is set per group (see param_groups and weight_decay_mode)
        if key == "fused" and not opt_cfg[key]:
            continue  # torch's RMSprop and Adadelta have no fused argument: passed only when asked for
        value = opt_cfg[key]
        # betas as floats: torch refuses a pair mixing an int and a float (betas=[0,0.999])
        kwargs[key] = tuple(float(v) for v in value) if key == "betas" else value
    try:
        return cls(groups, **kwargs)
    except (ValueError, TypeError, IndexError) as e:
        raise ConfigError(f"optimizer ({opt_cfg.name}): {e}") from None


def build(cfg, splits: Splits, device: torch.device) -> tuple[nn.Module, list[torch.Tensor], torch.optim.Optimizer, Any]:
    """`cfg`'s model (on `device`), the parameters that decay, the optimizer and the schedule for
    `splits`: what `train` runs with."""
    check_inputs(cfg.model, splits.train[0])
    check_memory(cfg.model, splits.sample_shape, splits.num_outputs, min(int(cfg.trainer.batch_size), len(splits.train[0])),
                 device, data_bytes=_data_bytes(splits) if device.type != "cpu" else 0)  # a 40 GB model: one line, not a crash
    model = build_model(cfg.model, splits.sample_shape, splits.num_outputs).to(device)  # before the optimizer's state
    check_sparse_gradients(model, cfg.optimizer)
    opt_cfg = cfg.optimizer
    # coupled: the optimizer's own weight_decay (torch's meaning); decoupled and loss: done by train, so
    # the optimizer sees weight_decay = 0 and the decay group is handled explicitly there
    coupled = opt_cfg.weight_decay_mode == "coupled"
    groups = param_groups(model, float(opt_cfg.weight_decay) if coupled else 0.0, bool(opt_cfg.get("decay_bias", False)))
    decay_params = groups[0]["params"]
    if groups[0]["weight_decay"] == 0:
        # no group decays in the optimizer: one group, so each foreach kernel launches once per step
        groups = [{"params": [p for g in groups for p in g["params"]], "weight_decay": 0.0}]
    optimizer = build_optimizer(opt_cfg, groups)
    epochs = int(cfg.trainer.epochs)
    steps_per_epoch = math.ceil(splits.train[0].shape[0] / int(cfg.trainer.batch_size))
    total = epochs if cfg.schedule.unit == "epoch" else epochs * steps_per_epoch
    schedule = make_schedule(cfg.schedule, base_lr=float(opt_cfg.lr), total=total)
    return model, decay_params, optimizer, schedule


def _data_bytes(splits: Splits) -> int:
    return sum(t.numel() * t.element_size() for pair in (splits.train, splits.val, splits.test) if pair is not None for t in pair)


def check_buildable(cfg, splits: Splits) -> None:
    """`build` on the CPU, without training: a value that only the model, optimizer or schedule
    refuses (momentum=-1, warmup longer than the run, LeNet on tabular data) is a ConfigError before
    a grid or a K-fold study starts, not after its first points have run."""
    build(cfg, splits, torch.device("cpu"))
    make_loss(cfg.trainer.get("loss", "auto"), splits)


def half_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d2l's `squared_loss`, (y_hat - y)^2 / 2, averaged: its gradient is half of MSE's."""
    return nn.functional.mse_loss(out, y) / 2


def make_loss(name: str, splits: Splits) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`trainer.loss`: auto is the data set's own loss (an objective's f), else cross-entropy for
    classes and MSE for regression; mse and half_mse choose a regression loss."""
    if name == "auto":
        if splits.loss is not None:
            return splits.loss
        return nn.CrossEntropyLoss() if splits.task == CLASSIFICATION else nn.MSELoss()
    if splits.task != REGRESSION:
        raise ConfigError(f"trainer.loss: {name} is a regression loss; this data set's task is {splits.task} (use auto)")
    return half_mse if name == "half_mse" else nn.MSELoss()


class _Accumulator:
    """Per-split sums kept on the device: loss, correct predictions, squared log errors, the point
    (objectives). `mse_per_loss` turns the loss into the MSE for rmse (2 for half_mse).

    With `members` (a vectorized group), every sum has one entry per member: `add` takes the stacked
    outputs (M, B, outputs), the targets (shared (B, ...) or (M, B, ...)), the members' losses (M,) and,
    for a ragged batch, each member's count of valid rows (`rows`); `values` returns one dict a member."""

    def __init__(self, device: torch.device, task: str, positive_target: bool, mse_per_loss: float = 1.0,
                 members: int | None = None):
        self.task, self.positive_target, self.mse_per_loss, self.members = task, positive_target, mse_per_loss, members
        shape = () if members is None else (members,)
        self.loss = torch.zeros(shape, dtype=torch.float64, device=device)
        self.correct = torch.zeros(shape, dtype=torch.float64, device=device)
        self.sq_log = torch.zeros(shape, dtype=torch.float64, device=device)
        self.point = torch.zeros(0, dtype=torch.float64, device=device)  # (d,) sum of the outputs
        self.n: Any = 0 if members is None else [0] * members

    def add(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, rows: list[int] | None = None) -> None:
        if self.members is not None:
            return self._add_members(out, y, loss, rows)
        n = y.shape[0]
        self.loss.add_(loss.detach(), alpha=n)  # one kernel, not two: batch-1 SGD feels each
        if self.task == CLASSIFICATION:
            self.correct += (out.detach().argmax(dim=1) == y).sum()
        elif self.task == OBJECTIVE:
            # the model's output is the point (the same row n times)
            total = out.detach().sum(dim=0).double()  # (d,)
            self.point = self.point + total if self.point.numel() else total
        elif self.positive_target:
            # d2l's log_rmse: predictions below 1 are clipped to 1 before the log
            pred = torch.clamp(out.detach(), min=1.0)
            self.sq_log += ((torch.log(pred) - torch.log(y)) ** 2).sum()
        self.n += n

    def _add_members(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, rows: list[int] | None) -> None:
        from dlexp.vectorize import valid_mask

        width = out.shape[1]
        mask = None if rows is None else valid_mask(rows, width, out.device)  # (M, B)
        if rows is None:
            self.loss.add_(loss.detach(), alpha=width)
        else:
            self.loss.add_(loss.detach() * torch.tensor(rows, device=out.device))
        if self.task == CLASSIFICATION:
            hit = out.detach().argmax(dim=-1) == y  # (M, B); a shared y (B,) broadcasts
            self.correct += (hit if mask is None else hit & mask).sum(1)
        elif self.positive_target:
            pred = torch.clamp(out.detach(), min=1.0)
            sq = ((torch.log(pred) - torch.log(y)) ** 2).flatten(2).sum(2)  # (M, B)
            self.sq_log += (sq if mask is None else torch.where(mask, sq, 0.0)).sum(1)
        self.n = [n + (width if rows is None else r) for n, r in zip(self.n, rows or [width] * len(self.n))]

    def values(self) -> Any:
        if self.members is not None:
            sums = torch.stack([self.loss, self.correct, self.sq_log]).tolist()  # one sync for every member
            return [self._metrics(loss, correct, sq_log, [], n) for loss, correct, sq_log, n in zip(*sums, self.n)]
        loss, correct, sq_log, *point = torch.cat([torch.stack([self.loss, self.correct, self.sq_log]), self.point]).tolist()  # one sync
        return self._metrics(loss, correct, sq_log, point, self.n)

    def _metrics(self, loss: float, correct: float, sq_log: float, point: list[float], n: int) -> dict[str, float]:
        n = max(n, 1)
        out = {"loss": loss / n}
        if self.task == CLASSIFICATION:
            out["acc"] = correct / n
        elif self.task == OBJECTIVE:
            out.update({f"x{i + 1}": v / n for i, v in enumerate(point)})
        else:
            mse = self.mse_per_loss * loss / n
            out["rmse"] = math.sqrt(mse) if mse >= 0 else float("nan")
            if self.positive_target:
                out["log_rmse"] = math.sqrt(sq_log / n)
        return out


def as_loss_dtype(out: torch.Tensor) -> torch.Tensor:
    """Outputs as losses and metrics are computed: float32 (bf16 autocast outputs included), or float64
    for a float64 model (the parity tests' float64 runs), which float32 would round."""
    return out if out.dtype == torch.float64 else out.float()


@torch.no_grad()
def evaluate(model, x, y, loss_fn, batch_size, task, positive_target, forward=None, autocast=contextlib.nullcontext,
             mse_per_loss: float = 1.0, members: Any = None) -> Any:
    """Metrics of `model` on (x, y) in eval mode; `forward` is the (possibly compiled) model to call.

    A vectorized group: `members` is the split's `dlexp.vectorize.Rows` (x and y are then None),
    `loss_fn` gives one loss per member, and the result is a list with one dict per member."""
    model.eval()
    forward = forward or model
    if members is not None:
        x, y = members.eval_pair()
        axis = 0 if members.shared else 1  # shared (N, ...) rows, or each member's own (M, N, ...)
        acc = _Accumulator(x.device, task, positive_target, mse_per_loss, len(members.sizes))
        for i in range(0, x.shape[axis], batch_size):
            xb, yb = x.narrow(axis, i, min(batch_size, x.shape[axis] - i)), y.narrow(axis, i, min(batch_size, x.shape[axis] - i))
            rows = members.rows_at(i, xb.shape[axis])
            with autocast():
                out = forward(xb)
            out = as_loss_dtype(out)
            acc.add(out, yb, loss_fn(out, yb, rows), rows)
        return acc.values()
    acc = _Accumulator(x.device, task, positive_target, mse_per_loss)
    for i in range(0, x.shape[0], batch_size):
        with autocast():
            out = forward(x[i : i + batch_size])
        out = as_loss_dtype(out)
        acc.add(out, y[i : i + batch_size], loss_fn(out, y[i : i + batch_size]))
    return acc.values()


GATHER_ROWS = 4096  # rows gathered at once by `batches`: bounds the extra memory to one such block


def batches(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, batch_size: int):
    """The minibatches (x[idx], y[idx]) for consecutive `batch_size` slices idx of `perm`.

    Rows are gathered a block of whole batches at a time and the batches are views of the block:
    one index operation per block rather than per batch (at batch size 1, two gathers cost ~20 us of
    a ~600 us step on a CPU). The batches are the same as gathering each one alone.
    A vectorized group's `perm` is (M, n), one row order per member: the batches are then (M, B, ...).
    """
    axis = perm.ndim - 1
    n = perm.shape[axis]
    block = batch_size * max(1, GATHER_ROWS // batch_size)
    for start in range(0, n, block):
        idx = perm.narrow(axis, start, min(block, n - start))
        xs, ys = x[idx], y[idx]
        for i in range(0, idx.shape[axis], batch_size):
            width = min(batch_size, idx.shape[axis] - i)
            yield xs.narrow(axis, i, width), ys.narrow(axis, i, width)


def mixed_precision(amp: str, device: torch.device) -> Callable[[], Any]:
    """`trainer.amp`: none, or bf16 autocast of the forward pass (weights and optimizer stay float32)."""
    if amp == "none":
        return contextlib.nullcontext
    if amp == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ConfigError(f"trainer.amp: expected none or bf16, got {amp!r}")


class Stop(Exception):
    """Raised by an `on_epoch` callback to end its run after this epoch with `status` (a sweep's
    pruner: "pruned"); the run's records and files are kept as for any other ending."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def train(
    cfg,
    splits,
    *,
    run_id: str = "",
    on_start: Callable[[torch.device], Any] | None = None,
    on_epoch: Any = None,
    on_checkpoint: Callable[[Any], None] | None = None,
    resume: Any = None,
    progress: Any = None,
) -> Any:
    """Train `cfg.model` on `splits` with `cfg.optimizer` and `cfg.schedule` for `cfg.trainer.epochs`.

    `on_start(device) -> run_id` is called once everything is built and checked, just before the first
    epoch, so that a bad input never leaves a half-made run folder behind. `on_epoch(epoch, records_so_far)` is called after every epoch (to write files, report to a
    pruner; it may raise to stop the run, or `Stop` to end it with a status). `on_checkpoint(state)` receives, after every epoch, all
    that is needed to continue exactly (model, optimizer, step, RNG states, records): see `checkpoint_state`.
    `resume` is such a state: training continues with the epoch after it, bit-identically on the same
    device in deterministic mode. `progress` is a rich Progress or None.

    A vectorized group (dlexp/vectorize.py): `cfg`, `splits` and `resume` are lists, one entry per
    member, and the members train as one stacked model through these same lines, each exactly as it
    would alone (its initial weights, data order, dropout masks, hyperparameters and update). Then
    `on_start(device)` returns the members' run ids, `on_epoch` is a list of the members' callbacks,
    `on_checkpoint` receives a list of (member, state) for the members still training (a state is a
    single run's checkpoint), and the result is a list of Results. A member whose loss becomes
    non-finite, or whose callback raises `Stop`, ends after that epoch and leaves the stack; the others
    go on unaffected.
    """
    group = isinstance(cfg, (list, tuple))
    cfgs, member_splits = (list(cfg), list(splits)) if group else ([cfg], [splits])
    cfg, splits = cfgs[0], member_splits[0]  # in a group, what every member shares (dlexp.vectorize.group_key)
    members = len(cfgs)
    device = resolve_device(cfg.trainer.device)
    if group:
        from dlexp.vectorize import Group

        g = Group(cfgs, member_splits, device, resume)  # each member seeded and built as below, then stacked
        model, decay_params, optimizer, schedule = g.model, g.decay_params, g.optimizer, g.schedule
        wd, decays = g.weight_decay, g.decays  # (M,), and whether any member decays
    else:
        seed_everything(int(cfg.seed), bool(cfg.trainer.deterministic))
        model, decay_params, optimizer, schedule = build(cfg, splits, device)
        wd = float(cfg.optimizer.weight_decay)
        decays = wd > 0
    wd_mode = cfg.optimizer.weight_decay_mode

    autocast = mixed_precision(cfg.trainer.get("amp", "none"), device)
    # torch.compile wraps the module; `model` stays the plain one (its state_dict has no prefixes)
    forward = torch.compile(model) if cfg.trainer.get("compile", False) else model

    loss_name = cfg.trainer.get("loss", "auto")
    loss_fn = g.loss_fn if group else make_loss(loss_name, splits)  # a group's: one loss per member, (M,)
    mse_per_loss = 2.0 if loss_name == "half_mse" else 1.0
    if group:
        x_train, y_train = g.train_rows.x, g.train_rows.y  # on the device; batches gather from them
        train_set, evals, sizes = g.train_rows, g.evals, g.train_rows.sizes
    else:
        x_train, y_train = (t.to(device) for t in splits.train)  # moved once; batches are index slices
        # an empty split (test_fraction=0, val_fraction=0) has no metrics, rather than zeros
        evals = {name: tuple(t.to(device) for t in pair) for name, pair in (("val", splits.val), ("test", splits.test))
                 if pair is not None and len(pair[0]) > 0}
        train_set, sizes = (x_train, y_train), [x_train.shape[0]]

    n, batch_size, epochs = max(sizes), int(cfg.trainer.batch_size), int(cfg.trainer.epochs)
    unit = cfg.schedule.unit
    shuffle = None if group else torch.Generator(device=device).manual_seed(int(cfg.seed))
    eval_every = int(cfg.trainer.get("eval_every", 0))

    def measure(data) -> list[dict[str, float]]:
        """Eval-mode metrics of a split, one dict per member (still training)."""
        args = (loss_fn, int(cfg.trainer.eval_batch_size), splits.task, splits.positive_target, forward, autocast, mse_per_loss)
        if group:
            return evaluate(model, None, None, *args, members=data)
        return [evaluate(model, *data, *args)]

    def rows(member, values, epoch, step, examples, now) -> list[dict[str, Any]]:
        return [dict(run_id=run_ids[member], epoch=epoch, step=step, examples=examples, split=split, metric=metric,
                     value=value, time_s=now - start) for split, metrics in values.items() for metric, value in metrics.items()]

    run_ids = [run_id] * members
    if on_start is not None:
        started = on_start(device)
        run_ids = list(started) if group else [started]
    records: list[list[dict[str, Any]]] = [[] for _ in range(members)]
    status, reason = ["ok"] * members, [None] * members
    results: dict[int, Result] = {}  # members that ended before the others (a group)
    alive = g.alive if group else [0]  # the members still training, in stack order
    step, epoch, first_epoch, offset = 0, 0, 1, 0.0
    if resume is not None:
        states = resume if group else [resume]
        if not group:  # a group's members are restored by Group, before stacking
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            restore_rng(resume["rng"], shuffle, device)
        records = [list(r["records"]) for r in states]
        step, first_epoch = int(states[0]["step"]), int(states[0]["epoch"]) + 1
        epoch = first_epoch - 1  # a checkpoint of the last epoch (killed before its summary): nothing left to train
        offset = max(float(r["elapsed"]) for r in states)
    start = time.perf_counter() - offset
    every = checkpoint_schedule(cfg.trainer.get("checkpoint_every", 1))
    last_checkpoint = time.perf_counter()
    task = progress.add_task("epochs", total=epochs, completed=first_epoch - 1) if progress is not None else None
    lr, lr_unit = float(cfg.optimizer.lr), 0
    examples = [(first_epoch - 1) * k for k in sizes]  # training examples seen so far: every epoch sees each once
    if first_epoch == 1:
        # epoch 0, before the first update: where an objective's path starts, the loss before training
        start_values = [{"train": v} for v in measure(train_set)] if splits.task == OBJECTIVE else [{} for _ in alive]
        if eval_every:
            for values, v in zip(start_values, measure(train_set)):
                values["train_eval"] = v
        for i, member in enumerate(alive):
            records[member].extend(rows(member, start_values[i], 0, 0, 0, time.perf_counter()))
    try:
        for epoch in range(first_epoch, epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            running = _Accumulator(device, splits.task, splits.positive_target, mse_per_loss, len(alive) if group else None)
            in_epoch: list[list[dict[str, Any]]] = [[] for _ in range(members)]  # the train_eval rows, kept with the epoch's own
            if unit == "epoch":
                lr, lr_unit = schedule(epoch - 1), epoch - 1
                for pg in optimizer.param_groups:
                    pg["lr"] = lr
            # a group: each member's own order, (M, n) (dlexp.vectorize.Group.permutation)
            perm = g.permutation() if group else torch.randperm(n, device=device, generator=shuffle)
            position = 0  # rows of the epoch trained so far (of the longest member, in a group)
            for xb, yb in batches(x_train, y_train, perm, batch_size):
                if unit == "step":
                    lr, lr_unit = schedule(step), step
                    for pg in optimizer.param_groups:
                        pg["lr"] = lr
                width = xb.shape[perm.ndim - 1]
                # a group's ragged last batch (K-fold folds one row apart): each member's valid rows
                valid = g.train_rows.rows_at(position, width) if group else None
                if group:
                    g.streams.rows = valid  # each member draws dropout masks for its own rows only
                with autocast():
                    out = forward(xb)
                out = as_loss_dtype(out)  # losses and metrics in float32, also under bf16 autocast
                loss = loss_fn(out, yb, valid) if group else loss_fn(out, yb)
                objective = loss
                if wd_mode == "loss" and decays:
                    # d2l 3.7: lambda/2 * ||w||^2 added to the loss (its gradient is lambda * w)
                    norms = g.squared_norms(decay_params) if group else sum((p * p).sum() for p in decay_params)
                    objective = loss + wd / 2 * norms
                if group:
                    objective = objective.sum()  # member m's parameters get the gradient of member m's loss
                # the optimizer's parameters are the model's: the module's zero_grad clears the same grads
                # without the profiler range torch.optim's wraps around it (~25 us of a batch-1 step)
                model.zero_grad(set_to_none=True)
                objective.backward()
                try:
                    if wd_mode == "decoupled" and decays:
                        # AdamW-style: w <- w - lr * lambda * w, before the update, outside the gradient
                        with torch.no_grad():
                            if group:
                                g.scale(decay_params, 1.0 - lr * wd)
                            else:
                                torch._foreach_mul_(decay_params, 1.0 - lr * wd)
                    optimizer.step()
                except RuntimeError as e:
                    if not overflowed(e):
                        raise
                    # a step size beyond float32's range (lr=1e38 with Adam's lr / (1 - beta1^t)): the
                    # parameters would become inf, so the run diverged, as with a NaN loss (in a group the
                    # step is one for all members: each of them)
                    for m in alive:
                        status[m], reason[m] = "diverged", f"an update overflowed float32 in epoch {epoch}" + (f" (lr {lr:g})" if isinstance(lr, float) else "")
                    break
                step += 1
                if group:
                    running.add(out, yb, loss, valid)
                else:
                    running.add(out, yb, loss)
                position += width
                seen = [examples[m] + (width if valid is None else valid[i]) for i, m in enumerate(alive)]
                if eval_every and any(s // eval_every > examples[m] // eval_every for s, m in zip(seen, alive)):
                    # passed a multiple of eval_every (in a group: the members that did)
                    now = time.perf_counter()
                    for i, (values, m) in enumerate(zip(measure(train_set), alive)):
                        if seen[i] // eval_every > examples[m] // eval_every:
                            in_epoch[m] += rows(m, {"train_eval": values}, epoch, step, seen[i], now)
                    model.train()
                for i, m in enumerate(alive):
                    examples[m] = seen[i]
            # an objective takes one step an epoch: record f and the point reached, as d2l's train_2d does,
            # rather than the value at the point where the gradient was taken
            trained = measure(train_set) if splits.task == OBJECTIVE else (running.values() if group else [running.values()])
            values = [{"train": v} for v in trained]
            for name, data in evals.items():
                for member_values, v in zip(values, measure(data)):
                    member_values[name] = v
            now = time.perf_counter()
            lrs = schedule.values(lr_unit) if group else [lr]
            for i, m in enumerate(alive):
                lr_and_time = {"train": {"lr": lrs[i], "epoch_s": now - epoch_start}}
                # one call: a Ctrl-C lands before or after it, never inside an epoch's rows
                records[m].extend(in_epoch[m] + rows(m, values[i], epoch, step, examples[m], now) + rows(m, lr_and_time, epoch, step, examples[m], now))
            if progress is not None:
                shown = (f"{len(alive)} members" if group else
                         ", ".join(f"{s}/{k} {v:.4g}" for s, ms in values[0].items() for k, v in ms.items() if k in ("loss", "acc")))
                progress.update(task, advance=1, description=f"epoch {epoch}/{epochs}: {shown}")
            for i, m in enumerate(alive):
                if not math.isfinite(values[i]["train"]["loss"]):
                    # divergence is data: the run stops, its records stay, the grid (and the group) goes on
                    status[m], reason[m] = "diverged", f"train loss became {values[i]['train']['loss']} in epoch {epoch}"
            for m in list(alive):
                if on_epoch is None:
                    break
                try:
                    on_epoch[m](epoch, records[m]) if group else on_epoch(epoch, records[m])
                except Stop as e:
                    status[m], reason[m] = e.status, e.reason
            if on_checkpoint is not None and checkpoint_due(every, epoch, time.perf_counter() - last_checkpoint):
                elapsed = time.perf_counter() - start
                if group:
                    states = [(m, g.checkpoint(i, epoch, step, records[m], elapsed)) for i, m in enumerate(alive) if status[m] == "ok"]
                    if states:
                        on_checkpoint(states)
                elif status[0] == "ok":
                    on_checkpoint(checkpoint_state(epoch, step, model, optimizer, shuffle, records[0], elapsed))
                last_checkpoint = time.perf_counter()
            ended = [i for i, m in enumerate(alive) if status[m] != "ok"]
            if ended and not group:
                break
            if ended:
                for i in ended:  # each leaves with its weights as they are now, as its single run would stop
                    m = alive[i]
                    results[m] = Result(status=status[m], records=records[m], model=g.model.member_model(i), epochs_completed=epoch,
                                        steps=step, duration_s=time.perf_counter() - start, reason=reason[m], device=str(device))
                if len(ended) == len(alive):
                    alive = []
                    break
                g.keep([i for i in range(len(alive)) if i not in ended])
                alive = g.alive
    except KeyboardInterrupt:
        for m in alive:
            status[m], reason[m] = "interrupted", f"interrupted in epoch {epoch}"
    for i, m in enumerate(alive):
        # interrupted: the epochs whose records are complete (a Ctrl-C after an epoch's records, while they
        # are being written or checkpointed, still counts that epoch)
        completed = epoch if status[m] in ("ok", "diverged", "pruned") else max((r["epoch"] for r in records[m]), default=first_epoch - 1)
        results[m] = Result(
            status=status[m], records=records[m], model=g.model.member_model(i) if group else model, epochs_completed=completed,
            steps=step, duration_s=time.perf_counter() - start, reason=reason[m], device=str(device),
        )
    return [results[m] for m in range(members)] if group else results[0]


def checkpoint_due(every: tuple[str, float] | None, epoch: int, since_last_s: float) -> bool:
    """Whether to checkpoint after `epoch` (1-based): `every` is config.checkpoint_schedule's
    ('epochs', N) or ('seconds', S), or None for never."""
    if every is None:
        return False
    unit, n = every
    return epoch % int(n) == 0 if unit == "epochs" else since_last_s >= n


def overflowed(error: RuntimeError) -> bool:
    """torch's error for a Python number that does not fit the tensor's dtype (a float32 step size of 1e39)."""
    return "without overflow" in str(error)


def checkpoint_state(epoch, step, model, optimizer, shuffle, records, elapsed) -> dict[str, Any]:
    """Everything needed to continue after `epoch` exactly. Only tensors, numbers, strings, lists and
    dicts, so that it loads with torch.load(weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "epoch": epoch,
        "step": step,
        "elapsed": elapsed,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "records": [dict(r) for r in records],
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle": shuffle.get_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        },
    }


def restore_rng(rng: dict[str, Any], shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    shuffle.set_state(rng["shuffle"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))


def summarize(records: list[dict[str, Any]], higher_is_better=("acc",)) -> dict[str, dict[str, Any]]:
    """Final (last epoch) value of every split/metric, and the values at the best epoch chosen on validation.

    For each metric M, the best epoch is the first epoch with the best finite val/M (`best_epoch[M]`);
    `best[S/M]` is S/M at that epoch for every split S. The test split never chooses the epoch
    (that would be selection on the data reported), so without a validation split `best` is empty and
    `best_on` is None.
    """
    final: dict[str, float] = {}
    by_epoch: dict[str, dict[int, float]] = {}
    for r in records:
        key = f"{r['split']}/{r['metric']}"
        final[key] = r["value"]
        by_epoch.setdefault(key, {})[r["epoch"]] = r["value"]
    best: dict[str, float] = {}
    best_epoch: dict[str, int] = {}
    for key, values in by_epoch.items():
        split, _, metric = key.partition("/")
        if split != "val" or metric in ("lr", "epoch_s"):
            continue
        finite = [(e, v) for e, v in sorted(values.items()) if math.isfinite(v)]
        if not finite:
            continue
        sign = 1 if metric in higher_is_better else -1
        epoch = max(finite, key=lambda ev: (sign * ev[1], -ev[0]))[0]  # the best value; the first epoch among equals
        best_epoch[metric] = epoch
        for other, vals in by_epoch.items():
            if other.endswith("/" + metric) and epoch in vals:
                best[other] = vals[epoch]
    # best_on says which split chose the best epoch; None: no validation split, so no epoch was chosen
    return {"final": final, "best": best, "best_epoch": best_epoch, "best_on": "val" if best_epoch else None}
