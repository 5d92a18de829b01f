"""The task contract. A task turns documents into requests and scores the answers; it never sees the model.

    docs = task.load_docs(opts)                          # evaluated split, dataset order (doc_id = position)
    reqs = task.requests(doc_id, doc, opts)              # list of LoglikelihoodRequest | GenerationRequest
    metrics = task.score(doc, reqs, results, opts)       # per-doc {metric: value}
    record = task.record(doc, reqs, results, opts)       # extra fields for samples_<task>.jsonl

The runner (`evaluation/runner.py`) batches all requests of one kind across documents, sends them to a
`Backend`, then aggregates per-doc metrics (mean + stderr unless the task's `aggregations` says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

from layerprune.evaluation.requests import (
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
)

Request = LoglikelihoodRequest | GenerationRequest
Result = LoglikelihoodResult | GenerationResult


@dataclass(frozen=True)
class TaskOptions:
    """Per-run options a task may read; None means "the task's own default" (lm-eval's)."""

    data_dir: Path | None = None
    num_fewshot: int | None = None
    limit: int | None = None
    seed: int = 1234
    chat_template: bool = False
    system_prompt: str | None = None
    # None: on under a chat template (lm-eval's CLI default); False: shots collapsed into one user turn
    fewshot_as_multiturn: bool | None = None
    max_new_tokens: int | None = None  # None: the task's own (lm-eval's max_gen_toks, 256 unless it says)
    max_new_tokens_cap: int | None = None  # an upper bound over the limit above: lowers a task's, never raises it
    max_new_tokens_by_task: tuple[tuple[str, int], ...] = ()  # explicit per-task limits (task or group name)
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    # Code tasks: run generated code even where a kernel layer of the sandbox (Landlock, seccomp) is missing.
    allow_weaker_sandbox: bool = False
    # Set by the runner when chat_template is on: renders chat messages [{role, content}] to the prompt
    # string (`evaluation.chat.chat_renderer`: render(messages, add_generation_prompt=True)). Not an option
    # a user passes.
    chat_renderer: Callable[..., str] | None = field(default=None, compare=False, repr=False)


class Task(Protocol):
    name: str
    kind: Literal["classification", "generative"]
    primary_metric: str  # the headline metric studies and task-aware scoring compare

    def load_docs(self, opts: TaskOptions) -> list[dict[str, Any]]: ...

    def requests(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions) -> list[Request]: ...

    def score(
        self, doc: dict[str, Any], requests: Sequence[Request], results: Sequence[Result], opts: TaskOptions
    ) -> dict[str, float]: ...

    def record(
        self, doc: dict[str, Any], requests: Sequence[Request], results: Sequence[Result], opts: TaskOptions
    ) -> dict[str, Any]: ...


@dataclass
class TaskGroup:
    """Tasks reported together under one name (lm-eval's `group`): each member is scored on its own and
    the group's metric is the mean over members, weighted by their document counts when weight_by_size."""

    name: str
    tasks: list[Task]
    metrics: tuple[str, ...] = ("acc",)
    weight_by_size: bool = True

    @property
    def kind(self) -> str:
        return self.tasks[0].kind

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]
