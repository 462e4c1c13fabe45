"""Readers, registered by name. Importing this package registers every reader in it."""
from aromni.pipeline.readers.base import READERS, Example, Reader, Rejected, Turn, Unit, register  # noqa: F401
from aromni.pipeline.readers import (  # noqa: F401,E402
    laion, journeydb, gigaspeech, common_voice, mls, ultrafineweb, anyinstruct, voiceassistant, ultrachat,
    aromni_instruct)
