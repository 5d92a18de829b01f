"""The chat path against lm-eval 0.4.13 itself (`apply_chat_template`, `fewshot_as_multiturn`,
`system_instruction`), offline, on tiny random models carrying the real Qwen2.5-7B-Instruct,
Mistral-7B-Instruct-v0.3 and Llama-3.1-8B-Instruct tokenizers and chat templates (`../shared/models`).

Per doc: the same prompt strings and token ids, the same per-choice log-likelihoods (1e-4, fp32) and metrics
for arc_easy, mmlu_anatomy, hellaswag and winogrande; the same greedy generations, filtered answers/programs
and metrics for gsm8k (5-shot), gsm8k_cot_llama, humaneval_instruct and mbpp_instruct. lm-eval's code metric
needs a hub download, so the programs its filter builds are compared with ours and run in our sandbox.
"""

from __future__ import annotations

import json
import re

import pytest

from chat_helpers import MODELS_DIR, tiny_chat_model, write_lmeval_instruct_tasks
from eval_helpers import DATA_DIR, write_lmeval_gsm8k, write_lmeval_tasks

lm_eval = pytest.importorskip("lm_eval")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"benchmark data not found at {DATA_DIR}")]

LIMIT, MAX_GEN, BATCH = 3, 12, 3
# (model, fewshot_as_multiturn, system prompt): both collapse rules and a system turn are covered
# (Llama-3.1's template writes BOS itself and a dated system turn of its own; Qwen has no BOS; Mistral v0.3 its own)
SETUPS = {"qwen2.5-7b-instruct": (False, "You are a careful assistant."), "mistral-7b-instruct-v0.3": (True, None),
          "llama-3.1-8b-instruct": (True, "You are a careful assistant.")}


@pytest.fixture(scope="module", params=sorted(SETUPS))
def chat_model(request):
    if not (MODELS_DIR / request.param / "tokenizer_config.json").is_file():
        pytest.skip(f"real tokenizer files not found at {MODELS_DIR / request.param}")
    tok, model = tiny_chat_model(request.param)
    return request.param, tok, model


def _run_both(name, tok, model, tmp, tasks: dict[str, str], multiturn: bool, system: str | None):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from layerprune.evaluation.runner import evaluate
    from layerprune.evaluation.tasks.base import TaskOptions

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=BATCH)
    ref = lm_eval.simple_evaluate(model=lm, tasks=list(tasks.values()), limit=LIMIT, log_samples=True,
                                  apply_chat_template=True, fewshot_as_multiturn=multiturn,
                                  system_instruction=system,
                                  task_manager=TaskManager(include_path=str(tmp), include_defaults=False))
    out = tmp / "ours"
    opts = TaskOptions(limit=LIMIT, data_dir=DATA_DIR, chat_template=True, fewshot_as_multiturn=multiturn,
                       system_prompt=system, max_new_tokens=MAX_GEN)
    ours = evaluate(model, list(tasks), opts, out_dir=out, tokenizer=tok, batch_size=BATCH, progress=False)
    samples = {n: [json.loads(x) for x in (out / f"samples_{n}.jsonl").read_text().splitlines()] for n in tasks}
    ref_samples = {n: sorted(ref["samples"][r], key=lambda s: s["doc_id"]) for n, r in tasks.items()}
    return lm, ref, ours, samples, ref_samples


