"""The task registry: one explicit dict, name → factory returning a fresh `Task` or `TaskGroup`.

    task = get_task("arc_easy")        # unknown names raise UsageError listing the known ones
    names = known_tasks()

Classification tasks live in `choice.py`. Generative, code and probe tasks (`generative.py`, `code.py`,
`probes.py`) join when their modules exist: each may export `TASKS: dict[str, factory]`.
"""

from __future__ import annotations

import importlib
from typing import Callable

from layerprune.errors import UsageError
from layerprune.evaluation.tasks.base import Task, TaskGroup
from layerprune.evaluation.tasks.choice import MMLU_SUBJECTS, SPECS, mmlu_group, mmlu_subject

Factory = Callable[[], "Task | TaskGroup"]

TASKS: dict[str, Factory] = {
    **SPECS,
    "mmlu": mmlu_group,
    **{f"mmlu_{s}": (lambda s=s: mmlu_subject(s)) for s in MMLU_SUBJECTS},
}

_OPTIONAL = ("generative", "code", "probes")  # modules other engineers write; absent ones are skipped


def _with_optional() -> dict[str, Factory]:
    tasks = dict(TASKS)
    for name in _OPTIONAL:
        try:
            mod = importlib.import_module(f"layerprune.evaluation.tasks.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"layerprune.evaluation.tasks.{name}":
                raise  # the module exists but something it imports does not: show that error
            continue
        tasks.update(getattr(mod, "TASKS", {}))
    return tasks


def known_tasks() -> list[str]:
    return sorted(_with_optional())


def get_task(name: str) -> "Task | TaskGroup":
    tasks = _with_optional()
    if name not in tasks:
        short = [n for n in sorted(tasks) if not n.startswith("mmlu_")]
        raise UsageError(f"unknown task {name!r}; known: {', '.join(short)}, mmlu_<subject> (57 subjects)")
    return tasks[name]()
