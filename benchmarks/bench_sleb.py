"""`sleb` (cached entering states, only later layers re-run) vs naive greedy re-evaluation (physically remove
every candidate on a copy and run the whole model). Counts decoder-layer forwards by hooking each layer's
first submodule (a stubbed layer never calls it), checks both choose the same layers, prints both times.
Then a sweep of sizes 1..drop (what a study with several ratios needs): the one run above answers every size
from its first n rounds, against one run per size; checks each size's layers equal its own run's.

    python benchmarks/bench_sleb.py [--layers 16] [--drop 4] [--samples 8] [--seq-len 64]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch

from layerprune.families import decoder_layers
from layerprune.surgery import remove_layers

DATA = Path(os.environ.get("LAYERPRUNE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


class LayerCounter:
    """Counts real decoder-layer computations: every layer's first child module fires once per real call."""

    def __init__(self):
        self.count = 0

    def attach(self, model):
        for layer in decoder_layers(model):
            next(layer.children()).register_forward_pre_hook(self._tick)

    def _tick(self, *_):
        self.count += 1


def naive_sleb(model, cal, n_drop, protected, counter):
    removed: list[int] = []
    for _ in range(n_drop):
        nll = {}
        for j in (j for j in range(len(decoder_layers(model))) if j not in removed and j not in protected):
            m = copy.deepcopy(model)
            remove_layers(m, sorted(removed + [j]))
            counter.attach(m)
            total = 0.0
            with torch.no_grad():
                for ids in cal.batches(4):
                    logp = m(ids, use_cache=False).logits[:, :-1].log_softmax(-1)
                    total -= logp.gather(-1, ids[:, 1:, None]).sum().item()
            nll[j] = total
        removed.append(min(nll, key=lambda j: (nll[j], j)))
    return sorted(removed)


def main():
    from layerprune.calibration import CalibrationSpec, load_calibration
    from layerprune.scoring import score
    from layerprune.tiny import tiny_model, tiny_tokenizer

    p = argparse.ArgumentParser()
    p.add_argument("--family", default="llama")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--drop", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = tiny_model(args.family, num_layers=args.layers)
    spec = CalibrationSpec(str(DATA / "gsm8k" / "train.jsonl"), text_field="question", seq_len=args.seq_len,
                           num_samples=args.samples)
    cal = load_calibration(tiny_tokenizer(), spec)
    protected = [0, args.layers - 1]  # SLEB's barriers

    ours = LayerCounter()
    ours.attach(model)
    t = time.perf_counter()
    rec = score(model, None, "sleb", num_drop=args.drop, calibration=cal, protected=protected, batch_size=4)
    t_ours = time.perf_counter() - t
    ours_count = ours.count - 1 * len(decoder_layers(model))  # minus LayerRunner's one-off 2-token probe pass

    naive = LayerCounter()
    t = time.perf_counter()
    chosen = naive_sleb(model, cal, args.drop, protected, naive)
    t_naive = time.perf_counter() - t
    print(f"{args.family} layers={args.layers} drop={args.drop} windows={len(cal.input_ids)}x{args.seq_len}")
    print(f"layer forwards: sleb {ours_count} (runner says {rec['layer_forwards']}), naive {naive.count}, "
          f"ratio {ours_count / naive.count:.3f}")
    print(f"time: sleb {t_ours:.2f}s, naive {t_naive:.2f}s; chosen sleb {rec['drop']} naive {chosen}; "
          f"identical: {rec['drop'] == chosen}")

    sizes = list(range(1, args.drop + 1))
    sweep = score(model, None, "sleb", num_drop=sizes, calibration=cal, protected=protected, batch_size=4)
    alone = {n: score(model, None, "sleb", num_drop=n, calibration=cal, protected=protected, batch_size=4)
             for n in sizes}
    per_size = sum(r["layer_forwards"] for r in alone.values())
    same = all(sweep["drops"][str(n)] == alone[n]["drop"] for n in sizes)
    print(f"sweep of sizes {sizes}: one run {sweep['layer_forwards']} layer forwards, one run per size "
          f"{per_size}, ratio {sweep['layer_forwards'] / per_size:.3f}; same layers per size: {same}")


if __name__ == "__main__":
    main()
