"""How many layers to drop, which are protected, and turning scores into a `drop` list.

Every criterion returns one score per layer (or per block start) and a direction; selection never picks a
protected layer. Ties are broken by layer index (lower first), so equal inputs always give equal drops.
"""

from __future__ import annotations

import math
from typing import Sequence

from layerprune.errors import UsageError


def resolve_num_drop(num_layers: int, num_drop: int | None = None, ratio: float | None = None) -> int:
    """`num_drop` as given, or ``max(1, floor(ratio * num_layers))``; exactly one of them must be given."""
    if (num_drop is None) == (ratio is None):
        raise UsageError("give exactly one of --num-drop N or --ratio R")
    if ratio is not None:
        if not 0 < ratio < 1:
            raise UsageError(f"--ratio {ratio} is outside (0, 1); give the fraction of layers to drop, e.g. 0.25")
        num_drop = max(1, math.floor(ratio * num_layers))
    if not 1 <= num_drop < num_layers:
        raise UsageError(f"--num-drop {num_drop}: the model has {num_layers} layers; drop between 1 and "
                         f"{num_layers - 1}")
    return num_drop


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
