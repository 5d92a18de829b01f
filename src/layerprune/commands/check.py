"""layerprune check MODEL --engine vllm [--prompts N]"""

import sys

from layerprune.commands._args import add_engine_arguments, engine_settings
from layerprune.check import check_engines

NAME = "check"
HELP = "engine parity: compare greedy generations and log-probabilities of vLLM against the HF engine (exit 1 if they differ)"


def add_arguments(p):
    p.add_argument("model", help="local model directory or hub id (e.g. a pruned checkpoint)")
    p.add_argument("--prompts", type=int, default=16, help="number of prompts (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    p.add_argument("--atol", type=float, default=None,
                   help="log-probability tolerance (default 1e-3 in float32, 0.1 in bfloat16/float16)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="device of the HF side: cpu | cuda (default: cpu)")
    p.add_argument("--out", default=None, help="write the full report (JSON) here")
    add_engine_arguments(p)
    p.set_defaults(engine="vllm")


def run(args) -> int:
    r = check_engines(args.model, engine=args.engine, num_prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                      atol=args.atol, dtype=args.dtype, device=args.device, settings=engine_settings(args),
                      out=args.out)
    print(f"{r['prompts_identical']}/{r['prompts']} greedy generations identical, max |Δ log p| "
          f"{r['max_abs_logprob_diff']:.2e} (tolerance {r['atol']:.0e})")
    if not r["passed"]:
        d = r["first_divergence"]
        print(f"layerprune check: engines disagree: prompt {d['prompt']}, step {d['step']}: {d['reason']}: vLLM chose "
              f"{d['vllm_token_text']!r} (log p {d['vllm_logprob']:.4f}; HF {d['hf_logprob_of_vllm_token']:.4f}), HF "
              f"prefers {d['hf_token_text']!r} ({d['hf_logprob_of_hf_token']:.4f})", file=sys.stderr)
        return 1
    print("engines agree")
    return 0
