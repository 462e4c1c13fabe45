"""``aromni demo-corpus``: the built-in demo corpus."""
from __future__ import annotations

from pathlib import Path

import typer

from aromni.cli.app import app
from aromni.cli.common import out_console


@app.command("demo-corpus")
def demo_corpus(out: Path = typer.Option(Path("demo_data"), "--out", help="where to write the corpus")):
    """Write the built-in demo corpus (real photos, espeak-ng speech, real text) in the sources' real formats.

    Example: aromni demo-corpus --out demo_data   (then: aromni build recipes/demo.yaml --out runs/demo)
    """
    from aromni.demo import make_demo_corpus

    paths = make_demo_corpus(out)
    for k, v in paths.items():
        out_console.print(f"{k}: {v}")
