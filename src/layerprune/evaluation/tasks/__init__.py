"""The task registry: one explicit dict, name → factory returning a fresh `Task` or `TaskGroup`.

    task = get_task("arc_easy")        # unknown names raise UsageError listing the known ones
    names = known_tasks()

Classification tasks: `choice.py`; GSM8K and MATH: `generative.py`; code: `code.py`; the
instruct (chat) variants of code and GSM8K: `instruct.py`; the paper's probes:
`probes.py`; the testbed's tasks: `layerprune/testbed/tasks.py`. Each module exports `TASKS: dict[str, factory]`;
this file is the one place they are joined.
"""

from __future__ import annotations

import difflib
import functools
from typing import Callable

from layerprune.errors import UsageError
from layerprune.evaluation.tasks import code, generative, instruct, probes
from layerprune.evaluation.tasks.base import Task, TaskGroup
from layerprune.evaluation.tasks.choice import MMLU_SUBJECTS, SPECS, mmlu_group, mmlu_subject

Factory = Callable[[], "Task | TaskGroup"]

TASKS: dict[str, Factory] = {
    **SPECS,
    "mmlu": mmlu_group,
    **{f"mmlu_{s}": (lambda s=s: mmlu_subject(s)) for s in MMLU_SUBJECTS},
    **generative.TASKS,
    **code.TASKS,
    **instruct.TASKS,
    **probes.TASKS,
}


@functools.cache
def registry() -> dict[str, Factory]:
    """TASKS plus the testbed's `testbed_*` tasks (imported here, late: the testbed builds on this package)."""
    from layerprune.testbed.tasks import TASKS as TESTBED

    return {**TASKS, **TESTBED}


def known_tasks() -> list[str]:
    return sorted(registry())


def get_task(name: str) -> "Task | TaskGroup":
    tasks = registry()
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks), n=4, cutoff=0.75)
        if close:
            raise UsageError(f"unknown task {name!r}; did you mean {', '.join(close)}?")
        short = [n for n in sorted(tasks) if not n.startswith("mmlu_")]
        raise UsageError(f"unknown task {name!r}; known: {', '.join(short)}, mmlu_<subject> (57 subjects)")
    return tasks[name]()
