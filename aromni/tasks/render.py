"""The one renderer: a task's pieces (tasks.yaml) + turns -> ids + segments, within a length limit.

Every task renders as a dialog: ``start``, then per exchange (a user turn and the assistant's reply) ``user`` then
``assistant``. A single-turn task is a one-exchange dialog (``render_task`` builds the two turns) in which every piece
is required; a chat row is::

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

``SampleBuilder`` is the only place ids are appended to a row, so segments are always exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Sequence

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.sample import Segment
from aromni.tasks.table import Task, TemplateError, get_task


class DialogTooLong(TemplateError):
    """Not even the first exchange fits the length limit."""


@dataclass
class SampleBuilder:
    """Appends pieces for a role and keeps segments: adjacent pieces of the same role and modality merge."""
    encode_text: Callable[[str], list[int]]
    layout: Layout = AR_OMNI_V0_1
    ids: list[int] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    def _push(self, role: str, modality: str, new_ids: Sequence[int]) -> None:
        if not new_ids:
            return
        start = len(self.ids)
        self.ids.extend(map(int, new_ids))   # map, not a generator: ~2x faster on the per-id hot path
        last = self.segments[-1] if self.segments else None
        if last and last.role == role and last.modality == modality and modality == "text":
            self.segments[-1] = Segment(role, modality, last.start, len(self.ids))
        else:
            self.segments.append(Segment(role, modality, start, len(self.ids)))

    def token(self, role: str, name: str) -> None:
        markers = self.layout.markers
        if name not in markers:
            raise TemplateError(f"unknown token {name!r}; allowed: {sorted(markers)}")
        self._push(role, "text", [markers[name]])

    def text(self, role: str, s: str) -> None:
        self._push(role, "text", self.encode_text(s))

    def field(self, role: str, name: str, s: str) -> None:
        """A turn's field (text, transcript, instruction): text like any other (``SinglePlan`` records it apart)."""
        self.text(role, s)

    def image(self, role: str, codes: Sequence[int]) -> None:
        self._push(role, "image", image_span(codes, self.layout))

    def speech(self, role: str, codes: Sequence[int]) -> None:
        self._push(role, "speech", speech_span(codes, self.layout))


def image_span(codes: Sequence[int], layout: Layout = AR_OMNI_V0_1) -> list[int]:
    """An image segment's ids: [boi] 1024 code ids [eoi]; TemplateError for another number of codes."""
    if len(codes) != layout.image_tokens:
        raise TemplateError(f"an image needs {layout.image_tokens} codes, got {len(codes)}")
    return [layout.boi, *layout.image_ids(codes), layout.eoi]


def speech_span(codes: Sequence[int], layout: Layout = AR_OMNI_V0_1) -> list[int]:
    """A speech segment's ids: [boa] code ids [eoa]; TemplateError for no codes."""
    if len(codes) == 0:
        raise TemplateError("a speech span needs at least one code")
    return [layout.boa, *layout.speech_ids(codes), layout.eoa]


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
    instructions: list[str] = field(default_factory=list)  # the append instruction of each kept spoken exchange


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


def reply_modality(reply: DialogTurn) -> str:
    """image if the reply has an image, else speech if it has speech, else text (picks the chat instruction)."""
    return "image" if reply.image_codes is not None else "speech" if reply.speech_codes is not None else "text"


