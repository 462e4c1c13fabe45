"""The length rule (the one place it is checked): aromni's bounds and upstream's 0 < n < limit."""
from __future__ import annotations

import pytest

from aromni.pipeline.steps.check import length_problem
from aromni.recipe import FiltersConfig


@pytest.mark.parametrize("n,aromni,upstream", [
    (0, "too_short", "too_short"),
    (1, None, None),
    (1299, None, None),
    (1300, None, "too_long"),     # upstream pretrain.py keeps 0 < len(discrete_code) < 1300: 1300 itself is out
    (1301, "too_long", "too_long"),
])
def test_length_rules(n, aromni, upstream):
    for rule, want in (("aromni", aromni), ("upstream", upstream)):
        got = length_problem(n, "text_to_text", FiltersConfig(length_rule=rule, max_tokens=1300))
        assert (got[0] if got else None) == want, (rule, n, got)


def test_upstream_rule_ignores_min_tokens_and_chat_uses_max_chat_tokens():
    f = FiltersConfig(length_rule="upstream", min_tokens=50, max_chat_tokens=3456)
    assert length_problem(10, "image_caption", f) is None                # aromni would say too_short
    assert length_problem(10, "image_caption", FiltersConfig(min_tokens=50))[0] == "too_short"
    assert length_problem(3455, "chat", f) is None and length_problem(3456, "chat", f)[0] == "too_long"


def test_pretrain_recipe_uses_upstream_rule():
    from pathlib import Path

    from aromni.recipe import load_recipe
    r = load_recipe(Path(__file__).resolve().parents[3] / "recipes" / "pretrain.yaml")
    assert r.filters.length_rule == "upstream" and r.filters.max_tokens == 1300


def test_meta_turns_hold_only_the_turns_in_the_row():
    """issue 15 item 8: a greeting before the user spoke and exchanges cut to fit are not in the row, so their
    voice/noise records are not in its meta either."""
    from types import SimpleNamespace

    from aromni.pipeline.readers import Example, Turn
    from aromni.pipeline.steps.base import Work
    from aromni.pipeline.steps.render import Render
    from aromni.recipe import FiltersConfig
    enc = lambda s: [13000 + ord(c) % 50 for c in s]  # noqa: E731
    turns = [Turn("assistant", "Hi!", meta={"voice": {"n": 0}}), Turn("user", "a"), Turn("assistant", "b" * 5,
             meta={"voice": {"n": 2}}), Turn("user", "c"), Turn("assistant", "d" * 40, meta={"voice": {"n": 4}})]
    ex = Example("k", turns=turns, task="chat", id="s/k")
    recipe = SimpleNamespace(seed=0, filters=FiltersConfig(max_chat_tokens=30))
    source = SimpleNamespace(name="s", instruction=None, chat_instruction="fixed")
    step = Render(source, SimpleNamespace(text=SimpleNamespace(encode=enc)), recipe)
    w = Work(ex, 0)
    step.process(w, None)
    assert w.row.meta["kept_turns"] == 2 and w.row.meta["dropped_turns"] == 3
    assert w.row.meta["turns"] == [{"role": "user"}, {"role": "assistant", "voice": {"n": 2}}]
