"""Tiny random models for every supported family, built from transformers configs (no downloads).

Used by the tests, by `layerprune tiny` (a model to try the CLI on without a hub) and by smoke studies.

Patterned families get irregular patterns, so removing a non-suffix set changes which type lands where:
qwen2/qwen3 sliding from layer 2 on, qwen MoE with decoder_sparse_step=2 plus an explicit dense layer,
gemma3/olmo3/cohere2 with hand-written `layer_types`, smollm3 with `no_rope_layers`. Sequences in tests are
longer than the sliding window (4), so a layer with the wrong attention type changes the logits.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

L = 6
VOCAB = 260  # 256 bytes + 4 specials: the byte-level tokenizer below covers any text
_BASE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=L, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512)
_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention",
          "sliding_attention"]
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=2,
            mlp_only_layers=[2], use_sliding_window=True, sliding_window=4, max_window_layers=3)

FAMILY_KWARGS: dict[str, dict] = {
    "llama": _BASE,
    "mistral": {**_BASE, "sliding_window": 4},
    "mixtral": {**_BASE, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 4},
    "qwen2": {**_BASE, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2},
    "qwen3": {**_BASE, "head_dim": 8, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2},
    "qwen2_moe": {**_BASE, **_MOE, "shared_expert_intermediate_size": 32},
    "qwen3_moe": {**_BASE, **_MOE, "head_dim": 8},
    "gemma": {**_BASE, "head_dim": 8},
    "gemma2": {**_BASE, "head_dim": 8, "sliding_window": 4},
    "gemma3_text": {**_BASE, "head_dim": 8, "sliding_window": 4, "layer_types": _TYPES},
    "phi3": {**_BASE, "pad_token_id": 0},
    "olmo2": _BASE,
    "olmo3": {**_BASE, "sliding_window": 4, "layer_types": _TYPES},
    "cohere2": {**_BASE, "sliding_window": 4, "layer_types": _TYPES},
    "smollm3": {**_BASE, "pad_token_id": 0, "no_rope_layers": [1, 0, 1, 1, 0, 1]},
    "granite": _BASE,
    "starcoder2": {**_BASE, "sliding_window": 4},
    "gpt2": dict(n_embd=32, n_layer=L, n_head=4, vocab_size=VOCAB, n_positions=512),
    "gpt_neox": {**_BASE, "num_key_value_heads": 4},
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=L, num_attention_heads=4, vocab_size=VOCAB,
                word_embed_proj_dim=32, max_position_embeddings=512, pad_token_id=1),
    "falcon": dict(hidden_size=32, num_hidden_layers=L, num_attention_heads=4, vocab_size=VOCAB),
    "gemma3": dict(
        text_config={**_BASE, "head_dim": 8, "sliding_window": 4, "layer_types": _TYPES},
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4,
    ),
}


def tiny_config(family: str, num_layers: int = L, **overrides):
    """A small config of `family` with `num_layers` layers (patterned fields stretched to fit); `overrides`
    replace config fields (e.g. head_dim=32 for engines whose kernels need it)."""
    from layerprune.families import supported

    if family not in FAMILY_KWARGS:
        from layerprune.errors import UsageError

        raise UsageError(f"no tiny config for family {family!r}; choose one of: {', '.join(supported())}")
    kwargs = _resize({**FAMILY_KWARGS[family], **overrides}, num_layers)
    return AutoConfig.for_model(family, **kwargs)


def _resize(kwargs: dict, n: int) -> dict:
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, dict):
            out[k] = _resize(v, n)
        elif k in ("num_hidden_layers", "n_layer"):
            out[k] = n
        elif isinstance(v, list) and len(v) == L:
            out[k] = [v[i % L] for i in range(n)]
        elif k == "mlp_only_layers":
            out[k] = [i for i in v if i < n]
        else:
            out[k] = v
    return out


def tiny_model(family: str, seed: int = 0, num_layers: int = L, **overrides):
    """A tiny fp32 model in eval mode with seeded random weights (norm weights perturbed too)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, num_layers, **overrides), dtype=torch.float32).eval()
    with torch.no_grad():  # random norms/biases: a zero-init gain would hide a wrong layer
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + 4 specials (ids 0-3); encodes any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def save_tiny(family: str, path, seed: int = 0, num_layers: int = L, **overrides):
    """Save a tiny model (+ tokenizer) to `path` as a plain HF checkpoint; return the path."""
    model = tiny_model(family, seed, num_layers, **overrides)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
