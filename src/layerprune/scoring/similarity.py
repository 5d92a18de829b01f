"""Similarity criteria: all layers' statistics from ONE forward pass per batch, kept as running sums.

``h_k`` is the input of decoder layer k and ``h_L`` the last layer's output before the final norm (after it
with ``post_norm``; see `layerprune.activations`). Calibration windows have no padding, so every token counts.
Memory is flat in the number of windows: per batch at most n+1 hidden states are held, and nothing of size
T×T is ever formed (cosines are row-wise dot products, not ``diag(X @ Yᵀ)``). Block criteria score every
requested block size n from the same pass (a ratio sweep costs one pass, not one per ratio).

* ``bi`` — ShortGPT Block Influence (Men et al. 2024, arXiv 2403.03853):
  ``BI_k = 1 − (1/#tokens) Σ_{windows, t} cos(h_k[t], h_{k+1}[t])``; the n lowest are dropped (any positions).
* ``angular`` — Gromov et al. 2024 (arXiv 2403.17887), as in arcee-ai/PruneMe, on the last token T:
  ``d(s) = (1/#windows) Σ_windows (1/π)·arccos(clamp(cos(h_s[T], h_{s+n}[T]), −1, 1))`` for block starts
  s = 0 … L−n; the block ``s* … s*+n−1`` with the smallest d is dropped. (PruneMe never starts at s = 0
  because it discards the embeddings; ``--protect 0`` reproduces that.)
* ``cosine_block`` — LLM-Streamline (Chen et al., arXiv 2403.19135): ``c(s) = mean_{windows, t}
  cos(h_s[t], h_{s+n}[t])``; the block with the largest c is dropped (their 0.5 + 0.5·cos is monotone).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from layerprune.activations import layer_io
from layerprune.scoring.base import Context, Result


def _one_pass_per_batch(ctx: Context, on_layer: Callable, after_batch: Callable | None = None) -> int:
    """Run every calibration batch through the base model (no LM head) with `on_layer` hooked; #windows."""
    windows = 0
    with torch.no_grad(), layer_io(ctx.model, on_layer, post_norm=ctx.post_norm):
        for ids in ctx.batches("one pass"):  # (b, T)
            ctx.model.base_model(ids.to(ctx.model.device), use_cache=False)
            windows += len(ids)
            if after_batch is not None:
                after_batch()
    return windows


def _total(acc: dict[int, torch.Tensor], count: int) -> list[float]:
    return [acc[k].item() / count for k in sorted(acc)]


def bi(ctx: Context) -> Result:
    acc: dict[int, torch.Tensor] = {}  # layer k → Σ cos over tokens (float64, on the layer's device)

    def on_layer(k, h_in, h_out):  # (b, T, D) each
        cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # (b, T)
        acc[k] = acc.get(k, 0) + cos.sum(dtype=torch.float64)

    windows = _one_pass_per_batch(ctx, on_layer)
    tokens = windows * ctx.calibration.input_ids.shape[1]
    return Result([1.0 - c for c in _total(acc, tokens)], select="lowest")


def angular(ctx: Context) -> Result:
    last = {}  # state index → (b, D) last-token hidden state of the current batch
    acc: dict[int, dict[int, torch.Tensor]] = {n: {} for n in ctx.sizes}  # size n → block start s → Σ distance

    def on_layer(k, h_in, h_out):
        if k == 0:
            last[0] = h_in[:, -1].float()
        last[k + 1] = h_out[:, -1].float()

    def after_batch():
        for n, sums in acc.items():
            for s in range(ctx.num_layers - n + 1):
                a, b = last[s].to(last[s + n].device), last[s + n]
                cos = F.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)  # (b,)
                sums[s] = sums.get(s, 0) + (torch.arccos(cos) / math.pi).sum(dtype=torch.float64)
        last.clear()

    windows = _one_pass_per_batch(ctx, on_layer, after_batch)
    return _blocks({n: _total(sums, windows) for n, sums in acc.items()}, ctx, "lowest")


def cosine_block(ctx: Context) -> Result:
    held = {}  # state index → (b, T, D); only the last max(sizes)+1 states are held
    acc: dict[int, dict[int, torch.Tensor]] = {n: {} for n in ctx.sizes}  # size n → block start s → Σ cos

    def on_layer(k, h_in, h_out):
        if k == 0:
            held[0] = h_in
        held[k + 1] = h_out
        for n, sums in acc.items():
            if k + 1 - n >= 0:
                cos = F.cosine_similarity(held[k + 1 - n].to(h_out.device).float(), h_out.float(), dim=-1)  # (b, T)
                sums[k + 1 - n] = sums.get(k + 1 - n, 0) + cos.sum(dtype=torch.float64)
        held.pop(k + 1 - max(ctx.sizes), None)  # no later state pairs with it

    windows = _one_pass_per_batch(ctx, on_layer, held.clear)
    tokens = windows * ctx.calibration.input_ids.shape[1]
    return _blocks({n: _total(sums, tokens) for n, sums in acc.items()}, ctx, "highest")


def _blocks(by_size: dict[int, list[float]], ctx: Context, select: str) -> Result:
    return Result(by_size[ctx.num_drop], select=select, granularity="block", by_size=by_size)
