"""How every ``fslm`` command reports bad input: a red ``error:`` line on stderr and exit code 2."""

from __future__ import annotations

import typer


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit (code 2) for the caller to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def interrupted(kept: str) -> typer.Exit:
    """Say what a Ctrl-C kept and how to resume; return the exit (code 130) for the caller to raise."""
    typer.secho(
        f"interrupted: {kept}; run the same command again to resume.", fg=typer.colors.YELLOW, err=True
    )
    return typer.Exit(code=130)
