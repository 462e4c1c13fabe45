"""``aromni build | validate | readers``: make a dataset from a recipe, check it, list the readers.

The build summary is a table of per-source accounting followed by lines from ``SUMMARY_LINES``: each entry is a
function ``(manifest, out, report) -> list[str]`` (rich markup allowed). To add a line (a quality filter's counts, a
new stage's timing), write such a function next to the code that knows the numbers and append it here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.table import Table

from aromni.cli.app import app
from aromni.cli.common import WORK_FAILED, console, fail, out_console


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="the recipe YAML (see recipes/demo.yaml)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. mixing.seed=7 "
                                                               "sources[0].path=/data/laion"),
    out: str = typer.Option(..., "--out", "-o", help="output folder or URL (s3://bucket/prefix, gs://...): data/, "
                                                    "rejects/, parts/, manifest.json"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w",
                                          help="parallel units (default: all CPUs this process may use)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="join a running Ray cluster (e.g. 127.0.0.1:6379)"),
    force: bool = typer.Option(False, "--force", help="discard parts in --out that this recipe does not produce"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar (logs, CI)"),
    executor: str = typer.Option("auto", "--executor", help="what runs the units and the mix: auto (Ray when "
                                 "--ray-address / RAY_ADDRESS names a cluster or the recipe runs model tokenizers, "
                                 "voice or CLIP in actor pools; otherwise worker processes on this machine, which "
                                 "start in a fraction of a second where a local Ray takes seconds), ray, processes, "
                                 "or local (in this process, one unit after another: debugging)"),
):
    """Build a dataset from a recipe: tokenize every unit (Ray tasks, or worker processes on one machine), mix
    groups, write shards and manifest.

    Rerunning the same command on the same --out skips finished units (resume after a crash). The same recipe and
    inputs give byte-identical shards for any --workers and any --executor.

    Example: aromni build recipes/demo.yaml --out runs/demo mixing.seed=7
    """
    if not (ray_address or os.environ.get("RAY_ADDRESS")):
        # A local build is one node: keep Ray on loopback instead of the machine's public interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from aromni.io.paths import InputError
    from aromni.pipeline.build import EXECUTORS, BuildError, build as run_build
    from aromni.pipeline.mix import MixError
    from aromni.recipe import RecipeError, load_recipe

    if executor not in EXECUTORS:
        fail(f"--executor {executor}: one of {', '.join(EXECUTORS)}")
    try:
        r = load_recipe(recipe, overrides or [])
    except RecipeError as e:
        fail(f"{recipe}: {e}")
    try:
        rep = run_build(r, out, workers=workers, ray_address=ray_address, force=force, progress=not no_progress,
                        console=console, executor=executor)
    except RecipeError as e:
        fail(f"{recipe}: {e}")
    except (BuildError, MixError) as e:
        fail(str(e), WORK_FAILED)
    except InputError as e:  # a missing object, an unreachable endpoint, a listing over its budget: named by URL
        fail(str(e), WORK_FAILED)
    except OSError as e:  # disk full, no permission, ...: finished units are kept, nothing half-written is used
        fail(f"cannot write the build: {e.strerror or e} ({e.filename or out}). Finished units are kept; fix the "
             f"cause and rerun the same command to resume.", WORK_FAILED)
    print_summary(rep.manifest, out, rep)


def _accounting_table(m: dict) -> Table:
    t = Table(title=f"{m['name']}: {m['rows']} rows, {m['tokens']} tokens in {len(m['shards'])} shard(s)")
    for c in ("source", "group", "read", "written", "rejected", "top reject reasons"):
        t.add_column(c)
    for src, a in m["accounting"].items():
        rej = sum(a["rejected"].values())
        top = ", ".join(f"{k} {v}" for k, v in sorted(a["rejected"].items(), key=lambda kv: -kv[1])[:3])
        t.add_row(src, a["group"], str(a["read"]), str(a["written"]), str(rej), top)
    return t


def _circuit_breakers(m: dict, out, rep) -> list[str]:
    return [f"[bold red]circuit breaker[/] {src}: {cb}" for src, a in m["accounting"].items()
            for cb in a.get("circuit_breakers") or []]


def _mixing(m: dict, out, rep) -> list[str]:
    mix = ", ".join(f"{g} {v['used']}/{v['available']}" for g, v in m["mixing"]["groups"].items())
    return [f"mixing ({m['mixing']['stop']}): used/available {mix}"]


def _units(m: dict, out, rep) -> list[str]:
    if rep is None:
        return []
    on = f" on {rep.executor}" if rep.executor else ""
    return [f"units: {rep.units_total} ({rep.units_skipped} already done){on}, {rep.seconds:.1f} s"]


def _losses(m: dict, out, rep) -> list[str]:
    """What a reader of the accounting table does not see: dialog exchanges cut to fit, and what the voice did."""
    if rep is None:
        return []
    lines = []
    if rep.dropped_turns:
        lines.append(f"dialogs: {rep.dropped_turns} turn(s) dropped to fit max_chat_tokens or unpaired")
    v = rep.voice or {}
    if v.get("synthesised") or v.get("cache_hits"):
        lines.append(f"voice: {v.get('synthesised', 0)} synthesised ({v.get('synthesised_seconds', 0):.1f} s of "
                     f"speech), {v.get('cache_hits', 0)} cache hit(s)")
    return lines


def _where(m: dict, out, rep) -> list[str]:
    return [f"shards:   {out}/data/*.parquet", f"manifest: {out}/manifest.json", f"rejects:  {out}/rejects/"]


# (manifest, out, report) -> lines printed under the accounting table, in this order
SUMMARY_LINES: list[Callable[[dict, Path, object], list[str]]] = [_circuit_breakers, _mixing, _losses, _units, _where]


def print_summary(m: dict, out: Path, rep=None) -> None:
    if m.get("stand_in_tokenizers"):
        out_console.print(f"[bold yellow]{m['warning']}[/]")
    out_console.print(_accounting_table(m))
    for line_fn in SUMMARY_LINES:
        for line in line_fn(m, out, rep):
            out_console.print(line, highlight=False, soft_wrap=True)


@app.command()
def validate(out: str = typer.Argument(..., help="a build folder or URL (holding manifest.json)"),
             max_findings: int = typer.Option(50, help="print at most this many findings")):
    """Check every row's grammar (ids, markers, 1024-code images, speech spans, segments, final stop id) and every
    shard against the manifest (sha256, rows, tokens); exit 1 when anything is wrong.

    Example: aromni validate runs/demo --max-findings 20
    """
    from aromni.pipeline.validate import validate as run_validate

    f = run_validate(out)
    for p in f.problems[:max_findings]:
        out_console.print(f"[red]x[/] {p}", highlight=False, soft_wrap=True)
    extra = len(f.problems) - max_findings + f.more
    if extra > 0:
        out_console.print(f"... and {extra} more")
    if f.ok:
        out_console.print(f"[green]ok[/]: {f.rows} rows in {f.shards} shard(s) follow the grammar and the manifest")
    else:
        out_console.print(f"[red]{len(f.problems) + f.more} problem(s)[/] in {f.rows} rows / {f.shards} shard(s)")
        raise typer.Exit(WORK_FAILED)


@app.command()
def readers(name: Optional[str] = typer.Argument(None, help="show one reader only"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable")):
    """List every registered reader with the input layout it expects and its options.

    Example: aromni readers common_voice   (or: aromni readers --json)
    """
    from aromni.pipeline.readers import READERS

    names = [name] if name else sorted(READERS)
    if name and name not in READERS:
        fail(f"unknown reader {name!r}; known: {sorted(READERS)}")
    info = {n: {"layout": READERS[n].describe(), "carries": sorted(READERS[n].carries),
                "options": {k: {"default": f.default, "description": f.description or ""}
                            for k, f in READERS[n].Options.model_fields.items()}} for n in names}
    if as_json:
        out_console.print_json(json.dumps(info, default=str))
        return
    for n in names:
        out_console.rule(f"[bold]{n}")
        out_console.print(info[n]["layout"], highlight=False, markup=False)  # layouts hold [brackets]
        for k, o in info[n]["options"].items():
            out_console.print(f"  options.{k} (default {o['default']!r}): {o['description']}", highlight=False)
