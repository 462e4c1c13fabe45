"""Moved to ``aromni.tasks`` (the one task table and renderer). Kept only for aromni/infer/cli.py, which imports
``TemplateError`` from here and is being moved into aromni/cli/ by another change: drop this file with that move."""
from aromni.tasks import TemplateError  # noqa: F401
