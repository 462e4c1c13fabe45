"""The one task table: every task renders through the one renderer, and its facts drive recipe checks."""
from __future__ import annotations

import pytest

from aromni.pipeline.readers import READERS
from aromni.recipe import RecipeError, parse_recipe
from aromni.tasks import get_task, render_dialog, render_task, task_groups, task_table, tasks_needing

BASE = {"name": "t", "tokenizers": {"text": {"path": "tok.json"}, "image": {"kind": "standin"},
                                    "speech": {"kind": "standin"}},
        "mixing": {"ratio": {"speech_text": 1}}}


def test_table_facts():
    assert task_groups() == {"image_caption": "image_text", "text_to_image": "image_text",
                             "speech_to_text": "speech_text", "text_to_speech": "speech_text",
                             "text_to_text": "text", "chat": "dialog"}
    assert "image_to_text" not in task_table() and "speech_to_image" not in task_table()  # no upstream layout
    assert tasks_needing("image") == {"image_caption", "text_to_image"}
    assert get_task("text_to_image").media_role("image") == "assistant"
    assert get_task("image_caption").media_role("image") == "user"
    assert get_task("chat").carries == {"dialog"} and get_task("speech_to_text").carries == {"text", "speech"}


@pytest.mark.parametrize("task", sorted(task_table()))
def test_every_task_renders_a_row_that_checks(task):
    from aromni.sample import check_row
    from aromni.tasks import DialogTurn
    enc = lambda s: [13000 + ord(c) % 50 for c in s]  # noqa: E731 - any encoder whose ids are text ids
    if get_task(task).dialog:
        r = render_dialog([DialogTurn("user", "hi"), DialogTurn("assistant", "hello")], enc)
        ids, segs = r.ids, r.segments
    else:
        ids, segs = render_task(task, enc, input_text="a cat", response="a cat", image_codes=[1] * 1024,
                                speech_codes=[1, 2, 3])
    assert ids[0] == 0 and check_row(ids, segs) == []


def test_recipe_refuses_a_task_its_reader_cannot_carry(monkeypatch):
    """contracts §6: a reader that declares what its examples carry cannot be given a task needing anything else."""
    monkeypatch.setattr(READERS["gigaspeech"], "carries", frozenset({"speech", "text"}), raising=False)
    src = {"name": "gs", "reader": "gigaspeech", "path": "gs", "tasks": ["speech_to_text"]}
    parse_recipe({**BASE, "sources": [src]})
    with pytest.raises(RecipeError) as e:
        parse_recipe({**BASE, "sources": [{**src, "tasks": ["chat"], "group": "speech_text"}]})
    assert "sources[0].tasks" in str(e.value) and "['dialog']" in str(e.value) and "['speech', 'text']" in str(e.value)
