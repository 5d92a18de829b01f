"""gsm8k / gsm8k_cot / math / code / probe tasks on the real data files: prompts equal lm-eval's, answers
are extracted and scored as lm-eval does, canonical code solutions pass through the tasks' own scoring."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from layerprune.errors import UsageError
from layerprune.evaluation.data import resolve_data_dir
from layerprune.evaluation.requests import GenerationResult, LoglikelihoodResult
from layerprune.evaluation.tasks.base import TaskOptions
from layerprune.evaluation.tasks.code import CodeTask
from layerprune.evaluation.tasks.exemplars import MBPP
from layerprune.evaluation.tasks.generative import GSM8K, MathTask, exact_match, regex_extract, FLEXIBLE, STRICT
from layerprune.evaluation.tasks.probes import ArithmeticProbe, BracketProbe

DATA = resolve_data_dir(None)
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "gsm8k").is_dir(), reason="shared data folder absent")
FIXTURES = Path(__file__).parent / "fixtures" / "evalplus"
OPTS = TaskOptions()


def gen(*texts: str) -> list[GenerationResult]:
    return [GenerationResult(texts=texts)]


def lm_eval_task(tmp_path: Path, name: str, body: str):
    """Build an lm-eval 0.4.13 task from a local YAML over the shared GSM8K files (no hub)."""
    from lm_eval.tasks import TaskManager

    files = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {DATA}/gsm8k/train.jsonl\n    test: {DATA}/gsm8k/test.jsonl\n"
    (tmp_path / f"{name}.yaml").write_text(f"task: {name}\n" + files + textwrap.dedent(body))
    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load([name])["tasks"][name]
    task.set_fewshot_seed(1234)
    return task


GSM8K_YAML = """
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
num_fewshot: 5
"""


@needs_data
def test_gsm8k_fewshot_context_equals_lm_eval(tmp_path):
    theirs = lm_eval_task(tmp_path, "gsm8k_local", GSM8K_YAML)
    docs = list(theirs.test_docs())[:3]
    expected = [theirs.fewshot_context(doc, 5) for doc in docs]
    ours = GSM8K()
    our_docs = ours.load_docs(OPTS)[:3]
    assert our_docs == docs
    got = {i: ours.requests(i, our_docs[i], OPTS)[0].context for i in (2, 0, 1)}  # any order: same shots
    assert [got[i] for i in range(3)] == expected
    assert expected[0].count("Question: ") == 6 and expected[0] != expected[1]


@needs_data
def test_gsm8k_cot_context_equals_lm_eval(tmp_path):
    import lm_eval
    import yaml

    cot = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k-cot.yaml").read_text())
    body = yaml.safe_dump({k: cot[k] for k in ("doc_to_text", "doc_to_target", "fewshot_config", "num_fewshot",
                                              "output_type")}) + "test_split: test\n"
    theirs = lm_eval_task(tmp_path, "gsm8k_cot_local", body)
    doc = list(theirs.test_docs())[0]
    assert GSM8K(cot=True).requests(0, doc, OPTS)[0].context == theirs.fewshot_context(doc, 8)


@needs_data
def test_gsm8k_filters_parse_real_train_answers():
    task = GSM8K()
    rows = task.train_docs(OPTS)[:200]
    for row in rows:
        number = row["answer"].split("#### ")[-1].strip()
        metrics = task.score(row, [], gen(row["answer"]), OPTS)
        assert metrics == {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0}, number
        assert task.extracted(row["answer"])["strict-match"] == number
    wrong = task.score(rows[0], [], gen("The answer is #### 999999"), OPTS)
    assert wrong == {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.0}


def test_lm_eval_filter_and_metric_details():
    assert regex_extract("so 5 apples, then #### 1,000.", STRICT) == "1,000."
    assert regex_extract("costs $18 or 7 and 12", FLEXIBLE, group_select=-1) == "12"
    assert regex_extract("no numbers", FLEXIBLE, group_select=-1) == "[invalid]"
    assert exact_match("1,000.", "blah #### 1000") == 1.0
    assert exact_match("$18", "x #### 18") == 1.0
    assert exact_match("18.00", "x #### 18") == 0.0


@needs_data
def test_gsm8k_cot_strict_regex_and_sampling_means():
    task, doc = GSM8K(cot=True), {"question": "q", "answer": "steps #### 42"}
    one = task.score(doc, [], gen("So 6 * 7 = 42. The answer is 42."), OPTS)
    assert one == {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0}
    many = task.score(doc, [], gen("The answer is 41.", "The answer is 42.", "The answer is 42."), OPTS)
    assert many["exact_match,strict-match"] == 0.0 and many["exact_match_mean,strict-match"] == pytest.approx(2 / 3)


@needs_data
def test_gsm8k_requests_carry_options_and_record_has_diagnostics():
    task = GSM8K()
    opts = replace(OPTS, max_new_tokens=64, temperature=0.9, num_samples=2)
    doc = task.load_docs(opts)[4]
    (req,) = task.requests(4, doc, opts)
    assert req.until == ("Question:", "</s>", "<|im_end|>") and req.max_new_tokens == 64
    assert (req.temperature, req.num_samples, req.seed) == (0.9, 2, 1234 + 4)
    rec = task.record(doc, [req], gen("She pays 2 + 3 = 6 dollars. #### 6", "x"), opts)
    assert rec["filtered"] == {"strict-match": "6", "flexible-extract": "6"}
    assert rec["diagnostics"]["arithmetic_steps_wrong"] == 1


@needs_data
def test_math_task_uses_math_verify_on_the_local_file():
    task = MathTask()
    docs = task.load_docs(OPTS)
    assert len(docs) == 5000
    doc = docs[1]
    (req,) = task.requests(1, doc, OPTS)
    assert req.context.count("Problem:\n") == 5 and req.context.endswith("Solution:") and req.until == ("Problem:",)
    good = f"So the answer is $\\boxed{{{doc['answer']}}}$."
    assert task.score(doc, [req], gen(good), OPTS) == {"math_verify": 1.0}
    assert task.score(doc, [req], gen("The answer is $\\boxed{12345}$."), OPTS) == {"math_verify": 0.0}


def canonical_results(task: CodeTask, docs: list[dict]) -> list[dict]:
    opts = TaskOptions(data_dir=DATA)
    scores = []
    for i, doc in enumerate(docs):
        reqs = task.requests(i, doc, opts)
        completion = doc["canonical_solution"] if "canonical_solution" in doc else doc["code"]
        scores.append(task.score(doc, reqs, gen(completion), opts))
    return scores


@needs_data
def test_humaneval_canonical_solutions_pass():
    task = CodeTask("humaneval", timeout=20.0)
    docs = task.load_docs(TaskOptions(data_dir=DATA))
    assert len(docs) == 164
    picked = docs[:6]
    assert canonical_results(task, picked) == [{"pass@1": 1.0}] * len(picked)
    broken = task.score(picked[0], [], gen("    return (\n"), OPTS)
    assert broken == {"pass@1": 0.0}
    rec = task.record(picked[0], [], gen("    return (\n"), OPTS)
    assert rec["status"] == ["failed"] and rec["error_class"] == ["bracket_syntax"]
    assert rec["diagnostics"]["balanced_bracket_rate"] == 0.0


@needs_data
def test_mbpp_prompt_and_canonical_code():
    task = CodeTask("mbpp", timeout=20.0)
    docs = task.load_docs(TaskOptions(data_dir=DATA))
    assert len(docs) == 500 and docs[0]["task_id"] == 11
    rows = {r["task_id"]: r for r in map(json.loads, open(DATA / "mbpp" / "mbpp.jsonl"))}
    for shot in MBPP:  # lm-eval's hard-coded examples are the file's task_ids 2, 3, 4
        assert {k: rows[shot["task_id"]][k] for k in shot} == shot
    (req,) = task.requests(0, docs[0], OPTS)
    assert req.until == ("[DONE]",) and req.context.count("[BEGIN]\n") == 4 and req.context.count("\n[DONE]\n\n") == 3
    assert req.context.endswith(docs[0]["test_list"][2] + "\n[BEGIN]\n")
    assert canonical_results(task, docs[:4]) == [{"pass@1": 1.0}] * 4


@pytest.mark.parametrize("flavor", ["humaneval", "mbpp"])
def test_evalplus_local_fixture_and_pass_at_k(flavor):
    task = CodeTask(flavor, plus=True, timeout=20.0)
    opts = TaskOptions(data_dir=FIXTURES)
    docs = task.load_docs(opts)
    assert len(docs) == 2
    assert canonical_results(task, docs) == [{"pass@1": 1.0}] * 2
    good = docs[0]["canonical_solution"] if flavor == "humaneval" else docs[0]["code"]
    bad = "    return 0\n" if flavor == "humaneval" else "def list_product(xs):\n    return 0"
    scores = task.score(docs[0], [], gen(bad, good, bad), opts)
    assert scores == {"pass@1": pytest.approx(1 / 3), "pass@2": pytest.approx(2 / 3), "pass@3": 1.0}  # scaling curve
    rec = task.record(docs[0], [], gen(bad, good, bad), opts)
    assert rec["status"] == ["failed", "passed", "failed"] and rec["error_class"][0] == "assertion"


def test_evalplus_without_local_file_or_hub_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="humaneval_plus"):
        CodeTask("humaneval", plus=True).load_docs(TaskOptions(data_dir=tmp_path))


def test_arithmetic_probe_items_and_scoring():
    task = ArithmeticProbe()
    docs = task.load_docs(OPTS)
    assert docs == task.load_docs(OPTS) and docs != task.load_docs(replace(OPTS, seed=1))
    for doc in docs[:50]:
        a, op1, b, op2, c = doc["question"].removeprefix("What is (").removesuffix("?").replace(")", "").split()
        first = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op1]
        assert str({"+": first + int(c), "-": first - int(c), "*": first * int(c)}[op2]) == doc["answer"]
    doc = next(d for d in docs if d["answer"].startswith("-"))
    reqs = task.requests(0, doc, OPTS)
    assert [r.continuation for r in reqs[:10]] == list("0123456789") and reqs[0].context.endswith("Answer: -")
    assert reqs[-1].context.count("Question: ") == 4
    digit = int(doc["answer"][1])
    lls = [LoglikelihoodResult(-1.0 if d == digit else -5.0, d == digit) for d in range(10)]
    scores = task.score(doc, reqs, lls + gen(f" {doc['answer']}"), OPTS)
    assert scores == {"first_digit_acc": 1.0, "exact_match": 1.0}
    assert task.score(doc, reqs, lls[::-1] + gen(" 3"), OPTS)["exact_match"] == 0.0


def test_bracket_probe_items_are_well_nested_and_scored():
    task = BracketProbe()
    pairs = {"(": ")", "[": "]", "{": "}", "<": ">"}
    for doc in task.load_docs(OPTS)[:100]:
        stack = []
        for tok in doc["question"].split():
            if tok in pairs:
                stack.append(tok)
            else:
                assert pairs[stack.pop()] == tok
        assert doc["answer"].split() == [pairs[o] for o in reversed(stack)] and stack
    doc = {"question": "( [ {", "answer": "} ] )"}
    assert task.score(doc, [], gen(" } ] )"), OPTS) == {"exact_match": 1.0, "prefix_acc": 1.0}
    assert task.score(doc, [], gen(" } ) ]"), OPTS) == {"exact_match": 0.0, "prefix_acc": pytest.approx(1 / 3)}


@pytest.mark.parametrize("probe", [ArithmeticProbe, BracketProbe])
def test_probes_run_end_to_end_on_a_tiny_model(probe):
    from fixtures.tiny_lm import build_tiny_lm
    from layerprune.evaluation.hf_backend import HFBackend
    from layerprune.evaluation.runner import run_task

    model, tokenizer = build_tiny_lm()
    metrics, rows = run_task(probe(), HFBackend(model, tokenizer, batch_size=4, progress=False), TaskOptions(limit=3))
    assert len(rows) == 3 and all("diagnostics" in r and r["resps"] for r in rows)
    wanted = {"exact_match", "first_digit_acc"} if probe is ArithmeticProbe else {"exact_match", "prefix_acc"}
    assert wanted <= set(metrics) and all(0.0 <= metrics[m] <= 1.0 for m in wanted)
