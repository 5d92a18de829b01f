"""What a user would see: prefill and decode throughput of a model, and of a pruned model against its baseline
measured in the same step, interleaved, so load on the machine hits both alike.

Method: fixed random prompts; decode is timed directly (a greedy KV-cache loop of `new_tokens` one-token
forwards after the prefill, not generate-time minus prefill-time); every timing is bracketed by
`torch.cuda.synchronize()` on a GPU; warm-up repeats until two consecutive decode timings agree within
`warmup_tolerance` (at most `warmup_max` runs); then `repeats` rounds, each timing every model once in alternating
order; medians and spread (IQR / median) of the repeats; per-round paired ratios pruned/baseline give the speedup
with a bootstrap interval of its median. A ratio whose spread exceeds `max_spread` is flagged, and its speedup is
None with a note instead of a number.

speed.json (written by the study's speed step; keys the report reads):
    prefill_tokens_per_s, decode_tokens_per_s   medians at batch_size (normally 1) of this step's model
    prompt_tokens, new_tokens, batch_size, serving_batch_size, repeats, device, decoder_layers, head, num_layers
    runs: [{batch_size, prefill_tokens_per_s: STATS, decode_tokens_per_s: STATS, warmup_runs, warm}]
        STATS = {median, p25, p75, min, max, spread, n}; one entry per batch size (batch_size, serving_batch_size)
    baseline: {the same keys for the unpruned model, measured interleaved}         (pruned steps only)
    comparison: [{batch_size, decode_speedup, decode_speedup_interval, decode_spread, prefill_speedup,
                  prefill_speedup_interval, prefill_spread, flagged, note}]            (pruned steps only)
        *_speedup: median of per-round pruned/baseline tokens/s ratios, or None when that metric's ratios spread
                   more than max_spread; flagged: either is None, and note says which and why
        *_interval: [lo, hi] bootstrap interval (confidence 0.95) of that median; *_spread: IQR/median of ratios
    ideal_speedup_layers: L / (L − k); ideal_speedup_params: see `ideal_speedup`;
    decode_vs_ideal: decode_speedup / ideal_speedup_layers at batch_size (None when flagged)  (pruned steps only)

Ideal speedup: per-token work of a decoder-only LM is, to first order, proportional to the parameters it
multiplies by — decoder layers plus the output head (the embedding is a lookup). Removing layers with P_removed
parameters therefore speeds a token up at most (P_layers + P_head) / (P_layers + P_head - P_removed); counting
layers alone (L / (L − k)) is the bound when the head is negligible, as in the paper's 7-8B models.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_once(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one request batch: prompt forward, then `new_tokens` greedy one-token
    forwards on the KV cache. ids: (B, T) on the model's device."""
    device = ids.device
    mask = torch.ones_like(ids)  # (B, T)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    _sync(device)
    t1 = time.perf_counter()
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # ≥5 / 4.x
    past = getattr(out, cache_kw, None) or out.past_key_values
    for _ in range(new_tokens):
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)  # (B, T + i + 1)
        out = model(input_ids=nxt, attention_mask=mask, use_cache=True, **{cache_kw: past})
        past, nxt = getattr(out, cache_kw, None) or out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    med = float(np.median(a))
    p25, p75 = (float(x) for x in np.percentile(a, [25, 75]))
    return {"median": med, "p25": p25, "p75": p75, "min": float(a.min()), "max": float(a.max()),
            "spread": (p75 - p25) / med if med else float("inf"), "n": len(values)}


def _median_interval(values: list[float], seed: int, confidence: float = 0.95, draws: int = 2000) -> list[float]:
    rng = np.random.default_rng(seed)
    a = np.asarray(values, dtype=float)
    meds = np.median(rng.choice(a, size=(draws, len(a)), replace=True), axis=1)
    lo, hi = np.percentile(meds, [50 * (1 - confidence), 100 - 50 * (1 - confidence)])
    return [float(lo), float(hi)]


def _warm_up(model, ids, new_tokens: int, tolerance: float, max_runs: int) -> tuple[int, bool]:
    """Run until two consecutive decode timings agree within `tolerance` (relative); (runs, whether they did)."""
    last = None
    for run in range(1, max_runs + 1):
        _, decode = time_once(model, ids, new_tokens)
        if last is not None and abs(decode - last) <= tolerance * max(decode, last):
            return run, True
        last = decode
    return max_runs, False


