"""The checkpoint's generation_config.json applies in our generation loop as in `model.generate` under lm-eval.

A tiny random Qwen2 carries the real Qwen2.5-7B-Instruct tokenizer and generation_config.json
(repetition_penalty 1.05, EOS ids 151645/151643): lm-eval 0.4.13 itself, offline, and our gsm8k task give the
same greedy generations; without the penalty ours would differ (so the comparison can fail). Sampled rows get
the same processors (checked against transformers' own processor on the same logits)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval_helpers import DATA_DIR, write_lmeval_gsm8k
from layerprune.evaluation.decoding import CheckpointSettings, Chooser
from layerprune.evaluation.generation import generate_batch
from layerprune.evaluation.requests import GenerationRequest

QWEN = Path(__file__).resolve().parents[1] / "../shared/models/qwen2.5-7b-instruct"
LIMIT, MAX_GEN = 3, 24
needs_qwen = pytest.mark.skipif(not (QWEN / "tokenizer.json").is_file(),
                                reason="../shared/models/qwen2.5-7b-instruct (real tokenizer and config) absent")


def tiny_qwen(path: Path) -> Path:
    """A 2-layer random Qwen2 with the real Qwen2.5 tokenizer and generation_config.json, saved to `path`."""
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(QWEN)
    config = Qwen2Config(vocab_size=152064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # a mild pull towards repeating seen tokens, so that the 1.05 penalty changes text
        model.lm_head.weight.add_(0.3 * model.model.embed_tokens.weight)
    model.generation_config = GenerationConfig.from_pretrained(QWEN)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return tiny_qwen(tmp_path_factory.mktemp("qwen") / "model")


@needs_qwen
def test_settings_read_from_the_real_generation_config(qwen_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(qwen_dir)
    settings = CheckpointSettings.of(model, AutoTokenizer.from_pretrained(qwen_dir))
    record = settings.record()
    assert record["repetition_penalty"] == 1.05 and set(record["eos_token_ids"]) == {151645, 151643}
    assert "top_p" not in record  # the request's own sampling parameters win over the checkpoint's 0.8


@pytest.mark.slow  # ~30 s: lm-eval builds its task and runs HFLM
@needs_qwen
@pytest.mark.skipif(not (DATA_DIR / "gsm8k").is_dir(), reason="shared data folder absent")
def test_greedy_gsm8k_equals_lm_eval_with_qwen_generation_config(qwen_dir, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprune.evaluation.hf_backend import HFBackend
    from layerprune.evaluation.runner import run_task
    from layerprune.evaluation.tasks.base import TaskOptions
    from layerprune.evaluation.tasks.generative import GSM8K

    (tmp_path / "tasks").mkdir()
    name = write_lmeval_gsm8k(tmp_path / "tasks", MAX_GEN)
    lm = HFLM(pretrained=str(qwen_dir), device="cpu", batch_size=1, dtype="float32")
    out = simple_evaluate(model=lm, tasks=[name], limit=LIMIT, log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False))
    ref = {s["doc_id"]: s["resps"][0][0] for s in out["samples"][name] if s["filter"] == "strict-match"}

    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    backend = HFBackend(model, tokenizer, batch_size=2, progress=False)
    _, rows = run_task(GSM8K(), backend, TaskOptions(limit=LIMIT, max_new_tokens=MAX_GEN))
    ours = [r["resps"][0] for r in rows]
    assert ours == [ref[i] for i in range(LIMIT)]
    assert any(ours), "the tiny model should write something"
    assert backend.info()["generation_config"]["repetition_penalty"] == 1.05

    model.generation_config.repetition_penalty = 1.0  # without the checkpoint's penalty: not lm-eval's text
    _, plain = run_task(GSM8K(), HFBackend(model, tokenizer, batch_size=2, progress=False),
                        TaskOptions(limit=LIMIT, max_new_tokens=MAX_GEN))
    assert [r["resps"][0] for r in plain] != ours


@needs_qwen
def test_sampled_rows_get_the_penalty_and_the_request_wins(qwen_dir):
    """A sampled request with top_k=1 is greedy over the *penalized* scores: equal to model.generate greedy
    with the checkpoint's penalty, although generation_config.json says top_k 20, top_p 0.8, T 0.7."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    prompt = "<|im_start|>user\nHow many apples are left if I eat two of five?<|im_end|>\n<|im_start|>assistant\n"
    enc = tokenizer(prompt, return_tensors="pt")
    ref = model.generate(**enc, do_sample=False, max_new_tokens=16)
    ref_text = tokenizer.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    got = generate_batch(model, tokenizer, [GenerationRequest(prompt, max_new_tokens=16, temperature=0.9,
                                                              top_k=1, seed=1)])
    assert got[0].texts[0] == ref_text

    settings = CheckpointSettings.of(model, tokenizer)
    plan = Chooser(settings).plan(0.9, 1.0, 0, prompt_len=3)
    ids = torch.tensor([[5, 9, 5, 7]])
    scores = torch.randn(1, 152064)
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    expected = RepetitionPenaltyLogitsProcessor(1.05)(ids, scores.clone())
    assert torch.equal(plan.processors(ids, scores.clone()), expected)
