"""What a TTS voice is asked to say: assistant reply text -> speakable English, or a documented reason it is not.

The rule (docs/speech.md, "Unspeakable replies"), in order:
1. Markup that is not read aloud is removed and counted: fenced code blocks (```...```), indented code lines, markdown
   tables (lines with two or more ``|``), bare URLs / e-mail addresses, inline code longer than 40 characters.
   Markdown decoration is unwrapped (``**bold**`` -> bold, ``[text](url)`` -> text, heading/bullet/quote markers).
2. If less than ``min_words`` words of prose remain -> ``Unspeakable("unspeakable_<what was removed>")``
   (``unspeakable_code``, ``unspeakable_table``, ``unspeakable_url``, or ``unspeakable_empty`` for symbols only).
3. If what was removed is more than ``max_removed_fraction`` of the reply's characters, the speech would not say what
   the text says -> ``Unspeakable("unspeakable_<kind>")`` as well.
4. Normalisation for the ear: abbreviations (e.g., Dr., etc.), symbols (%, &, $, °C, +, =), numbers (ordinals, years,
   decimals, thousands separators, times, currency) become words (num2words).
5. Over-long (more than ``max_chars`` after normalisation): ``long_replies: trim`` cuts at the last sentence end before
   ``max_chars`` (a word boundary if no sentence ends in the second half), ``reject`` -> ``Unspeakable("reply_too_long")``.
Everything done is returned in ``info`` so the row's ``meta`` says what was spoken and why it differs from the text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from num2words import num2words


class Unspeakable(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass
class Spoken:
    text: str                                  # what the voice says
    info: dict = field(default_factory=dict)   # what was removed / normalised / trimmed (for meta)


_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_TABLE_LINE = re.compile(r"^\s*\|?[^\n|]*\|[^\n|]*\|.*$", re.M)
_INDENTED_CODE = re.compile(r"(?:^(?: {4}|\t)\S.*(?:\n|$))+", re.M)
_MD_LINK = re.compile(r"\[([^\]]+)\]\((?:[^)\s]+)\)")
_URL = re.compile(r"(?:https?://|ftp://|www\.)\S+|\b[\w.+-]+@[\w-]+\.[\w.-]+\b", re.I)
_INLINE_CODE = re.compile(r"`([^`\n]*)`")
_MD_LINE_MARK = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[-*+•]\s+|\d+[.)]\s+)", re.M)
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1")
_WORD = re.compile(r"[A-Za-z]{1,}")

ABBREVIATIONS = {
    "e.g.": "for example", "i.e.": "that is", "etc.": "et cetera", "vs.": "versus", "approx.": "approximately",
    "Dr.": "Doctor", "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Prof.": "Professor", "St.": "Saint",
    "Jr.": "Junior", "Sr.": "Senior", "a.m.": "A M", "p.m.": "P M", "U.S.": "U S", "U.K.": "U K",
    "min.": "minutes", "hrs.": "hours", "km": "kilometers", "kg": "kilograms", "cm": "centimeters",
    "mm": "millimeters", "mph": "miles per hour",
}
SYMBOLS = [("°C", " degrees Celsius"), ("°F", " degrees Fahrenheit"), ("°", " degrees"), ("%", " percent"),
           ("&", " and "), (" + ", " plus "), (" = ", " equals "), (" x ", " times "), ("@", " at "),
           ("#", " number "), ("€", " euros "), ("£", " pounds ")]
_CURRENCY = re.compile(r"\$(\d[\d,]*(?:\.\d+)?)")
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_TIME = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b")
_YEAR = re.compile(r"\b(1[1-9]\d\d|20\d\d)\b(?![.,]\d)")
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")
_SPEAKABLE = re.compile(r"[^A-Za-z0-9\s.,;:!?'\"()\-]")


def _remove(pattern: re.Pattern, text: str, removed: dict, kind: str, repl: str = " ") -> str:
    def sub(m):
        removed[kind] = removed.get(kind, 0) + len(m.group(0))
        return repl
    return pattern.sub(sub, text)


def _number_words(s: str) -> str:
    t = s.replace(",", "")
    try:
        if "." in t:
            return num2words(float(t))
        return num2words(int(t))
    except (ValueError, OverflowError, ArithmeticError):
        return s


def normalise(text: str) -> str:
    """Abbreviations, symbols and numbers -> words; whitespace tidied. English."""
    t = text
    for abbr, full in ABBREVIATIONS.items():
        t = re.sub(rf"(?<![\w.]){re.escape(abbr)}(?![\w])", full, t)
    t = _CURRENCY.sub(lambda m: f"{_number_words(m.group(1))} dollars", t)
    for sym, words in SYMBOLS:
        t = t.replace(sym, words)
    t = _TIME.sub(lambda m: num2words(int(m.group(1))) + (
        " o'clock" if m.group(2) == "00" else " oh " + num2words(int(m.group(2))) if m.group(2).startswith("0")
        else " " + num2words(int(m.group(2)))), t)
    t = _ORDINAL.sub(lambda m: num2words(int(m.group(1)), to="ordinal"), t)
    t = _YEAR.sub(lambda m: num2words(int(m.group(1)), to="year"), t)
    t = _NUMBER.sub(lambda m: _number_words(m.group(0)), t)
    t = _SPEAKABLE.sub(" ", t)  # emoji, arrows, stray markup: not read aloud
    t = re.sub(r"\s*\n\s*", ". ", t.strip())
    t = re.sub(r"\.(\s*\.)+", ".", t)
    t = re.sub(r"\s+([.,;:!?])", r"\1", t)
    return re.sub(r"\s{2,}", " ", t).strip()


def trim_to(text: str, max_chars: int) -> str:
    """Cut at the last sentence end before max_chars; a word boundary if no sentence ends in the second half."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", head)]
    if ends and ends[-1] >= max_chars // 2:
        return head[: ends[-1]].strip()
    cut = head.rfind(" ")
    return (head[:cut] if cut > max_chars // 2 else head).strip()


def speakable(text: str, *, max_chars: int = 600, long_replies: str = "trim", min_words: int = 1,
              max_removed_fraction: float = 0.5) -> Spoken:
    """Apply the rule in this module's docstring. Raises ``Unspeakable(reason, message)``."""
    if not text or not text.strip():
        raise Unspeakable("unspeakable_empty", "reply is empty")
    removed: dict = {}
    t = _remove(_FENCE, text, removed, "code", "\n")
    t = _remove(_TABLE_LINE, t, removed, "table", "\n")
    t = re.sub(r"^\s*\|?\s*:?-{3,}.*$", "", t, flags=re.M)  # table rule lines left over
    t = _remove(_INDENTED_CODE, t, removed, "code", "\n")
    t = _MD_LINK.sub(r"\1", t)
    t = _remove(_URL, t, removed, "url")
    t = _INLINE_CODE.sub(lambda m: m.group(1) if len(m.group(1)) <= 40 else _count(removed, "code", m.group(0)), t)
    t = _MD_LINE_MARK.sub("", t)
    t = _EMPHASIS.sub(r"\2", t)
    words = _WORD.findall(t)
    kind = max(removed, key=removed.get) if removed else "empty"
    if len(words) < min_words:
        raise Unspeakable(f"unspeakable_{kind}", f"nothing to say after removing {sorted(removed) or 'symbols'} "
                                                 f"({len(words)} words left)")
    frac = sum(removed.values()) / max(len(text), 1)
    if frac > max_removed_fraction:
        raise Unspeakable(f"unspeakable_{kind}", f"{frac:.0%} of the reply is {'/'.join(sorted(removed))} "
                                                 f"(> {max_removed_fraction:.0%}): speech would not match the text")
    spoken = normalise(t)
    info: dict = {}
    if removed:
        info["removed_chars"] = dict(sorted(removed.items()))
    if len(spoken) > max_chars:
        if long_replies == "reject":
            raise Unspeakable("reply_too_long", f"{len(spoken)} characters to speak > max_chars {max_chars}")
        info["trimmed_from_chars"] = len(spoken)
        spoken = trim_to(spoken, max_chars)
    if spoken != text.strip():
        info["spoken_text"] = spoken
    return Spoken(spoken, info)


def _count(removed: dict, kind: str, s: str) -> str:
    removed[kind] = removed.get(kind, 0) + len(s)
    return " "
