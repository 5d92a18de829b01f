"""Criteria that read no data.

* ``reverse`` — reverse-order pruning (Lu et al. 2024, "Reassessing Layer Pruning in LLMs", arXiv 2411.15558):
  score_i = i, the n highest unprotected indices are dropped (with nothing protected: the last n layers).
* ``random`` — score_i ~ U(0, 1) from ``torch.Generator().manual_seed(seed)``; the n lowest are dropped.
"""

from __future__ import annotations

import torch

from layerprune.scoring.base import Context, Result


def reverse(ctx: Context) -> Result:
    return Result([float(i) for i in range(ctx.num_layers)], select="highest")


def random(ctx: Context) -> Result:
    g = torch.Generator().manual_seed(ctx.seed)
    scores = torch.rand(ctx.num_layers, generator=g, dtype=torch.float64).tolist()
    return Result(scores, select="lowest")
