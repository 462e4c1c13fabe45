"""``language``: keep the languages a build wants (AR-Omni trains on English only), by lingua-language-detector.

lingua's n-gram models ship inside the wheel (no download). The detector is built once per process per language set
(``language_detector``) and only over ``candidates`` — 20 widely written languages by default, which is what makes it
fast (lingua scores every candidate language for every text) — and it loads each model lazily on first use.
A text is scored on its first ``max_chars`` characters (enough for a stable decision; long documents stay cheap).
Measured: ``meta["language"] = {"lang": "en", "confidence": 0.97}`` (ISO 639-1; lingua's confidence of the top
language among the candidates; dialogs: measured on all turns' text together). Rejected: reason ``language`` when the
top language is not in ``keep`` or its confidence is under ``min_confidence``.
"""
from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator

from aromni.pipeline.steps import register_step
from aromni.pipeline.steps.filters.base import FilterOptions, FilterStep, example_texts, linear_edges
from aromni.pipeline.steps.text import TextError

DEFAULT_CANDIDATES = ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "pl", "cs", "ru", "uk", "tr", "ar", "hi",
                      "zh", "ja", "ko", "vi", "id")
CONFIDENCE_EDGES = linear_edges(0.0, 1.0, 20)


def _language(code: str):
    from lingua import IsoCode639_1, Language
    try:
        return Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper()))
    except AttributeError:
        raise ValueError(f"unknown ISO 639-1 language code {code!r}") from None


@lru_cache(maxsize=4)
def language_detector(candidates: tuple[str, ...] = DEFAULT_CANDIDATES):
    """One lingua detector per process and candidate set (building is cheap, models load lazily and are shared)."""
    from lingua import LanguageDetectorBuilder
    return LanguageDetectorBuilder.from_languages(*(_language(c) for c in candidates)).build()


def detect_language(text: str, candidates: tuple[str, ...] = DEFAULT_CANDIDATES, max_chars: int = 2000
                    ) -> tuple[str | None, float]:
    """(ISO 639-1 code of the most likely language, its confidence 0..1); (None, 0.0) when nothing is recognisable
    (digits, punctuation, an empty string)."""
    values = language_detector(tuple(candidates)).compute_language_confidence_values(text[:max_chars])
    if not values or values[0].value <= 0:
        return None, 0.0
    top = values[0]
    return top.language.iso_code_639_1.name.lower(), float(top.value)


class LanguageOptions(FilterOptions):
    keep: list[str] = Field(["en"], description="ISO 639-1 codes to keep")
    min_confidence: float = Field(0.25, ge=0, le=1, description="lingua confidence of the top language, at least "
                                  "(it is relative to the candidates: short English captions score 0.4-0.7 among 20)")
    candidates: list[str] = Field(list(DEFAULT_CANDIDATES), description="languages the detector chooses among "
                                  "(fewer is faster; keep must be among them)")
    max_chars: int = Field(2000, ge=20, description="score the first this many characters of a text")
    min_chars: int = Field(10, ge=0, description="texts shorter than this are kept unmeasured (too short to tell)")

    @field_validator("keep", "candidates")
    @classmethod
    def _codes(cls, v):
        v = [c.lower() for c in v]
        for c in v:
            _language(c)
        if not v:
            raise ValueError("must not be empty")
        return v

    def model_post_init(self, _):
        missing = sorted(set(self.keep) - set(self.candidates))
        if missing:
            raise ValueError(f"keep {missing} must also be in candidates")


@register_step
class LanguageStep(FilterStep):
    name = "language"
    Options = LanguageOptions

    def check(self, example, media: dict) -> None:
        o = self.opts
        text = "\n".join(t for _, t in example_texts(example))
        if len(text.strip()) < o.min_chars:
            self.stats.skip("too_short")
            return
        lang, conf = detect_language(text, tuple(o.candidates), o.max_chars)
        example.meta["language"] = {"lang": lang, "confidence": round(conf, 4)}
        self.stats.observe("language_confidence", conf, CONFIDENCE_EDGES)
        self.stats[f"lang.{lang}"] += 1
        if lang not in o.keep or conf < o.min_confidence:
            self.stats.reject("language")
            raise TextError("language", f"detected {lang} (confidence {conf:.2f}); keep {o.keep} at >= {o.min_confidence}")
