"""Speech synthesis for assistant replies: backends behind one interface, a content-addressed cache, text rules.

- ``BACKENDS``: name -> ``VoiceBackend`` class (``espeak`` = espeak-ng binary, the offline fallback; ``cosyvoice2`` =
  a CosyVoice2 model directory in its published layout, zero-shot with a reference clip). Each backend has an
  ``Options`` pydantic model (the recipe's ``backend_options``), a stable ``identity()`` (backend, model sha256, voice)
  and ``synthesise(text) -> float32 mono waveform at 24 kHz``.
- ``Synthesizer``: a backend + ``VoiceCache``; ``speak(text)`` returns the cached audio when (backend, model sha256,
  voice, text) was synthesised before, anywhere, by any recipe.
- ``aromni.voice.text``: normalisation and the rule for replies that cannot be spoken.
Backends load lazily and once per process (``get_synthesizer``): Ray reuses worker processes across units.
"""
from __future__ import annotations

from aromni.voice.backend import (BACKENDS, SAMPLE_RATE, BackendOptions, Synthesizer, VoiceBackend,  # noqa: F401
                                  VoiceError, get_synthesizer, register_backend)
from aromni.voice.cache import VoiceCache, cache_key, default_cache_dir  # noqa: F401

# the backends (imported last: they register themselves in BACKENDS; cosyvoice2 imports its package lazily)
from aromni.voice import cosyvoice2, espeak  # noqa: E402,F401
