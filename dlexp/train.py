"""The training loop: one function, read top to bottom. It returns tidy records; it writes nothing.

Conventions (said once, here):
- A *step* is one optimizer update; `step` counts updates completed, starting at 0.
- `train/*` metrics are averages over the epoch's minibatches, taken while training (d2l's
  `train_epoch_ch3` convention: train mode, dropout on, the parameters moving). `val/*` and `test/*`
  are evaluated in eval mode after the epoch.
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

from dlexp.data import CLASSIFICATION, Splits
from dlexp.errors import ConfigError
from dlexp.models import build_model, check_memory
from dlexp.optim import OPTIMIZERS
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
        value = opt_cfg[key]
        kwargs[key] = tuple(value) if key == "betas" else value
    try:
        return cls(groups, **kwargs)
    except (ValueError, TypeError, IndexError) as e:
        raise ConfigError(f"optimizer ({opt_cfg.name}): {e}") from None


def build(cfg, splits: Splits, device: torch.device) -> tuple[nn.Module, list[torch.Tensor], torch.optim.Optimizer, Any]:
    """`cfg`'s model (on `device`), the parameters that decay, the optimizer and the schedule for
    `splits`: what `train` runs with."""
    check_memory(cfg.model, splits.sample_shape, splits.num_outputs, min(int(cfg.trainer.batch_size), len(splits.train[0])),
                 device, data_bytes=_data_bytes(splits) if device.type != "cpu" else 0)  # a 40 GB model: one line, not a crash
    model = build_model(cfg.model, splits.sample_shape, splits.num_outputs).to(device)  # before the optimizer's state
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


class _Accumulator:
    """Per-split sums kept on the device: loss, correct predictions, squared log errors."""

    def __init__(self, device: torch.device, task: str, positive_target: bool):
        self.task, self.positive_target = task, positive_target
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.sq_log = torch.zeros((), dtype=torch.float64, device=device)
        self.n = 0

    def add(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        n = y.shape[0]
        self.loss += loss.detach() * n
        if self.task == CLASSIFICATION:
            self.correct += (out.detach().argmax(dim=1) == y).sum()
        elif self.positive_target:
            # d2l's log_rmse: predictions below 1 are clipped to 1 before the log
            pred = torch.clamp(out.detach(), min=1.0)
            self.sq_log += ((torch.log(pred) - torch.log(y)) ** 2).sum()
        self.n += n

    def values(self) -> dict[str, float]:
        loss, correct, sq_log = torch.stack([self.loss, self.correct, self.sq_log]).tolist()  # one sync
        n = max(self.n, 1)
        out = {"loss": loss / n}
        if self.task == CLASSIFICATION:
            out["acc"] = correct / n
        else:
            out["rmse"] = math.sqrt(loss / n) if loss >= 0 else float("nan")
            if self.positive_target:
                out["log_rmse"] = math.sqrt(sq_log / n)
        return out


@torch.no_grad()
def evaluate(model, x, y, loss_fn, batch_size, task, positive_target, forward=None, autocast=contextlib.nullcontext) -> dict[str, float]:
    """Metrics of `model` on (x, y) in eval mode; `forward` is the (possibly compiled) model to call."""
    model.eval()
    forward = forward or model
    acc = _Accumulator(x.device, task, positive_target)
    for i in range(0, x.shape[0], batch_size):
        with autocast():
            out = forward(x[i : i + batch_size])
        out = out.float()
        acc.add(out, y[i : i + batch_size], loss_fn(out, y[i : i + batch_size]))
    return acc.values()


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

    classification = splits.task == CLASSIFICATION
    loss_fn = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    x_train, y_train = (t.to(device) for t in splits.train)  # moved once; batches are index slices
    # an empty split (test_fraction=0, val_fraction=0) has no metrics, rather than zeros
    evals = {name: tuple(t.to(device) for t in pair) for name, pair in (("val", splits.val), ("test", splits.test))
             if pair is not None and len(pair[0]) > 0}

    n, batch_size, epochs = x_train.shape[0], int(cfg.trainer.batch_size), int(cfg.trainer.epochs)
    unit = cfg.schedule.unit
    base_lr = float(opt_cfg.lr)
    shuffle = torch.Generator(device=device).manual_seed(int(cfg.seed))

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
    task = progress.add_task("epochs", total=epochs, completed=first_epoch - 1) if progress is not None else None
    lr = base_lr
    try:
        for epoch in range(first_epoch, epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            running = _Accumulator(device, splits.task, splits.positive_target)
            if unit == "epoch":
                lr = schedule(epoch - 1)
                for g in optimizer.param_groups:
                    g["lr"] = lr
            perm = torch.randperm(n, device=device, generator=shuffle)
            for i in range(0, n, batch_size):
                if unit == "step":
                    lr = schedule(step)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                idx = perm[i : i + batch_size]
                xb, yb = x_train[idx], y_train[idx]
                with autocast():
                    out = forward(xb)
                out = out.float()  # losses and metrics in float32, also under bf16 autocast
                loss = loss_fn(out, yb)
                objective = loss
                if wd_mode == "loss" and wd > 0:
                    # d2l 4.5: lambda/2 * ||w||^2 added to the loss (its gradient is lambda * w)
                    objective = loss + wd / 2 * sum((p * p).sum() for p in decay_params)
                optimizer.zero_grad(set_to_none=True)
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
            values = {"train": running.values()}
            for name, (x, y) in evals.items():
                values[name] = evaluate(
                    model, x, y, loss_fn, int(cfg.trainer.eval_batch_size), splits.task, splits.positive_target, forward, autocast
                )
            now = time.perf_counter()
            elapsed = now - start
            new = [dict(run_id=run_id, epoch=epoch, step=step, split=split, metric=metric, value=value, time_s=elapsed)
                   for split, metrics in values.items() for metric, value in metrics.items()]
            new.append(dict(run_id=run_id, epoch=epoch, step=step, split="train", metric="lr", value=lr, time_s=elapsed))
            new.append(dict(run_id=run_id, epoch=epoch, step=step, split="train", metric="epoch_s", value=now - epoch_start, time_s=elapsed))
            records.extend(new)  # one call: a Ctrl-C lands before or after it, never inside an epoch's rows
            if progress is not None:
                shown = ", ".join(f"{s}/{m} {v:.4g}" for s, ms in values.items() for m, v in ms.items() if m in ("loss", "acc"))
                progress.update(task, advance=1, description=f"epoch {epoch}/{epochs}: {shown}")
            if status == "ok" and not math.isfinite(values["train"]["loss"]):
                # divergence is data: the run stops, its records stay, the grid goes on
                status, reason = "diverged", f"train loss became {values['train']['loss']} in epoch {epoch}"
            if on_epoch is not None:
                on_epoch(epoch, records)
            if on_checkpoint is not None and status == "ok":
                on_checkpoint(checkpoint_state(epoch, step, model, optimizer, shuffle, records, time.perf_counter() - start))
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


def summarize(records: list[dict[str, Any]], higher_is_better=("acc",)) -> dict[str, dict[str, float]]:
    """Final (last epoch) and best (over epochs) value of every split/metric."""
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for r in records:
        key = f"{r['split']}/{r['metric']}"
        final[key] = r["value"]
        if r["metric"] in ("lr", "epoch_s") or not math.isfinite(r["value"]):
            continue
        better = max if r["metric"] in higher_is_better else min
        best[key] = better(best[key], r["value"]) if key in best else r["value"]
    return {"final": final, "best": best}
