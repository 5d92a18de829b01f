"""`eval.max_new_tokens` caps each task's own generation limit (lm-eval's max_gen_toks) and never raises it;
an explicit per-task limit still can. Checked on the requests the real tasks build from the real data."""

from dataclasses import replace

import pytest

from layerprune.evaluation.runner import _task_options
from layerprune.evaluation.tasks import get_task
from layerprune.evaluation.tasks.base import TaskOptions


def _limit(name: str, opts: TaskOptions) -> int:
    task = get_task(name)
    opts = _task_options(opts, task.name, task.name)
    doc = task.load_docs(opts)[0]
    return task.requests(0, doc, opts)[0].max_new_tokens


@pytest.mark.parametrize("name, own", [("gsm8k", 256), ("mbpp", 256), ("humaneval", 1024)])
def test_cap_lowers_never_raises(data_dir, name, own):
    opts = TaskOptions(data_dir=data_dir, limit=1)
    assert _limit(name, opts) == own
    assert _limit(name, replace(opts, max_new_tokens_cap=1024)) == own  # the paper configs' old 1024: no raise
    assert _limit(name, replace(opts, max_new_tokens_cap=100)) == 100
    by_task = replace(opts, max_new_tokens_cap=100, max_new_tokens_by_task=((name, 512),))
    assert _limit(name, by_task) == 512  # an explicit per-task limit wins over the cap


def test_study_eval_passes_a_cap(tmp_path):
    from layerprune.study.config import load_study_config

    path = tmp_path / "s.yaml"
    path.write_text("models: [{name: m, tiny: {}}]\npruning: {num_drop: [1]}\n"
                    "eval: {tasks: [gsm8k], max_new_tokens: 64, max_new_tokens_by_task: {gsm8k: 300}}\n")
    ev = load_study_config(path).eval
    assert ev.max_new_tokens == 64 and ev.max_new_tokens_by_task == {"gsm8k": 300}
