"""The one Typer app every command module adds its commands to."""
from __future__ import annotations

import typer

app = typer.Typer(
    help="aromni: build AR-Omni training data, train on it, run the model.\n\n"
         "YAML recipe -> build (worker processes, or Ray on a cluster) -> validated, mixed parquet shards -> "
         "DeepSpeed trainer -> decoder.\n\n"
         "Start with `make demo`, then `aromni build recipes/demo.yaml --out runs/demo` and "
         "`aromni validate runs/demo`. Exit codes: 0 ok, 1 the work failed, 2 bad usage or recipe.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")
