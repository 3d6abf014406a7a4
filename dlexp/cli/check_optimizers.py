"""`dlexp check-optimizers`: run the hand-written optimizers against torch.optim, live."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dlexp.cli.common import err, fail, out

SUITES = ("parity", "torch")


def check_optimizers(
    device: Annotated[str, typer.Option(help="Device to run on: cpu, cuda, cuda:1, mps ... (parity suite).")] = "cpu",
    steps: Annotated[int, typer.Option(help="Training steps per case, at least 1 (parity suite).")] = 200,
    suite: Annotated[str, typer.Option(help="parity: dlexp's 200-step parity table; torch: PyTorch's own optimizer test inputs.")] = "parity",
    only: Annotated[str, typer.Option(help="Comma-separated optimizers to check (default: all).")] = "",
) -> None:
    """Check every hand-written optimizer and option variant against its torch.optim twin.

    --suite parity (default): trains two copies of a small seeded network side by side for STEPS
    steps in float32 and float64, compares every parameter and every state tensor, and prints one
    row per case; 1e-5 relative difference allowed in float32, 1e-10 in float64.

    --suite torch: every CPU sample of the installed torch's optim_db (torch's own optimizer test
    inputs) in float32, float64 and complex64, with foreach, differentiable and fused, step by step
    against torch (parameters, state, state_dict), every error input, and the generic behaviours of
    torch's test_optim.py (state_dict round trips, hooks, deepcopy, LR schedulers, no-grad steps,
    add_param_group, tensor lr, complex and sparse parameters). Deliberate differences are rows
    with their reason. The first fused=True case builds dlexp's fused kernels (seconds, once per
    machine; it needs a C++ compiler).

    Exits with 1 if any case differs by more than its tolerance.
    """
    if suite not in SUITES:
        raise fail(f"--suite: expected one of {', '.join(SUITES)}, got {suite!r}")
    if steps < 1:
        raise fail(f"--steps: must be at least 1, got {steps}")

    import torch  # here, not at the top: the CLI starts without importing torch

    from dlexp.optim import OPTIMIZERS

    names = [n.strip() for n in only.split(",") if n.strip()] or list(OPTIMIZERS)
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise fail(f"--only: unknown optimizer {unknown[0]!r}; choose from {', '.join(OPTIMIZERS)}")
    if suite == "torch":
        if device != "cpu":
            raise fail(f"--device {device!r}: --suite torch runs torch's CPU samples; use --device cpu")
        _torch_suite(names)
        return

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise fail(f"--device {device!r}: {e}") from None
    available = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "mps": lambda: torch.backends.mps.is_available(),
    }.get(dev.type, lambda: False)
    if not available() or (dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count()):
        raise fail(f"--device {device!r}: not available on this machine")

    from dlexp.optim.check import check_optimizers as run_checks

    rows = [r for r in run_checks(device=device, steps=steps) if r["optimizer"] in names]
    table = Table(title=f"dlexp.optim vs torch.optim on {device}, {steps} steps")
    for col in ("optimizer", "variant", "dtype", "steps", "max abs diff", "max rel diff", "verdict"):
        table.add_column(col, justify="right" if "diff" in col or col == "steps" else "left", overflow="fold")
    for r in rows:
        verdict = "[green]ok[/green]" if r["verdict"] == "ok" else "[bold red]MISMATCH[/bold red]"
        table.add_row(
            r["optimizer"], r["variant"], r["dtype"], str(r["steps"]),
            f"{r['max_abs_diff']:.2e}", f"{r['max_rel_diff']:.2e}", verdict,
        )  # fmt: skip
    out.print(table)
    bad = [r for r in rows if r["verdict"] != "ok"]
    bitwise = sum(r["max_abs_diff"] == 0.0 for r in rows)
    out.print(
        f"{len(rows) - len(bad)} of {len(rows)} cases match torch.optim ({bitwise} bit for bit)"
        + (f"; {len(bad)} MISMATCH" if bad else "")
    )
    if bad:
        raise typer.Exit(1)


def _torch_suite(names: list[str]) -> None:
    """`--suite torch`: one row per case of dlexp.optim.suite, a summary line, exit 1 on a mismatch."""
    try:
        from dlexp.optim.suite import run_suite
    except ImportError as e:  # torch's testing package moved or is missing in this torch build
        raise fail(f"--suite torch: this torch has no usable torch.testing._internal.common_optimizers ({e})", 1) from None

    rows = run_suite(names, progress=lambda name: err.print(f"checking {name} ...", highlight=False))
    table = Table(title="dlexp.optim vs torch.optim on PyTorch's own optimizer test inputs (CPU)")
    for col in ("optimizer", "case", "variant", "dtype", "max rel diff", "verdict", "note"):
        table.add_column(col, justify="right" if "diff" in col else "left", overflow="fold")
    colour = {"ok": "green", "deliberate": "yellow", "MISMATCH": "bold red"}
    for r in rows:
        diff = "-" if r.max_diff != r.max_diff else f"{r.max_diff:.1e}"
        table.add_row(
            r.optimizer, r.case, escape(r.variant), r.dtype, diff,
            f"[{colour[r.verdict]}]{r.verdict}[/{colour[r.verdict]}]", escape(r.note),
        )  # fmt: skip
    out.print(table)
    counts = {v: sum(r.verdict == v for r in rows) for v in colour}
    bitwise = sum(r.max_diff == 0.0 for r in rows)
    out.print(
        f"{len(rows)} cases: {counts['ok']} ok ({bitwise} bit for bit), {counts['deliberate']} deliberate "
        f"differences, {counts['MISMATCH']} MISMATCH"
    )
    if counts["MISMATCH"]:
        raise typer.Exit(1)
