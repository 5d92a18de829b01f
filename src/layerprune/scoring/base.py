"""What every criterion receives (`Context`) and returns (`Result`); `Scorer` is its registry entry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from layerprune.calibration import Calibration, CalibrationSpec


@dataclass
class Context:
    model: Any  # a transformers causal LM in eval mode
    tokenizer: Any
    num_layers: int
    num_drop: int  # the largest size asked for; iterative criteria run this many rounds
    protected: list[int]
    seed: int = 0
    post_norm: bool = False  # compare against HF hidden_states[L] (after the final norm) like the anchors
    batch_size: int = 4
    calibration: Calibration | None = None
    options: dict[str, Any] = field(default_factory=dict)  # criterion-specific (e.g. task_iterative's tasks)
    sizes: list[int] = field(default_factory=list)  # every size to answer (block criteria score each); sorted
    progress: bool = False  # progress bars on stderr

    def __post_init__(self):
        self.sizes = sorted(set(self.sizes) | {self.num_drop})

    def batches(self, desc: str) -> Iterator[torch.Tensor]:
        """The calibration windows in batches of `batch_size`, (b, T) each, behind a progress bar."""
        total = math.ceil(len(self.calibration.input_ids) / self.batch_size)
        yield from self.each(self.calibration.batches(self.batch_size), desc, total=total, unit="batch")

    def each(self, items: Iterable, desc: str, total: int | None = None, unit: str = "it") -> Iterator:
        yield from tqdm(items, desc=desc, total=total, unit=unit, disable=not self.progress, leave=False)


@dataclass
class Result:
    scores: list[float | None]  # per layer, or per block start (for the largest block size) if "block"
    select: str  # "lowest" | "highest": which scores are dropped
    granularity: str = "layer"  # "layer" | "block"
    rounds: list[dict[str, Any]] | None = None  # iterative criteria: one entry per greedy round, with "chosen"
    by_size: dict[int, list[float]] | None = None  # block criteria: block-start scores for every size
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. layer_forwards, baseline NLL


@dataclass(frozen=True)
class Scorer:
    fn: Callable[[Context], Result]
    summary: str
    anchor: CalibrationSpec | None = None  # calibration default mirroring the source paper; None = no text
    protect: Callable[[int], Sequence[int]] = lambda n: ()  # default protected layers for an n-layer model
