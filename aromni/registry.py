"""Components chosen by name from a recipe (readers, steps, voice backends), never imported from it."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictOptions(BaseModel):
    """A component's options: unknown keys are errors, so a misspelled option never passes silently."""
    model_config = ConfigDict(extra="forbid")


class Registry(dict):
    """name -> class. ``@REGISTRY.register`` adds a class under its ``name`` attribute."""

    def register(self, cls):
        self[cls.name] = cls
        return cls
