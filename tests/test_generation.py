"""generate_batch on a tiny random Llama with a real BPE tokenizer: greedy equals HF generate, stop strings
cut like lm-eval, finished rows leave the batch, seeded sampling is repeatable."""

from __future__ import annotations

import re

import pytest
import torch

from fixtures.tiny_lm import build_tiny_lm
from layerprune.errors import UsageError
from layerprune.evaluation.generation import cut_at_stops, generate_batch
from layerprune.evaluation.requests import GenerationRequest

PROMPTS = [
    "Question: Natalia sold clips to 48 of her friends in April",
    "Q: There are 15 trees",
    "def add(a, b):\n    return",
    "What is (4 * 4) * 1? Answer:",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Answer:",
    "$1,000.50 costs",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_lm()


def hf_greedy(model, tokenizer, prompt: str, max_new: int = MAX_NEW) -> str:
    """Reference: one prompt at a time through model.generate(do_sample=False)."""
    enc = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=max_new)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def stop_from(text: str) -> str | None:
    """A stop string taken from the reference text itself: the first two-letter word chunk after char 4."""
    match = re.search(r"[A-Za-z]{2}", text[4:])
    return match.group(0) if match else None


def test_greedy_batched_equals_hf_generate_one_by_one(tiny):
    model, tokenizer = tiny
    refs = [hf_greedy(model, tokenizer, p) for p in PROMPTS]
    assert len(set(refs)) > 3, "the tiny model should produce varied text"
    results = generate_batch(model, tokenizer, [GenerationRequest(p, max_new_tokens=MAX_NEW) for p in PROMPTS], 3)
    assert [r.texts for r in results] == [(ref,) for ref in refs]


def test_shared_header_is_prefilled_once_and_changes_nothing(tiny):
    model, tokenizer = tiny
    header = "".join(f"Question: {i} plus {i}?\nAnswer: {2 * i}\n\n" for i in range(1, 6))  # 5-shot-like
    prompts = [header + p for p in PROMPTS]
    refs = [hf_greedy(model, tokenizer, p) for p in prompts]
    positions = []  # input positions per forward: [B, T] → B·T
    handle = model.get_input_embeddings().register_forward_pre_hook(lambda m, a: positions.append(a[0].numel()))
    try:
        results = generate_batch(model, tokenizer, [GenerationRequest(p, max_new_tokens=MAX_NEW) for p in prompts], 3)
    finally:
        handle.remove()
    assert [r.texts for r in results] == [(ref,) for ref in refs]
    shared = len(tokenizer(header)["input_ids"])
    own = max(len(tokenizer(p)["input_ids"]) - shared for p in prompts)  # the longest prompt's own tokens
    # the header runs once, alone; then every prompt runs only its own tokens (right-padded to `own`)
    assert shared > 32 and positions[0] == shared and max(positions[1:]) < shared
    assert sum(positions[1:]) <= len(prompts) * (own + MAX_NEW)


def test_stop_strings_cut_per_request(tiny):
    model, tokenizer = tiny
    refs = [hf_greedy(model, tokenizer, p) for p in PROMPTS]
    stops = [stop_from(ref) for ref in refs]
    assert sum(s is not None for s in stops) >= 4
    reqs = [GenerationRequest(p, until=(s,) if s else (), max_new_tokens=MAX_NEW) for p, s in zip(PROMPTS, stops)]
    got = [r.texts[0] for r in generate_batch(model, tokenizer, reqs, batch_size=3)]
    for ref, stop, text in zip(refs, stops, got):
        expected = ref.split(stop)[0] if stop else ref
        assert text == expected
        if stop:
            assert stop not in text and len(text) < len(ref)


def test_batch_size_does_not_change_greedy_output(tiny):
    model, tokenizer = tiny
    reqs = [GenerationRequest(p, until=("\n",), max_new_tokens=MAX_NEW) for p in PROMPTS]
    one = generate_batch(model, tokenizer, reqs, batch_size=1)
    assert generate_batch(model, tokenizer, reqs, batch_size=4) == one
    assert generate_batch(model, tokenizer, reqs, batch_size=16) == one


