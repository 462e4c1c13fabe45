"""Hostile recipes and files: YAML is safe-loaded, a recipe never imports code, checkpoints never unpickle code,
tar members never reach the disk, Pillow's bomb guard stays on, and an HF token in the environment is never written
to a manifest, card, log or shard."""
from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from robust_corpus import REPO, SECRET, load_demo_recipe_dict, run_build

PACKAGE = REPO / "aromni"


def _sources() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _calls(name_endings: tuple[str, ...]):
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func).endswith(name_endings):
                yield path.relative_to(REPO), node


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


# ---- code that loads things -----------------------------------------------------------------------------------
def test_every_torch_load_is_weights_only():
    found = 0
    for where, call in _calls(("torch.load",)):
        found += 1
        v = _kw(call, "weights_only")
        assert isinstance(v, ast.Constant) and v.value is True, f"{where}:{call.lineno} torch.load without weights_only=True"
    assert found > 0  # the checkpoint loaders are scanned, not skipped
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert "load" not in {a.name for a in node.names}, f"{path}: `from torch import load` hides the check"


def test_no_unpickling_eval_or_unsafe_yaml():
    banned = ("pickle.load", "pickle.loads", "dill.load", "marshal.loads", "yaml.unsafe_load", "yaml.full_load",
              "yaml.load_all")
    for where, call in _calls(banned):
        pytest.fail(f"{where}:{call.lineno} {_dotted(call.func)}")
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                pytest.fail(f"{path}:{node.lineno} {node.func.id}()")
            if isinstance(node, ast.Call) and _dotted(node.func).endswith("np.load"):
                v = _kw(node, "allow_pickle")
                assert not (isinstance(v, ast.Constant) and v.value), f"{path}:{node.lineno} np.load(allow_pickle=True)"
    for where, call in _calls(("yaml.load",)):
        loader = _kw(call, "Loader")
        assert loader is not None, f"{where}:{call.lineno} yaml.load without a Loader"
        mod = __import__(".".join(where.with_suffix("").parts), fromlist=["_"])
        cls = eval(compile(ast.Expression(loader), str(where), "eval"), vars(mod))  # noqa: S307 - our own source
        assert issubclass(cls, yaml.SafeLoader), f"{where}:{call.lineno} Loader={cls} is not a SafeLoader"


def test_tar_members_are_never_extracted_to_disk():
    """Readers stream members in memory; any extraction would have to use tarfile's "data" filter."""
    for where, call in _calls((".extractall", ".extract")):
        v = _kw(call, "filter")
        assert isinstance(v, ast.Constant) and v.value == "data", f"{where}:{call.lineno} extract without filter='data'"


def test_pillow_bomb_guard_stays_on():
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(_dotted(t).endswith(("MAX_IMAGE_PIXELS", "LOAD_TRUNCATED_IMAGES"))
                                                    for t in node.targets):
                v = node.value
                ok = isinstance(v, ast.Constant) and isinstance(v.value, int) and not isinstance(v.value, bool) \
                    and _dotted(node.targets[0]).endswith("MAX_IMAGE_PIXELS") and v.value <= 89_478_485
                assert ok, f"{path}:{node.lineno} weakens Pillow's decompression-bomb / truncation guard"
    import aromni.model  # noqa: F401 - everything a build imports
    import aromni.pipeline.build  # noqa: F401
    import aromni.pipeline.unit  # noqa: F401
    from PIL import Image, ImageFile
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 89_478_485
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ---- recipes --------------------------------------------------------------------------------------------------
def test_yaml_tags_never_run_code(tmp_path):
    from aromni.recipe import RecipeError, load_recipe
    marker = tmp_path / "pwned"
    for payload in (f"name: !!python/object/apply:os.system ['touch {marker}']\n",
                    f"name: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
                    "name: !!python/name:os.system\n"):
        p = tmp_path / "r.yaml"
        p.write_text(payload)
        with pytest.raises(RecipeError, match="not valid YAML"):
            load_recipe(p)
    assert not marker.exists()


def test_billion_laughs_is_refused_quickly(tmp_path):
    from aromni.recipe import RecipeError, load_recipe
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    p = tmp_path / "laughs.yaml"
    p.write_text("\n".join(lines) + "\nname: *a8\n")
    with pytest.raises(RecipeError):  # unknown keys and a list for a name: refused before anything expands
        load_recipe(p)


@pytest.mark.parametrize("where", ["sources.0.reader", "tokenizers.image.kind", "tokenizers.speech.kind", "steps"])
def test_a_recipe_cannot_import_code(where, tmp_path, monkeypatch):
    """Readers, steps and tokenizers come from registries: a module named in a recipe is never imported."""
    from aromni.recipe import RecipeError, parse_recipe
    probe = "aromni_evil_probe_module"
    (tmp_path / f"{probe}.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_demo_recipe_dict()
    for name in (probe, f"{probe}:run", f"{probe}.Reader"):
        d = yaml.safe_load(yaml.safe_dump(data))
        if where == "steps":
            d["steps"] = [{"name": name}]
        else:
            a, b, c = where.split(".")
            d[a][int(b) if b.isdigit() else b][c] = name
        with pytest.raises(RecipeError, match="unknown"):
            parse_recipe(d)
    assert probe not in sys.modules and not (tmp_path / "imported").exists()


# ---- secrets --------------------------------------------------------------------------------------------------
def _holders(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.slow
def test_hf_token_never_written(reference, ray_tmp, tmp_path, monkeypatch, build_environ):
    """The builds ran with HF_TOKEN / HUGGING_FACE_HUB_TOKEN set (the reference on the process pool, one here on
    Ray): no shard, part, reject, manifest, Ray log or console line holds it; nor does the card or a publish dry run
    made with the token in the environment."""
    on_ray = run_build(reference.recipe, tmp_path / "on-ray", build_environ, "--executor", "ray")
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    for b in (reference, on_ray):
        assert SECRET not in b.stdout and SECRET not in b.stderr
    assert _holders(reference.out) == [] and _holders(tmp_path / "on-ray") == []
    assert any(ray_tmp.rglob("*.log")) or any(ray_tmp.rglob("*.out"))   # the logs are there to search
    assert _holders(ray_tmp) == []                 # Ray's session logs of every build these tests ran
    from aromni.cli import app
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "build"
    shutil.copytree(reference.out, out)
    runner = CliRunner()
    r = runner.invoke(app, ["card", str(out)])
    assert r.exit_code == 0, r.output
    r2 = runner.invoke(app, ["publish", str(out), "--repo", "someone/aromni-test", "--dry-run", "--allow-stand-in"])
    assert SECRET not in r.output + r2.output
    assert _holders(out) == []
