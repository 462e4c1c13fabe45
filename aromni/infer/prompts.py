"""Prompts built with the SAME templates as the training data, so the model sees at inference what it saw in training.

Single-turn tasks render ``aromni.templates`` task templates (tasks.yaml) and keep the user part: the ids up to the
first assistant segment. The assistant part needs content to render, so a placeholder is passed and cut away;
the template stays the one definition of the layout.

Chat turns follow reference §2 (the AR-Omni chat code), through ``SampleBuilder``:
``[0] {history} "USER:" [image] [12821] speech [12820] {text} [12830] "GPT:"`` then the reply, turns separated by
12831. A speech message without text gets upstream's default text ("Please acknowledge the user's vocal input,
create a textual response."); a text-only message is ``"USER:" {text} [12830] "GPT:"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.templates import SampleBuilder, TemplateError, render_task

# aromni task name -> template name in tasks.yaml
TASK_TEMPLATES = {"tts": "text_to_speech", "asr": "speech_to_text", "caption": "image_caption",
                  "t2i": "text_to_image"}
DEFAULT_SPEECH_TEXT = "Please acknowledge the user's vocal input, create a textual response."


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
    """One chat message. A user message may carry image codes and speech codes besides its text."""
    role: str = "user"
    text: str | None = None
    image_codes: Sequence[int] | None = None
    speech_codes: Sequence[int] | None = None


def chat_turn(msg: Message, encode_text: Callable[[str], list[int]], first: bool,
              layout: Layout = AR_OMNI_V0_1) -> list[int]:
    """The ids of one user turn (with ``<bos>`` if it opens the conversation), ending with "GPT:"."""
    if msg.role != "user":
        raise TemplateError(f"chat_turn renders user messages, got role {msg.role!r}")
    text = msg.text if msg.text is not None and msg.text.strip() else None
    if text is None and msg.image_codes is None and msg.speech_codes is None:
        raise TemplateError("a user message needs text, an image or speech")
    b = SampleBuilder(encode_text, layout)
    if first:
        b.token("user", "bos")
    b.text("user", "USER:")
    if msg.image_codes is not None:
        b.image("user", msg.image_codes)
    if msg.speech_codes is not None:
        b.speech("user", msg.speech_codes)
        text = DEFAULT_SPEECH_TEXT if text is None else text
    if text is not None:
        b.text("user", text)
    b.token("user", "eoh")
    b.text("user", "GPT:")
    return b.ids


def assistant_turn(msg: Message, encode_text: Callable[[str], list[int]], layout: Layout = AR_OMNI_V0_1) -> list[int]:
    """A given (not generated) assistant message as history: its text, its image, its speech, then <eom>."""
    b = SampleBuilder(encode_text, layout)
    if msg.text:
        b.text("assistant", msg.text)
    if msg.image_codes is not None:
        b.image("assistant", msg.image_codes)
    if msg.speech_codes is not None:
        b.speech("assistant", msg.speech_codes)
    if not b.ids:
        raise TemplateError("an assistant message needs text, an image or speech")
    b.token("assistant", "eom")
    return b.ids