def test_finished_rows_leave_the_batch(tiny):
    model, tokenizer = tiny
    batch_sizes: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: batch_sizes.append(i[0].shape[0]))
    try:
        reqs = [GenerationRequest(PROMPTS[0], max_new_tokens=2), GenerationRequest(PROMPTS[1], max_new_tokens=12),
                GenerationRequest(PROMPTS[2], max_new_tokens=6)]
        results = generate_batch(model, tokenizer, reqs, batch_size=3)
    finally:
        hook.remove()
    # the prompts are prefilled as one batch, then the batch decodes 3 rows, then rows leave after 2 and 6
    # tokens: 3 / 3 / 2,2,2,2 / 1 x6 (EOS may end rows sooner)
    prefill, decode = batch_sizes[:1], batch_sizes[1:]
    assert prefill == [3] and decode[0] == 3 and decode == sorted(decode, reverse=True)
    assert len(decode) <= 11 and decode[-1] == 1
    for req, res in zip(reqs, results):  # each row got its own token budget
        assert res.texts[0] == hf_greedy(model, tokenizer, req.context, req.max_new_tokens)


def test_finished_rows_are_replaced_by_waiting_prompts(tiny):
    """Continuous batching: with 2 slots, one 12-token row runs while four short rows pass through the other slot,
    so decoding takes at most 11 steps after the first token (static batches of 2 would need 11 + 2 + 2)."""
    model, tokenizer = tiny
    shapes: list[tuple[int, int]] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    budgets = [2, 3, 3, 3, 12]  # the longest prompt (decoded first, as lm-eval orders) has the longest budget
    reqs = [GenerationRequest(p, max_new_tokens=n) for p, n in zip(PROMPTS, budgets)]
    try:
        results = generate_batch(model, tokenizer, reqs, batch_size=2)
    finally:
        hook.remove()
    decode = [b for b, t in shapes if t == 1]
    assert len(decode) <= max(budgets) - 1 and max(b for b, _ in shapes) <= 2
    assert decode.count(2) >= len(decode) - 2, "the second slot should be refilled while prompts wait"
    for req, res in zip(reqs, results):
        assert res.texts[0] == hf_greedy(model, tokenizer, req.context, req.max_new_tokens)
        assert res.finish_reasons[0] in ("stop", "length") and 1 <= res.generated_tokens[0] <= req.max_new_tokens


def test_sampling_is_seeded_and_independent_of_batching(tiny):
    model, tokenizer = tiny
    reqs = [GenerationRequest(p, max_new_tokens=12, temperature=0.9, top_p=0.95, top_k=50, num_samples=3, seed=7)
            for p in PROMPTS[:3]]
    first = generate_batch(model, tokenizer, reqs, batch_size=2)
    assert all(len(r.texts) == 3 for r in first)
    assert len(set(first[0].texts)) > 1, "three samples of one prompt should differ"
    assert generate_batch(model, tokenizer, reqs, batch_size=5) == first
    other_seed = [GenerationRequest(r.context, max_new_tokens=12, temperature=0.9, num_samples=3, seed=8) for r in reqs]
    assert generate_batch(model, tokenizer, other_seed, batch_size=2) != first


