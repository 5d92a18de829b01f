"""Fails when a family's transformers config holds a per-layer-looking field the family table does not declare,
so a transformers upgrade cannot silently break removal (methods.md §9.2, step 5)."""

import pytest
from transformers import AutoConfig

from layerprune.families import FAMILIES, GLOBAL_LAYER_FIELDS, text_config
from layerprune.tiny import tiny_config


def _layerish(cfg, num_layers):
    """Fields that look per-layer: a list of length L, or an int/list-of-int whose name mentions layers."""
    out = []
    for name, value in cfg.to_dict().items():
        if isinstance(value, dict):
            continue
        if isinstance(value, (list, tuple)) and len(value) == num_layers and num_layers > 1:
            out.append(name)
        elif "layer" in name.lower() and (
            isinstance(value, int) or (isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value))
        ):
            out.append(name)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("which", ["tiny", "default"])
def test_every_per_layer_field_is_declared(family, which):
    config = tiny_config(family) if which == "tiny" else AutoConfig.for_model(family)
    spec = FAMILIES[family]
    cfg = text_config(config, spec)
    declared = set(spec.per_layer) | set(spec.index_dependent) | GLOBAL_LAYER_FIELDS | {spec.num_layers_key}
    undeclared = sorted(set(_layerish(cfg, getattr(cfg, spec.num_layers_key))) - declared)
    assert not undeclared, (
        f"{family}: config fields {undeclared} look per-layer but families.py does not declare them; "
        "add a rule (per_layer / layer_indices / leading_count / period) or list them as global"
    )


def test_audit_catches_an_undeclared_field():
    config = tiny_config("llama")
    config.kv_sharing_layers = [0, 2]  # a made-up per-layer field a future transformers might add
    assert "kv_sharing_layers" in _layerish(config, config.num_hidden_layers)
