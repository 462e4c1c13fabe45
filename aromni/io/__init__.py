"""Filesystems for every path a build meets: local paths and URLs (s3://, gs://, hf://) alike.

``paths``: resolving a path or URL, listing, opening and range-reading inputs (the readers' side).
``atomic``: writing outputs so that no reader ever sees a half-written object, fsync, and the lock on ``--out``.
"""
