"""``aromni stats | show | card | publish | export``: look at a finished build and ship it (registered by aromni.cli).

Thin: each command parses its arguments and calls into aromni.dataset. Exit codes as in aromni.cli: 0 ok,
1 refused or failed (the message says why), 2 bad usage.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out_console = Console()

DIR_HELP = "a build folder (holding manifest.json), e.g. runs/demo"


def _fail(msg: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            _fail(f"{what} {it!r}: expected NAME=VALUE", 2)
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _table(title: str, header: list[str], rows: list[list]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[f"{c:,}" if isinstance(c, int) else str(c) for c in r])
    return t


def print_stats(st: dict) -> None:
    from aromni.dataset.stats import loss_lines

    if st["stand_in"]:
        out_console.print(f"[bold yellow]{st['warning']}[/]")
    out_console.print(f"[bold]{st['name']}[/]: {st['rows']:,} rows, {st['tokens']:,} tokens in {st['shards']} shard(s)")
    out_console.print(_table("by task", ["task", "rows", "tokens", "p5", "p50", "p95", "max"],
                             [[k, v["rows"], v["tokens"], v.get("p5", ""), v.get("p50", ""), v.get("p95", ""),
                               v.get("p100", "")] for k, v in st["by_task"].items()]))
    for key in ("group", "source"):
        out_console.print(_table(f"by {key}", [key, "rows", "tokens"],
                                 [[k, v["rows"], v["tokens"]] for k, v in st[f"by_{key}"].items()]))
    out_console.print(_table("by modality", ["modality", "tokens", "user", "assistant", "share"],
                             [[k, v["tokens"], v["user"], v["assistant"], f"{100 * v['tokens'] / max(st['tokens'], 1):.1f}%"]
                              for k, v in st["by_modality"].items()]))
    lens = st["lengths"]
    if lens:
        out_console.print("row length percentiles: " + "  ".join(f"{k} {v}" for k, v in lens.items()))
    out_console.print(_table(f"rejects ({st['rejects']['total']:,})", ["reason", "count", "sources"],
                             [[r, n, ", ".join(f"{s} {c[r]}" for s, c in st["rejects"]["by_source"].items() if r in c)]
                              for r, n in st["rejects"]["by_reason"].items()]))
    groups = st["mixing"].get("groups", {})
    out_console.print(_table(f"mixing ({st['mixing'].get('stop', '?')})", ["group", "ratio", "available", "used",
                                                                           "repeated"],
                             [[g, v.get("ratio", ""), v["available"], v["used"], v.get("repeated", 0)]
                              for g, v in groups.items()]))
    for line in loss_lines(st):  # losses without a reject row, and each filter step's counts per source
        out_console.print(line, highlight=False)
    for c in st["checks"]:
        out_console.print(f"[red]check failed:[/] {c}", highlight=False)
    for p in st.get("plots", []):
        out_console.print(f"plot: {Path(st['path']) / p}")


def register(app: typer.Typer) -> None:
    @app.command()
    def stats(out: Path = typer.Argument(..., help=DIR_HELP),
              as_json: bool = typer.Option(False, "--json", help="print the statistics as JSON (for scripts)"),
              plots: bool = typer.Option(True, "--plots/--no-plots", help="write PNG plots into DIR/plots/")):
        """Count what a build holds from its shards: rows and tokens by task / group / source / modality, length
        percentiles, rejects by reason, mixing available vs used; write length, modality, mixing and reject plots.

        Example: aromni stats runs/demo   (then open runs/demo/plots/*.png)
        """
        from aromni.dataset import DatasetError
        from aromni.dataset.stats import stats as run_stats

        try:
            st = run_stats(out, plots=plots)
        except DatasetError as e:
            _fail(str(e))
        if as_json:
            typer.echo(json.dumps(st, indent=1))
        else:
            print_stats(st)
        if st["checks"]:
            raise typer.Exit(1)

    @app.command()
    def show(out: Path = typer.Argument(..., help=DIR_HELP),
             row: Optional[int] = typer.Option(None, "--row", "-r", help="row number across shards (0 = first; -1 = last)"),
             row_id: Optional[str] = typer.Option(None, "--id", help="row id, e.g. laion/000000012"),
             html: bool = typer.Option(False, "--html", help="write one HTML page (text, images, audio players) for a "
                                                             "sample of rows covering every task"),
             sample: int = typer.Option(12, "--sample", help="rows on the --html page"),
             to: Optional[Path] = typer.Option(None, "--out", "-o", help="where PNG/WAV/HTML go (default DIR/show)"),
             text_tok: Optional[Path] = typer.Option(None, "--text-tokenizer", help="text tokenizer file, when the "
                                                     "one the build used is not at its recorded path"),
             image_tok: Optional[Path] = typer.Option(None, "--image-tokenizer", help="image tokenizer path (same)"),
             speech_tok: Optional[Path] = typer.Option(None, "--speech-tokenizer", help="speech tokenizer path (same)")):
        """Decode rows back to what they encode: print segments (role, modality, span, text), write each image span
        as PNG and each speech span as WAV, with the tokenizers named in the manifest.

        Examples: aromni show runs/demo --row 0 | aromni show runs/demo --id laion/000000012 | aromni show runs/demo --html
        """
        from aromni.dataset import BuildFolder, DatasetError
        from aromni.dataset.decode import RowDecoder
        from aromni.dataset.show import describe, render_row, sample_indices, write_html

        if not html and (row is None) == (row_id is None):
            _fail("give --row N or --id ID (or --html for a page of sample rows)", 2)
        try:
            folder = BuildFolder(out)
            dest = to or folder.path / "show"
            dec = RowDecoder(folder, {"text": text_tok, "image": image_tok, "speech": speech_tok})
            if html:
                idx = sample_indices(folder, sample) if row is None and row_id is None else \
                    [row if row_id is None else folder.find(row_id)[0]]
                page = write_html(folder, dec, dest, idx)
            else:
                view = render_row(folder, dec, dest, index=row, row_id=row_id)
        except DatasetError as e:
            _fail(str(e))
        if folder.warning:
            out_console.print(f"[bold yellow]{folder.warning}[/]")
        for k in sorted(dec.notes):
            out_console.print(f"[yellow]note:[/] {dec.notes[k]}", highlight=False)
        for k in sorted(dec.problems):
            out_console.print(f"[red]{dec.problems[k]}[/]", highlight=False)
        if html:
            out_console.print(f"page: {page}  ({len(idx)} rows; open it in a browser)")
        else:
            for line in describe(view, dec):
                out_console.print(line, highlight=False, markup=False, soft_wrap=True)
            if all(s.modality == "text" for s in view.segments):
                out_console.print("  (text only: no image or speech span to write; try another --row or --html)")

    @app.command()
    def card(out: Path = typer.Argument(..., help=DIR_HELP),
             license: Optional[str] = typer.Option(None, "--license", help="license id for the whole dataset "
                                                   "(default: the sources' declared license when they agree, else other)"),
             source_license: Optional[List[str]] = typer.Option(None, "--source-license",
                                                                help="NAME=LICENSE for one source (repeatable)"),
             repo: Optional[str] = typer.Option(None, "--repo", help="ORG/NAME the card's load example uses")):
        """Write DIR/README.md: a Hugging Face dataset card (YAML front matter with configs -> data/*.parquet,
        features, license, task and size categories; body with sources, tokenizers and stand-in warnings,
        accounting, mixing, plots and the recipe). `datasets.load_dataset(DIR)` then loads the shards.
        """
        from aromni.dataset import DatasetError
        from aromni.dataset.card import write_card

        try:
            path, st = write_card(out, license=license, source_licenses=_pairs(source_license, "--source-license"),
                                  repo_id=repo)
        except DatasetError as e:
            _fail(str(e))
        out_console.print(f"card: {path}  ({st['rows']:,} rows, plots in {out / 'plots'})")

    @app.command()
    def publish(out: Path = typer.Argument(..., help=DIR_HELP),
                repo: str = typer.Option(..., "--repo", help="dataset repo ORG/NAME on the Hub (created if missing)"),
                private: bool = typer.Option(False, "--private", help="create the repo private"),
                revision: Optional[str] = typer.Option(None, "--revision", help="branch to push to (created if "
                                                                                 "missing; default main)"),
                dry_run: bool = typer.Option(False, "--dry-run", help="validate, write the card, list the files; "
                                                                      "upload nothing"),
                allow_stand_in: bool = typer.Option(False, "--allow-stand-in", help="publish a build made with "
                                                    "stand-in tokenizers (the card warns in its first line)"),
                license: Optional[str] = typer.Option(None, "--license", help="license id (see `aromni card`)"),
                source_license: Optional[List[str]] = typer.Option(None, "--source-license", help="NAME=LICENSE"),
                message: Optional[str] = typer.Option(None, "--message", "-m", help="commit message")):
        """Validate the build, write its card, upload README.md, manifest.json, data/, rejects/ and plots/ to a
        Hugging Face dataset repo. Token: HF_TOKEN or `hf auth login` (never stored by aromni). Interrupted? Rerun
        the same command: committed files are skipped. HF_ENDPOINT selects another Hub.
        """
        from aromni.dataset import DatasetError
        from aromni.dataset.publish import publish as run_publish

        try:
            res = run_publish(out, repo, private=private, revision=revision, dry_run=dry_run,
                              allow_stand_in=allow_stand_in, license=license,
                              source_licenses=_pairs(source_license, "--source-license"), commit_message=message)
        except DatasetError as e:
            _fail(str(e))
        for n in res.notes:
            out_console.print(f"[bold yellow]{n}[/]", highlight=False)
        where = f"{res.repo_id}" + (f"@{res.revision}" if res.revision else "") + (" (private)" if res.private else "")
        head = "would upload" if res.dry_run else "uploaded"
        out_console.print(f"{head} {len(res.files)} file(s), {res.total_bytes:,} bytes to datasets/{where}:")
        for p, n in res.files:
            out_console.print(f"  {p}  {n:,} bytes", highlight=False)
        if res.commit_url:
            out_console.print(f"commit: {res.commit_url}")

    @app.command()
    def export(out: Path = typer.Argument(..., help=DIR_HELP),
               fmt: str = typer.Option(..., "--format", "-f", help="aromni-pretrain-jsonl (upstream pretraining "
                                       "jsonl shards) or aromni-sft-parquet (AR-Omni-Instruct input_ids/labels)"),
               to: Path = typer.Option(..., "--out", "-o", help="output folder (not inside the build)"),
               max_length: Optional[int] = typer.Option(None, "--max-length", help="skip longer rows (pretrain: "
                                                        "upstream's limit 1299; sft: no limit by default)"),
               force: bool = typer.Option(False, "--force", help="replace files of an earlier export in --out")):
        """Write the build in AR-Omni's own training formats so upstream's scripts read it unchanged: jsonl shards of
        {discrete_code, task, response, id} for pretraining, or one parquet of input_ids + labels (-100 outside
        assistant turns) for instruction tuning. Rows upstream cannot take are skipped and counted by reason.

        Example: aromni export runs/demo --format aromni-pretrain-jsonl --out runs/demo-jsonl
        """
        from aromni.dataset import DatasetError
        from aromni.dataset.export import FORMATS, export as run_export

        if fmt not in FORMATS:
            _fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}", 2)
        try:
            rep = run_export(out, fmt, to, max_length=max_length, force=force)
        except DatasetError as e:
            _fail(str(e))
        if rep.build.get("stand_in"):
            out_console.print(f"[bold yellow]{rep.build['warning']}[/]")
        out_console.print(f"{fmt}: {rep.rows_out:,} of {rep.rows_in:,} rows -> {to} ({', '.join(rep.files)})")
        for reason, n in rep.skipped.items():
            out_console.print(f"  skipped {n:,}: {reason}", highlight=False)
        out_console.print(f"report: {to / 'export.json'}")
        if rep.rows_out == 0:
            _fail(f"nothing exported: every row was skipped (see above); {fmt} cannot hold this build's rows")
