"""Recipe fuzzing: the shipped recipes mutated 100+ ways (deleted keys, wrong types, unknown keys, bad paths, negative
ratios, bad YAML, non-mappings, binary junk, bad overrides). Every one must exit 2 with a one-paragraph message that
names the key, and no traceback. In-process through typer's CliRunner (fast); a few through a real process."""
from __future__ import annotations

import copy
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from robust_corpus import DEMO_RECIPE, REPO

MISSING = object()


def _set(data: dict, key: str, value) -> None:
    """Set (or with MISSING, delete) ``a.b[1].c`` in ``data``."""
    parts = []
    for piece in key.split("."):
        name, _, idx = piece.partition("[")
        parts.append(name)
        if idx:
            parts.append(int(idx.rstrip("]")))
    node = data
    for p in parts[:-1]:
        node = node[p] if isinstance(p, int) or p in node else node.setdefault(p, {})
    if value is MISSING:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


# (case id, key to change, new value or MISSING, text the error must contain: the key)
DELETED = [(f"delete:{k}", k, MISSING, k) for k in (
    "name", "tokenizers", "sources", "tokenizers.text", "tokenizers.text.path",
    *(f"sources[{i}].{f}" for i in range(3) for f in ("name", "reader", "path", "tasks")))] + [
    ("delete:data_root", "data_root", MISSING, "sources[0].path"),        # paths then resolve against the cwd
    ("delete:tokenizers.image", "tokenizers.image", MISSING, "tokenizers.image"),
    ("delete:tokenizers.speech", "tokenizers.speech", MISSING, "tokenizers.speech"),
]
WRONG_TYPES = [
    ("name", ["a", "list"]), ("name", {"a": 1}), ("seed", "abc"), ("seed", [1]), ("seed", 1.5), ("data_root", ["x"]),
    ("tokenizers", "bpe"), ("tokenizers.text", "tok.json"), ("tokenizers.text.stand_in", "maybe"),
    ("tokenizers.text.kind", "wordpiece"), ("tokenizers.image.batch_size", "big"), ("tokenizers.image.batch_size", 0),
    ("tokenizers.speech", 5), ("tokenizers.image.kind", "vqgan9000"), ("tokenizers.speech.kind", "os.system"),
    ("sources", "laion"), ("sources", {"laion": 1}), ("sources", []), ("sources[0]", "laion"),
    ("sources[0].tasks", "image_caption"), ("sources[0].tasks", []), ("sources[0].tasks", ["paint"]),
    ("sources[0].tasks", ["image_caption", "text_to_text"], "sources[0]: tasks"),  # two groups, no `group` ("sources[1].reader", 7),
    ("sources[1].reader", "gigaspeechh"), ("sources[1].reader", "aromni.demo:make_demo_corpus"),
    ("sources[2].name", "bad name/with slash"), ("sources[2].max_units", "all"), ("sources[2].options", "fast"),
    ("sources[0].options", {"min_aesthetic": "high"}), ("sources[0].group", 3), ("sources[2].instruction", ["x"]),
    ("filters", "strict"), ("filters.max_tokens", "many"), ("filters.max_tokens", 1300.5), ("filters.dedup", "maybe"),
    ("filters.max_audio_seconds", "long"), ("filters.min_image_side", [32]), ("mixing", [1, 2, 3]),
    ("mixing.ratio", [1, 1, 1]), ("mixing.ratio.text", "one"), ("mixing.ratio.text", 1.5), ("mixing.stop", "never"),
    ("mixing.seed", "x"), ("mixing.shard_rows", "24 rows"), ("output", "parquet"), ("output.compression", "lz4"),
    ("output.row_group_rows", "big"), ("steps", {"noise": 1}), ("steps", ["noise"]), ("steps", [{"name": "bogus"}]),
]
UNKNOWN_KEYS = [
    ("nmae", "demo"), ("filters.max_token", 1000), ("mixing.ratios", {"text": 1}), ("sources[0].paht", "laion"),
    ("tokenizers.text.pth", "x.json"), ("tokenizers.audio", {"kind": "standin"}), ("output.format", "csv"),
    ("sources[1].options.foo", 1), ("filters.dedupe", True), ("mixing.ratio.audio", 1), ("sources[2].extra", 1),
    ("tokenizers.image.device", "cuda"),
]
BAD_PATHS = [
    ("data_root", "/nonexistent/aromni-data", "sources[0].path"), ("sources[0].path", "no_such_dir", "sources[0].path"),
    ("sources[1].path", "/dev/null/x", "sources[1].path"), ("sources[2].path", "ultrafineweb/nope", "sources[2].path"),
    ("tokenizers.text.path", "missing/tokenizer.json", "tokenizers.text.path"),
    ("sources[0].path", "bad\x00path", "sources[0].path"), ("data_root", "bad\x00root", "data_root"),
    ("tokenizers.text.path", "~nobody-here/tokenizer.json", "tokenizers.text.path"),
    ("data_root", "~nobody-here/data", "data_root"),
]
OUT_OF_RANGE = [
    ("mixing.ratio.text", -1), ("mixing.ratio.image_text", 0), ("mixing.ratio.speech_text", -3), ("mixing.ratio", {}),
    ("filters.max_tokens", -1), ("filters.max_tokens", 1), ("filters.min_tokens", 0), ("filters.max_audio_seconds", 0),
    ("filters.min_audio_seconds", -0.5), ("filters.max_consecutive_failures", 0), ("filters.max_text_chars", 0),
    ("mixing.shard_rows", 0), ("mixing.shard_rows", -24), ("mixing.shard_tokens", 1000),
    ("output.compression_level", 99), ("sources[0].max_units", 0), ("tokenizers.image.num_gpus", -1),
    ("sources[1].name", "laion"),
]
RAW = {  # whole files that are not a recipe: (text or bytes, what the message must contain)
    "yaml:unclosed_bracket": ("name: demo\nsources: [laion\n", "line"),
    "yaml:bad_indent": ("name: demo\n  seed: 0\n sources: x\n", "line"),
    "yaml:tab_indent": ("name: demo\ntokenizers:\n\ttext: x\n", "line"),
    "yaml:unterminated_quote": ("name: 'demo\nseed: 0\n", "line"),
    "yaml:mapping_in_scalar": ("name: a: b: c\n", "line"),
    "yaml:braces": ("{{{", "line"),
    "yaml:undefined_alias": ("name: *nothing\n", "line"),
    "yaml:python_tag": ("name: !!python/object/apply:os.system ['true']\n", "line"),
    "yaml:python_name": ("name: !!python/name:os.system\n", "line"),
    "yaml:duplicate_key": ("name: demo\nseed: 0\nseed: 1\n", "seed"),
    "nonmapping:list": ("- name\n- demo\n", "mapping"),
    "nonmapping:empty": ("", "mapping"),
    "nonmapping:int": ("42\n", "mapping"),
    "nonmapping:null": ("null\n", "mapping"),
    "nonmapping:string": ("just a sentence\n", "mapping"),
    "junk:binary": (random.Random(6).randbytes(512), "UTF-8"),
    "junk:utf16": ("name: demo\n".encode("utf-16"), "UTF-8"),
}
OVERRIDES = [  # (overrides, text the message must contain)
    (["mixing.seed"], "mixing.seed"), (["sources[7].path=x"], "sources[7]"), (["mixing.ratio.text=-1"], "mixing.ratio"),
    (["filters=["], "filters"), (["=3"], "=3"), (["sources.path=x"], "sources"),
    (["tokenizers.text.kind=wordpiece"], "tokenizers.text.kind"), (["mixing.seed=abc"], "mixing.seed"),
    (["name.first=x"], "name"),
]
OTHER_RECIPES = [  # the other shipped build recipes, mutated too
    (name, key, value, expect) for name in ("pretrain.yaml", "instruct.yaml")
    for key, value, expect in (("sources", MISSING, "sources"), ("filters.max_tokens", "many", "filters.max_tokens"),
                               ("mixing.ratio", [1], "mixing.ratio"), ("nmae", 1, "nmae"))
]