def render(task: str | Task, turns: Sequence[DialogTurn], encode_text: Callable[[str], list[int]], *,
           max_tokens: int | None = None, instruction: str | None = None, by_reply: bool = False,
           layout: Layout = AR_OMNI_V0_1, builder: SampleBuilder | None = None) -> RenderedDialog:
    """Render ``turns`` with the task's pieces. Drops whole trailing exchanges beyond ``max_tokens``. Raises
    TemplateError for turns that cannot make a row (no exchange, roles out of order, a single-turn task missing a
    field or medium) and DialogTooLong when the first exchange alone is too long. ``instruction`` overrides the
    task's; else ``by_reply`` picks the task's instruction for each exchange's reply modality. ``builder``: where
    the pieces go (``single_plan`` passes one that records them)."""
    t = task if isinstance(task, Task) else get_task(task)
    pairs, unpaired = pair_turns([x.role for x in turns])
    if not pairs:
        raise TemplateError(f"no user turn followed by an assistant turn among {len(turns)} turn(s)")
    r = _Render(t, builder if builder is not None else SampleBuilder(encode_text, layout), strict=not t.dialog)
    r.pieces("user", t.pieces["start"], None, None, t.instruction if instruction is None else instruction)
    dropped = [why for _, why in unpaired]
    kept, used = 0, []
    b = r.b
    for k, (u, a) in enumerate(pairs):
        instr = (instruction if instruction is not None
                 else t.instructions[reply_modality(turns[a])] if by_reply and t.instructions else t.instruction)
        mark = (len(b.ids), len(b.segments), b.segments[-1] if b.segments else None)  # the last one may grow
        r.pieces("user", t.pieces["user"], turns[u], turns[u], instr)
        r.pieces("assistant", t.pieces["assistant"], turns[a], turns[u], instr)
        if max_tokens is not None and len(b.ids) > max_tokens:
            if k == 0:
                raise DialogTooLong(f"the first exchange alone is {len(b.ids)} tokens > {max_tokens}")
            del b.ids[mark[0]:]
            del b.segments[mark[1]:]
            if mark[2] is not None:
                b.segments[-1] = mark[2]
            dropped += ["too_long"] * (2 * (len(pairs) - k))
            break
        kept += 2
        if turns[u].speech_codes is not None:
            used.append(instr)
    return RenderedDialog(b.ids, b.segments, kept, len(dropped), dropped, used)


class _Render:
    def __init__(self, task: Task, b: SampleBuilder, strict: bool):
        self.task, self.b, self.strict = task, b, strict

    def pieces(self, role: str, pieces, turn: DialogTurn | None, user: DialogTurn | None, instr: str) -> None:
        """Append one part's pieces. ``turn`` is the turn being rendered, ``user`` the exchange's user turn."""
        b = self.b
        spoke = user is not None and user.speech_codes is not None
        for piece in pieces:
            (kind, value), = piece.items()
            if kind in ("spoken", "written"):
                if (kind == "spoken") != spoke:
                    continue
                if all(self.field(f["field"], turn, user, instr) for f in value if "field" in f):
                    self.pieces(role, value, turn, user, instr)
            elif kind == "token":
                b.token(role, value)
            elif kind == "text":
                b.text(role, value)
            elif kind == "field":
                v = self.field(value, turn, user, instr)
                if self.strict and value != "instruction" and not (v or "").strip():
                    raise TemplateError(f"task {self.task.name} needs a non-empty {self.task.text!r}")
                if v:
                    b.field(role, value, v)
            elif kind == "image":
                codes = turn.image_codes if turn is not None else None
                if codes is not None:
                    b.image(role, codes)
                elif self.strict:
                    raise TemplateError(f"task {self.task.name} needs an image")
            elif kind == "speech":
                codes = turn.speech_codes if turn is not None else None
                if codes is not None:
                    b.speech(role, codes)
                elif self.strict:
                    raise TemplateError(f"task {self.task.name} needs speech")
            else:
                raise TemplateError(f"unknown template piece {kind!r} in task {self.task.name}")

    @staticmethod
    def field(name: str, turn: DialogTurn | None, user: DialogTurn | None, instr: str) -> str:
        if name == "instruction":
            return instr
        if name == "text":
            return turn.text if turn is not None else ""
        if name == "transcript":
            return user.text if user is not None else ""
        raise TemplateError(f"unknown template field {name!r} (allowed: text, transcript, instruction)")


def single_turns(task: Task, text: str | None, image_codes=None, speech_codes=None) -> list[DialogTurn]:
    """The one exchange of a single-turn task: the example's text and media go to the turn the table names."""
    turns = {"user": DialogTurn("user"), "assistant": DialogTurn("assistant")}
    turns["assistant" if task.text == "response" else "user"].text = text or ""
    for kind, codes in (("image", image_codes), ("speech", speech_codes)):
        role = task.media_role(kind)
        if role is not None:
            setattr(turns[role], f"{kind}_codes", codes)
    return [turns["user"], turns["assistant"]]


