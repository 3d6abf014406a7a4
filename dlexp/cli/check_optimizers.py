"""`dlexp check-optimizers`: run the hand-written optimizers against torch.optim, live."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


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
    err = Console(stderr=True)
    if steps < 1:
        err.print(f"[red]error:[/red] --steps must be at least 1, got {steps}")
        raise typer.Exit(2)

    import torch  # here, not at the top: the CLI starts without importing torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        err.print(f"[red]error:[/red] invalid --device {device!r}: {e}")
        raise typer.Exit(2) from None
    available = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "mps": lambda: torch.backends.mps.is_available(),
    }.get(dev.type, lambda: False)
    if not available() or (dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count()):
        err.print(f"[red]error:[/red] device {device!r} is not available on this machine")
        raise typer.Exit(2)

    from dlexp.optim.check import check_optimizers as run_checks

    rows = run_checks(device=device, steps=steps)
    table = Table(title=f"dlexp.optim vs torch.optim on {device}, {steps} steps")
    for col in ("optimizer", "variant", "dtype", "max abs diff", "max rel diff", "verdict"):
        table.add_column(col, justify="right" if "diff" in col else "left")
    for r in rows:
        verdict = "[green]ok[/green]" if r["verdict"] == "ok" else "[bold red]MISMATCH[/bold red]"
        table.add_row(
            r["optimizer"], r["variant"], r["dtype"],
            f"{r['max_abs_diff']:.2e}", f"{r['max_rel_diff']:.2e}", verdict,
        )  # fmt: skip
    Console().print(table)
    if any(r["verdict"] != "ok" for r in rows):
        raise typer.Exit(1)
