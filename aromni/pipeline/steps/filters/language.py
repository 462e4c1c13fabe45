"""``language``: keep the languages a build wants (AR-Omni trains on English only), by lingua-language-detector.

lingua's n-gram models ship inside the wheel (no download). The detector is built once per process per language set
(``language_detector``) and only over ``candidates`` — 20 widely written languages by default, which is what makes it
fast (lingua scores every candidate language for every text) — and it loads each model lazily on first use.
A text is scored on its first ``max_chars`` characters (enough for a stable decision; long documents stay cheap).
Measured: ``meta["language"] = {"lang": "en", "confidence": 0.97, "keep_confidence": 0.97}`` (ISO 639-1; lingua's
confidence of the top language among the candidates, and the summed confidence of the ``keep`` languages; dialogs:
measured on all turns' text together). Rejected: reason ``language`` when ``keep_confidence`` is under
``min_confidence``. Deciding on the kept languages' confidence rather than on the top language is what keeps short
English captions: "Microscope image of a cell, grayscale" scores fr 0.40 / en 0.34 among 20 languages (a top-language
rule would drop it), while a short German or French caption gives English under 0.05.
"""
from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator

from aromni.pipeline.steps.base import register_step
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


def language_scores(text: str, candidates: tuple[str, ...] = DEFAULT_CANDIDATES, max_chars: int = 2000
                    ) -> dict[str, float]:
    """ISO 639-1 code -> lingua's confidence (summing to 1 over the candidates), most likely first; {} when nothing
    is recognisable (digits, punctuation, an empty string)."""
    values = language_detector(tuple(candidates)).compute_language_confidence_values(text[:max_chars])
    return {v.language.iso_code_639_1.name.lower(): float(v.value) for v in values if v.value > 0}


def detect_language(text: str, candidates: tuple[str, ...] = DEFAULT_CANDIDATES, max_chars: int = 2000
                    ) -> tuple[str | None, float]:
    """(ISO 639-1 code of the most likely language, its confidence 0..1); (None, 0.0) when nothing is recognisable."""
    scores = language_scores(text, candidates, max_chars)
    return next(iter(scores.items()), (None, 0.0))


class LanguageOptions(FilterOptions):
    keep: list[str] = Field(["en"], description="ISO 639-1 codes to keep")
    min_confidence: float = Field(0.2, ge=0, le=1, description="summed lingua confidence of the keep languages, at "
                                  "least (relative to the candidates: short English captions score 0.3-0.7 among "
                                  "20, short foreign ones under 0.05)")
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
        scores = language_scores(text, tuple(o.candidates), o.max_chars)
        lang, conf = next(iter(scores.items()), (None, 0.0))
        keep_conf = sum(scores.get(k, 0.0) for k in o.keep)
        example.meta["language"] = {"lang": lang, "confidence": round(conf, 4), "keep_confidence": round(keep_conf, 4)}
        self.stats.observe("keep_confidence", keep_conf, CONFIDENCE_EDGES)
        self.stats[f"lang.{lang}"] += 1
        if keep_conf < o.min_confidence:
            self.stats.reject("language")
            raise TextError("language", f"detected {lang} (confidence {conf:.2f}); {'+'.join(o.keep)} confidence "
                                        f"{keep_conf:.2f} < {o.min_confidence}")