def render_task(task: str, encode_text: Callable[[str], list[int]], *, input_text: str | None = None,
                response: str | None = None, image_codes: Sequence[int] | None = None,
                speech_codes: Sequence[int] | None = None, instruction: str | None = None,
                layout: Layout = AR_OMNI_V0_1) -> tuple[list[int], list[Segment]]:
    """Render one single-turn task row (a one-exchange dialog). Text fields are encoded piece by piece, never
    joined."""
    t = get_task(task)
    if t.dialog:
        raise TemplateError(f"task {task} is a dialog: render it with render_dialog")
    text = response if t.text == "response" else input_text
    r = render(t, single_turns(t, text, image_codes, speech_codes), encode_text, instruction=instruction,
               layout=layout)
    return r.ids, r.segments


def render_dialog(turns: Sequence[DialogTurn], encode_text: Callable[[str], list[int]], *,
                  max_tokens: int | None = None, instruction: str | None = None, by_reply: bool = False,
                  layout: Layout = AR_OMNI_V0_1) -> RenderedDialog:
    """A chat row (task ``chat``); see ``render``."""
    return render("chat", turns, encode_text, max_tokens=max_tokens, instruction=instruction, by_reply=by_reply,
                  layout=layout)


# ---------------------------------------------------------------------------------------------------------------
# Single-turn rows without re-reading the template each time
# ---------------------------------------------------------------------------------------------------------------
class _Recorder(SampleBuilder):
    """What ``render`` appends for one single-turn shape: the constant ids (markers, literal text, the instruction)
    and where the example's text and media go."""

    def __init__(self, encode_text, layout):
        super().__init__(encode_text, layout)
        self.ops: list[tuple] = []

    def _push(self, role, modality, new_ids):
        if new_ids:
            self.ops.append(("ids", role, modality, [int(i) for i in new_ids]))

    def field(self, role, name, s):
        if name == "instruction":
            self.text(role, s)
        else:
            self.ops.append(("field", role, name))

    def image(self, role, codes):
        self.ops.append(("image", role))

    def speech(self, role, codes):
        self.ops.append(("speech", role))


@dataclass(frozen=True)
class SinglePlan:
    """``render``'s output for a single-turn task as a list of appends, recorded once per (task, instruction, which
    media) and replayed per example: the same ids and segments as ``render_task`` (tested for every task), without
    walking the template's pieces for every row. ``groups``: the appends that form each segment, as SampleBuilder
    merges them (adjacent text of one role; no append is empty)."""
    ops: tuple

    @cached_property
    def groups(self) -> tuple:
        out: list = []
        for op in self.ops:
            modality = op[2] if op[0] == "ids" else "text" if op[0] == "field" else op[0]
            if out and out[-1][0] == op[1] and out[-1][1] == modality == "text":
                out[-1][2].append(op)
            else:
                out.append((op[1], modality, [op]))
        return tuple(out)

    def render(self, text_ids: Sequence[int], image_codes, speech_codes, layout: Layout = AR_OMNI_V0_1
               ) -> tuple[list[int], list[Segment]]:
        """``text_ids``: the example's text, encoded, not empty (an empty push is skipped, which changes the merges:
        render such a row with ``render``). Raises TemplateError as ``render`` does for media of the wrong size."""
        if not text_ids:
            raise ValueError("a single-turn plan renders a text of at least one token")
        ids: list[int] = []
        segments = []
        for role, modality, ops in self.groups:
            start = len(ids)
            for op in ops:
                kind = op[0]
                ids += (op[3] if kind == "ids" else text_ids if kind == "field"
                        else image_span(image_codes, layout) if kind == "image" else speech_span(speech_codes, layout))
            segments.append(Segment(role, modality, start, len(ids)))
        return ids, segments


def single_plan(task: Task, encode_text: Callable[[str], list[int]], *, instruction: str | None = None,
                has_image: bool = False, has_speech: bool = False, layout: Layout = AR_OMNI_V0_1
                ) -> SinglePlan | None:
    """Record ``render``'s appends for a single-turn row of this shape (a non-blank text, these media); None when
    such a row does not render (a missing field or medium: ``render`` itself then says why)."""
    if task.dialog:
        return None
    rec = _Recorder(encode_text, layout)
    turns = single_turns(task, "x", [0] * layout.image_tokens if has_image else None, [0] if has_speech else None)
    try:   # strict: a field that would read an empty value raises, so every recorded field reads the text
        render(task, turns, encode_text, instruction=instruction, layout=layout, builder=rec)
    except TemplateError:
        return None
    return SinglePlan(tuple(rec.ops))
