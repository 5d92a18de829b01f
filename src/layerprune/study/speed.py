"""Decode and prefill throughput of a model on fixed random prompts, and the ideal speedup of pruning.

Ideal speedup: the per-token work of a decoder-only LM is, to first order, proportional to the parameters it
multiplies by — decoder layers plus the output head (the embedding is a lookup). Removing layers with P_removed
parameters therefore speeds a token up at most (P_layers + P_head) / (P_layers + P_head - P_removed).
"""

from __future__ import annotations

import statistics
import time

import torch

from layerprune.families import decoder_layers


def matmul_params(model) -> dict[str, int]:
    head = model.get_output_embeddings()
    return {
        "decoder_layers": sum(p.numel() for p in decoder_layers(model).parameters()),
        "head": head.weight.numel() if head is not None else 0,
        "num_layers": len(decoder_layers(model)),
    }


def ideal_speedup(baseline: dict[str, int], pruned: dict[str, int]) -> float:
    return (baseline["decoder_layers"] + baseline["head"]) / (pruned["decoder_layers"] + pruned["head"])


@torch.no_grad()
def measure(model, prompt_tokens: int = 128, new_tokens: int = 32, batch_size: int = 1, repeats: int = 3,
            seed: int = 0) -> dict[str, float]:
    """Median tokens/s over `repeats` runs: prefill (prompt forward) and decode (greedy, KV cache, no early stop)."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, prompt_tokens), generator=g).to(device)  # (B, T)
    mask = torch.ones_like(ids)
    prefill, decode = [], []
    model(ids[:, :8], attention_mask=mask[:, :8])  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(ids, attention_mask=mask, use_cache=True)
        t1 = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0, eos_token_id=None)
        t2 = time.perf_counter()
        prefill.append(batch_size * prompt_tokens / (t1 - t0))
        # generate() re-runs the prefill: subtract it to time the new tokens alone
        decode.append(batch_size * new_tokens / max(1e-9, (t2 - t1) - (t1 - t0)))
    return {"prefill_tokens_per_s": statistics.median(prefill), "decode_tokens_per_s": statistics.median(decode),
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batch_size": batch_size, "repeats": repeats,
            "device": str(device), **matmul_params(model)}
