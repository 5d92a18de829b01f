"""`bi` and `angular` (running sums, one pass per batch) vs the straightforward way: keep every window's
`output_hidden_states`, then compute ShortGPT's per-token cosine as diag(X @ Yᵀ) over each batch's (B·T, D)
rows. Prints time and peak-RSS ratios for several calibration sizes, and checks both give the same scores.

    python benchmarks/bench_similarity.py [--hidden 128] [--layers 8] [--vocab 32000] [--seq-len 256] [--batch 8]

Each variant runs in its own subprocess so its peak resident memory (ru_maxrss above the post-setup level,
during its first run) is its own. Times are CPU seconds of that one-thread process in steady state: the
fastest of ``--repeats`` runs after the first (oneDNN/allocator warm-up is a fixed cost that would otherwise
be charged to whichever variant it lands in; the minimum rejects noise from a shared machine).

``floor`` is a bare base-model forward over the same batches with no statistics: the least any one-pass
method can cost. Where the speedup comes from depends on the shape: the straightforward way also computes
the LM head (B·T·D·V) and, for bi, O((B·T)²·D) cosines; ours costs the floor. Measured (2-core machine):
hidden 128 × 8 layers, vocab 32000: bi 2.8–3.5×, angular 2.3–2.7×, ours 0.93–1.02× the floor; hidden 512 ×
16 layers: bi 1.5×, angular 1.1–1.2×. At 7B shapes the decoder layers dominate both, so the time ratio tends
to ~1.1× while the memory stays flat in the number of windows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

DATA = Path(os.environ.get("LAYERPRUNE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def setup(args):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from layerprune.calibration import CalibrationSpec, load_calibration
    from layerprune.tiny import VOCAB, tiny_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=4, num_key_value_heads=4, vocab_size=max(VOCAB, args.vocab),
                      max_position_embeddings=4096)  # a realistic vocab: the head is part of what full passes cost
    model = AutoModelForCausalLM.from_config(cfg).eval()
    source = DATA / "gsm8k" / "train.jsonl"
    spec = CalibrationSpec(str(source), text_field="question", seq_len=args.seq_len, num_samples=args.samples)
    return model, load_calibration(tiny_tokenizer(), spec)


def ours(model, cal, args):
    from layerprune.scoring import score

    kw = dict(calibration=cal, protected="none", post_norm=True, batch_size=args.batch)
    return score(model, None, args.criterion, num_drop=args.n, **kw)["scores"]


def straightforward(model, cal, args):
    with torch.no_grad():  # keep every hidden state of every window, as output_hidden_states gives them
        stored = [model(ids, output_hidden_states=True, use_cache=False).hidden_states
                  for ids in cal.batches(args.batch)]
    return (_bi if args.criterion == "bi" else _angular)(stored, args.layers, args.n)


def _bi(stored, L, n):
    bi, tokens = [0.0] * L, 0
    for hs in stored:
        rows = [h.reshape(-1, h.shape[-1]) for h in hs]  # (B·T, D)
        for k in range(L):
            x, y = rows[k], rows[k + 1]
            sim = torch.diag(x @ y.T) / (x.norm(dim=-1) * y.norm(dim=-1))  # ShortGPT's way: O((B·T)²)
            bi[k] += (1 - sim.nan_to_num(0.5)).sum().item()
        tokens += rows[0].shape[0]
    return [v / tokens for v in bi]


def _angular(stored, L, n):
    ang, windows = [0.0] * (L - n + 1), 0
    for hs in stored:
        for s in range(L - n + 1):
            a, b = hs[s][:, -1], hs[s + n][:, -1]  # (B, D) last token
            c = (torch.diag(a @ b.T) / (a.norm(dim=-1) * b.norm(dim=-1))).clamp(-1, 1)
            ang[s] += (torch.arccos(c) / math.pi).sum().item()
        windows += hs[0].shape[0]
    return [v / windows for v in ang]


def floor(model, cal, args):
    with torch.no_grad():
        for ids in cal.batches(args.batch):
            model.base_model(ids, use_cache=False)
    return []


VARIANTS = {"ours": ours, "straightforward": straightforward, "floor": floor}


def child(args):
    torch.set_num_threads(1)
    model, cal = setup(args)
    run = VARIANTS[args.variant]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scores = run(model, cal, args)  # first run: peak memory (above the post-setup level), warm-up for timing
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    seconds = []
    for _ in range(args.repeats):  # steady state: oneDNN/allocator warm-up is not charged to anyone
        t = time.process_time()  # CPU time of this one-thread process: steadier than wall-clock when shared
        run(model, cal, args)
        seconds.append(time.process_time() - t)
    print(json.dumps({"seconds": min(seconds), "peak_mb": peak_mb, "scores": scores}))


def run_child(args, variant, samples):
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--samples", str(samples),
           "--criterion", args.criterion]
    keys = ("hidden", "layers", "vocab", "seq_len", "batch", "n", "repeats")
    cmd += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in keys]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000, help="output vocabulary (the tokenizer uses the first 260)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n", type=int, default=2, help="block size for angular")
    p.add_argument("--samples", type=int, nargs="+", default=[16, 64, 128])
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the first; the fastest is reported")
    p.add_argument("--child", action="store_true")
    p.add_argument("--variant", default="ours")
    p.add_argument("--criterion", default="bi")
    args = p.parse_args()
    if args.child:
        args.samples = args.samples[0]
        return child(args)
    print(f"llama hidden={args.hidden} layers={args.layers} vocab={args.vocab} seq_len={args.seq_len} "
          f"batch={args.batch} n={args.n}")
    for args.criterion in ("bi", "angular"):
        for samples in args.samples:
            a, b = run_child(args, "ours", samples), run_child(args, "straightforward", samples)
            f = run_child(args, "floor", samples)
            same = all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a["scores"], b["scores"]))
            print(f"{args.criterion:8s} windows={samples:4d}  ours {a['seconds']:.2f}s {a['peak_mb']:.0f}MB  "
                  f"straightforward {b['seconds']:.2f}s {b['peak_mb']:.0f}MB  speedup "
                  f"{b['seconds'] / a['seconds']:.2f}x  memory ratio {b['peak_mb'] / max(a['peak_mb'], 1):.1f}x  "
                  f"same scores: {same}  (floor {f['seconds']:.2f}s: ours = {a['seconds'] / f['seconds']:.2f}x floor)")


if __name__ == "__main__":
    main()
