"""5-shot GSM8K as a user runs it: `lm_eval` and `layerprune eval` as whole processes, wall clock, default threads.

    python benchmarks/gsm8k_wallclock.py                       # 8 layers, hidden 256, 32k vocab; 24 docs, 64 tokens
    python benchmarks/gsm8k_wallclock.py --repeats 5 --limit 24 --max-new-tokens 64 --batch-size 16

One random Llama (the sizes above; head rows beyond the 1024-token tokenizer zeroed so the text is real) is
saved to a temporary directory; then each CLI runs with `--limit 1` and `--limit N` in fresh processes, with
the machine's default torch threads. Start-up (imports, loading, task building) is subtracted: in each
repeat a tool's time is (wall of limit N) - (wall of limit 1), and the tool's figure is the median over
`--repeats` (runs alternate between the tools, so load from other processes hits both alike; lm-eval's start-up
alone varies by seconds on a shared machine, so one repeat says little). Prints every repeat, both medians,
their ratio (lm-eval / ours), and how many of the N greedy generations are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=3, help="runs per tool and limit; the median difference is kept")
    args = p.parse_args()

    from eval_helpers import DATA_DIR, build_model, build_tokenizer, save_model, write_lmeval_gsm8k
    from eval_vs_lmeval import _mute_ids_beyond

    tmp = Path(tempfile.mkdtemp(prefix="lp_gsm8k_wall_"))
    tok = build_tokenizer()
    model = build_model(tok, layers=args.layers, hidden=args.hidden, heads=max(4, args.hidden // 64),
                        kv_heads=max(2, args.hidden // 128), vocab_size=args.vocab)
    _mute_ids_beyond(model, len(tok))
    model_dir = save_model(model, tok, tmp / "model")
    (tmp / "tasks").mkdir()
    name = write_lmeval_gsm8k(tmp / "tasks", args.max_new_tokens)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

    def command(tool: str, limit: int, out: Path) -> list[str]:
        if tool == "lm-eval":
            return [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={model_dir},dtype=float32", "--tasks", name, "--include_path", str(tmp / "tasks"),
                    "--limit", str(limit), "--batch_size", str(args.batch_size), "--device", "cpu",
                    "--log_samples", "--output_path", str(out), "--verbosity", "ERROR"]
        return [sys.executable, "-m", "layerprune", "eval", str(model_dir), "--tasks", "gsm8k", "--limit", str(limit),
                "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens), "--device", "cpu",
                "--dtype", "float32", "--data-dir", str(DATA_DIR), "--no-progress", "--out", str(out)]

    wall: dict[tuple[str, int, int], float] = {}
    for r in range(args.repeats):
        for limit in (1, args.limit):
            for tool in ("lm-eval", "ours"):
                out = tmp / f"{tool}_{limit}_{r}"
                t0 = time.perf_counter()
                run = subprocess.run(command(tool, limit, out), env=env, capture_output=True, text=True)
                wall[tool, limit, r] = time.perf_counter() - t0
                if run.returncode:
                    sys.exit(f"{tool} --limit {limit} failed:\n{run.stderr[-3000:]}")
        print("  run " + str(r + 1) + ": " + ", ".join(
            f"{tool} {wall[tool, args.limit, r]:.2f} - {wall[tool, 1, r]:.2f} = "
            f"{wall[tool, args.limit, r] - wall[tool, 1, r]:.2f} s" for tool in ("lm-eval", "ours")), flush=True)

    ref = _lmeval_texts(tmp / f"lm-eval_{args.limit}_0", name)
    ours = [json.loads(line)["resps"][0]
            for line in (tmp / f"ours_{args.limit}_0" / "samples_gsm8k.jsonl").read_text().splitlines()]
    same = sum(a == b for a, b in zip(ref, ours))
    import torch

    t_ref, t_ours = (statistics.median(wall[tool, args.limit, r] - wall[tool, 1, r] for r in range(args.repeats))
                     for tool in ("lm-eval", "ours"))
    print(f"model: llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}; 5-shot gsm8k, "
          f"{args.limit} docs, {args.max_new_tokens} new tokens, batch {args.batch_size}, "
          f"{torch.get_num_threads()} default threads")
    print(f"median over {args.repeats} repeats of (limit {args.limit}) - (limit 1): lm-eval {t_ref:.2f} s, "
          f"ours {t_ours:.2f} s")
    print(f"identical generations: {same}/{len(ref)}; speedup (lm-eval / ours): {t_ref / t_ours:.2f}x")


def _lmeval_texts(out: Path, name: str) -> list[str]:
    path = next(out.rglob(f"samples_{name}_*.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_doc = {r["doc_id"]: r["resps"][0][0] for r in rows if r.get("filter") == "strict-match"}
    return [by_doc[i] for i in sorted(by_doc)]


if __name__ == "__main__":
    main()
