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
    (objectives). `mse_per_loss` turns the loss into the MSE for rmse (2 for half_mse)."""

    def __init__(self, device: torch.device, task: str, positive_target: bool, mse_per_loss: float = 1.0):
        self.task, self.positive_target, self.mse_per_loss = task, positive_target, mse_per_loss
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.sq_log = torch.zeros((), dtype=torch.float64, device=device)
        self.point = torch.zeros(0, dtype=torch.float64, device=device)  # (d,) sum of the outputs
        self.n = 0

    def add(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
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

    def values(self) -> dict[str, float]:
        loss, correct, sq_log, *point = torch.cat([torch.stack([self.loss, self.correct, self.sq_log]), self.point]).tolist()  # one sync
        n = max(self.n, 1)
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


@torch.no_grad()
def evaluate(model, x, y, loss_fn, batch_size, task, positive_target, forward=None, autocast=contextlib.nullcontext,
             mse_per_loss: float = 1.0) -> dict[str, float]:
    """Metrics of `model` on (x, y) in eval mode; `forward` is the (possibly compiled) model to call."""
    model.eval()
    forward = forward or model
    acc = _Accumulator(x.device, task, positive_target, mse_per_loss)
    for i in range(0, x.shape[0], batch_size):
        with autocast():
            out = forward(x[i : i + batch_size])
        out = out.float()
        acc.add(out, y[i : i + batch_size], loss_fn(out, y[i : i + batch_size]))
    return acc.values()


GATHER_ROWS = 4096  # rows gathered at once by `batches`: bounds the extra memory to one such block


def batches(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, batch_size: int):
    """The minibatches (x[idx], y[idx]) for consecutive `batch_size` slices idx of `perm`.

    Rows are gathered a block of whole batches at a time and the batches are views of the block:
    one index operation per block rather than per batch (at batch size 1, two gathers cost ~20 us of
    a ~600 us step on a CPU). The batches are the same as gathering each one alone.
    """
    block = batch_size * max(1, GATHER_ROWS // batch_size)
    for start in range(0, perm.shape[0], block):
        idx = perm[start : start + block]
        xs, ys = x[idx], y[idx]
        for i in range(0, idx.shape[0], batch_size):
            yield xs[i : i + batch_size], ys[i : i + batch_size]


def mixed_precision(amp: str, device: torch.device) -> Callable[[], Any]:
    """`trainer.amp`: none, or bf16 autocast of the forward pass (weights and optimizer stay float32)."""
    if amp == "none":
        return contextlib.nullcontext
    if amp == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ConfigError(f"trainer.amp: expected none or bf16, got {amp!r}")


def train(
    cfg,
    splits: Splits,
    *,
    run_id: str = "",
    on_start: Callable[[torch.device], str] | None = None,
    on_epoch: Callable[[int, list[dict[str, Any]]], None] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    progress: Any = None,
) -> Result:
    """Train `cfg.model` on `splits` with `cfg.optimizer` and `cfg.schedule` for `cfg.trainer.epochs`.

    `on_start(device) -> run_id` is called once everything is built and checked, just before the first
    epoch, so that a bad input never leaves a half-made run folder behind. `on_epoch(epoch, records_so_far)` is called after every epoch (to write files, report to a
    pruner; it may raise to stop the run). `on_checkpoint(state)` receives, after every epoch, all
    that is needed to continue exactly (model, optimizer, step, RNG states, records): see `checkpoint_state`.
    `resume` is such a state: training continues with the epoch after it, bit-identically on the same
    device in deterministic mode. `progress` is a rich Progress or None.
    """
    device = resolve_device(cfg.trainer.device)
    seed_everything(int(cfg.seed), bool(cfg.trainer.deterministic))
    model, decay_params, optimizer, schedule = build(cfg, splits, device)
    opt_cfg = cfg.optimizer
    wd, wd_mode = float(opt_cfg.weight_decay), opt_cfg.weight_decay_mode

    autocast = mixed_precision(cfg.trainer.get("amp", "none"), device)
    # torch.compile wraps the module; `model` stays the plain one (its state_dict has no prefixes)
    forward = torch.compile(model) if cfg.trainer.get("compile", False) else model

    loss_name = cfg.trainer.get("loss", "auto")
    loss_fn = make_loss(loss_name, splits)
    mse_per_loss = 2.0 if loss_name == "half_mse" else 1.0
    x_train, y_train = (t.to(device) for t in splits.train)  # moved once; batches are index slices
    # an empty split (test_fraction=0, val_fraction=0) has no metrics, rather than zeros
    evals = {name: tuple(t.to(device) for t in pair) for name, pair in (("val", splits.val), ("test", splits.test))
             if pair is not None and len(pair[0]) > 0}

    n, batch_size, epochs = x_train.shape[0], int(cfg.trainer.batch_size), int(cfg.trainer.epochs)
    unit = cfg.schedule.unit
    base_lr = float(opt_cfg.lr)
    shuffle = torch.Generator(device=device).manual_seed(int(cfg.seed))
    eval_every = int(cfg.trainer.get("eval_every", 0))

    def measure(x, y) -> dict[str, float]:
        return evaluate(model, x, y, loss_fn, int(cfg.trainer.eval_batch_size), splits.task, splits.positive_target,
                        forward, autocast, mse_per_loss)

    def rows(values, epoch, step, examples, now) -> list[dict[str, Any]]:
        return [dict(run_id=run_id, epoch=epoch, step=step, examples=examples, split=split, metric=metric, value=value,
                     time_s=now - start) for split, metrics in values.items() for metric, value in metrics.items()]

    if on_start is not None:
        run_id = on_start(device)
    records: list[dict[str, Any]] = []
    step, status, reason, epoch, first_epoch, offset = 0, "ok", None, 0, 1, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        records, step, first_epoch = list(resume["records"]), int(resume["step"]), int(resume["epoch"]) + 1
        epoch = first_epoch - 1  # a checkpoint of the last epoch (killed before its summary): nothing left to train
        offset = float(resume["elapsed"])
        restore_rng(resume["rng"], shuffle, device)
    start = time.perf_counter() - offset
    every = checkpoint_schedule(cfg.trainer.get("checkpoint_every", 1))
    last_checkpoint = time.perf_counter()
    task = progress.add_task("epochs", total=epochs, completed=first_epoch - 1) if progress is not None else None
    lr = base_lr
    examples = (first_epoch - 1) * n  # training examples seen so far: every epoch sees each once
    if first_epoch == 1:
        # epoch 0, before the first update: where an objective's path starts, the loss before training
        start_values = {"train": measure(x_train, y_train)} if splits.task == OBJECTIVE else {}
        if eval_every:
            start_values["train_eval"] = measure(x_train, y_train)
        records.extend(rows(start_values, 0, 0, 0, time.perf_counter()))
    try:
        for epoch in range(first_epoch, epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            running = _Accumulator(device, splits.task, splits.positive_target, mse_per_loss)
            in_epoch: list[dict[str, Any]] = []  # the train_eval rows, kept with the epoch's own
            if unit == "epoch":
                lr = schedule(epoch - 1)
                for g in optimizer.param_groups:
                    g["lr"] = lr
            perm = torch.randperm(n, device=device, generator=shuffle)
            for xb, yb in batches(x_train, y_train, perm, batch_size):
                if unit == "step":
                    lr = schedule(step)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                with autocast():
                    out = forward(xb)
                out = out.float()  # losses and metrics in float32, also under bf16 autocast
                loss = loss_fn(out, yb)
                objective = loss
                if wd_mode == "loss" and wd > 0:
                    # d2l 3.7: lambda/2 * ||w||^2 added to the loss (its gradient is lambda * w)
                    objective = loss + wd / 2 * sum((p * p).sum() for p in decay_params)
                # the optimizer's parameters are the model's: the module's zero_grad clears the same grads
                # without the profiler range torch.optim's wraps around it (~25 us of a batch-1 step)
                model.zero_grad(set_to_none=True)
                objective.backward()
                running.add(out, yb, loss)
                try:
                    if wd_mode == "decoupled" and wd > 0:
                        # AdamW-style: w <- w - lr * lambda * w, before the update, outside the gradient
                        with torch.no_grad():
                            torch._foreach_mul_(decay_params, 1.0 - lr * wd)
                    optimizer.step()
                except RuntimeError as e:
                    if not overflowed(e):
                        raise
                    # a step size beyond float32's range (lr=1e38 with Adam's lr / (1 - beta1^t)): the
                    # parameters would become inf, so the run diverged, as with a NaN loss
                    status, reason = "diverged", f"an update overflowed float32 in epoch {epoch} (lr {lr:g})"
                    break
                step += 1
                seen = examples + xb.shape[0]
                if eval_every and seen // eval_every > examples // eval_every:  # passed a multiple of eval_every
                    in_epoch += rows({"train_eval": measure(x_train, y_train)}, epoch, step, seen, time.perf_counter())
                    model.train()
                examples = seen
            # an objective takes one step an epoch: record f and the point reached, as d2l's train_2d does,
            # rather than the value at the point where the gradient was taken
            values = {"train": measure(x_train, y_train) if splits.task == OBJECTIVE else running.values()}
            for name, (x, y) in evals.items():
                values[name] = measure(x, y)
            now = time.perf_counter()
            lr_and_time = {"train": {"lr": lr, "epoch_s": now - epoch_start}}
            # one call: a Ctrl-C lands before or after it, never inside an epoch's rows
            records.extend(in_epoch + rows(values, epoch, step, examples, now) + rows(lr_and_time, epoch, step, examples, now))
            if progress is not None:
                shown = ", ".join(f"{s}/{m} {v:.4g}" for s, ms in values.items() for m, v in ms.items() if m in ("loss", "acc"))
                progress.update(task, advance=1, description=f"epoch {epoch}/{epochs}: {shown}")
            if status == "ok" and not math.isfinite(values["train"]["loss"]):
                # divergence is data: the run stops, its records stay, the grid goes on
                status, reason = "diverged", f"train loss became {values['train']['loss']} in epoch {epoch}"
            if on_epoch is not None:
                on_epoch(epoch, records)
            if on_checkpoint is not None and status == "ok" and checkpoint_due(every, epoch, time.perf_counter() - last_checkpoint):
                on_checkpoint(checkpoint_state(epoch, step, model, optimizer, shuffle, records, time.perf_counter() - start))
                last_checkpoint = time.perf_counter()
            if status == "diverged":
                break
    except KeyboardInterrupt:
        status, reason = "interrupted", f"interrupted in epoch {epoch}"
    # interrupted: the epochs whose records are complete (a Ctrl-C after an epoch's records, while they
    # are being written or checkpointed, still counts that epoch)
    completed = epoch if status in ("ok", "diverged") else max((r["epoch"] for r in records), default=first_epoch - 1)
    return Result(
        status=status, records=records, model=model, epochs_completed=completed, steps=step,
        duration_s=time.perf_counter() - start, reason=reason, device=str(device),
    )


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
