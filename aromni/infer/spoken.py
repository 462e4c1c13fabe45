"""Spoken chat input, as upstream feeds AR-Omni-Chat (inference/speech2tokens.py): the user's text is spoken by a
voice backend (CosyVoice2 with a fixed reference speaker and its prompt text; espeak-ng as the offline fallback),
resampled to 24 kHz and tokenized with the speech tokenizer (WavTokenizer, or the stand-in, flagged). Optional
silence padding is encoded ON ITS OWN (a clip of zeros through the same tokenizer) and its codes are put before /
after the speech codes inside ``<boa> … <eoa>``, as upstream's ``_insert_silence_tokens`` does; upstream's chat
script defaults both paddings to 0 s.

The voice is passed in (anything with ``speak(text) -> (wave, sample_rate, ...)``, e.g. an
``aromni.voice.Synthesizer`` from ``aromni.voice.get_synthesizer``), so the decoder does not depend on the voice
package; the command line builds it from --voice / --voice-model / --voice-ref.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Padding:
    """Seconds of silence before / after the spoken text (upstream: silence_head_sec / silence_tail_sec, 0 by default)."""
    head_s: float = 0.0
    tail_s: float = 0.0

    def __post_init__(self):
        if self.head_s < 0 or self.tail_s < 0:
            raise ValueError(f"silence padding must be >= 0 s, got head {self.head_s}, tail {self.tail_s}")


def silence_codes(speech_tokenizer, seconds: float, sample_rate: int) -> list[int]:
    """The codes of ``seconds`` of digital silence, encoded on their own."""
    n = int(round(seconds * sample_rate))
    if n <= 0:
        return []
    return [int(c) for c in speech_tokenizer.encode([(np.zeros(n, dtype=np.float32), sample_rate)])[0]]


def spoken_codes(text: str, voice, speech_tokenizer, padding: Padding = Padding(),
                 sample_rate: int = 24000) -> tuple[list[int], dict]:
    """``text`` spoken by ``voice`` -> (speech codes with the silence padding, a record of how they were made)."""
    if not text or not text.strip():
        raise ValueError("nothing to say: the text is empty")
    out = voice.speak(text)
    wave, sr = np.asarray(out[0], dtype=np.float32).reshape(-1), int(out[1])
    if wave.size == 0:
        raise ValueError(f"the voice backend returned no audio for {text!r}")
    codes = [int(c) for c in speech_tokenizer.encode([(wave, sr)])[0]]
    head = silence_codes(speech_tokenizer, padding.head_s, sample_rate)
    tail = silence_codes(speech_tokenizer, padding.tail_s, sample_rate)
    identity = getattr(voice, "identity", None)
    record = {"said": text, "voice": identity if isinstance(identity, dict) else str(type(voice).__name__),
              "audio_s": round(wave.size / sr, 4), "codes": len(codes), "silence_head_codes": len(head),
              "silence_tail_codes": len(tail),
              "speech_tokenizer_stand_in": bool(getattr(speech_tokenizer, "identity", {}).get("stand_in"))}
    return head + codes + tail, record