def measure_models(models: dict[str, Any], prompt_tokens: int = 128, new_tokens: int = 32,
                   batch_sizes: tuple[int, ...] = (1, 8), repeats: int = 5, warmup_max: int = 10,
                   warmup_tolerance: float = 0.1, max_seconds: float | None = None,
                   seed: int = 0) -> dict[str, list[dict]]:
    """Per model name, one entry per batch size: prefill and decode tokens/s over `repeats` interleaved rounds
    (each round times every model once, the order alternating), plus the raw per-round values for pairing."""
    names = list(models)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for b in batch_sizes:
        vocab = min(models[n].get_input_embeddings().weight.shape[0] for n in names)
        g = torch.Generator().manual_seed(seed + b)
        prompt = torch.randint(0, vocab, (b, prompt_tokens), generator=g)  # (B, T), same tokens for every model
        ids = {n: prompt.to(next(models[n].parameters()).device) for n in names}
        warm = {n: _warm_up(models[n], ids[n], new_tokens, warmup_tolerance, warmup_max) for n in names}
        pre: dict[str, list[float]] = {n: [] for n in names}
        dec: dict[str, list[float]] = {n: [] for n in names}
        start = time.perf_counter()
        for r in range(repeats):
            for n in names if r % 2 == 0 else names[::-1]:  # ABBA…: drift over time hits both models alike
                p, d = time_once(models[n], ids[n], new_tokens)
                pre[n].append(b * prompt_tokens / p)
                dec[n].append(b * new_tokens / d)
            if max_seconds is not None and r >= 2 and time.perf_counter() - start > max_seconds / len(batch_sizes):
                break
        for n in names:
            out[n].append({"batch_size": b, "prefill_tokens_per_s": _stats(pre[n]), "decode_tokens_per_s":
                           _stats(dec[n]), "warmup_runs": warm[n][0], "warm": warm[n][1],
                           "_prefill": pre[n], "_decode": dec[n]})
    return out


def compare(pruned: list[dict], baseline: list[dict], max_spread: float, seed: int = 0) -> list[dict]:
    """Paired per-round ratios pruned/baseline at each batch size: median, interval, spread, or a flag."""
    rows = []
    for p, b in zip(pruned, baseline):
        row: dict[str, Any] = {"batch_size": p["batch_size"], "flagged": False, "note": None}
        notes = []
        for what in ("decode", "prefill"):
            ratios = [x / y for x, y in zip(p[f"_{what}"], b[f"_{what}"])]
            st = _stats(ratios)
            row[f"{what}_spread"] = st["spread"]
            row[f"{what}_speedup_interval"] = _median_interval(ratios, seed)
            if len(ratios) < 2 or st["spread"] > max_spread:
                row[f"{what}_speedup"] = None
                notes.append(f"{what} ratios spread {st['spread']:.0%} of their median (> {max_spread:.0%}) over "
                             f"{len(ratios)} rounds: the machine was too busy to measure; rerun on an idle device")
            else:
                row[f"{what}_speedup"] = st["median"]
        if notes:
            row["flagged"], row["note"] = True, "; ".join(notes)
        rows.append(row)
    return rows


def _public(runs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]


def speed_record(model, baseline=None, prompt_tokens: int = 128, new_tokens: int = 32, batch_size: int = 1,
                 serving_batch_size: int = 8, repeats: int = 5, warmup_max: int = 10, warmup_tolerance: float = 0.1,
                 max_spread: float = 0.25, max_seconds: float | None = None, seed: int = 0) -> dict[str, Any]:
    """speed.json of one model, or of a pruned model with its baseline interleaved (see module doc for keys)."""
    models = {"model": model} if baseline is None else {"model": model, "baseline": baseline}
    sizes = tuple(dict.fromkeys((batch_size, serving_batch_size)))
    runs = measure_models(models, prompt_tokens, new_tokens, sizes, repeats, warmup_max, warmup_tolerance,
                          max_seconds, seed)
    first = runs["model"][0]
    record: dict[str, Any] = {
        "prefill_tokens_per_s": first["prefill_tokens_per_s"]["median"],
        "decode_tokens_per_s": first["decode_tokens_per_s"]["median"],
        "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batch_size": batch_size,
        "serving_batch_size": serving_batch_size, "repeats": repeats, "max_spread": max_spread,
        "device": str(next(model.parameters()).device), **matmul_params(model), "runs": _public(runs["model"])}
    if baseline is not None:
        b0 = runs["baseline"][0]
        record["baseline"] = {"prefill_tokens_per_s": b0["prefill_tokens_per_s"]["median"],
                              "decode_tokens_per_s": b0["decode_tokens_per_s"]["median"],
                              **matmul_params(baseline), "runs": _public(runs["baseline"])}
        record["comparison"] = compare(runs["model"], runs["baseline"], max_spread, seed)
        L, k = record["baseline"]["num_layers"], record["baseline"]["num_layers"] - record["num_layers"]
        record["ideal_speedup_layers"] = L / (L - k)
        record["ideal_speedup_params"] = ideal_speedup(record["baseline"], record)
        d = record["comparison"][0]["decode_speedup"]
        record["decode_vs_ideal"] = None if d is None else d / record["ideal_speedup_layers"]
    return record
