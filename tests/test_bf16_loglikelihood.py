"""bf16 precision: per-choice log-likelihoods of a bf16 tiny model with the real Qwen2.5 vocabulary (152k) are at
least as close to an fp32 forward of the same weights as lm-eval 0.4.13's own bf16 numbers
(`benchmarks/bf16_loglikelihood.py` measures both and prints them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from chat_helpers import MODELS_DIR
from eval_helpers import DATA_DIR

pytest.importorskip("lm_eval")
QWEN = MODELS_DIR / "qwen2.5-7b-instruct"


@pytest.mark.slow
@pytest.mark.skipif(not (QWEN / "tokenizer.json").is_file(), reason=f"real tokenizer files not found at {QWEN}")
@pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"benchmark data not found at {DATA_DIR}")
def test_bf16_loglikelihoods_at_least_as_close_to_fp32_as_lm_eval():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bf16_loglikelihood.py"
    spec = importlib.util.spec_from_file_location("bf16_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    errors = bench.measure(QWEN, docs=3)
    ours, theirs = errors["ours"], errors["lm_eval"]
    assert len(ours) == len(theirs) > 0
    assert sum(ours) <= sum(theirs) and max(ours) <= max(theirs), (sum(ours), sum(theirs))
    assert sum(theirs) > 0  # bf16 really differs from fp32 here, so the comparison means something
