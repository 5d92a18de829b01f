"""Aggregation metrics, as pure functions: pass@k, mean and its standard error (lm-eval's)."""

from __future__ import annotations

import math
from typing import Sequence

from layerprune.errors import UsageError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021) for one problem: n samples, c of them correct.

    pass@k = 1 - C(n-c, k) / C(n, k), computed as the stable product
    1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the huge binomials.

    >>> pass_at_k(n=5, c=2, k=2)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    0.7
    """
    if n < 1 or not 0 <= c <= n:
        raise UsageError(f"pass@k needs n >= 1 samples and 0 <= c <= n correct, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise UsageError(f"pass@{k} needs 1 <= k <= n={n}; generate at least k samples per problem")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (math.fsum, so long lists of 0/1 scores add up exactly)."""
    if len(values) == 0:
        raise ValueError("mean() of no values")
    return math.fsum(values) / len(values)


def sample_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean as lm-eval reports it: sqrt(var_{ddof=1} / n).

    NaN for fewer than two values, where lm-eval prints "N/A".
    """
    n = len(values)
    if n < 2:
        return math.nan
    mu = mean(values)
    variance = math.fsum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)
