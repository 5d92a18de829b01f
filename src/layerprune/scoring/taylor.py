"""``taylor`` — Shortened LLaMA Taylor+ block criterion (Kim et al. 2024, arXiv 2402.02834).

    G_W   = Σ_batches ∂L_b/∂W           (L_b: mean next-token cross-entropy of batch b; grads accumulate)
    I_k   = Σ_{W in layer k} Σ_{rows} Σ_{cols} |W ⊙ G_W|

i.e. per matrix the sum over the input dimension of |salience|^p with p = 1 (``norm_power=1``), summed over
rows (``weight_reduction=sum``), summed over every parameter of the block, norms included
(``block_reduction=sum``), as in methods.md §5. The n lowest are dropped. The "+" of Taylor+ is the protected
set {0, 1, 2, 3, L−2, L−1}, which is this criterion's default ``protected``.
Only decoder-layer parameters get gradients (embeddings and head are frozen for the pass), and the model's
`requires_grad` flags are restored afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layerprune.families import decoder_layers
from layerprune.scoring.base import Context, Result


def taylor(ctx: Context) -> Result:
    model, layers = ctx.model, decoder_layers(ctx.model)
    flags = {p: p.requires_grad for p in model.parameters()}
    layer_params = {p for layer in layers for p in layer.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(p in layer_params)
            p.grad = None
        for ids in ctx.batches("taylor"):  # (b, T)
            ids = ids.to(model.device)
            logits = model(ids, use_cache=False).logits  # (b, T, V)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            loss.backward()
            del logits, loss
        with torch.no_grad():
            scores = [sum((p * p.grad).abs().sum(dtype=torch.float64).item() for p in layer.parameters()
                          if p.grad is not None) for layer in layers]
    finally:
        for p, flag in flags.items():
            p.grad = None
            p.requires_grad_(flag)
    return Result(scores, select="lowest")
