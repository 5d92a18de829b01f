"""How many layers to drop, which are protected, and turning a criterion's `Result` into a `drop` list.

Every criterion returns one score per layer (or per block start, per block size) and a direction, or, if it is
iterative, its greedy rounds; `choose` turns that into the layers to drop for any size the run covered.
Selection never picks a protected layer. Ties are broken by layer index (lower first, unless a criterion's
rounds say otherwise), so equal inputs always give equal drops.
"""

from __future__ import annotations

import math
from typing import Sequence

from layerprune.errors import UsageError


def resolve_sizes(num_layers: int, num_drop: int | Sequence[int] | None = None,
                  ratio: float | Sequence[float] | None = None) -> list[int]:
    """Sorted distinct layer counts to drop: `num_drop` as given, or ``max(1, floor(ratio * num_layers))`` per
    ratio. Exactly one of them must be given; either may be one value or several (one scoring run serves all)."""
    if (num_drop is None) == (ratio is None):
        raise UsageError("give exactly one of --num-drop N or --ratio R")
    counts = []
    for r in _as_list(ratio):
        if not 0 < r < 1:
            raise UsageError(f"--ratio {r} is outside (0, 1); give the fraction of layers to drop, e.g. 0.25")
        counts.append(max(1, math.floor(r * num_layers)))
    for n in counts or _as_list(num_drop):
        if not 1 <= n < num_layers:
            raise UsageError(f"--num-drop {n}: the model has {num_layers} layers; drop between 1 and "
                             f"{num_layers - 1}")
    return sorted(set(counts or _as_list(num_drop)))


def one_size(num_layers: int, num_drop=None, ratio=None) -> int:
    """`resolve_sizes` for uses that remove one set of layers (pruning): several sizes are a UsageError."""
    sizes = resolve_sizes(num_layers, num_drop, ratio)
    if len(sizes) > 1:
        raise UsageError(f"pruning removes one set of layers but {len(sizes)} sizes were given ({sizes}); "
                         "give one --num-drop or --ratio (`layerprune score` takes several)")
    return sizes[0]


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_protect(spec: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """"0,1,-1" or [0, -1] → sorted 0-based indices (negative counts from the end; "a-b" is a range)."""
    if spec is None or spec == "" or spec == "none":
        return []
    parts = spec.split(",") if isinstance(spec, str) else [str(i) for i in spec]
    out: set[int] = set()
    for part in (p.strip() for p in parts):
        try:
            if part.startswith("-") or "-" not in part:  # one index, possibly negative
                i = int(part)
                if not -num_layers <= i < num_layers:
                    _bad(part, num_layers)
                out.add(i % num_layers)
            else:
                lo, hi = (int(x) for x in part.split("-"))
                out.update(range(lo, hi + 1))
        except ValueError:
            raise UsageError(f"bad --protect entry {part!r}; use indices, ranges and negatives, e.g. 0-3,-2,-1") from None
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        _bad(str(bad[0]), num_layers)
    return sorted(out)


def _bad(part: str, num_layers: int) -> None:
    raise UsageError(f"--protect {part}: out of range for a model with {num_layers} layers")


def check_room(num_layers: int, num_drop: int, protected: Sequence[int]) -> None:
    free = num_layers - len(protected)
    if num_drop > free:
        raise UsageError(f"cannot drop {num_drop} layers: {len(protected)} of {num_layers} are protected "
                         f"({list(protected)}); protect fewer or drop fewer")


def lowest(scores: Sequence[float | None], n: int, protected: Sequence[int]) -> list[int]:
    """The `n` unprotected layers with the lowest scores (sorted indices); None scores are never chosen."""
    ranked = sorted((s, i) for i, s in enumerate(scores) if i not in set(protected) and s is not None)
    return sorted(i for _, i in ranked[:n])


def best_block(scores: Sequence[float], n: int, protected: Sequence[int], highest: bool = False) -> list[int]:
    """Layers ``start … start+n-1`` of the block start with the lowest (or highest) score that avoids every
    protected layer; ``scores[s]`` scores removing the block that starts at layer s."""
    allowed = [s for s in range(len(scores)) if not set(range(s, s + n)) & set(protected)]
    if not allowed:
        raise UsageError(f"no block of {n} consecutive layers avoids the protected layers {list(protected)}")
    start = min(allowed, key=lambda s: (-scores[s] if highest else scores[s], s))
    return list(range(start, start + n))


def choose(result, n: int, protected: Sequence[int]) -> list[int]:
    """The `n` layers `result` (a `scoring.base.Result`) says to drop, sorted.

    Iterative criteria: the first n rounds' choices — a greedy round never depends on how many rounds follow,
    so one run of N rounds answers every n ≤ N exactly as a separate run would. Block criteria: the best block
    of the scores for size n. Per-layer criteria: the n best scores."""
    highest = result.select == "highest"
    if result.rounds is not None:
        return sorted(r["chosen"] for r in result.rounds[:n])
    if result.granularity == "block":
        return best_block(result.by_size[n], n, protected, highest=highest)
    return lowest([-s if highest and s is not None else s for s in result.scores], n, protected)
