"""Remove decoder layers from a loaded model, in place, so that it saves and reloads as a plain HF model.

    >>> kept = remove_layers(model, drop=[1, 2, 4])     # original 0-based indices; returns the kept ones
    [0, 3, 5]

Recipe (methods.md §9.2): rebuild the layer `nn.ModuleList` from the kept indices; renumber every integer
`layer_idx` attribute inside each kept layer (the KV cache is indexed by it); set the layer count; rewrite
each per-layer config field by its rule from `families.py` (never truncate `layer_types`: each kept layer
keeps its own attention type). Embeddings and head are untouched, so tied weights stay tied.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

from layerprune.errors import UsageError
from layerprune.families import Family, decoder_layers, get_module, num_layers, spec_for, text_config


def parse_drop_spec(spec: str, num_layers: int | None = None) -> list[int]:
    """"3,5-7" → [3, 5, 6, 7] (0-based, inclusive ranges). Validates against `num_layers` when given."""
    if spec is None or not str(spec).strip():
        raise UsageError("empty --drop spec; give 0-based layer indices and inclusive ranges, e.g. 3,5-7")
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise UsageError(f"bad layer spec {part!r} in --drop {spec!r}; use integers and ranges like 3,5-7") from None
        if a < 0 or b < 0:
            raise UsageError(f"negative layer index in --drop {spec!r}; indices are 0-based and non-negative")
        if b < a:
            raise UsageError(f"descending range {part!r} in --drop; write it low-high, e.g. {b}-{a}")
        out.extend(range(a, b + 1))
    return validate_drop(out, num_layers) if num_layers is not None else out


def validate_drop(drop: Iterable[int], num_layers: int) -> list[int]:
    """Sorted drop list; rejects duplicates, out-of-range indices and removing every layer."""
    drop = [int(i) for i in drop]
    dupes = sorted({i for i in drop if drop.count(i) > 1})
    if dupes:
        raise UsageError(f"layer(s) {dupes} listed more than once; list each layer to drop once")
    bad = [i for i in drop if not 0 <= i < num_layers]
    if bad:
        raise UsageError(f"layer index {bad[0]} out of range: the model has {num_layers} layers (0-{num_layers - 1})")
    if not drop:
        raise UsageError("nothing to drop; give at least one layer index")
    if len(drop) >= num_layers:
        raise UsageError(f"cannot remove all {num_layers} layers; keep at least one")
    return sorted(drop)


def remove_layers(model: torch.nn.Module, drop: Iterable[int]) -> list[int]:
    """Remove the layers `drop` (original 0-based indices) in place; return the kept original indices."""
    spec = spec_for(model.config)
    n = num_layers(model.config)
    layers = decoder_layers(model)
    if len(layers) != n:
        raise UsageError(f"config says {n} layers but the model holds {len(layers)}; the checkpoint is inconsistent")
    drop = validate_drop(drop, n)
    kept = [i for i in range(n) if i not in set(drop)]
    _check_index_dependent(model.config, spec, kept)

    parent_path, _, attr = spec.layers.rpartition(".")
    setattr(get_module(model, parent_path), attr, torch.nn.ModuleList(layers[i] for i in kept))
    for new, old in enumerate(kept):
        _renumber(layers[old], old, new)
    rewrite_config(model.config, kept, n)
    return kept


def rewrite_config(config, kept: list[int], n: int) -> None:
    """Apply the family's per-layer rules for keeping `kept` of `n` layers; set the layer count."""
    spec = spec_for(config)
    cfg = text_config(config, spec)
    for name, rule in spec.per_layer.items():  # periods first: they write into the list fields
        if rule.kind == "period" and getattr(cfg, name, None) is not None:
            _materialize_period(cfg, name, rule, n)
    for name, rule in spec.per_layer.items():
        value = getattr(cfg, name, None)
        if value is None or rule.kind == "period":
            continue
        if rule.kind == "per_layer":
            if len(value) != n:
                raise UsageError(f"config.{name} has {len(value)} entries for {n} layers; the checkpoint is inconsistent")
            new = [value[i] for i in kept]
        elif rule.kind == "layer_indices":
            new = [kept.index(i) for i in value if i in kept]
        else:  # leading_count
            new = sum(1 for i in kept if i < value)
        setattr(cfg, name, new)
    setattr(cfg, spec.num_layers_key, len(kept))


def _materialize_period(cfg, name: str, rule, n: int) -> None:
    # Qwen-MoE's decoder_sparse_step p: layer i is sparse iff (i + 1) % p == 0, so every other layer is
    # dense, i.e. belongs in the explicit `mlp_only_layers` list; afterwards p = 1 marks no layer dense.
    period = int(getattr(cfg, name))
    if period == rule.neutral:
        return
    listed = set(getattr(cfg, rule.into) or [])
    listed |= {i for i in range(n) if (i + 1) % period != 0}
    setattr(cfg, rule.into, sorted(listed))
    setattr(cfg, name, rule.neutral)


def _renumber(layer: torch.nn.Module, old: int, new: int) -> None:
    for module in layer.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and not isinstance(idx, bool):
            if idx != old:
                raise RuntimeError(f"{type(module).__name__}.layer_idx is {idx}, expected {old}; model already pruned?")
            module.layer_idx = new


def _check_index_dependent(config, spec: Family, kept: list[int]) -> None:
    suffix_only = kept == list(range(len(kept)))
    cfg = text_config(config, spec)
    for flag, why in spec.index_dependent.items():
        if getattr(cfg, flag, False) and not suffix_only:
            raise UsageError(
                f"{config.model_type} with {flag}=True: {why}, so only the last layers can be removed exactly; "
                "drop a suffix instead"
            )



@contextlib.contextmanager
def skipped_layers(model: torch.nn.Module, skip: Iterable[int]) -> Iterator[None]:
    """Run the *unpruned* model with layers `skip` acting as identity (no cache use); restores on exit.

    A skipped layer's output is its input hidden states, which is what removal computes; used to verify
    removal and to score candidate removals without rebuilding the model.
    """
    layers = decoder_layers(model)
    handles = [layers[i].register_forward_hook(_identity_hook, with_kwargs=True) for i in skip]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _identity_hook(module, args, kwargs, output):
    hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, D)
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    return hidden
