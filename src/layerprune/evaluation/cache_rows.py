"""Select batch rows of a KV cache whose layers may live on different devices.

    select_cache_rows(cache, [0, 2])     # keep rows 0 and 2 of every layer: [B, heads, T, d] → [2, heads, T, d]

A model split by `device_map="auto"` keeps each layer's cache on that layer's GPU, and transformers'
`DynamicLayer.batch_select_indices` indexes with the tensor it is given without moving it. Here every layer gets
its own index tensor, created on that layer's device, so a cross-device index cannot happen.
"""

from __future__ import annotations

import torch


def select_cache_rows(cache, rows: list[int]) -> None:
    """Keep only batch rows `rows` (in that order) of every layer of `cache`, in place."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        device = keys.device if isinstance(keys, torch.Tensor) else torch.device("cpu")  # CPU: valid for any
        layer.batch_select_indices(torch.tensor(rows, dtype=torch.long, device=device))
