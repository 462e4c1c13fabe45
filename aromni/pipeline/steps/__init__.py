"""Steps: the pieces a unit is made of (see ``base`` for the contract). The recipe chooses extra ones by name
(``steps: [{name: ..., options: {...}}]``, registered in ``STEPS``, never imported from a recipe); the unit's own
(clean, decode, dedup, tokenize, render, check) are in ``aromni.pipeline.steps.core``.
"""
from __future__ import annotations

from aromni.pipeline.steps.base import (STEPS, Drop, Step, StepOptions, StepReject, StepStats, Work,  # noqa: F401
                                        build_steps, register_step, stats_dict)

# the registered recipe steps (imported last: they subclass Step)
from aromni.pipeline.steps import filters, noise, voice  # noqa: E402,F401
