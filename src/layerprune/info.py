"""`model_info`: family, layer count, per-layer config fields, parameter counts and provenance of a model.

Parameters are counted on the meta device (no weights are read), so this is instant for any model size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerprune.families import decoder_layers, num_layers, spec_for, text_config
from layerprune.loading import load_config
from layerprune.provenance import read_json


def model_info(model: str, trust_remote_code: bool = False) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(model, trust_remote_code)
    spec = spec_for(config)
    cfg = text_config(config, spec)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in net.parameters())
    in_layers = sum(p.numel() for p in decoder_layers(net).parameters())
    info: dict[str, Any] = {
        "model": model,
        "family": config.model_type,
        "num_layers": num_layers(config),
        "per_layer": {k: getattr(cfg, k) for k in spec.per_layer if getattr(cfg, k, None) is not None},
        "parameters": {"total": total, "decoder_layers": in_layers, "per_layer_mean": in_layers // max(1, num_layers(config))},
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
    }
    pruning = Path(model).expanduser() / "pruning.json"
    if pruning.is_file():
        info["pruning"] = read_json(pruning)
    return info


def format_info(info: dict[str, Any]) -> str:
    p = info["parameters"]
    lines = [
        f"model:       {info['model']}",
        f"family:      {info['family']}",
        f"layers:      {info['num_layers']}",
        f"parameters:  {p['total']:,} total, {p['decoder_layers']:,} in decoder layers "
        f"({100 * p['decoder_layers'] / max(1, p['total']):.1f}%)",
    ]
    for name, value in info["per_layer"].items():
        lines.append(f"{name + ':':<13}{value}")
    pr = info.get("pruning")
    if pr:
        lines += [
            f"pruned from: {pr['source']['model']} ({pr['original_num_layers']} layers, {pr['source']['fingerprint']})",
            f"removed:     {pr['removed']} (original numbering, method {pr['method']})",
            f"kept:        {pr['kept']}",
            f"created:     {pr['created']} with layerprune {pr['versions']['layerprune']}, "
            f"transformers {pr['versions']['transformers']}",
        ]
    return "\n".join(lines)
