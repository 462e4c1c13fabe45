"""Layers import downward only, and no module imports itself back through others (issue 12 item 4).

Every ``import aromni...`` / ``from aromni... import`` in every module under aromni/ counts, function-level ones
included (parsed with ast, nothing is imported). The allowed order, bottom to top:
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "aromni"

# Bottom to top: a module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("spine", ["aromni", "aromni.layout", "aromni.sample", "aromni.hashing", "aromni.registry", "aromni.config",
               "aromni.io", "aromni.tasks"]),
    ("model", ["aromni.model"]),
    # voice sits below the pipeline: the pipeline's noise and voice steps use it, it uses nothing of the pipeline
    ("voice", ["aromni.voice"]),
    # the recipe schema validates readers, steps and tokenizer kinds: it is the pipeline's configuration
    ("pipeline", ["aromni.pipeline", "aromni.recipe"]),
    ("apps", ["aromni.dataset", "aromni.train", "aromni.infer", "aromni.demo"]),
    # entry points: the CLI package and the `python -m` modules
    ("cli", ["aromni.cli", "aromni.train.__main__", "aromni.__main__"]),
]
# Known upward imports that another change removes; each must still exist (else delete it from here).
ALLOWED_UPWARD: set[tuple[str, str]] = set()   # none: every import runs downward


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(mod: str) -> int:
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    if found is None:
        raise AssertionError(f"{mod} is in no layer of tests/test_layering.py: add it")
    return found


def imports(path: Path, mod: str, modules: set[str]) -> set[str]:
    """The aromni modules ``path`` imports (a ``from pkg import name`` of a submodule counts as that submodule)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "aromni"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] != "aromni":
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
            out |= subs or {base}
            if subs and len(subs) < len(node.names):
                out.add(base)
    return {m for m in out if m != mod}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: imports(p, m, set(files)) for m, p in files.items()}


def test_every_module_has_a_layer():
    for m in graph():
        layer_of(m)


def test_no_upward_import():
    g = graph()
    bad = sorted((m, i) for m, deps in g.items() for i in deps
                 if layer_of(i) > layer_of(m) and (m, i) not in ALLOWED_UPWARD)
    assert not bad, "upward imports (importer -> imported):\n" + "\n".join(f"  {m} -> {i}" for m, i in bad)
    stale = sorted(e for e in ALLOWED_UPWARD if e[1] not in g.get(e[0], set()))
    assert not stale, f"ALLOWED_UPWARD names imports that no longer exist, remove them: {stale}"


def test_no_import_cycle():
    """A package's __init__ may re-export its own submodules; a submodule importing its own package's __init__
    back counts as a cycle (import from the submodule that defines the name instead)."""
    g = graph()
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d not in g:
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


@pytest.mark.parametrize("mod", ["aromni.layout", "aromni.sample", "aromni.hashing", "aromni.tasks"])
def test_spine_imports_only_spine(mod):
    g = graph()
    assert all(layer_of(d) == 0 for d in g[mod]), g[mod]
