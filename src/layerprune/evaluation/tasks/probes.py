"""Diagnostic probes with generated, seeded items: single-digit arithmetic and bracket completion.

* `arithmetic`: "Question: What is (4 * 4) * 1?\\nAnswer:" items, three single-digit operands and two
  operators from + - * (like EleutherAI arithmetic_1dc), 3 shots drawn per doc from a separate pool.
  - `first_digit_acc` (seed paper, methods.md §1.4): ten loglikelihood requests, the context ending
    in "Answer: " (plus "-" when the answer is negative) and each digit "0".."9" as continuation; the
    item is right when the first digit of the answer has the highest log-probability.
  - `exact_match`: greedy generation up to a newline, stripped, equals the answer.
* `brackets`: a random well-nested prefix over () [] {} <> that leaves 1-6 brackets open, e.g.
  "Input: ( [ { } ]\\nOutput:"; the model must write the closers " ] )". `exact_match` on the stripped
  first line of the generation; `prefix_acc` is the fraction of closers right before the first mistake.

Items depend only on `opts.seed`, so every model sees the same probe set.
"""

from __future__ import annotations

import operator
import random
from typing import Any, Sequence

from layerprune.evaluation.requests import GenerationRequest, LoglikelihoodRequest
from layerprune.evaluation.scaling import scaling_metrics
from layerprune.evaluation.tasks.base import TaskOptions
from layerprune.evaluation.tasks.generative import diagnostics_of, render_qa

N_ITEMS = 1000  # evaluated items per probe; --limit takes the first N
N_SHOTS = 3
SHOT_POOL = 100
DIGITS = tuple("0123456789")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}
PROBE_UNTIL = ("\n", "Question:", "Input:")
PROBE_MAX_NEW = 24


def arithmetic_item(rnd: random.Random) -> dict[str, Any]:
    a, b, c = (rnd.randint(0, 9) for _ in range(3))
    op1, op2 = rnd.choice(tuple(OPS)), rnd.choice(tuple(OPS))
    answer = OPS[op2](OPS[op1](a, b), c)
    return {"question": f"What is ({a} {op1} {b}) {op2} {c}?", "answer": str(answer)}


def bracket_item(rnd: random.Random) -> dict[str, Any]:
    """A well-nested prefix: random opens and closes, ending with 1-6 brackets still open."""
    open_left = rnd.randint(1, 6)
    stack: list[str] = []
    tokens: list[str] = []
    while len(stack) < open_left or len(tokens) < 4:
        if stack and rnd.random() < 0.35:
            tokens.append(PAIRS[stack.pop()])
        else:
            stack.append(rnd.choice(tuple(PAIRS)))
            tokens.append(stack[-1])
    return {"question": " ".join(tokens), "answer": " ".join(PAIRS[o] for o in reversed(stack))}


class Probe:
    """Shared shape of both probes: generated docs, 3 shots per doc, greedy exact match."""

    kind = "generative"
    primary_metric = "exact_match"
    make_item = staticmethod(arithmetic_item)
    template = "Question: {}\nAnswer:"
    diagnostics_kind = "math"

    def load_docs(self, opts: TaskOptions) -> list[dict[str, Any]]:
        rnd = random.Random(f"{self.name}-eval-{opts.seed}")
        return [self.make_item(rnd) for _ in range(N_ITEMS)]

    def shots(self, doc_id: int, opts: TaskOptions) -> list[tuple[str, str]]:
        pool_rnd = random.Random(f"{self.name}-shots-{opts.seed}")
        pool = [self.make_item(pool_rnd) for _ in range(SHOT_POOL)]
        k = N_SHOTS if opts.num_fewshot is None else opts.num_fewshot
        picks = random.Random(f"{self.name}-pick-{opts.seed}-{doc_id}").sample(pool, k)
        return [(s["question"], s["answer"]) for s in picks]

    def context(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions) -> str:
        return render_qa(self.shots(doc_id, opts), self.template.format(doc["question"]), self.template, opts)

    def generation(self, doc_id: int, context: str, opts: TaskOptions) -> GenerationRequest:
        return GenerationRequest(context, until=PROBE_UNTIL, max_new_tokens=PROBE_MAX_NEW, seed=opts.seed + doc_id,
                                 temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k,
                                 num_samples=opts.num_samples)

    def requests(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions) -> list:
        return [self.generation(doc_id, self.context(doc_id, doc, opts), opts)]

    def answer_of(self, results: Sequence) -> str:
        return results[-1].texts[0].strip()

    def score(self, doc, requests: Sequence, results: Sequence, opts) -> dict[str, float]:
        metrics = {"exact_match": float(self.answer_of(results) == doc["answer"])}
        texts = results[-1].texts
        if len(texts) > 1:  # test-time scaling over the samples (answers vote as their stripped text)
            metrics.update(scaling_metrics([(t.strip() or None, t.strip() == doc["answer"]) for t in texts]))
        return metrics

    def record(self, doc, requests: Sequence, results: Sequence, opts) -> dict[str, Any]:
        text = results[-1].texts[0]
        return {"target": doc["answer"], "resps": [text], "diagnostics": diagnostics_of([text], self.diagnostics_kind)}


class ArithmeticProbe(Probe):
    name = "arithmetic"
    primary_metric = "first_digit_acc"  # the paper's arithmetic measure

    def requests(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions) -> list:
        context = self.context(doc_id, doc, opts)
        # trailing " " (and "-") stay in the context string: the backend moves trailing whitespace into
        # the continuation, as lm-eval does, so each digit is scored as the token " d" (or "d" after "-")
        prefix = context + " " + ("-" if doc["answer"].startswith("-") else "")
        digit_reqs = [LoglikelihoodRequest(prefix, d, group=doc_id) for d in DIGITS]
        return digit_reqs + [self.generation(doc_id, context, opts)]

    def score(self, doc, requests: Sequence, results: Sequence, opts) -> dict[str, float]:
        logprobs = [r.logprob for r in results[: len(DIGITS)]]
        best = DIGITS[max(range(len(DIGITS)), key=logprobs.__getitem__)]
        return {"first_digit_acc": float(best == doc["answer"].lstrip("-")[0]), **super().score(doc, requests, results, opts)}


class BracketProbe(Probe):
    name = "brackets"
    make_item = staticmethod(bracket_item)
    template = "Input: {}\nOutput:"
    diagnostics_kind = "text"

    def score(self, doc, requests: Sequence, results: Sequence, opts) -> dict[str, float]:
        got, want = self.answer_of(results).split(), doc["answer"].split()
        right = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
        return {"exact_match": float(got == want), "prefix_acc": right / len(want)}


TASKS = {"arithmetic": ArithmeticProbe, "brackets": BracketProbe}
