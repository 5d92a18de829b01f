"""Test-time scaling: how much a model gains from sampling more (pass@k and majority vote over k samples).

    scaling_metrics([("18", True), ("17", False), ("18", True)])
    # {"pass@1": 0.667, "pass@2": 1.0, "pass@3": 1.0, "maj@1": 1.0, "maj@2": 1.0, "maj@3": 1.0}

For one document with n samples, c of them correct:
* ``pass@k`` (k = 1, 2, 4, … and n) is the unbiased estimator of Chen et al. (2021) — the chance that at least
  one of k samples drawn without replacement from the n is correct (`metrics.pass_at_k`).
* ``maj@k`` (answer tasks only: GSM8K, MATH, arithmetic) is 1 when the most frequent answer among the *first*
  k samples is correct (self-consistency, Wang et al. 2023). Samples whose answer could not be extracted
  (``None``) do not vote; ties go to the answer seen first; no vote at all counts as wrong. Taking the first
  k (not an average over subsets) keeps the number reproducible from samples_<task>.jsonl.

A pruned model may match the baseline's greedy accuracy yet gain far less from k samples (arXiv 2510.22228); the
study's "scaling gap" is (baseline pass@N − pass@1) − (variant pass@N − pass@1).
"""

from __future__ import annotations

from typing import Hashable, Sequence

from layerprune.evaluation.metrics import pass_at_k


def scaling_ks(n: int) -> list[int]:
    """1, 2, 4, … up to n, and n itself: the k of the curve for n samples."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else ks + [n]


def majority_correct(outcomes: Sequence[tuple[Hashable | None, bool]]) -> float:
    """1.0 when the most frequent extracted answer of `outcomes` is a correct one (ties: first seen)."""
    counts: dict[Hashable, int] = {}
    correct: dict[Hashable, bool] = {}
    for answer, ok in outcomes:
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        correct.setdefault(answer, ok)
    if not counts:
        return 0.0
    best = max(counts, key=counts.__getitem__)  # dicts keep insertion order: ties go to the first seen
    return float(correct[best])


def scaling_metrics(outcomes: Sequence[tuple[Hashable | None, bool]], vote: bool = True,
                    suffix: str = "") -> dict[str, float]:
    """pass@k (and maj@k when `vote`) for every k of `scaling_ks(len(outcomes))`; keys end in `suffix`."""
    n, c = len(outcomes), sum(bool(ok) for _, ok in outcomes)
    out = {f"pass@{k}{suffix}": pass_at_k(n, c, k) for k in scaling_ks(n)}
    if vote:
        out.update({f"maj@{k}{suffix}": majority_correct(outcomes[:k]) for k in scaling_ks(n)})
    return out