def test_loglikelihood_tasks_equal_lm_eval(chat_model, tmp_path):
    from layerprune.evaluation.hf_backend import HFBackend

    name, tok, model = chat_model
    multiturn, system = SETUPS[name]
    names = write_lmeval_tasks(tmp_path, LIMIT, ("anatomy",), extra=True)
    tasks = {t: names[t] for t in ("arc_easy", "mmlu_anatomy", "hellaswag", "winogrande")}
    lm, ref, ours, samples, ref_samples = _run_both(name, tok, model, tmp_path, tasks, multiturn, system)
    backend = HFBackend(model, tok, progress=False)
    for task, lm_name in tasks.items():
        metrics = ("acc",) if task in ("winogrande", "mmlu_anatomy") else ("acc", "acc_norm")
        assert len(samples[task]) == len(ref_samples[task]) == LIMIT
        for mine, theirs in zip(samples[task], ref_samples[task]):
            contexts = mine["context"] if isinstance(mine["context"], list) else [mine["context"]] * len(
                mine["continuations"])
            pairs = list(zip(contexts, mine["continuations"]))
            assert [tuple(a) for a in theirs["arguments"]] == pairs, (name, task, mine["doc_id"])
            for ctx, cont in pairs:
                assert backend.encode_pair(ctx, cont) == tuple(lm._encode_pair(ctx, cont))
            assert mine["loglikelihoods"] == pytest.approx([r[0] for r in theirs["filtered_resps"]], abs=1e-4)
            for m in metrics:
                assert mine[m] == theirs[m], (name, task, mine["doc_id"], m)
        for m in metrics:
            assert ours["results"][task][m] == pytest.approx(ref["results"][lm_name][f"{m},none"])
    first = samples["mmlu_anatomy"][0]["context"]
    if system:  # the system instruction and the task's description form one system turn
        assert first.count(system + "\n\nThe following are multiple choice questions") == 1
    if not multiturn:  # the five shots are one user message
        assert first.count("<|im_start|>user") == 1 and first.count("<|im_start|>assistant") == 1


def test_generative_tasks_equal_lm_eval(chat_model, tmp_path):
    from layerprune.evaluation.generation import _encode
    from layerprune.evaluation.tasks import get_task
    from layerprune.evaluation.tasks.base import TaskOptions
    from layerprune.execution import run_programs

    name, tok, model = chat_model
    mbpp_docs = get_task("mbpp_instruct").load_docs(TaskOptions(data_dir=DATA_DIR))[:LIMIT]
    tasks = write_lmeval_instruct_tasks(tmp_path, mbpp_docs, MAX_GEN)
    tasks["gsm8k"] = write_lmeval_gsm8k(tmp_path, MAX_GEN)
    lm, ref, ours, samples, ref_samples = _run_both(name, tok, model, tmp_path, tasks, True, None)
    wrote = False
    for task in tasks:
        by_doc: dict[int, dict[str, dict]] = {}
        for s in ref_samples[task]:
            by_doc.setdefault(s["doc_id"], {})[s["filter"]] = s
        assert sorted(by_doc) == [m["doc_id"] for m in samples[task]] == list(range(LIMIT))
        for mine in samples[task]:
            theirs = by_doc[mine["doc_id"]]
            any_filter = next(iter(theirs.values()))
            context = any_filter["arguments"][0][0]
            assert mine["context"] == context, (name, task, mine["doc_id"])
            assert _encode(tok, context, None) == lm.tok_batch_encode([context])[0][0].tolist()
            assert mine["resps"] == [any_filter["resps"][0][0]], (name, task, mine["doc_id"])
            wrote |= bool(mine["resps"][0])
            if task.startswith("gsm8k"):
                for f, s in theirs.items():
                    assert mine["filtered"][f] == s["filtered_resps"][0], (task, f)
                    assert mine[f"exact_match,{f}"] == s["exact_match"], (task, f)
            else:  # lm-eval's filtered program + its test reference = the program code_eval would run
                s = theirs[next(iter(theirs))]
                built = s["filtered_resps"][0]
                program = (built[0] if isinstance(built, list) else built) + "\n" + s["target"]
                resp = mine["resps"][0]
                ours_program = get_task(task).program(mine["doc"], resp)
                if ours_program != program:  # only where lm-eval 0.4.13 eats the code's first word (`_FENCED`)
                    word = re.match(r"\w+(?!\w|\n)", resp)
                    assert task == "mbpp_instruct" and word and ours_program.startswith(word.group()), (task, resp)
                    continue
                passed = run_programs([program])[0].status == "passed"
                assert mine["pass@1"] == float(passed)
    assert wrote, "the tiny model should write something"
    opened = {"qwen2.5-7b-instruct": "<|im_start|>assistant\n", "mistral-7b-instruct-v0.3": "[/INST]",
              "llama-3.1-8b-instruct": "<|start_header_id|>assistant<|end_header_id|>\n\n"}[name]
    context = samples["humaneval_instruct"][0]["context"]  # gen_prefix opens the assistant's turn
    assert context.count(opened) == 1 and context.split(opened)[1].lstrip().startswith(
        "Here is the completed function:\n```python\n"), context[-300:]
