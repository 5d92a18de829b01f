"""The speed step measures what a user would see: decode timed directly, interleaved with the baseline; under
an artificial CPU load in a parallel process the speedups stay within a sane band of the ideal, or are flagged."""

import copy
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from layerprune.study.speed import compare, speed_record
from layerprune.surgery import remove_layers

KEYS = {"prefill_tokens_per_s", "decode_tokens_per_s", "prompt_tokens", "new_tokens", "batch_size",
        "serving_batch_size", "repeats", "device", "decoder_layers", "head", "num_layers", "runs", "baseline",
        "comparison", "ideal_speedup_layers", "ideal_speedup_params", "decode_vs_ideal"}


@pytest.fixture(scope="module")
def models():
    """8 layers wide enough that layer matmuls dominate a token's time; the pruned copy keeps 4 of them."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=260, max_position_embeddings=256)
    base = AutoModelForCausalLM.from_config(cfg).eval()
    pruned = copy.deepcopy(base)
    remove_layers(pruned, [2, 3, 4, 5])
    return base, pruned


def test_speedups_under_cpu_load_are_sane_or_flagged(models, one_thread):
    base, pruned = models
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # competes for the CPU throughout
    try:
        rec = speed_record(pruned, base, prompt_tokens=32, new_tokens=16, batch_size=1, serving_batch_size=4,
                           repeats=7, warmup_max=6, max_spread=0.25, max_seconds=40, seed=0)
    finally:
        burner.kill()
        burner.wait()
    assert KEYS <= rec.keys()
    assert rec["ideal_speedup_layers"] == 2.0 and 1.0 < rec["ideal_speedup_params"] < 2.0
    assert [r["batch_size"] for r in rec["runs"]] == [1, 4] and len(rec["comparison"]) == 2
    for row in rec["comparison"]:
        for what in ("decode", "prefill"):
            s = row[f"{what}_speedup"]
            if s is None:  # flagged: a note says why instead of a number
                assert row["flagged"] and what in row["note"]
            else:
                assert 0.5 * rec["ideal_speedup_layers"] <= s <= 2 * rec["ideal_speedup_layers"], (what, row)
                lo, hi = row[f"{what}_speedup_interval"]
                assert lo <= s <= hi
    for run in rec["runs"] + rec["baseline"]["runs"]:
        assert run["decode_tokens_per_s"]["n"] >= 3 and run["warmup_runs"] >= 1


def test_a_spread_too_large_is_flagged_not_printed():
    steady = [{"batch_size": 1, "_decode": [100.0] * 6, "_prefill": [1000.0] * 6}]
    noisy = [{"batch_size": 1, "_decode": [150, 20, 190, 30, 160, 400], "_prefill": [1500.0] * 6}]
    row, = compare(noisy, steady, max_spread=0.25)
    assert row["decode_speedup"] is None and row["flagged"] and "too busy" in row["note"]
    assert row["prefill_speedup"] == pytest.approx(1.5) and row["prefill_speedup_interval"] == [1.5, 1.5]
    row, = compare(steady, steady, max_spread=0.25)
    assert row["decode_speedup"] == 1.0 and not row["flagged"] and row["note"] is None
