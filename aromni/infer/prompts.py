"""Prompts built with the SAME templates as the training data, so the model sees at inference what it saw in training.

Single-turn tasks render ``aromni.tasks`` task templates (tasks.yaml) and keep the user part: the ids up to the
first assistant segment. The assistant part needs content to render, so a placeholder is passed and cut away;
the template stays the one definition of the layout.

Chat turns render the dialog template (``aromni.tasks``, ``chat`` in tasks.yaml) the same way:
``[0] "USER:" [image] [12821] speech [12820] {instruction} [12830] "GPT:"`` for a user who spoke (the instruction
defaults to "Please acknowledge the user's vocal input, create a textual response."), ``"USER:" [image] {text}
[12830] "GPT:"`` for a user who typed; a given assistant turn is ``{text} [image] [speech] [12831]``. A trained
model answers a spoken turn with ``<-Ins-> {transcript} <-Res-> {reply} …``, as its training rows do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.tasks import DialogTurn, TemplateError, render_dialog, render_task, task_table

# `aromni infer --task` name -> task in tasks.yaml (the table's `infer:` keys)
TASK_TEMPLATES = {t.infer: name for name, t in task_table().items() if t.infer}


def task_prompt(task: str, encode_text: Callable[[str], list[int]], *, text: str | None = None,
                image_codes: Sequence[int] | None = None, speech_codes: Sequence[int] | None = None,
                instruction: str | None = None, layout: Layout = AR_OMNI_V0_1) -> list[int]:
    """The user part of a single-turn task row: everything the model is given before it answers."""
    if task not in TASK_TEMPLATES:
        raise TemplateError(f"unknown task {task!r}; known: {sorted(TASK_TEMPLATES)}")
    template = TASK_TEMPLATES[task]
    # placeholders for the assistant part (cut away below); the user part decides which inputs are real
    user_image = image_codes if task == "caption" else None
    user_speech = speech_codes if task == "asr" else None
    if task == "caption" and user_image is None:
        raise TemplateError("caption needs an image")
    if task == "asr" and user_speech is None:
        raise TemplateError("asr needs speech")
    ids, segments = render_task(
        template, encode_text, input_text=text, response="x",
        image_codes=user_image if user_image is not None else [0] * layout.image_tokens,
        speech_codes=user_speech if user_speech is not None else [0],
        instruction=instruction, layout=layout)
    end = next(s.start for s in segments if s.role == "assistant")
    return ids[:end]


@dataclass
class Message:
    """One chat message. With speech, ``text`` is the instruction that follows it (the template's
    {instruction}); without, it is what the user typed."""
    role: str = "user"
    text: str | None = None
    image_codes: Sequence[int] | None = None
    speech_codes: Sequence[int] | None = None


def _dialog_part(user: DialogTurn, assistant: DialogTurn, role: str, encode_text, instruction, layout) -> list[int]:
    """One exchange rendered by the dialog template; the user's ids (with the start) or the assistant's."""
    rendered = render_dialog([user, assistant], encode_text, instruction=instruction, layout=layout)
    ids, segments = rendered.ids, rendered.segments
    cut = next(s.start for s in segments if s.role == "assistant")
    return ids[:cut] if role == "user" else ids[cut:]


def chat_turn(msg: Message, encode_text: Callable[[str], list[int]], first: bool,
              layout: Layout = AR_OMNI_V0_1) -> list[int]:
    """The ids of one user turn, ending with "GPT:"; ``first`` keeps the template's start (``<bos>``)."""
    if msg.role != "user":
        raise TemplateError(f"chat_turn renders user messages, got role {msg.role!r}")
    text = msg.text if msg.text is not None and msg.text.strip() else None
    if text is None and msg.image_codes is None and msg.speech_codes is None:
        raise TemplateError("a user message needs text, an image or speech")
    spoke = msg.speech_codes is not None
    user = DialogTurn("user", "" if spoke else (text or ""), msg.image_codes, msg.speech_codes)
    ids = _dialog_part(user, DialogTurn("assistant", "x"), "user", encode_text,
                       text if spoke else None, layout)
    if not first:
        if ids[0] != layout.bos:
            raise TemplateError("the chat template's start is not <bos>: cannot continue a conversation with it")
        ids = ids[1:]
    return ids


def assistant_turn(msg: Message, encode_text: Callable[[str], list[int]], layout: Layout = AR_OMNI_V0_1) -> list[int]:
    """A given (not generated) assistant message as history: its text, image and speech, then <eom>."""
    if not ((msg.text and msg.text.strip()) or msg.image_codes is not None or msg.speech_codes is not None):
        raise TemplateError("an assistant message needs text, an image or speech")
    turn = DialogTurn("assistant", msg.text or "", msg.image_codes, msg.speech_codes)
    return _dialog_part(DialogTurn("user", "x"), turn, "assistant", encode_text, None, layout)
