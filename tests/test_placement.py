"""Multi-GPU correctness without GPUs: the placement decision with devices and memory passed in, KV-cache row
selection on each layer's own device, and models freed between study steps."""

import gc
import weakref
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from layerprune.evaluation.cache_rows import select_cache_rows
from layerprune.loading import load_config, placement, weight_bytes
from layerprune.tiny import save_tiny, tiny_config

GiB = 2**30


def test_a_model_that_fits_one_gpu_is_not_split():
    eight_b = 16 * GiB  # an 8B model in bf16
    assert placement("cuda", [80 * GiB, 80 * GiB], eight_b, current=0) == "cuda:0"
    assert placement("cuda", [80 * GiB, 80 * GiB], eight_b, current=1) == "cuda:1"  # the step's assigned GPU


def test_split_only_when_asked_or_when_it_does_not_fit():
    assert placement("cuda", [24 * GiB, 24 * GiB], 30 * GiB) == "auto"
    assert placement("cuda", [18 * GiB, 80 * GiB], 16 * GiB) == "auto"  # 16 GiB × headroom > the current GPU's 18
    assert placement("split", [80 * GiB, 80 * GiB], 1 * GiB) == "auto"
    assert placement("cuda", [80 * GiB], 200 * GiB) == "cuda"  # one GPU: nothing to split over
    assert placement("cpu", [], 1) == "cpu" and placement("cuda:1", [GiB, GiB], 5 * GiB) == "cuda:1"


def test_weight_bytes_counts_parameters_in_the_load_dtype(tmp_path):
    save_tiny("llama", tmp_path / "m", num_layers=2)
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    n = sum(p.numel() for p in model.parameters())
    assert weight_bytes(load_config(str(tmp_path / "m")), torch.bfloat16) == 2 * n
    assert weight_bytes(tiny_config("llama", 2), torch.float32) == 4 * n


def test_cache_rows_are_indexed_on_each_layers_device():
    """Layer 0 on the CPU, layer 1 on the meta device (as two GPUs would be): each layer gets an index tensor
    made on its own device (transformers indexes with whatever it is given), and the right rows survive."""
    cache = DynamicCache()
    k0 = torch.arange(3 * 2 * 4 * 8, dtype=torch.float32).reshape(3, 2, 4, 8)  # [B, heads, T, d]
    cache.update(k0, k0 + 1, 0)
    cache.update(k0.to("meta"), k0.to("meta"), 1)
    seen = []
    for layer in cache.layers:
        def record(index, layer=layer, select=layer.batch_select_indices):
            seen.append((index.device.type, layer.keys.device.type))
            select(index)
        layer.batch_select_indices = record
    select_cache_rows(cache, [2, 0])
    assert seen == [("cpu", "cpu"), ("meta", "meta")]
    assert torch.equal(cache.layers[0].keys, k0[[2, 0]]) and torch.equal(cache.layers[0].values, k0[[2, 0]] + 1)
    assert cache.layers[1].keys.shape == (2, 2, 4, 8) and cache.layers[1].keys.device.type == "meta"


def test_generation_and_scoring_select_cache_rows_through_the_helper():
    """No call site indexes a cache with one device's index: every batch selection goes through the helper."""
    src = Path(__file__).resolve().parents[1] / "src" / "layerprune" / "evaluation"
    for name in ("generation.py", "hf_backend.py"):
        text = (src / name).read_text()
        assert "batch_select_indices(" not in text and "select_cache_rows(cache" in text, name


def test_models_are_freed_between_steps(tmp_path, monkeypatch, data_dir):
    """A weak reference to the model a step loaded is dead once the step is over (the study frees it)."""
    import layerprune.loading as loading
    from layerprune.study.config import StudyConfig
    from layerprune.study.execute import StepContext, produce
    from layerprune.study.plan import make_plan
    from layerprune.study.steps import RUNNERS
    from layerprune.study.store import Store

    loaded: list[weakref.ref] = []
    real = loading.load_model

    def recording(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, tok

    monkeypatch.setattr(loading, "load_model", recording)
    cfg = StudyConfig.model_validate({
        "models": [{"name": "m", "tiny": {"family": "llama", "layers": 2}}],
        "pruning": {"criteria": ["reverse"], "num_drop": [1]},
        "eval": {"tasks": ["arc_easy"], "limit": 2, "data_dir": str(data_dir)},
        "speed": {"prompt_tokens": 4, "new_tokens": 2, "repeats": 1, "serving_batch_size": 1, "warmup_max": 1}})
    store = Store(tmp_path)
    for step in make_plan(cfg).steps:
        produce(StepContext(cfg, step, store, tmp_path), RUNNERS[step.kind])
        assert all(ref() is None for ref in loaded), step.label  # the step's model is gone once it is over
    assert len(loaded) >= 6  # score, 2 evals, speed, pruned speed + its baseline (and prune, when it sees the hook)
