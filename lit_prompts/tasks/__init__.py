"""What each task trains, measures and predicts, given a method's forward passes.

A task is stateless: ``PromptMethod`` passes itself in. Methods stay task-agnostic (they only say
where the prompt goes), tasks stay method-agnostic (they only call the method's forward helpers).
"""

from .classification import ClassificationTask
from .ner import NerTask
from .qa import QaTask

TASKS = {"classification": ClassificationTask, "ner": NerTask, "qa": QaTask}
TASK_NAMES = tuple(TASKS)


def get_task(name: str, task_format: str):
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not one of {TASK_NAMES}")
    task = TASKS[name]
    if task_format not in task.formats:
        raise ValueError(f"task {name!r} has no format {task_format!r}; use one of {task.formats}")
    return task()


__all__ = ["TASKS", "TASK_NAMES", "ClassificationTask", "NerTask", "QaTask", "get_task"]
