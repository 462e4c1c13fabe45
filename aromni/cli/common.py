"""What every command module shares: the two consoles, the exit codes and the one way to fail.

Exit codes (every command): 0 ok; 1 the work failed or found problems (the message says why); 2 bad usage or a bad
recipe (the message names the flag or key). ``fail`` prints one red line, never a traceback.
"""
from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

OK, WORK_FAILED, BAD_USAGE = 0, 1, 2

console = Console(stderr=True)     # errors, warnings, progress
out_console = Console()            # results (what a script pipes on)


def fail(msg: str, code: int = BAD_USAGE) -> NoReturn:
    """Print ``error: msg`` on stderr and exit with ``code`` (BAD_USAGE by default; WORK_FAILED when the input was
    fine but the work could not be done)."""
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """Repeatable NAME=VALUE options -> a dict (bad usage when one has no '=')."""
    out = {}
    for it in items or []:
        if "=" not in it:
            fail(f"{what} {it!r}: expected NAME=VALUE")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out
