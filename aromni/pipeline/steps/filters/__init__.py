"""Quality filters (issue 16), each a registered step with its own reason, stats and ``meta`` measurement:
``language`` (lingua), ``audio_quality`` (clipping, silero-vad speech activity, WADA-SNR, speech rate),
``decontaminate`` (evaluation sets: word 13-grams, perceptual image hashes), ``clip_score`` (local CLIP checkpoint).
Near-duplicates are build-wide, not per example: the ``near_dup`` step fingerprints each row in its unit, and the mix
runs the other bounded-memory stages across the build (``aromni.pipeline.mix.near``).
"""
from aromni.pipeline.steps.filters import language  # noqa: F401
from aromni.pipeline.steps.filters import audio  # noqa: F401
from aromni.pipeline.steps.filters import decontaminate  # noqa: F401
from aromni.pipeline.steps.filters import clip_score  # noqa: F401
from aromni.pipeline.steps.filters import near_dup  # noqa: F401
