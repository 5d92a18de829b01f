"""Peak memory of one healing step with a 152k vocabulary (Qwen2.5's): `heal`'s trainer (TRL's fused LM head,
log-probs computed in vocabulary tiles, never a [B, T, V] logits tensor) vs the plain loss (the model's full
logits, then cross-entropy: what a trainer without the fused head does). Prints, per sequence length, each
side's peak resident memory above the post-setup level, the growth between lengths and its ratio.

    python benchmarks/bench_heal_memory.py [--vocab 152064] [--hidden 32] [--batch 2] [--lengths 32 160]
                                           [--tile 64 8192]

Each (side, length) runs in its own subprocess (peak RSS, VmHWM, reset just before the step): one optimizer
step through `layerprune.healing.sft.build_trainer` on a tiny Qwen2 model. What to
expect, by arithmetic: the plain side grows by at least B·ΔT·V·4 bytes (one fp32 copy of the logits; the
log-softmax and its gradient add more), the fused side by O(B·ΔT·hidden) plus a fixed tile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024  # kB


def _reset_peak_rss() -> None:
    """Set the process's peak RSS (VmHWM) back to its current RSS (Linux ≥ 4.0), so the peak read after a
    step is that step's own, not one left by imports or model set-up."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(plain: bool, vocab: int, hidden: int, batch: int, lengths: list[int], tile: list[int] | None) -> dict:
    """One optimizer step per length (one length per process); its peak RSS above the RSS before it."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from layerprune.healing.chat import fit_to_length
    from layerprune.healing.sft import HealConfig, build_trainer
    from layerprune.tiny import tiny_tokenizer

    torch.set_num_threads(1)
    if tile:  # TRL's tile (tokens × vocabulary entries), smaller than its 4096 × 32768 default
        import trl.kernels.chunked_logprob as kernel
        import trl.trainer.utils as trl_utils

        kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = tile
    tok = tiny_tokenizer()
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    out = {}
    for T in lengths:
        torch.manual_seed(0)
        net = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # every row: a short prompt and a response of T - 8 byte tokens, so a batch is (batch, ~T) tokens
        rows = [{"messages": [{"role": "user", "content": "say"}], "response": "a" * (T - 8)}] * batch
        c = HealConfig(mode="lora", batch_size=batch, grad_accum=1, max_steps=1, warmup_steps=0, lora_r=4,
                       save_steps=10**6, logging_steps=1, max_length=4 * T)
        with tempfile.TemporaryDirectory() as work:
            trainer = build_trainer(net, tok, rows, c, Path(work))
            fit_to_length(trainer, c.max_length, verbose=False)
            if plain:  # the model's own full-logits forward and loss: what the fused head replaces
                from transformers.loss.loss_utils import ForCausalLMLoss

                trainer.compute_loss_func = lambda outputs, labels, num_items_in_batch=None: ForCausalLMLoss(
                    outputs.logits, labels, vocab, num_items_in_batch=num_items_in_batch)
            _reset_peak_rss()
            before = _status_mb("VmRSS")
            trainer.train()
            out[T] = round(_status_mb("VmHWM") - before, 1)
        del trainer, net
    return out


def run_side(plain: bool, args) -> dict:
    out = {}
    for T in args.lengths:
        cmd = [sys.executable, __file__, "--child", "plain" if plain else "fused", "--vocab", str(args.vocab),
               "--hidden", str(args.hidden), "--batch", str(args.batch), "--lengths", str(T)]
        cmd += ["--tile", *map(str, args.tile)] if args.tile else []
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode:
            raise RuntimeError(r.stderr[-3000:])
        out.update({int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 160])
    p.add_argument("--tile", type=int, nargs=2, help="TRL's tile: tokens, vocabulary entries (default 4096 32768)")
    p.add_argument("--child", choices=("plain", "fused"))
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child == "plain", args.vocab, args.hidden, args.batch, args.lengths, args.tile)))
        return {}
    fused, plain = run_side(False, args), run_side(True, args)
    t0, t1 = args.lengths[0], args.lengths[-1]
    logits_mb = args.batch * (t1 - t0) * args.vocab * 4 / 2**20
    result = {"fused_mb": fused, "plain_mb": plain, "fused_growth_mb": round(fused[t1] - fused[t0], 1),
              "plain_growth_mb": round(plain[t1] - plain[t0], 1), "fp32_logits_growth_mb": round(logits_mb, 1)}
    result["ratio"] = round(result["plain_growth_mb"] / max(result["fused_growth_mb"], 0.1), 1)
    print(f"vocab {args.vocab}, hidden {args.hidden}, batch {args.batch}, lengths {t0}→{t1}")
    print(f"  peak MiB above setup, heal (fused head): {fused}   plain loss: {plain}")
    print(f"  growth {t0}→{t1}: fused {result['fused_growth_mb']} MiB, plain {result['plain_growth_mb']} MiB "
          f"(one fp32 [B, ΔT, V] = {result['fp32_logits_growth_mb']} MiB); plain/fused = {result['ratio']}×")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
