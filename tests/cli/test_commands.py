"""The CLI package: every command is registered once, its --help teaches (an example line), and the exit codes
hold (0 ok, 1 the work failed, 2 bad usage) across command groups."""
from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from aromni.cli import app

runner = CliRunner()
COMMANDS = ["build", "validate", "readers", "stats", "show", "card", "publish", "export", "train", "infer",
            "convert", "demo-corpus"]


def test_every_command_is_registered_once():
    import typer.main
    names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    assert sorted(names) == sorted(COMMANDS)
    assert len(typer.main.get_command(app).commands) == len(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_help_has_an_example(cmd):
    r = runner.invoke(app, [cmd, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    example = r.output.split("Example", 1)[-1]      # "Example:" / "Examples:" and what follows
    assert "Example" in r.output and f"aromni {cmd} " in example, r.output


def test_infer_options_are_grouped_by_task():
    out = runner.invoke(app, ["infer", "--help"], terminal_width=200).output
    for panel in ("Model and task", "Inputs and outputs", "Chat: spoken input", "Decoding (text and speech)",
                  "Images (t2i)", "Tokenizers"):
        assert panel in out
    # no option left in the catch-all panel but --help
    general = out.split("╭─ Options")[1].split("╰")[0]
    assert "--help" in general and "--model" not in general and "--seed" not in general


def test_exit_codes(tmp_path):
    # 2: bad usage (unknown flag, missing argument, bad recipe key)
    assert runner.invoke(app, ["infer", "--no-such-flag"]).exit_code == 2
    assert runner.invoke(app, ["convert", str(tmp_path)]).exit_code == 2
    r = runner.invoke(app, ["convert", str(tmp_path), str(tmp_path / "hf")])
    assert r.exit_code == 2 and "not a Meta-format checkpoint" in r.output
    # 1: the work failed / found problems (a folder that is not a build)
    r = runner.invoke(app, ["stats", str(tmp_path)])
    assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["export", str(tmp_path), "--format", "nope", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--format" in r.output


def test_console_script_and_module_entry_points_work():
    r = subprocess.run([sys.executable, "-m", "aromni.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "infer" in r.stdout and "convert" in r.stdout
    from importlib.metadata import entry_points
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "aromni"]
    assert ep.value == "aromni.cli:main"
