"""Requests that tasks emit and backends answer. Tasks never touch the model; backends never know tasks.

Two kinds, as in lm-eval:

* `LoglikelihoodRequest(context, continuation)` → `LoglikelihoodResult(logprob, is_greedy)`:
  sum of log p(continuation tokens | context), fp32 log-softmax; `is_greedy` when every continuation
  token is the argmax.
* `GenerationRequest(context, until, max_new_tokens, ...)` → `GenerationResult(texts)`: one string per
  sample, cut at the first stop string (the stop string itself removed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass(frozen=True)
class LoglikelihoodRequest:
    context: str
    continuation: str
    # Requests with the same non-None group (the choices of one question) may have their common token
    # prefix computed once; None → requests with an identical context are grouped.
    group: int | None = None


@dataclass(frozen=True)
class LoglikelihoodResult:
    logprob: float
    is_greedy: bool


@dataclass(frozen=True)
class GenerationRequest:
    context: str
    until: tuple[str, ...] = ()
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 → greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 → off
    num_samples: int = 1
    seed: int = 0


@dataclass(frozen=True)
class GenerationResult:
    texts: tuple[str, ...] = field(default_factory=tuple)
    finish_reasons: tuple[str, ...] = ()  # per sample: "stop" (EOS or a stop string) or "length" (max_new_tokens)
    new_tokens: tuple[int, ...] = ()  # per sample: tokens generated (a stop string's own tokens included)


class Backend(Protocol):
    """Answers requests in order; batching, caching and prefix sharing are the backend's business."""

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...
