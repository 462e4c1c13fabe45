"""Loading YAML configuration (build and training recipes) that nobody has to trust.

- ``load_yaml(path)``: PyYAML's *safe* loader (no Python tags), a key given twice is an error, and limits checked in
  the cheapest order so a hostile file is refused in milliseconds: the file's size from ``stat`` before it is read
  (``MAX_FILE_BYTES``), the nesting depth and alias count from the parser's event stream before anything is built
  (``MAX_DEPTH``, ``MAX_ALIASES``: no RecursionError, no alias bomb), then every string's length (``MAX_STRING_CHARS``:
  a description is copied into the manifest and the card) and that it can be written as UTF-8 (a lone surrogate such
  as ``"\\ud800"`` would build, then crash ``aromni card``).
- ``apply_override(data, "a.b[1].c=value")``: the ``key=value`` overrides of the command line, with the same limits.
- ``check_tree(data)``: the limits on an already-built structure (after overrides).
- ``flatten(ValidationError)``: pydantic's errors as one line naming each key path (``sources[1].reader: ...``).
- ``system_path_problem(path)``: a data path that is ``/`` or a system folder (``/etc``, ``/usr``, ``/proc``, ...)
  would plan every file of the machine.

Every refusal is a ``ConfigError`` (a ``ValueError``) whose message names the key; the CLI prints it and exits 2.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

MAX_FILE_BYTES = 1 << 20      # a recipe is tens of lines; the shipped ones are under 8 KiB
MAX_STRING_CHARS = 16_384     # any one string: a description, an instruction, a path
MAX_DEPTH = 32                # nesting of mappings/lists; recipes use about 5
MAX_ALIASES = 100             # YAML aliases (*ref): enough for shared blocks, not for an exponential bomb
MAX_OVERRIDE_KEY_PARTS = MAX_DEPTH

# Folders that hold the system, never a corpus: a data path equal to one of them (or to "/") is refused, and one
# inside the pseudo-filesystems or /etc and /boot too.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/proc", "/root",
               "/run", "/sbin", "/srv", "/sys", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/share", "/var",
               "/home")
NEVER_INSIDE = ("/boot", "/dev", "/etc", "/proc", "/sys")

NESTED = "\x1e"  # marks a message that carries its own sub-path (errors of a reader's / step's options)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and what is allowed."""


# -------------------------------------------------------------------------------------------------------------
# YAML
# -------------------------------------------------------------------------------------------------------------
class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error instead of the last one
    silently winning (``seed: 0`` ... ``seed: 1`` is a typo to report, not a choice to guess)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if dup:
                raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                        f"key {key!r} is given twice", key_node.start_mark)
        return super().construct_mapping(node, deep)


_EventLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the event scan is C speed


def check_events(text: str, where: str) -> None:
    """Depth and alias limits from the parser's events, before the (recursive) composer builds anything."""
    try:
        _scan(text, where, _EventLoader)
    except yaml.YAMLError:  # libyaml is stricter than PyYAML (e.g. on "\ud800"): rescan as the loader will read it
        if _EventLoader is yaml.SafeLoader:
            raise
        _scan(text, where, yaml.SafeLoader)


