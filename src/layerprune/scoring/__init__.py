"""Layer-importance criteria behind one interface.

    from layerprune.scoring import score
    record = score(model, tokenizer, "bi", num_drop=8, calibration="notes.txt", seq_len=256, num_samples=64)
    record["drop"]      # original 0-based indices to remove, sorted
    record["scores"]    # one per layer (or per block start: record["granularity"] == "block")

    record = score(model, tokenizer, "angular", num_drop=[2, 4, 6], calibration="notes.txt")
    record["drops"]     # {"2": [...], "4": [...], "6": [...]}: several sizes from one run ("drop" = the largest)

`SCORERS` is the one registry: name → `Scorer` (function, summary, the source paper's calibration default,
default protected layers). Each criterion is a small module whose docstring gives its formula and paper.
Layer outputs are read before the final norm (`layerprune.activations`); ``post_norm=True`` reproduces the
anchors' use of HF ``hidden_states[L]``.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from layerprune.calibration import Calibration, CalibrationSpec, load_calibration
from layerprune.errors import UsageError
from layerprune.families import num_layers as count_layers
from layerprune.provenance import now, versions
from layerprune.scoring import ablation, similarity, simple, task, taylor
from layerprune.scoring.base import Context, Scorer
from layerprune.scoring.selection import check_room, choose, parse_protect, resolve_sizes


def _plus_heuristic(n: int) -> list[int]:  # Shortened LLaMA's "+": never the first four or the last two
    return sorted({0, 1, 2, 3, n - 2, n - 1} & set(range(n)))


SCORERS: dict[str, Scorer] = {
    "reverse": Scorer(simple.reverse, "drop the last n layers (Lu et al. 2024)"),
    "random": Scorer(simple.random, "seeded uniformly random layers"),
    "bi": Scorer(similarity.bi, "ShortGPT block influence 1 - mean token cos(in, out), lowest n",
                 anchor=CalibrationSpec("emozilla/pg19", seq_len=256, num_samples=128, split="validation")),
    "angular": Scorer(similarity.angular, "Gromov/PruneMe last-token angular distance, contiguous block",
                      anchor=CalibrationSpec("allenai/c4:en", seq_len=1024, num_samples=256, split="validation",
                                             seed=42)),
    "cosine_block": Scorer(similarity.cosine_block, "LLM-Streamline mean token cos(h_s, h_s+n), contiguous block",
                           anchor=CalibrationSpec("DKYoon/SlimPajama-6B", seq_len=2048, num_samples=50)),
    "ppl": Scorer(ablation.ppl, "Shortened-LLaMA PPL with one layer removed, lowest n",
                  anchor=CalibrationSpec("bookcorpus", seq_len=128, num_samples=10, seed=1234),
                  protect=_plus_heuristic),
    "taylor": Scorer(taylor.taylor, "Shortened-LLaMA Taylor+ sum |W * dL/dW| per layer, lowest n",
                     anchor=CalibrationSpec("bookcorpus", seq_len=128, num_samples=10, seed=1234),
                     protect=_plus_heuristic),
    "sleb": Scorer(ablation.sleb, "SLEB iterative greedy: remove the layer whose removal gives the lowest NLL",
                   anchor=CalibrationSpec("wikitext:wikitext-2-raw-v1", seq_len=2048, num_samples=128),
                   protect=lambda n: (0, n - 1)),
    "task_iterative": Scorer(task.task_iterative, "seed paper: iterative greedy on mean normalised task score",
                             protect=lambda n: (0,)),
}


def get_scorer(method: str) -> Scorer:
    if method not in SCORERS:
        raise UsageError(f"unknown method {method!r}; known: {', '.join(SCORERS)}")
    return SCORERS[method]


def calibration_spec(method: str, source: str | None = None, **overrides: Any) -> CalibrationSpec | None:
    """The method's anchor calibration with the given overrides (None values keep the anchor's)."""
    anchor = get_scorer(method).anchor
    if anchor is None:
        return None
    fields = {k: v for k, v in overrides.items() if v is not None}
    return CalibrationSpec(**{**anchor.__dict__, **({"source": source} if source else {}), **fields})


def score(model, tokenizer, method: str, num_drop: int | Sequence[int] | None = None,
          ratio: float | Sequence[float] | None = None,
          calibration: str | Calibration | None = None, protected: str | list[int] | None = None,
          seed: int | None = None, seq_len: int | None = None, num_samples: int | None = None,
          text_field: str | None = None, split: str | None = None, bos: bool | None = None,
          post_norm: bool = False, batch_size: int = 4, options: dict[str, Any] | None = None,
          progress: bool = False) -> dict[str, Any]:
    """Score `model`'s decoder layers with `method` and choose `num_drop` (or `ratio` of) layers to drop.

    Several sizes (``num_drop=[2, 4]`` or ``ratio=[0.125, 0.25]``) cost one run: similarity criteria score
    every block size from the same forward passes, and iterative ones run the largest number of rounds, whose
    first n choices are exactly what a run for n chooses. ``record["drops"]`` maps each size to its layers.

    `calibration` is a prepared `Calibration`, a source (.txt, .jsonl, hub id ``name[:config]``), or None
    for the method's anchor default. `protected` None means the method's default (e.g. sleb: first and last).
    `progress` shows progress bars on stderr (the CLI turns them on).
    """
    scorer = get_scorer(method)
    n_layers = count_layers(model.config)
    sizes = resolve_sizes(n_layers, num_drop, ratio)
    n_drop = sizes[-1]
    protect = parse_protect(protected, n_layers) if protected is not None else sorted(scorer.protect(n_layers))
    check_room(n_layers, n_drop, protect)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    started, t0 = now(), time.perf_counter()
    cal = calibration if isinstance(calibration, Calibration) else None
    if cal is None and scorer.anchor is not None:
        spec = calibration_spec(method, calibration, seq_len=seq_len, num_samples=num_samples, seed=seed,
                                text_field=text_field, split=split, bos=bos)
        cal = load_calibration(tokenizer, spec)
    t1 = time.perf_counter()
    ctx = Context(model, tokenizer, n_layers, n_drop, protect, seed=0 if seed is None else seed,
                  post_norm=post_norm, batch_size=batch_size, calibration=cal, options=dict(options or {}),
                  sizes=sizes, progress=progress)
    result = scorer.fn(ctx)
    drops = {str(n): choose(result, n, protect) for n in sizes}
    t2 = time.perf_counter()
    record = {
        "format": "layerprune.scores/1",
        "method": method,
        "summary": scorer.summary,
        "model": {"family": model.config.model_type, "num_layers": n_layers},
        "params": {"num_drop": n_drop, "sizes": sizes, "ratio": ratio, "protected": protect, "seed": ctx.seed,
                   "post_norm": post_norm, "batch_size": batch_size, "hidden_states": _hidden_note(post_norm),
                   **({"options": ctx.options} if ctx.options else {})},
        "calibration": cal.description if cal is not None else None,
        "granularity": result.granularity,
        "select": result.select,
        "scores": result.scores,
        "drop": drops[str(n_drop)],
        "drops": drops,
    }
    if result.by_size is not None and len(sizes) > 1:
        record["block_scores"] = {str(n): v for n, v in result.by_size.items()}
    if result.rounds is not None:
        record["rounds"] = result.rounds
    record.update(result.extra)
    record["timings"] = {"started": started, "calibration_s": round(t1 - t0, 3), "scoring_s": round(t2 - t1, 3)}
    record["versions"] = versions()
    return record


def _hidden_note(post_norm: bool) -> str:
    return ("last layer output after the final norm (HF hidden_states[L], as the anchors)" if post_norm
            else "decoder-layer inputs/outputs before the final norm")
