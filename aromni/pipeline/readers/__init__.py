"""Readers, registered by name. Importing this package registers every reader in it."""
from aromni.pipeline.readers.base import READERS, Example, Reader, Rejected, Turn, Unit, register  # noqa: F401
from aromni.pipeline.readers import laion, gigaspeech, ultrafineweb  # noqa: F401,E402
