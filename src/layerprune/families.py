"""Facts about model families, as data. Nothing else in layerprune branches on `model_type`.

Each `Family` says where a model's decoder layers and final norm are, which config key counts the layers,
whether the text config is nested (multimodal wrappers), and how every per-layer config field must be
rewritten when layers are removed. `surgery.remove_layers` applies these rules; `tests/test_config_audit.py`
fails when a transformers config grows a per-layer-looking field that no entry declares.

Rule kinds (kept = sorted original indices that survive):

* ``per_layer``      list aligned with layers          new = [old[i] for i in kept]
* ``layer_indices``  list of layer indices             new = [kept.index(i) for i in old if i in kept]
* ``leading_count``  int k meaning "layers [0, k)"     new = #{i in kept : i < k}
* ``period``         int p generating a pattern        materialized into the explicit list field ``into``
                                                       (which transformers also honours), then set to ``neutral``
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal, Mapping

from layerprune.errors import UsageError

RuleKind = Literal["per_layer", "layer_indices", "leading_count", "period"]


@dataclass(frozen=True)
class Rule:
    kind: RuleKind
    into: str | None = None  # period only: the explicit list field the pattern is written into
    neutral: int | None = None  # period only: value that makes the period a no-op afterwards


PER_LAYER = Rule("per_layer")
LAYER_INDICES = Rule("layer_indices")
LEADING_COUNT = Rule("leading_count")


@dataclass(frozen=True)
class Family:
    layers: str = "model.layers"  # dotted path (from the *ForCausalLM object) to the decoder nn.ModuleList
    final_norm: str = "model.norm"  # dotted path to the norm applied after the last layer
    num_layers_key: str = "num_hidden_layers"
    text_config: str | None = None  # attribute holding the text config in multimodal wrappers
    per_layer: Mapping[str, Rule] = field(default_factory=dict)
    # Config flags that, when truthy, make a layer's computation depend on its own index, so only a suffix
    # can be removed exactly (a later layer would change behaviour once renumbered). flag → explanation.
    index_dependent: Mapping[str, str] = field(default_factory=dict)
    # Linear modules inside a decoder layer that LoRA healing adapts: the paper's "q,k,v,o,gate,up,down" as
    # this family names them.
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # Fused MoE experts are (experts, out, in) parameters, not Linear modules: PEFT adapts them through
    # `target_parameters` (names relative to a decoder layer; dense layers of the same model have none).
    lora_parameters: tuple[str, ...] = ()
    # ReplaceMe's linear repair (`healing/linear.py`) folds a map into the module whose output is the MLP's
    # additive contribution to the residual stream: its dotted path inside a decoder layer (a Linear, or GPT-2's
    # Conv1D). Exact whenever nothing in the layer reads that output before the residual add, also for parallel
    # attention+MLP blocks (x + attn(n(x)) + mlp(n'(x))). `fold_refused` says why a family has no exact fold;
    # `fold_blockers` maps a config flag to (value that blocks, reason) for checkpoints of a foldable family.
    mlp_out: str = "mlp.down_proj"
    mlp_out_scale: str | None = None  # config key of a scalar multiplying the MLP output (granite)
    fold_refused: str | None = None
    fold_blockers: Mapping[str, tuple[object, str]] = field(default_factory=dict)
    # False when learned position embeddings are added to the token embeddings before layer 0 (a removed block
    # that starts at layer 0 is then left unrepaired: its input is not the token embedding alone).
    embeds_only_tokens: bool = True


_SLIDING = {"layer_types": PER_LAYER}
# Qwen-MoE: layer i is sparse iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
_QWEN_MOE = {
    "mlp_only_layers": LAYER_INDICES,
    "decoder_sparse_step": Rule("period", into="mlp_only_layers", neutral=1),
}

_NEOX_LORA = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
_POST_NORM = "its MLP output passes through post_feedforward_layernorm before the residual add"
_MOE = "its MLP output is a routed mixture of fused experts (a per-expert fold is not implemented)"

FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(),
    "mixtral": Family(lora_parameters=_EXPERTS, fold_refused=_MOE),
    "gemma": Family(),
    "phi3": Family(lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    "olmo2": Family(fold_refused=_POST_NORM),
    "granite": Family(mlp_out_scale="residual_multiplier"),
    "starcoder2": Family(lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"), mlp_out="mlp.c_proj"),
    # qwen2/qwen3: sliding iff use_sliding_window and i >= max_window_layers (materialized in layer_types).
    "qwen2": Family(per_layer={**_SLIDING, "max_window_layers": LEADING_COUNT}),
    "qwen3": Family(per_layer={**_SLIDING, "max_window_layers": LEADING_COUNT}),
    "qwen2_moe": Family(per_layer={**_SLIDING, "max_window_layers": LEADING_COUNT, **_QWEN_MOE},
                        lora_parameters=_EXPERTS, fold_refused=_MOE),
    "qwen3_moe": Family(per_layer={**_SLIDING, "max_window_layers": LEADING_COUNT, **_QWEN_MOE},
                        lora_parameters=_EXPERTS, fold_refused=_MOE),
    "gemma2": Family(per_layer=_SLIDING, fold_refused=_POST_NORM),
    "gemma3_text": Family(per_layer=_SLIDING, fold_refused=_POST_NORM),
    "gemma3": Family(layers="model.language_model.layers", final_norm="model.language_model.norm",
                     text_config="text_config", per_layer=_SLIDING, fold_refused=_POST_NORM),
    "olmo3": Family(per_layer=_SLIDING, fold_refused=_POST_NORM),
    "cohere2": Family(per_layer=_SLIDING),
    "smollm3": Family(per_layer={**_SLIDING, "no_rope_layers": PER_LAYER}),
    "gpt2": Family(layers="transformer.h", final_norm="transformer.ln_f", num_layers_key="n_layer",
                   index_dependent={"scale_attn_by_inverse_layer_idx": "attention is scaled by 1/(layer_idx+1)"},
                   lora_targets=("c_attn", "c_proj", "c_fc"), mlp_out="mlp.c_proj", embeds_only_tokens=False),
    "gpt_neox": Family(layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", lora_targets=_NEOX_LORA,
                       mlp_out="mlp.dense_4h_to_h"),
    "opt": Family(layers="model.decoder.layers", final_norm="model.decoder.final_layer_norm",
                  lora_targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"), mlp_out="fc2",
                  fold_blockers={"do_layer_norm_before": (False, "post-LN: the residual sum is normed after the MLP")},
                  embeds_only_tokens=False),
    "falcon": Family(layers="transformer.h", final_norm="transformer.ln_f", lora_targets=_NEOX_LORA,
                     mlp_out="mlp.dense_4h_to_h"),
}

# Config fields whose names mention layers but hold one global value (the audit test's allowlist).
GLOBAL_LAYER_FIELDS = frozenset({
    "num_hidden_layers", "n_layer", "layer_norm_eps", "layer_norm_epsilon", "do_layer_norm_before",
    "layer_norm_elementwise_affine", "_remove_final_layer_norm", "layerdrop", "no_rope_layer_interval",
    "scale_attn_by_inverse_layer_idx", "use_sliding_window",
})


def supported() -> list[str]:
    return sorted(FAMILIES)


def spec_for(config) -> Family:
    """The family entry for a transformers config; an unsupported `model_type` is a UsageError."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UsageError(
            f"model family {model_type!r} is not supported; supported: {', '.join(supported())} "
            "(add an entry to layerprune/families.py)"
        )
    return FAMILIES[model_type]


def text_config(config, spec: Family | None = None):
    """The config object that holds the layer count and per-layer fields."""
    spec = spec or spec_for(config)
    return getattr(config, spec.text_config) if spec.text_config else config


def num_layers(config) -> int:
    spec = spec_for(config)
    return int(getattr(text_config(config, spec), spec.num_layers_key))


def get_module(root, dotted: str):
    return functools.reduce(getattr, dotted.split("."), root)


def decoder_layers(model):
    """The model's decoder `nn.ModuleList` (length L)."""
    return get_module(model, spec_for(model.config).layers)


def final_norm(model):
    """The norm applied to the last layer's output; scorers hook *before* it (see methods.md §9.3)."""
    return get_module(model, spec_for(model.config).final_norm)
