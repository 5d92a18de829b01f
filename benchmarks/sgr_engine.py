"""The HF generation engine on an SGR workload: main's `generate_batch` against this tree's, in one run.

    python benchmarks/sgr_engine.py --model testbed --prompts 64
    python benchmarks/sgr_engine.py --model random --random 12x512 --repeats 2

Workload as `layerprune sgr` sends it: user turns with the paper's system prompt, rendered by the model's chat
template, its end-of-turn stop strings, sampled at T 0.9, top-p 0.95, `--max-new-tokens` at most, one seed per
prompt. `--model testbed`: the bundled trained testbed model on GSM8K training questions. `--model random`:
exactly `engines.py --random LxH`'s sampled SGR workload (its random Llama with the Mistral-7B-v0.3 tokenizer,
the testbed's prompt pool), the workload issue #15's ">= 2x the old engine" target is set on. The old engine is `evaluation/generation.py` as it was before
issue #15 (commit 9e932d3: static batches, per-row host sampling, cache re-concatenation), taken with `git show`
into a temporary module (or `--old FILE`). Both engines run the same requests with the
same batch size, alternately, `--repeats` times (best time kept). Generated tokens are counted the same way
for both (the returned texts re-encoded); the samples themselves differ, as the draw changed.
Prints tokens/s of each (wall clock and per CPU second: on a shared machine the latter, with `--threads 1`, is
the stable one) and the ratios (new / old).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
MAIN_FILE = "src/layerprune/evaluation/generation.py"
OLD_ENGINE = "9e932d3"  # the last commit before issue #15 rewrote the engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("testbed", "random"), default="testbed")
    p.add_argument("--random", default="12x512", help="LxH of the random model (engines.py's)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the machine's default)")
    p.add_argument("--old", help=f"the old generation.py (default: the file at commit {OLD_ENGINE})")
    args = p.parse_args()

    import torch

    from layerprune.evaluation import generation as new_engine
    from layerprune.evaluation.requests import GenerationRequest
    from layerprune.healing.chat import render_prompt, stop_strings, with_system
    from layerprune.healing.sgr import sample_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    old_engine = _load_old(args.old)
    if args.model == "random":
        from engines import random_model, requests_for

        from layerprune.loading import load_model

        model, tok = load_model(str(random_model(args.random, Path(tempfile.mkdtemp()) / "model")), device="cpu")
        requests = requests_for(tok, 0, args.prompts, args.max_new_tokens)[1]
    else:
        model, tok = _testbed()
        stops = stop_strings(tok)
        requests = [GenerationRequest(render_prompt(tok, with_system([{"role": "user", "content": q}])),
                                      until=stops, max_new_tokens=args.max_new_tokens, temperature=0.9, top_p=0.95,
                                      seed=sample_seed(0, str(i))) for i, q in enumerate(_questions(args.prompts))]
    engines = {"old": old_engine.generate_batch, "new": new_engine.generate_batch}
    for run in engines.values():  # warm-up
        run(model, tok, requests[:2], batch_size=2)
    best: dict[str, tuple[float, int]] = {}
    for r in range(args.repeats):
        for name, run in engines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            results = run(model, tok, requests, batch_size=args.batch_size)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            tokens = sum(len(tok.encode(t, add_special_tokens=False)) for res in results for t in res.texts)
            print(f"  run {r + 1}: {name}: {wall:7.2f} s wall, {cpu:7.2f} s CPU, {tokens} tokens, "
                  f"{tokens / wall:7.1f} tokens/s wall, {tokens / cpu:7.1f} tokens/CPU-s", flush=True)
            if name not in best or tokens / wall > best[name][1] / best[name][0]:
                best[name] = (wall, tokens, cpu)
    size = "testbed" if args.model == "testbed" else f"random llama {args.random} (engines.py's)"
    print(f"model: {size}, vocab {model.config.vocab_size}; {len(requests)} chat prompts, T 0.9, top-p 0.95, "
          f"<= {args.max_new_tokens} new tokens, batch {args.batch_size}, {torch.get_num_threads()} threads")
    rate = {k: t / w for k, (w, t, _) in best.items()}
    cpu_rate = {k: t / c for k, (_, t, c) in best.items()}
    for k in ("old", "new"):
        print(f"{k:4s} engine: {best[k][0]:7.2f} s wall, {best[k][2]:7.2f} s CPU, {best[k][1]} tokens, "
              f"{rate[k]:7.1f} tokens/s, {cpu_rate[k]:7.1f} tokens/CPU-s")
    print(f"speedup (new / old): {rate['new'] / rate['old']:.2f}x tokens/s wall clock, "
          f"{cpu_rate['new'] / cpu_rate['old']:.2f}x tokens per CPU second")


def _load_old(path: str | None):
    """The old generation.py as a module of its own (it imports only what both trees have)."""
    if path is None:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_ENGINE}:{MAIN_FILE}"], capture_output=True,
                              text=True, check=True).stdout
        path = str(Path(tempfile.mkdtemp(prefix="lp_old_engine_")) / "old_generation.py")
        Path(path).write_text(text)
    spec = importlib.util.spec_from_file_location("old_generation", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_generation"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _testbed():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprune.testbed import MODEL_DIR

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval(), tok


def _questions(n: int) -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from eval_helpers import DATA_DIR

    with open(DATA_DIR / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["question"] for _, line in zip(range(n), f)]


if __name__ == "__main__":
    main()
