"""Layer removal is exact for every family: pruned == original-with-layers-skipped, cache == no cache,
save → reload gives identical logits and the right per-layer config."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from layerprune.families import FAMILIES, decoder_layers, spec_for, text_config
from layerprune.surgery import remove_layers, skipped_layers
from layerprune.tiny import FAMILY_KWARGS, L, VOCAB, tiny_model

DROPS = {"non_suffix": [1, 2, 4], "suffix": [4, 5]}
# Attributes a decoder layer caches at construction from its index; each kept layer must keep its own.
CACHED = ("sliding_window", "layer_type", "attention_type", "is_sliding", "use_rope", "scaling")


def test_every_family_has_a_tiny_model():
    assert set(FAMILY_KWARGS) == set(FAMILIES)


def _ids(seed=0, batch=2, length=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def _signature(layer):
    """What a layer is, beyond its weights: module classes and index-derived cached attributes."""
    return [(name, type(m).__name__, *(repr(getattr(m, a, None)) for a in CACHED)) for name, m in layer.named_modules()]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.mark.parametrize("kind", sorted(DROPS))
def test_removal_is_exact(family, kind, tmp_path):
    drop = DROPS[kind]
    original = tiny_model(family)
    pruned = copy.deepcopy(original)
    kept = remove_layers(pruned, drop)
    assert kept == [i for i in range(L) if i not in drop]
    ids = _ids()
    with torch.no_grad(), skipped_layers(original, drop):
        want = original(ids, use_cache=False).logits
    got = pruned(ids, use_cache=False).logits.detach()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    # per-layer config fields are the originals restricted to the kept layers
    spec = spec_for(original.config)
    old_cfg, new_cfg = text_config(original.config, spec), text_config(pruned.config, spec)
    assert getattr(new_cfg, spec.num_layers_key) == len(kept)
    for name, rule in spec.per_layer.items():
        old = getattr(old_cfg, name, None)
        if old is not None and rule.kind == "per_layer":
            assert getattr(new_cfg, name) == [old[i] for i in kept], name

    # save → reload: no missing/unexpected weights, same logits, every layer is what it was
    pruned.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, use_cache=False).logits, want, rtol=0, atol=1e-5)
    old_layers, new_layers = decoder_layers(original), decoder_layers(reloaded)
    assert [_signature(new_layers[j]) for j in range(len(kept))] == [
        _signature(_renumbered(old_layers[i], j)) for j, i in enumerate(kept)
    ]


def _renumbered(layer, j):
    """A copy of an original layer with its layer_idx set to j (what reload builds at position j)."""
    layer = copy.deepcopy(layer)
    for m in layer.modules():
        if isinstance(getattr(m, "layer_idx", None), int):
            m.layer_idx = j
    return layer


def test_generate_with_cache_equals_without(family):
    model = tiny_model(family, seed=1)
    remove_layers(model, DROPS["non_suffix"])
    ids = _ids(seed=3, batch=1, length=6)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.shape[1] == ids.shape[1] + 10
    assert torch.equal(cached, uncached)


def test_tied_embeddings_stay_tied():
    model = tiny_model("gemma2")
    assert model.config.tie_word_embeddings
    remove_layers(model, [0, 3])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_qwen_moe_period_is_materialized():
    model = tiny_model("qwen2_moe")
    # decoder_sparse_step=2 → layers 0, 2, 4 dense, plus mlp_only_layers=[2]; dense = {0, 2, 4}
    remove_layers(model, [1, 2])  # kept 0, 3, 4, 5 → dense original {0, 4} → new {0, 2}
    assert model.config.decoder_sparse_step == 1
    assert model.config.mlp_only_layers == [0, 2]
    assert model.config.max_window_layers == 1  # original 3 → kept layers below 3: just 0


def test_gpt2_index_dependent_scaling_allows_only_suffix():
    from transformers import GPT2Config

    from layerprune.errors import UsageError

    cfg = GPT2Config(**FAMILY_KWARGS["gpt2"], scale_attn_by_inverse_layer_idx=True)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(UsageError, match="suffix"):
        remove_layers(copy.deepcopy(model), [1])
    remove_layers(model, [4, 5])  # a suffix is exact
    assert model.config.n_layer == 4