CASES: dict = {}
for cid, key, value, expect in DELETED:
    CASES[cid] = ("demo.yaml", key, value, expect, [])
NAMED_AS = {"tokenizers.image.kind": "tokenizers.image", "tokenizers.speech.kind": "tokenizers.speech",
            "mixing.shard_tokens": "shard_tokens"}   # validated as a whole: the message names the parent / both keys
for key, value, *expect in WRONG_TYPES:
    CASES[f"type:{key}={value!r}"] = ("demo.yaml", key, value, expect[0] if expect else NAMED_AS.get(key, key), [])
for key, value in UNKNOWN_KEYS:
    CASES[f"unknown:{key}"] = ("demo.yaml", key, value, key.rsplit(".", 1)[0] if key == "mixing.ratio.audio" else key,
                               [])
for key, value, expect in BAD_PATHS:
    CASES[f"path:{key}={value!r}"] = ("demo.yaml", key, value, expect, [])
for key, value in OUT_OF_RANGE:
    CASES[f"range:{key}={value!r}"] = ("demo.yaml", key, value,
                                       key.rsplit(".", 1)[0] if ".ratio." in key else NAMED_AS.get(key, key), [])
for ov, expect in OVERRIDES:
    CASES[f"override:{ov[0]}"] = ("demo.yaml", None, None, expect, ov)
