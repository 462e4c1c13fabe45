"""Language ID: lingua's decision and confidence land in meta, non-keep languages are rejected with reason `language`."""
from __future__ import annotations

import pytest

from aromni.pipeline.readers.base import Example, Turn
from aromni.pipeline.steps import STEPS
from aromni.pipeline.steps.filters.language import LanguageOptions, detect_language
from aromni.pipeline.steps.text import TextError

EN = "He hoped there would be stew for dinner, turnips and carrots and bruised potatoes."
DE = "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann in den Wald zurück."
FR = "Le renard brun rapide saute par-dessus le chien paresseux avant de retourner dans la forêt."


def ex(key, text=None, turns=None, source="web"):
    e = Example(key=key, text=text, turns=turns)
    e.id = f"{source}/{key}"
    return e


@pytest.mark.parametrize("text,lang", [(EN, "en"), (DE, "de"), (FR, "fr")])
def test_detects_the_language(text, lang):
    got, conf = detect_language(text)
    assert got == lang and 0.5 < conf <= 1.0


def test_nothing_recognisable_is_none():
    assert detect_language("12345 !!! ---") == (None, 0.0)


def test_step_keeps_english_rejects_others_and_counts():
    step = STEPS["language"]({"keep": ["en"]})
    kept = ex("a", EN)
    step.apply(kept, {}, None)
    assert kept.meta["language"]["lang"] == "en" and kept.meta["language"]["confidence"] > 0.5
    with pytest.raises(TextError) as e:
        step.apply(ex("b", DE), {}, None)
    assert e.value.reason == "language" and "detected de" in e.value.message and "en confidence" in e.value.message
    step.apply(ex("c", "ok"), {}, None)  # too short to tell: kept, counted as skipped
    s = step.stats.to_dict()
    assert s["checked"] == 3 and s["kept"] == 2 and s["rejected.language"] == 1 and s["skipped.too_short"] == 1
    assert s["lang.en"] == 1 and s["lang.de"] == 1
    assert sum(v for k, v in s.items() if k.startswith("hist.keep_confidence.")) == 2


@pytest.mark.parametrize("caption,kept", [
    ("Microscope image of a cell, grayscale", True),     # lingua's top language is fr (0.40), en 0.34: kept
    ("Texture of a brick wall, grayscale", True),
    ("Un chien dans le parc", False), ("Der Hund läuft im Park", False), ("Una casa blanca en la playa", False)])
def test_short_captions_are_decided_on_the_kept_languages_confidence(caption, kept):
    step = STEPS["language"]({"keep": ["en"]})
    e = ex("s", caption)
    if kept:
        step.apply(e, {}, None)
        assert e.meta["language"]["keep_confidence"] >= 0.2
    else:
        with pytest.raises(TextError):
            step.apply(e, {}, None)


def test_dialogs_are_measured_on_all_turns_and_sources_scope_the_step():
    step = STEPS["language"]({"keep": ["en"], "sources": ["chat"]})
    d = ex("d", turns=[Turn("user", FR), Turn("assistant", FR)], source="chat")
    with pytest.raises(TextError):
        step.apply(d, {}, None)
    other = ex("e", DE, source="web")        # not in sources: untouched
    step.apply(other, {}, None)
    assert "language" not in other.meta and step.stats["checked"] == 1


def test_min_confidence_rejects_an_unsure_english_text():
    step = STEPS["language"]({"keep": ["en"], "min_confidence": 0.999})
    with pytest.raises(TextError) as e:
        step.apply(ex("f", "The quick brown fox jumps over the lazy dog."), {}, None)
    assert e.value.reason == "language"


@pytest.mark.parametrize("bad", [{"keep": ["xx"]}, {"keep": ["en"], "candidates": ["de", "fr"]}, {"kep": ["en"]}])
def test_bad_options_are_errors(bad):
    with pytest.raises(ValueError):
        LanguageOptions(**bad)


def test_unknown_sources_are_named():
    from aromni.recipe import parse_recipe
    recipe = parse_recipe({"name": "t", "data_root": "/tmp", "tokenizers": {"text": {"path": "t.json"}},
                           "sources": [{"name": "web", "reader": "ultrafineweb", "path": "x", "tasks": ["text_to_text"]}],
                           "mixing": {"ratio": {"text": 1}}})
    cls = STEPS["language"]
    assert cls.recipe_problems(cls.Options(sources=["web"]), recipe, "steps[0].options") == []
    assert cls.recipe_problems(cls.Options(sources=["wbe"]), recipe, "steps[0].options") == [
        "steps[0].options.sources: unknown source(s) ['wbe']; the recipe has ['web']"]
    with pytest.raises(ValueError, match="unknown source"):
        cls({"sources": ["wbe"]}, recipe)
