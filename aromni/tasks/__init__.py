"""Tasks: the one task table (``table``, data in tasks.yaml: per task its group, the media it needs, the text it
reads, its pieces) and the one renderer (``render``: every task renders as a dialog).

Recipe validation, units, the dataset card and inference prompts all read the table here.
"""
from aromni.tasks.render import (DialogTooLong, DialogTurn, RenderedDialog, SampleBuilder, pair_turns, render,
                                 render_dialog, render_task)
from aromni.tasks.table import (Task, TaskTableError, TemplateError, default_instruction, get_task, task_groups,
                                task_names, task_table, tasks_needing)

__all__ = ["Task", "TaskTableError", "TemplateError", "task_table", "get_task", "task_names", "default_instruction",
           "task_groups", "tasks_needing", "DialogTooLong", "DialogTurn", "RenderedDialog", "SampleBuilder",
           "pair_turns", "render", "render_dialog", "render_task"]