for name, key, value, expect in OTHER_RECIPES:
    CASES[f"{name}:{key}"] = (name, key, value, expect, [])
for cid, (raw, expect) in RAW.items():
    CASES[cid] = (None, None, raw, expect, [])


def test_there_are_at_least_100_mutations():
    assert len(CASES) >= 100, len(CASES)


def _recipe_file(tmp_path: Path, demo_src: Path, case) -> Path:
    base, key, value, _, _ = case
    path = tmp_path / "recipe.yaml"
    if base is None:
        path.write_bytes(value if isinstance(value, bytes) else value.encode())
        return path
    data = copy.deepcopy(yaml.safe_load((REPO / "recipes" / base).read_text()))
    if base == "demo.yaml":
        data["data_root"] = str(demo_src)
    if key is not None:
        _set(data, key, value)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=False))
    return path


def _check_message(case_id: str, output: str, expect: str) -> None:
    assert "Traceback" not in output, f"{case_id}: traceback\n{output}"
    assert "error:" in output, f"{case_id}: no error line\n{output}"
    msg = output[output.index("error:"):].strip()
    assert "\n\n" not in msg and len(msg.splitlines()) <= 8, f"{case_id}: not one paragraph\n{output}"
    assert expect in msg, f"{case_id}: the message does not name {expect!r}:\n{msg}"


@pytest.fixture
def no_build(monkeypatch):
    """A mutation that slips through validation must not start Ray: fail loudly instead."""
    import aromni.pipeline.build as b

    def refuse(*a, **k):
        raise AssertionError("the mutated recipe was accepted and a build started")
    monkeypatch.setattr(b, "_init_ray", refuse)


@pytest.mark.parametrize("case_id", list(CASES))
def test_mutated_recipe_exits_2_naming_the_key(case_id, tmp_path, demo_src, monkeypatch, no_build):
    from aromni.cli import app
    monkeypatch.chdir(tmp_path)
    case = CASES[case_id]
    recipe = _recipe_file(tmp_path, demo_src, case)
    result = CliRunner().invoke(app, ["build", str(recipe), *case[4], "--out", str(tmp_path / "out"), "--no-progress"])
    assert isinstance(result.exception, SystemExit), f"{case_id}: {result.exception!r}\n{result.output}"
    assert result.exit_code == 2, f"{case_id}: exit {result.exit_code}\n{result.output}"
    _check_message(case_id, result.output, case[3])
    assert not (tmp_path / "out").exists(), f"{case_id}: a refused recipe must not create --out"


