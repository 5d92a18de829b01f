"""Selection stability: does a criterion choose the same layers on another calibration draw?

    rec = selection_stability(model, tokenizer, "bi", seeds=[0, 1, 2], num_drop=[2, 4], calibration="docs.jsonl")
    rec["overlap"]["4"]["mean"]     # mean pairwise Jaccard |A∩B| / |A∪B| of the chosen sets over the draws
    rec["frequency"]["4"]           # per layer: the share of draws that drop it
    rec["unstable"]                 # sizes whose mean overlap is below `threshold`

Each seed is an independent draw: the calibration documents are shuffled with that seed before windows are cut
(`layerprune.calibration`), so a source with many documents gives different windows per seed; a single-document
`.txt` source gives the same windows every time (and overlap 1.0 for deterministic criteria). The `random`
criterion also takes the seed for its draw, so it is unstable by construction: a useful floor to compare with.

Why: which layers get chosen can depend more on the calibration set than on the criterion (arXiv 2604.24938),
so a recommendation built on one draw may not survive another.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

from layerprune.errors import UsageError

DEFAULT_THRESHOLD = 0.75  # mean Jaccard overlap below which a criterion/size is flagged unstable


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|A∩B| / |A∪B|; two empty sets agree (1.0)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


def summarize(runs: Sequence[dict[str, Any]], seeds: Sequence[int], threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Spread, frequency and overlap over several score records of one model and criterion (one per seed)."""
    n_layers = runs[0]["model"]["num_layers"]
    sizes = list(runs[0]["drops"])
    frequency, overlap = {}, {}
    for size in sizes:
        chosen = [run["drops"][size] for run in runs]
        frequency[size] = [round(sum(layer in c for c in chosen) / len(chosen), 4) for layer in range(n_layers)]
        pairs = [[i, j, round(jaccard(chosen[i], chosen[j]), 4)] for i, j in itertools.combinations(range(len(runs)), 2)]
        values = [p[2] for p in pairs] or [1.0]
        overlap[size] = {"mean": round(math.fsum(values) / len(values), 4), "min": min(values), "pairs": pairs}
    return {
        "seeds": list(seeds),
        "threshold": threshold,
        "per_seed": [{"seed": s, "drops": run["drops"], "calibration": run.get("calibration")}
                     for s, run in zip(seeds, runs)],
        "scores": _spread([run["scores"] for run in runs]),
        "frequency": frequency,
        "overlap": overlap,
        "unstable": [size for size in sizes if overlap[size]["mean"] < threshold],
    }


def selection_stability(model, tokenizer, method: str, seeds: Sequence[int], threshold: float = DEFAULT_THRESHOLD,
                        score_fn: Callable[..., dict] | None = None, **score_kwargs: Any) -> dict[str, Any]:
    """Score once per seed (kwargs as for `layerprune.scoring.score`, `calibration` a source, not prepared
    windows) and summarize; returns the first seed's record with a `stability` entry added."""
    from layerprune.scoring import score

    seeds = check_seeds(seeds, threshold)
    run = score_fn or (lambda seed: score(model, tokenizer, method, seed=seed, **score_kwargs))
    runs = [run(seed) for seed in seeds]
    record = dict(runs[0])
    record["stability"] = summarize(runs, seeds, threshold)
    return record


def check_seeds(seeds: Sequence[int], threshold: float) -> list[int]:
    seeds = list(seeds)
    if len(seeds) < 2:
        raise UsageError(f"--calibration-seeds {','.join(map(str, seeds))}: give at least two seeds, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--calibration-seeds {','.join(map(str, seeds))}: each seed once")
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--stability-threshold {threshold}: must be between 0 and 1")
    return seeds


def _spread(score_lists: list[list[float | None]]) -> dict[str, list[float | None]]:
    """Per position: mean, standard deviation (population), min and max over the draws (None where unscored)."""
    out: dict[str, list[float | None]] = {"mean": [], "std": [], "min": [], "max": []}
    for column in zip(*score_lists):
        values = [v for v in column if v is not None and math.isfinite(v)]
        if not values:
            for key in out:
                out[key].append(None)
            continue
        mu = math.fsum(values) / len(values)
        out["mean"].append(mu)
        out["std"].append(math.sqrt(math.fsum((v - mu) ** 2 for v in values) / len(values)))
        out["min"].append(min(values))
        out["max"].append(max(values))
    return out
