"""`dlexp check-optimizers`: run the hand-written optimizers against torch.optim, live."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from dlexp.cli.common import fail, out


def check_optimizers(
    device: Annotated[str, typer.Option(help="Device to run on: cpu, cuda, cuda:1, mps ...")] = "cpu",
    steps: Annotated[int, typer.Option(help="Training steps per case (at least 1).")] = 200,
) -> None:
    """Check every hand-written optimizer and option variant against its torch.optim twin.

    Trains two copies of a small seeded network side by side for STEPS steps in float32 and
    float64, compares every parameter and every state tensor, and prints one row per case.
    Exits with 1 if any case differs by more than the tolerance (1e-5 relative in float32,
    1e-10 in float64).
    """
    if steps < 1:
        raise fail(f"--steps: must be at least 1, got {steps}")

    import torch  # here, not at the top: the CLI starts without importing torch

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

    rows = run_checks(device=device, steps=steps)
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
    if any(r["verdict"] != "ok" for r in rows):
        raise typer.Exit(1)