def test_nucleus_warper_keeps_what_transformers_top_p_keeps():
    """The sort-free top-p keeps exactly the ids (and scores) of transformers' `TopPLogitsWarper` on peaked rows
    (nucleus among the candidates), flat rows (its fallback) and rows a top-k already cut."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from layerprune.evaluation.decoding import NucleusWarper

    gen = torch.Generator().manual_seed(0)
    paths = torch.zeros(3, dtype=torch.long)  # rows settled among 64 candidates, among 512, by the full sort
    for sharpness in (0.3, 1.0, 3.0, 4.0, 5.0, 6.0, 10.0, 30.0):
        for top_p in (0.5, 0.9, 0.95, 0.99):
            scores = torch.randn(32, 32_768, generator=gen) * sharpness  # (n, V) fp32
            for cut in (None, 40):
                x = scores if cut is None else TopKLogitsWarper(cut)(None, scores.clone())
                want = TopPLogitsWarper(top_p)(None, x.clone())
                got = NucleusWarper(top_p, candidates=(64, 512))(None, x.clone())
                assert torch.equal(got, want), (sharpness, top_p, cut)
                size = (~want.isinf()).sum(dim=-1)  # (n,) nucleus sizes
                paths += torch.stack([(size < 64).sum(), ((size >= 64) & (size < 512)).sum(), (size >= 512).sum()])
    assert bool((paths > 50).all()), f"every path should be exercised: {paths.tolist()}"


def test_top_k_one_is_greedy(tiny):
    model, tokenizer = tiny
    sampled = generate_batch(model, tokenizer, [GenerationRequest(PROMPTS[0], max_new_tokens=MAX_NEW, temperature=1.0,
                                                                  top_k=1, seed=3)])
    assert sampled[0].texts[0] == hf_greedy(model, tokenizer, PROMPTS[0])


def test_cut_at_stops_uses_earliest_stop():
    assert cut_at_stops("a b\nQuestion: c\n\nd", ["\n\n", "Question:"]) == "a b\n"
    assert cut_at_stops("no stop here", ["Q:"]) == "no stop here"


def test_bad_requests_raise_usage_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(UsageError, match="greedy samples"):
        generate_batch(model, tokenizer, [GenerationRequest("x", num_samples=2)])
    with pytest.raises(UsageError, match="batch size"):
        generate_batch(model, tokenizer, [GenerationRequest("x")], batch_size=0)
    with pytest.raises(UsageError, match="max_new_tokens"):
        generate_batch(model, tokenizer, [GenerationRequest("x", max_new_tokens=10_000)])


def test_left_truncation_keeps_the_end_of_a_long_prompt(tiny):
    model, tokenizer = tiny
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 200  # far beyond 512 positions
    got = generate_batch(model, tokenizer, [GenerationRequest(long_prompt, max_new_tokens=8)])[0].texts[0]
    ids = tokenizer(long_prompt)["input_ids"][-(512 - 8) :]
    out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8)
    assert got == tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def _variant(attn: str = "sdpa", sliding_window: int | None = None):
    """The tiny fixture's weights under another attention implementation or as a sliding-window Mistral."""
    from transformers import AutoModelForCausalLM, MistralConfig

    model, tokenizer = build_tiny_lm()
    if sliding_window is None:
        return AutoModelForCausalLM.from_config(model.config, attn_implementation=attn).eval(), tokenizer, model
    cfg = model.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        cfg.pop(key, None)
    config = MistralConfig(**{**cfg, "sliding_window": sliding_window, "head_dim": 16})
    other = AutoModelForCausalLM.from_config(config).eval()
    other.load_state_dict(model.state_dict())
    return other, tokenizer, model


@pytest.mark.parametrize("attn,window", [("eager", None), ("sdpa", 6)], ids=["eager-slots", "sliding-static"])
def test_greedy_equals_hf_generate_on_eager_and_sliding_window_models(attn, window):
    """eager attention runs the slot cache with an additive mask; a sliding-window cache takes the static path."""
    from layerprune.evaluation.generation import _continuous_ok

    model, tokenizer, base = _variant(attn, window)
    if window is None:
        model.load_state_dict(base.state_dict())
    assert _continuous_ok(model) == (window is None)
    refs = [hf_greedy(model, tokenizer, p, 16) for p in PROMPTS[:5]]
    results = generate_batch(model, tokenizer, [GenerationRequest(p, max_new_tokens=16) for p in PROMPTS[:5]], 2)
    assert [r.texts[0] for r in results] == refs


def test_repetition_penalty_of_the_generation_config_as_hf_generate(tiny):
    model, tokenizer = tiny
    model.generation_config.repetition_penalty = 1.3
    model.generation_config.no_repeat_ngram_size = 3  # order-sensitive: applied per row on its exact ids
    try:
        refs = [hf_greedy(model, tokenizer, p) for p in PROMPTS]
        results = generate_batch(model, tokenizer, [GenerationRequest(p, max_new_tokens=MAX_NEW) for p in PROMPTS], 3)
    finally:
        model.generation_config.repetition_penalty = 1.0
        model.generation_config.no_repeat_ngram_size = 0
    assert [r.texts[0] for r in results] == refs
    assert refs != [hf_greedy(model, tokenizer, p) for p in PROMPTS], "the settings should change the text"


def test_unsupported_generation_config_setting_is_a_usage_error(tiny):
    model, tokenizer = tiny
    model.generation_config.num_beams = 4
    try:
        with pytest.raises(UsageError, match="num_beams"):
            generate_batch(model, tokenizer, [GenerationRequest("x", max_new_tokens=4)])
    finally:
        model.generation_config.num_beams = 1
