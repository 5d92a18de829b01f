"""layerprune's classification tasks against lm-eval 0.4.13 itself, on the same tiny model and real docs.

lm-eval reads the local files through task YAMLs written into tmp_path (`eval_helpers.write_lmeval_tasks`:
`dataset_path: json`/`csv`, lm-eval's own templates over the local fields, as evaluation.md §C.3
describes); PIQA's labels live in a separate file, so its docs are joined into one JSONL in tmp_path
first, and HellaSwag's text file is handed to lm-eval as our loader's docs. Both sides score the first few
docs; per doc the contexts, continuations, per-choice log-likelihoods (within 1e-4) and metrics must match.
"""

from __future__ import annotations

import json

import pytest

from eval_helpers import DATA_DIR, build_model, build_tokenizer, write_lmeval_tasks

lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"benchmark data not found at {DATA_DIR}")

LIMIT = 5
MMLU_SUBJECTS = ("anatomy", "astronomy")
BATCH = 4


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from layerprune.evaluation.runner import evaluate
    from layerprune.evaluation.tasks.base import TaskOptions

    tmp = tmp_path_factory.mktemp("lmeval_tasks")
    names = write_lmeval_tasks(tmp, LIMIT, MMLU_SUBJECTS, extra=True)
    tok = build_tokenizer()
    model = build_model(tok, layers=4, hidden=64)
    ref = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=BATCH), tasks=list(names.values()),
        task_manager=TaskManager(include_path=str(tmp), include_defaults=False), limit=LIMIT, log_samples=True)
    out = tmp / "ours"
    ours = evaluate(model, list(names), TaskOptions(limit=LIMIT, data_dir=DATA_DIR), out_dir=out, tokenizer=tok,
                    batch_size=BATCH, progress=False)
    samples = {n: [json.loads(x) for x in (out / f"samples_{n}.jsonl").read_text().splitlines()] for n in names}
    return names, ref, ours, samples


@pytest.mark.parametrize("task", ["arc_easy", "piqa", "winogrande", "boolq", "mmlu_anatomy", "mmlu_astronomy",
                                  "arc_challenge", "openbookqa", "hellaswag"])
def test_same_prompts_loglikelihoods_and_metrics(both, task):
    names, ref, ours, samples = both
    ref_samples = sorted(ref["samples"][names[task]], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in ref_samples] == [s["doc_id"] for s in samples[task]] == list(range(LIMIT))
    metrics = ("acc",) if task in ("winogrande", "boolq") or task.startswith("mmlu") else ("acc", "acc_norm")
    for mine, theirs in zip(samples[task], ref_samples):
        contexts = mine["context"] if isinstance(mine["context"], list) else [mine["context"]] * len(
            mine["continuations"])
        assert [tuple(a) for a in theirs["arguments"]] == list(zip(contexts, mine["continuations"]))
        ref_lls = [r[0] for r in theirs["filtered_resps"]]
        assert mine["loglikelihoods"] == pytest.approx(ref_lls, abs=1e-4)
        assert mine["is_greedy"] == [r[1] for r in theirs["filtered_resps"]]
        for m in metrics:
            assert mine[m] == theirs[m], (task, mine["doc_id"], m)
    for m in metrics:
        assert ours["results"][task][m] == pytest.approx(ref["results"][names[task]][f"{m},none"])
        assert ours["results"][task][f"{m}_stderr"] == pytest.approx(ref["results"][names[task]][f"{m}_stderr,none"])


def test_mmlu_prompt_is_five_shot_from_dev(both):
    _, _, _, samples = both
    context = samples["mmlu_anatomy"][0]["context"]
    assert context.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert context.count("\nAnswer:") == 6  # five shots + the question
    assert samples["mmlu_anatomy"][0]["continuations"] == [" A", " B", " C", " D"]