def _scan(text: str, where: str, loader) -> None:
    depth = aliases = 0
    for ev in yaml.parse(text, Loader=loader):
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = ev.start_mark.line + 1 if ev.start_mark else "?"
                raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep (line {line}); a recipe needs "
                                  f"about 5")
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(ev, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise ConfigError(f"{where}: more than {MAX_ALIASES} YAML aliases (*ref); write the values out")


def load_yaml(path: str | Path) -> Any:
    """The YAML document in ``path``, within the limits above; ConfigError (naming the file) otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file not found: {p}")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:  # before reading a byte: a 50 MB recipe is refused in microseconds
        raise ConfigError(f"{p}: {size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for a recipe")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(f"{p}: over the limit of {MAX_FILE_BYTES:,} bytes for a recipe")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror or e})") from None
    try:
        check_events(text, str(p))
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except RecursionError:  # belt and braces: check_events bounds the depth first
        raise ConfigError(f"{p}: nested too deeply") from None
    check_tree(data)
    return data


# -------------------------------------------------------------------------------------------------------------
# Limits on a built structure
# -------------------------------------------------------------------------------------------------------------
def loc(parts) -> str:
    """``("sources", 1, "reader")`` -> ``sources[1].reader``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _check_string(s: str, where: str) -> None:
    if len(s) > MAX_STRING_CHARS:
        raise ConfigError(f"{where or 'value'}: a string of {len(s):,} characters, over the limit of "
                          f"{MAX_STRING_CHARS:,}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{where or 'value'}: holds a character that cannot be written as UTF-8 "
                          f"({s[e.start:e.end]!r} at {e.start}: a lone surrogate?)") from None


def check_tree(data: Any) -> None:
    """Depth, string length and encodability of every key and value; iterative, so depth cannot crash it."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 0)]
    seen: set[int] = set()
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth >= MAX_DEPTH:
                raise ConfigError(f"{loc(path)}: nested more than {MAX_DEPTH} levels deep")
            if id(node) in seen:  # an alias shares the node: its contents were checked once
                continue
            seen.add(id(node))
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str):
                    _check_string(k, loc(path) + " (a key)")
                stack.append((v, path + (k if isinstance(k, str) else str(k),), depth + 1))
        elif isinstance(node, list):
            stack.extend((v, path + (i,), depth + 1) for i, v in enumerate(node))
        elif isinstance(node, str):
            _check_string(node, loc(path))


# -------------------------------------------------------------------------------------------------------------
# key=value overrides
# -------------------------------------------------------------------------------------------------------------
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b[1].c=value`` (or ``a.b.1.c=value``); the value is parsed as YAML (numbers, lists, null)."""
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected key=value, e.g. mixing.seed=7")
    if len(assignment) > MAX_STRING_CHARS:
        raise ConfigError(f"override {assignment[:40]!r}...: {len(assignment):,} characters, over the limit of "
                          f"{MAX_STRING_CHARS:,}")
    key, raw = assignment.split("=", 1)
    parts = [m.group(1) if m.group(1) is not None else int(m.group(2)) for m in _PATH_PART.finditer(key.strip())]
    parts = [int(p) if isinstance(p, str) and p.isdigit() else p for p in parts]
    if not parts:
        raise ConfigError(f"override {assignment!r}: empty key")
    if len(parts) > MAX_OVERRIDE_KEY_PARTS:
        raise ConfigError(f"override {key[:60]}...: nested more than {MAX_DEPTH} levels deep")
    _check_string(raw, f"override {key}")  # a shell passes invalid UTF-8 bytes as lone surrogates
    try:
        check_events(raw, f"override {key}")
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value is not valid YAML ({e})") from None
    except RecursionError:
        raise ConfigError(f"override {key}: value nested too deeply") from None
    node: Any = data
    for i, p in enumerate(parts[:-1]):
        where = loc(parts[: i + 1])
        if isinstance(p, int):
            if not isinstance(node, list) or p >= len(node):
                raise ConfigError(f"override {key}: {where} does not exist")
            node = node[p]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {where} is not a mapping")
            node = node.setdefault(p, {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"override {key}: index {last} does not exist")
    elif not isinstance(node, dict):
        raise ConfigError(f"override {key}: parent is not a mapping")
    node[last] = value


def apply_overrides(data: Any, overrides) -> Any:
    """Every override in order, then the limits on the result (an override may nest or lengthen anything)."""
    for o in overrides:
        apply_override(data, o)
    check_tree(data)
    return data


# -------------------------------------------------------------------------------------------------------------
# pydantic errors as one line
# -------------------------------------------------------------------------------------------------------------
def flatten(e: ValidationError, prefix: str = "") -> str:
    """Each error as ``key.path: message``; nested models' messages (marked NESTED) keep their own sub-paths."""
    msgs = []
    for err in e.errors():
        where = loc(err["loc"])
        key = f"{prefix}.{where}" if prefix and where else (prefix or where)
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith(NESTED):
            msgs += [f"{key}.{m.removeprefix(NESTED)}" if key else m.removeprefix(NESTED) for m in msg.split("\x1f")]
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelled?)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        msgs.append(f"{key}: {msg}" if key else msg)
    return "; ".join(msgs)


def nested(e: ValidationError, prefix: str) -> str:
    """Errors of a nested model raised from a validator keep their full key path (sources[2].options.min_score)."""
    return "\x1f".join(f"{NESTED}{m}" for m in flatten(e, prefix=prefix).split("; "))


# -------------------------------------------------------------------------------------------------------------
# Paths that would walk the whole machine
# -------------------------------------------------------------------------------------------------------------
_GLOB = re.compile(r"[*?\[]")


def system_path_problem(path: str | Path) -> str | None:
    """Why ``path`` (a local data path, maybe a glob) may not be read as a corpus; None when it may."""
    s = str(path)
    if "://" in s:
        return None
    m = _GLOB.search(s)
    if m:  # a glob walks from its fixed prefix
        s = s[: m.start()].rsplit("/", 1)[0] or "/"
    try:
        real = os.path.realpath(os.path.expanduser(s))
    except (OSError, ValueError):
        return None
    if real == "/":
        return "resolves to / (the whole machine)"
    if real in SYSTEM_DIRS:
        return f"resolves to the system folder {real}"
    for d in NEVER_INSIDE:
        if real.startswith(d + "/"):
            return f"resolves inside the system folder {d} ({real})"
    return None
