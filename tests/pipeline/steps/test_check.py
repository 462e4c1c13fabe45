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