@pytest.mark.parametrize("case_id", ["yaml:python_tag", "junk:binary", "path:sources[0].path='no_such_dir'"])
def test_mutated_recipe_in_a_real_process(case_id, tmp_path, demo_src):
    """The same through the installed entry point: exit status 2, message on stderr, nothing on a traceback."""
    case = CASES[case_id]
    recipe = _recipe_file(tmp_path, demo_src, case)
    r = subprocess.run([sys.executable, "-m", "aromni.cli", "build", str(recipe), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**__import__("os").environ,
                                                                                       "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr
    _check_message(case_id, r.stderr, case[3])
    assert r.stdout.strip() == ""


# ---- limits (issue 14 item 5): refused before the expensive part, exit 2, no traceback ------------------------
def _demo_data(demo_src) -> dict:
    data = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    data["data_root"] = str(demo_src)
    return data


def _invoke(recipe: Path, tmp_path: Path, overrides=()):
    from aromni.cli import app
    return CliRunner().invoke(app, ["build", str(recipe), *overrides, "--out", str(tmp_path / "out"), "--no-progress"])


def _refused(result, expect: str, case: str = "") -> None:
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, f"{case}: {result.exception!r}\n" \
                                                                                f"{result.output}"
    _check_message(case, result.output, expect)


def test_a_huge_recipe_is_refused_before_it_is_read(tmp_path, no_build, monkeypatch):
    import time

    from aromni import config

    monkeypatch.chdir(tmp_path)
    p = tmp_path / "huge.yaml"
    with open(p, "wb") as f:  # sparse: 50 MB claimed, nothing written; reading it would take seconds
        f.truncate(50 * 2**20)
    t0 = time.perf_counter()
    with pytest.raises(config.ConfigError, match="over the limit"):
        config.load_yaml(p)
    assert time.perf_counter() - t0 < 0.5  # not a timing test: reading/parsing 50 MB takes minutes, this stat()s
    _refused(_invoke(p, tmp_path), "bytes, over the limit", "huge")


@pytest.mark.parametrize("shape", ["flow", "block", "alias"])
def test_deep_nesting_in_the_file_exits_2(tmp_path, demo_src, no_build, monkeypatch, shape):
    monkeypatch.chdir(tmp_path)
    text = yaml.safe_dump(_demo_data(demo_src), sort_keys=False)
    if shape == "flow":
        text += "description: " + "[" * 500 + "]" * 500 + "\n"
    elif shape == "block":
        text += "".join("  " * i + f"k{i}:\n" for i in range(500)) + "  " * 500 + "x: 1\n"
    else:  # an alias bomb: each level refers to the one before nine times
        text += "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else '1'}]\n" for i in range(14))
    p = tmp_path / "deep.yaml"
    p.write_text(text)
    _refused(_invoke(p, tmp_path), "aliases" if shape == "alias" else "nested more than", shape)


@pytest.mark.parametrize("override,expect", [
    ("description=" + "[" * 500 + "]" * 500, "nested more than"),
    ("options." + ".".join(["a"] * 500) + "=1", "nested more than"),
    ("description=" + "x" * 100_000, "over the limit"),
    ("description=\udcff", "cannot be written as UTF-8"),  # what a shell passes for the invalid UTF-8 byte 0xff
])
def test_overrides_have_the_same_limits(tmp_path, demo_src, no_build, monkeypatch, override, expect):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(_demo_data(demo_src), sort_keys=False))
    _refused(_invoke(p, tmp_path, [override]), expect, override[:30])


@pytest.mark.parametrize("value,expect", [
    ("x" * 100_000, "description: a string of 100,000 characters"),   # copied into the manifest and the card
    ("\ud800", "description: holds a character that cannot be written as UTF-8"),
])
def test_long_or_unencodable_strings_are_refused_at_load_time(tmp_path, demo_src, no_build, monkeypatch, value,
                                                             expect):
    from aromni import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "MAX_FILE_BYTES", 64 * 2**20)  # let the string through the file limit
    data = _demo_data(demo_src)
    data["description"] = value
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=False, width=10**9))
    _refused(_invoke(p, tmp_path), expect, expect)


@pytest.mark.parametrize("root,path,expect", [
    ("/", ".", "data_root: / resolves to /"), ("/", "sources", "resolves to /"),
    (None, "/etc", "resolves to the system folder /etc"), (None, "/proc/self", "inside the system folder /proc"),
    (None, "/usr/**/*.parquet", "system folder /usr"), ("/etc/..", ".", "resolves to /"),
])
def test_data_paths_at_system_folders_are_refused(tmp_path, demo_src, no_build, monkeypatch, root, path, expect):
    monkeypatch.chdir(tmp_path)
    data = _demo_data(demo_src)
    if root is not None:
        data["data_root"] = root
    data["sources"][2]["path"] = path
    p = tmp_path / "sys.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    _refused(_invoke(p, tmp_path), expect, expect)


def test_a_bounded_description_reaches_the_manifest_whole():
    """The string limit is what bounds the manifest: a description at the limit loads; one past it does not."""
    import copy

    from aromni import config
    from aromni.recipe import RecipeError, parse_recipe

    base = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    ok = copy.deepcopy(base) | {"description": "d" * config.MAX_STRING_CHARS}
    assert len(parse_recipe(ok).to_dict()["description"]) == config.MAX_STRING_CHARS
    with pytest.raises(RecipeError, match="description"):
        parse_recipe(copy.deepcopy(base) | {"description": "d" * (config.MAX_STRING_CHARS + 1)})
