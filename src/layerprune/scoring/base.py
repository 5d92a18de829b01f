"""What every criterion receives (`Context`) and returns (`Result`); `Scorer` is its registry entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from layerprune.calibration import Calibration, CalibrationSpec


@dataclass
class Context:
    model: Any  # a transformers causal LM in eval mode
    tokenizer: Any
    num_layers: int
    num_drop: int
    protected: list[int]
    seed: int = 0
    post_norm: bool = False  # compare against HF hidden_states[L] (after the final norm) like the anchors
    batch_size: int = 4
    calibration: Calibration | None = None
    options: dict[str, Any] = field(default_factory=dict)  # criterion-specific (e.g. task_iterative's tasks)


@dataclass
class Result:
    scores: list[float | None]  # per layer, or per block start for granularity "block"
    drop: list[int]  # original 0-based indices, sorted
    select: str  # "lowest" | "highest": which scores are dropped
    granularity: str = "layer"  # "layer" | "block"
    rounds: list[dict[str, Any]] | None = None  # iterative criteria: one entry per greedy round
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. layer_forwards, baseline NLL


@dataclass(frozen=True)
class Scorer:
    fn: Callable[[Context], Result]
    summary: str
    anchor: CalibrationSpec | None = None  # calibration default mirroring the source paper; None = no text
    protect: Callable[[int], Sequence[int]] = lambda n: ()  # default protected layers for an n-layer model
