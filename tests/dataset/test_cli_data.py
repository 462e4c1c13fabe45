"""The five commands end to end through the typer app, on the demo build (the acceptance of issue 7)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aromni.cli import app
from aromni.dataset import BuildFolder
from tests.dataset.conftest import uploaded


@pytest.fixture(scope="module")
def run():
    runner = CliRunner()

    def _run(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return _run


def test_stats_json_and_plots(build_dir, run):
    r = run("stats", build_dir, "--json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert st["rows"] == json.loads((build_dir / "manifest.json").read_text())["rows"] and st["checks"] == []
    assert all((build_dir / p).is_file() for p in st["plots"]) and len(st["plots"]) == 9
    r = run("stats", build_dir, "--no-plots")
    assert r.exit_code == 0 and "by task" in r.stdout and "STAND-IN" in r.stdout


def test_show_row_writes_media_and_html(build_dir, run, tmp_path):
    folder = BuildFolder(build_dir)
    rows = [folder.row(i) for i in range(folder.rows)]
    n, row = next((i, r) for i, r in enumerate(rows) if any(s["modality"] != "text" for s in r["segments"]))
    r = run("show", build_dir, "--row", n, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert f"row {n}" in r.stdout and "STAND-IN" in r.stdout
    written = sorted(p.suffix for p in tmp_path.rglob("*") if p.is_file())
    media = [s["modality"] for s in row["segments"] if s["modality"] != "text"]
    assert written == sorted({"image": ".png", "speech": ".wav"}[m] for m in media)
    r = run("show", build_dir, "--html", "--sample", 5, "--out", tmp_path / "page")
    assert r.exit_code == 0 and (tmp_path / "page" / "index.html").is_file()
    assert run("show", build_dir).exit_code == 2
    r = run("show", build_dir, "--id", "no/such")
    assert r.exit_code == 1 and "no row with id" in r.output


def test_card_then_load_dataset(build_dir, run, tmp_path):
    import datasets

    r = run("card", build_dir, "--source-license", "laion=cc-by-4.0", "--repo", "org/demo")
    assert r.exit_code == 0, r.output
    ds = datasets.load_dataset(str(build_dir), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == json.loads((build_dir / "manifest.json").read_text())["rows"]
    assert run("card", build_dir, "--source-license", "laion").exit_code == 2


def test_publish_dry_run_lists_files(build_dir, run):
    r = run("publish", build_dir, "--repo", "org/demo", "--dry-run")
    assert r.exit_code == 0, r.output
    assert f"would upload {len(uploaded(build_dir))} file(s)" in r.stdout and "data/train-00000-of-00003.parquet" in r.stdout
    assert "--allow-stand-in" in r.stdout and "parts/" not in r.stdout
    r = run("publish", build_dir, "--repo", "org/demo")  # stand-in build, no flag: refused before anything else
    assert r.exit_code == 1 and "STAND-IN" in r.output


def test_export_both_formats(build_dir, run, tmp_path):
    r = run("export", build_dir, "--format", "aromni-pretrain-jsonl", "--out", tmp_path / "pt")
    assert r.exit_code == 0, r.output
    n = BuildFolder(build_dir).rows
    assert len(list((tmp_path / "pt").glob("*.jsonl"))) == len(list((build_dir / "data").glob("*.parquet")))
    assert f"{n} of {n} rows" in r.stdout
    r = run("export", build_dir, "-f", "aromni-sft-parquet", "-o", tmp_path / "sft")
    assert r.exit_code == 0 and (tmp_path / "sft" / "train.parquet").is_file()
    assert run("export", build_dir, "-f", "nope", "-o", tmp_path / "x").exit_code == 2
    r = run("export", build_dir, "-f", "aromni-sft-parquet", "-o", tmp_path / "sft")
    assert r.exit_code == 1 and "--force" in r.output
