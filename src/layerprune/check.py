"""Engine parity check: does a (pruned) checkpoint compute the same thing in vLLM as in Hugging Face?

    report = check_engines("pruned/", engine="vllm", num_prompts=16)   # report["passed"], report["first_divergence"]

Engines that rebuild per-layer settings from the layer index (e.g. a sliding/full attention pattern taken
from `layer_idx % 2` rather than the config's `layer_types`) compute a different model once layers are
removed; this is how a user finds out before serving one.

For each of N prompts (rendered with the chat template when the tokenizer has one), vLLM decodes greedily
with the top-`k` log-probabilities of every step. The HF model then reads prompt + vLLM's tokens in one
forward pass (teacher forcing) and gives fp32 log-probabilities at the same positions. Per step:

* greedy agreement: HF's argmax is vLLM's token, or the two are tied within `atol`. Agreement at every step
  means HF's own greedy generation is the same text.
* log-probability agreement: |log p_vLLM(token) − log p_HF(token)| ≤ `atol` for the chosen token.

The checkpoint's generation config is *not* applied (no repetition penalty): this compares the models.
The first step that fails either test is the first divergence; `passed` is False when there is one.
Default `atol`: 1e-3 in float32, 0.1 in bfloat16/float16 (the engines' kernels differ in rounding).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from layerprune import provenance
from layerprune.errors import UsageError

ATOL = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.1}
TOP_K = 5  # log-probabilities vLLM returns per step (the chosen token's is always among them)
BASE_PROMPTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in two sentences why the sky is blue.",
    "List three uses of a paperclip.",
    "Compute 17 * 23 and show your steps.",
    "Translate 'good morning, how are you?' into French.",
    "def is_balanced(s):\n    \"\"\"Return True if the brackets in s are balanced.\"\"\"\n",
    "The capital of Australia is",
)


def check_prompts(tokenizer, n: int) -> list[str]:
    """N prompts from a fixed, varied list (numbered when N exceeds it), chat-templated when possible."""
    from layerprune.healing.chat import has_template, render_prompt, with_system

    texts = [BASE_PROMPTS[i % len(BASE_PROMPTS)] + (f" (variant {i // len(BASE_PROMPTS)})" if i >= len(BASE_PROMPTS)
                                                      else "") for i in range(n)]
    if has_template(tokenizer):
        return [render_prompt(tokenizer, with_system([{"role": "user", "content": t}])) for t in texts]
    return texts


def check_engines(model: str, engine: str = "vllm", num_prompts: int = 16, max_new_tokens: int = 32,
                  atol: float | None = None, dtype: str | None = None, device: str = "cpu", settings=None,
                  out: str | Path | None = None, progress: bool = True, backend=None) -> dict:
    """Compare greedy generations and top-token log-probabilities of `engine` against the HF engine.
    `backend`: an open `VLLMBackend` of `model` to reuse (left open); else one is started and stopped."""
    from layerprune.evaluation.requests import GenerationRequest
    from layerprune.evaluation.vllm_backend import VLLMBackend, VLLMSettings, check_engine
    from layerprune.loading import load_model

    if check_engine(engine) == "hf":
        raise UsageError("--engine hf would compare the HF engine with itself; use --engine vllm")
    if num_prompts < 1 or max_new_tokens < 1:
        raise UsageError("--prompts and --max-new-tokens must be at least 1")
    start = time.perf_counter()
    settings = settings or VLLMSettings()
    if dtype and not settings.dtype:
        settings = replace(settings, dtype=dtype)
    own = backend is None
    backend = VLLMBackend(str(model), settings, progress=progress) if own else backend
    tok, dtype_used = backend.tokenizer, backend.dtype
    tol = ATOL.get(dtype_used, 0.1) if atol is None else atol
    requests = [GenerationRequest(p, max_new_tokens=max_new_tokens) for p in check_prompts(tok, num_prompts)]
    kept, backend.gen_defaults = backend.gen_defaults, {}  # compare the models, not the generation configs
    try:
        outs = [o[0] for o in backend.run(requests, logprobs=TOP_K)]
        prompts = [backend.prompt_ids(r) for r in requests]
    finally:
        backend.gen_defaults = kept
        info = backend.info()
        if own:
            backend.close()
    hf, _ = load_model(str(model), dtype=dtype_used, device=device, tokenizer=False)
    per_prompt, first, worst = [], None, 0.0
    for i, (ids, o) in enumerate(zip(prompts, outs)):
        gen = list(o.token_ids)
        row = _compare(hf, ids, gen, o.logprobs, tol)
        worst = max(worst, row["max_abs_logprob_diff"])
        if row["divergence"] is not None and first is None:
            d = row["divergence"]
            first = {"prompt": i, **d, "vllm_text": tok.decode(gen[: d["step"] + 1]),
                     "hf_token_text": tok.decode([d["hf_token"]]), "vllm_token_text": tok.decode([d["vllm_token"]])}
        per_prompt.append({"prompt": i, "tokens": len(gen), "agree": row["divergence"] is None,
                           "max_abs_logprob_diff": row["max_abs_logprob_diff"]})
    report = {"passed": first is None, "model": str(model), "engine": info, "prompts": len(requests),
              "prompts_identical": sum(r["agree"] for r in per_prompt), "max_new_tokens": max_new_tokens,
              "atol": tol, "max_abs_logprob_diff": worst, "first_divergence": first, "per_prompt": per_prompt,
              "fingerprint": provenance.fingerprint_source(str(model)), "versions": provenance.versions(),
              "seconds": round(time.perf_counter() - start, 3)}
    if out is not None:
        provenance.write_json(Path(out), report)
    return report


@torch.inference_mode()
def _compare(hf, prompt: list[int], gen: list[int], logprobs, tol: float) -> dict:
    """First failing step of one prompt (or None) and the largest |Δ log p| of the chosen tokens."""
    if not gen:
        return {"divergence": None, "max_abs_logprob_diff": 0.0}
    ids = torch.tensor([prompt + gen], device=hf.device)
    logits = hf(input_ids=ids).logits[0, len(prompt) - 1: len(prompt) - 1 + len(gen)].float()  # [T, V]
    lp = torch.log_softmax(logits, dim=-1)
    worst = 0.0
    for t, token in enumerate(gen):
        hf_best = int(lp[t].argmax())
        vllm_lp = logprobs[t][token].logprob if logprobs and token in logprobs[t] else float("nan")
        diff = abs(vllm_lp - float(lp[t, token]))
        worst = max(worst, diff)
        tie = float(lp[t, hf_best] - lp[t, token]) <= tol
        if not tie or not diff <= tol:
            return {"divergence": {"step": t, "vllm_token": token, "hf_token": hf_best, "vllm_logprob": vllm_lp,
                                   "hf_logprob_of_vllm_token": float(lp[t, token]),
                                   "hf_logprob_of_hf_token": float(lp[t, hf_best]),
                                   "reason": "greedy token differs" if not tie else "log-probability differs"},
                    "max_abs_logprob_diff": worst}
    return {"divergence": None, "max_abs_logprob_diff": worst}
