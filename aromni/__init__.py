"""aromni: data-pipeline-first toolkit for AR-Omni-style any-to-any training data."""
__version__ = "0.1.0"
