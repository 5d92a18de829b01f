"""End to end against lm-eval 0.4.13: the same tiny model on the first GSM8K test docs through lm-eval's
`simple_evaluate` + HFLM and through our gsm8k task + HFBackend (generate_batch, batch size 3) gives
identical generations and identical strict/flexible exact_match per doc."""

from __future__ import annotations

import pytest

from eval_helpers import write_lmeval_gsm8k
from fixtures.tiny_lm import build_tiny_lm, save_tiny_lm
from layerprune.evaluation.data import resolve_data_dir
from layerprune.evaluation.hf_backend import HFBackend
from layerprune.evaluation.runner import run_task
from layerprune.evaluation.tasks.base import TaskOptions
from layerprune.evaluation.tasks.generative import GSM8K

DATA = resolve_data_dir(None)
LIMIT, MAX_GEN = 5, 32

@pytest.mark.slow  # ~10-25 s: lm-eval builds its task and runs HFLM
@pytest.mark.skipif(DATA is None or not (DATA / "gsm8k").is_dir(), reason="shared data folder absent")
def test_greedy_generations_and_scores_equal_lm_eval(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model_dir = save_tiny_lm(tmp_path / "model")
    (tmp_path / "tasks").mkdir()
    name = write_lmeval_gsm8k(tmp_path / "tasks", MAX_GEN)
    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=1, dtype="float32")
    out = simple_evaluate(model=lm, tasks=[name], limit=LIMIT, log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False))
    by_filter = {(s["doc_id"], s["filter"]): s for s in out["samples"][name]}  # one entry per filter

    model, tokenizer = build_tiny_lm()
    _, rows = run_task(GSM8K(), HFBackend(model, tokenizer, batch_size=3, progress=False),
                       TaskOptions(limit=LIMIT, max_new_tokens=MAX_GEN))

    assert [r["resps"] for r in rows] == [by_filter[(i, "strict-match")]["resps"][0] for i in range(LIMIT)]
    assert any(r["resps"][0] for r in rows), "the tiny model should write something"
    for i, mine in enumerate(rows):
        for name in ("strict-match", "flexible-extract"):
            ref = by_filter[(i, name)]
            assert mine["filtered"][name] == ref["filtered_resps"][0]
            assert mine[f"exact_match,{name}"] == ref["exact_match"]
