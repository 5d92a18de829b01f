"""Requests that tasks emit and backends answer. Tasks never touch the model; backends never know tasks.

Two kinds, as in lm-eval:

* `LoglikelihoodRequest(context, continuation)` → `LoglikelihoodResult(logprob, is_greedy)`:
  sum of log p(continuation tokens | context), fp32 log-softmax; `is_greedy` when every continuation
  token is the argmax.
* `GenerationRequest(context, until, max_new_tokens, ...)` → `GenerationResult(texts)`: one string per
  sample, cut at the first stop string (the stop string itself removed).

The public backend protocol (`Backend`): any object with `loglikelihood(requests)` and `generate(requests)`,
each taking a list of requests and returning one result per request, in order. `HFBackend` is one; other
engines and test doubles plug in without touching tasks:

    class Canned:
        def loglikelihood(self, requests):
            return [LoglikelihoodResult(-len(r.continuation), False) for r in requests]

        def generate(self, requests):
            return [GenerationResult(("The final answer is 18",) * r.num_samples) for r in requests]

    evaluate(None, ["gsm8k_cot_llama"], TaskOptions(limit=5), tokenizer=tok, backend=Canned())

Prompts arrive fully rendered (`context` already holds the chat template, system prompt and gen_prefix), so
a backend only tokenizes (lm-eval's rules: `HFBackend.encode_pair`, `generation._encode`) and runs the model.
A backend may offer `info() -> dict`, recorded as `backend` in results.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable


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
    # per sample, when the backend knows them (else empty): "stop" (an EOS id or a stop string ended it) or
    # "length" (max_new_tokens reached), and how many tokens the model generated (an ending EOS included)
    finish_reasons: tuple[str, ...] = field(default_factory=tuple)
    generated_tokens: tuple[int, ...] = field(default_factory=tuple)


@runtime_checkable
class Backend(Protocol):
    """Answers requests in order; batching, caching and prefix sharing are the backend's business."""

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...
