"""The ``aromni`` command line: one Typer app, one module per command group.

    build.py    build, validate, readers          (the data build)
    data.py     stats, show, card, publish, export (a finished build: look at it, ship it)
    train.py    train                              (the DeepSpeed trainer)
    infer.py    infer                              (every task of a model)
    convert.py  convert                            (Meta-format checkpoint -> HF dir)
    demo.py     demo-corpus                        (the built-in demo corpus)

Each module defines its commands on ``app`` (from ``aromni.cli.app``) and calls into the packages; the heavy ones
(torch, ray, transformers) are imported inside the commands, so ``aromni --help`` stays fast. Exit codes and the
error helper are in ``common.py``. ``aromni = "aromni.cli:main"`` (pyproject.toml) is the console script.
"""
from __future__ import annotations

import sys

from aromni.cli import build, convert, data, demo, infer, train  # noqa: F401  (each registers its commands)
from aromni.cli.app import app
from aromni.cli.common import console, out_console  # noqa: F401

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume")
        sys.exit(130)
