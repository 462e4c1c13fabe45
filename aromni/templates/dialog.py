"""Multi-turn chat rows: dialog turns (text, tokenized speech and images) -> ids + segments, within a length limit.

The pieces are data (``chat`` in tasks.yaml). A row is::

    [0] "USER:" [image] [12821] speech [12820] {instruction} [12830] "GPT:"          (user turn that spoke)
        [12840] {transcript} [12841] {reply} [12821] reply speech [12820] [12831]    (assistant reply)
        "USER:" {text} [12830] "GPT:" {reply} [12831] ...                            (user turn that typed)

Decisions where upstream is silent (documented in docs/readers.md):
- every assistant turn, the last included, ends with <eom> 12831 (upstream's chat loop separates turns with it and
  stops on it); no <eos> follows, so a trained model stops a reply the way inference expects;
- "GPT:" belongs to the user part (no loss), as in the single-turn templates; <eom> belongs to the assistant;
- the <-Ins-> block appears only when the user spoke and a transcript exists; text pieces are encoded one by one;
- a row keeps whole exchanges from the start and drops whole trailing ones to fit ``max_tokens``, so no image or
  speech span is ever cut; a first exchange that alone does not fit makes the dialog too long.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.sample import Segment
from aromni.templates import SampleBuilder, TemplateError, task_templates


class DialogTooLong(TemplateError):
    """Not even the first exchange fits the length limit."""


@dataclass
class DialogTurn:
    role: str                                  # user | assistant
    text: str = ""
    image_codes: Sequence[int] | None = None   # 1024 VQ codes
    speech_codes: Sequence[int] | None = None  # WavTokenizer codes


@dataclass
class RenderedDialog:
    ids: list[int]
    segments: list[Segment]
    kept_turns: int
    dropped_turns: int                          # turns beyond the length limit, plus unpaired ones
    dropped: list[str] = field(default_factory=list)  # why each dropped turn went


def pair_turns(roles: Sequence[str]) -> tuple[list[tuple[int, int]], list[tuple[int, str]]]:
    """Indices of (user, assistant) exchanges, and the turns that belong to none: leading assistant turns (a greeting
    before the user spoke) and a trailing user turn without a reply. Roles that do not alternate are an error."""
    dropped: list[tuple[int, str]] = []
    i = 0
    while i < len(roles) and roles[i] == "assistant":
        dropped.append((i, "leading_assistant"))
        i += 1
    pairs = []
    while i < len(roles):
        if roles[i] != "user":
            raise TemplateError(f"turn {i} is {roles[i]!r} after an assistant turn: roles do not alternate")
        if i + 1 >= len(roles):
            dropped.append((i, "unanswered"))
            break
        if roles[i + 1] != "assistant":
            raise TemplateError(f"turn {i + 1} is {roles[i + 1]!r} after a user turn: roles do not alternate")
        pairs.append((i, i + 1))
        i += 2
    bad = [r for r in roles if r not in ("user", "assistant")]
    if bad:
        raise TemplateError(f"unknown role(s) {sorted(set(bad))}; allowed: user, assistant")
    return pairs, dropped


def chat_template() -> dict:
    return task_templates()["chat"]


def render_dialog(turns: Sequence[DialogTurn], encode_text: Callable[[str], list[int]], *,
                  max_tokens: int | None = None, instruction: str | None = None,
                  layout: Layout = AR_OMNI_V0_1) -> RenderedDialog:
    """Render a dialog; drops whole trailing exchanges beyond ``max_tokens``. Raises TemplateError for a dialog that
    cannot make a row (no exchange, roles out of order) and DialogTooLong when the first exchange alone is too long."""
    t = chat_template()
    instr = t["instruction"] if instruction is None else instruction
    pairs, unpaired = pair_turns([x.role for x in turns])
    if not pairs:
        raise TemplateError(f"no user turn followed by an assistant turn among {len(turns)} turn(s)")
    b = SampleBuilder(encode_text, layout)
    _pieces(b, "user", t["start"], None, None, instr)
    dropped = [why for _, why in unpaired]
    kept = 0
    for k, (u, a) in enumerate(pairs):
        mark = (len(b.ids), len(b.segments), b.segments[-1])  # the last segment may grow by merging: keep it
        _pieces(b, "user", t["user"], turns[u], turns[u], instr)
        _pieces(b, "assistant", t["assistant"], turns[a], turns[u], instr)
        if max_tokens is not None and len(b.ids) > max_tokens:
            if k == 0:
                raise DialogTooLong(f"the first exchange alone is {len(b.ids)} tokens > {max_tokens}")
            del b.ids[mark[0]:]
            del b.segments[mark[1]:]
            b.segments[-1] = mark[2]
            dropped += ["too_long"] * (2 * (len(pairs) - k))
            break
        kept += 2
    return RenderedDialog(b.ids, b.segments, kept, len(dropped), dropped)


def _pieces(b: SampleBuilder, role: str, pieces, turn: DialogTurn | None, user: DialogTurn | None, instr: str) -> None:
    """Append one part's pieces. ``turn`` is the turn being rendered, ``user`` the exchange's user turn."""
    spoke = user is not None and user.speech_codes is not None
    for piece in pieces:
        (kind, value), = piece.items()
        if kind in ("spoken", "written"):
            if (kind == "spoken") != spoke:
                continue
            if all(_field(f["field"], turn, user, instr) for f in value if "field" in f):
                _pieces(b, role, value, turn, user, instr)
        elif kind == "token":
            b.token(role, value)
        elif kind == "text":
            b.text(role, value)
        elif kind == "field":
            v = _field(value, turn, user, instr)
            if v:
                b.text(role, v)
        elif kind == "image":
            if turn is not None and turn.image_codes is not None:
                b.image(role, turn.image_codes)
        elif kind == "speech":
            if turn is not None and turn.speech_codes is not None:
                b.speech(role, turn.speech_codes)
        else:
            raise TemplateError(f"unknown chat template piece {kind!r}")


def _field(name: str, turn: DialogTurn | None, user: DialogTurn | None, instr: str) -> str:
    if name == "instruction":
        return instr
    if name == "text":
        return turn.text if turn is not None else ""
    if name == "transcript":
        return user.text if user is not None else ""
    raise TemplateError(f"unknown chat template field {name!r} (allowed: text, transcript, instruction)")
