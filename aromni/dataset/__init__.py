"""Look at a build and ship it: statistics and plots, rows decoded back to text / PNG / WAV, a Hugging Face dataset
card, publishing to the Hub, and export to AR-Omni's own training formats.

Everything here reads a finished build folder (``manifest.json``, ``data/*.parquet``, ``rejects/*.parquet``) through
``BuildFolder`` and never changes its shards.
"""
from aromni.dataset.folder import BuildFolder, DatasetError

__all__ = ["BuildFolder", "DatasetError"]
