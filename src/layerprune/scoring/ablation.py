"""Ablation criteria: calibration NLL of the model with a candidate layer removed.

* ``ppl`` — Shortened LLaMA PPL criterion (Kim et al. 2024, arXiv 2402.02834): one-shot,
  ``score_j = exp(NLL_{−j} / #predicted tokens)`` where ``NLL_{−j}`` is the summed next-token NLL over the
  calibration windows of the full model without layer j; the n *lowest* are dropped (removing them hurts least).
* ``sleb`` — SLEB (Song et al., ICML 2024, arXiv 2402.09025): iterative greedy. Round r scores every alive,
  unprotected j by ``NLL_{R ∪ {j}}`` (R = layers removed in earlier rounds) and removes the argmin; n rounds.

Both choose exactly what the naive loop (physically remove, run the whole model) chooses, at about half the
cost: per batch, one pass of the current model captures the hidden state entering every candidate j, and
each candidate then re-runs only the layers after j (`LayerRunner` resume). Ties go to the lower index.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from layerprune.activations import LayerRunner
from layerprune.scoring.base import Context, Result


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Σ −log p(x_{t+1} | x_≤t) over a batch; logits (b, T, V), input_ids (b, T)."""
    targets = input_ids[:, 1:].to(logits.device)  # (b, T−1)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="sum").item()


def removal_nlls(runner: LayerRunner, ctx: Context, removed: set[int], candidates: list[int], desc: str):
    """(NLL of the model without `removed`, {j: NLL without removed ∪ {j}}) summed over the calibration."""
    base, nll = 0.0, dict.fromkeys(candidates, 0.0)
    for ids in ctx.batches(desc):  # (b, T)
        logits, entering = runner.run(ids, skip=removed, capture=candidates)
        base += next_token_nll(logits, ids)
        del logits
        for j in candidates:  # layers ≤ j are not recomputed: layer j+1 starts from j's input
            logits, _ = runner.run(ids, skip=removed | {j}, resume=(j + 1, entering.pop(j)))
            nll[j] += next_token_nll(logits, ids)
    return base, nll


def _predicted_tokens(ctx: Context) -> int:
    n, t = ctx.calibration.input_ids.shape
    return n * (t - 1)


def ppl(ctx: Context) -> Result:
    runner = LayerRunner(ctx.model)
    candidates = [j for j in range(ctx.num_layers) if j not in ctx.protected]
    base, nll = removal_nlls(runner, ctx, set(), candidates, f"ppl ({len(candidates)} candidates)")
    tokens = _predicted_tokens(ctx)
    scores = [math.exp(nll[j] / tokens) if j in nll else None for j in range(ctx.num_layers)]
    extra = {"baseline_ppl": math.exp(base / tokens), "layer_forwards": runner.layer_forwards}
    return Result(scores, select="lowest", extra=extra)


def sleb(ctx: Context) -> Result:
    runner = LayerRunner(ctx.model)
    removed: set[int] = set()
    rounds = []
    for r in range(ctx.num_drop):
        candidates = [j for j in range(ctx.num_layers) if j not in removed and j not in ctx.protected]
        base, nll = removal_nlls(runner, ctx, removed, candidates, f"sleb round {r + 1}/{ctx.num_drop}")
        chosen = min(candidates, key=lambda j: (nll[j], j))
        rounds.append({"removed_before": sorted(removed), "baseline_nll": base,
                       "nll": {str(j): nll[j] for j in candidates}, "chosen": chosen})
        removed.add(chosen)
    first = rounds[0]["nll"]
    scores = [first.get(str(j)) for j in range(ctx.num_layers)]
    return Result(scores, select="lowest", rounds=rounds,
                  extra={"layer_forwards": runner.layer_forwards, "predicted_tokens": _predicted_tokens(ctx)})
