"""Instruct tasks with realistic instruct-model answers, the public backend protocol, task_iterative's prompts
and the chat path's bad-input rules.

The replay backend implements `layerprune.evaluation.requests.Backend` (plain `generate(requests)`): it answers
each prompt with a canned instruct-style reply (explanation around fenced code, "The final answer is N",
\\boxed{N}) cut at the request's stop strings, as a real backend would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_helpers import DATA_DIR, build_model, build_tokenizer, save_model
from layerprune.cli import main
from layerprune.errors import UsageError
from layerprune.evaluation.requests import GenerationRequest, GenerationResult, LoglikelihoodResult
from layerprune.evaluation.runner import evaluate
from layerprune.evaluation.tasks import get_task
from layerprune.evaluation.tasks.base import TaskOptions

TESTBED = Path(__file__).resolve().parents[1] / "src/layerprune/testbed/model"
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"benchmark data not found at {DATA_DIR}")


class Replay:
    """A backend answering from `answers`: the reply of the longest key that occurs in the prompt (a doc's own
    text, so a shorter text contained in another doc's prompt cannot capture it)."""

    def __init__(self, answers: list[tuple[str, str]]):
        self.answers = answers
        self.prompts: list[str] = []

    def loglikelihood(self, requests):
        return [LoglikelihoodResult(0.0, False) for _ in requests]

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for req in requests:
            self.prompts.append(req.context)
            reply = max(((k, t) for k, t in self.answers if k in req.context), key=lambda kt: len(kt[0]))[1]
            if not req.context.endswith("\n"):  # a chat template's continue_final_message strips gen_prefix's
                reply = "\n" + reply           # trailing newline; the model writes it first
            cuts = [reply.find(s) for s in req.until if s and reply.find(s) >= 0]
            out.append(GenerationResult(((reply[: min(cuts)] if cuts else reply),) * req.num_samples))
        return out


@pytest.fixture(scope="module")
def chat_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TESTBED)


def _canonical_passes(task_name: str, docs: list[dict], completion) -> list[bool]:
    from layerprune.execution import run_programs

    task = get_task(task_name)
    results = run_programs([task.program(d, completion(d)) for d in docs], timeout=3.0, workers=2)
    return [r.status == "passed" for r in results]


@pytest.mark.slow
@needs_data
def test_instruct_style_answers_score_like_canonical_solutions(chat_tok, tmp_path):
    """Every HumanEval and MBPP test problem (164 + 500, each run twice in the sandbox: canonical and replayed)."""
    from layerprune.evaluation.tasks.instruct import mbpp_instruct_text

    opts = TaskOptions(data_dir=DATA_DIR, chat_template=True, system_prompt="You are a coder.")
    he_docs = get_task("humaneval").load_docs(opts)
    mb_docs = get_task("mbpp").load_docs(opts)
    assert (len(he_docs), len(mb_docs)) == (164, 500)
    # after gen_prefix "```python\n{prompt}\n": the body, the closing fence, then prose (a new paragraph)
    he = [(d["prompt"], d["canonical_solution"] + "\n```\n\nThis function loops over the input and returns the "
           "result. Let me know if you need tests.") for d in he_docs]
    mb = [(mbpp_instruct_text(d), d["code"] + "\n```\n\nExplanation: the function above solves the task.\n\n"
           "```python\nprint('usage')\n```") for d in mb_docs]
    backend = Replay(he + mb)
    out = evaluate(None, ["humaneval_instruct", "mbpp_instruct"], opts, tokenizer=chat_tok, backend=backend,
                   out_dir=tmp_path / "run", progress=False)
    he_ok = _canonical_passes("humaneval", he_docs, lambda d: d["canonical_solution"])
    mb_ok = _canonical_passes("mbpp", mb_docs, lambda d: d["code"])
    # the canonical solutions themselves: all of HumanEval; MBPP's few that fail on their own (a test needing
    # test_setup_code, one slower than the sandbox's 3 s) are left out of the comparison, not of the run
    assert sum(he_ok) >= len(he_docs) - 2 and sum(mb_ok) >= 0.98 * len(mb_docs), (sum(he_ok), sum(mb_ok))
    for name, ok in (("humaneval_instruct", he_ok), ("mbpp_instruct", mb_ok)):
        rows = [json.loads(x) for x in (tmp_path / "run" / f"samples_{name}.jsonl").read_text().splitlines()]
        assert len(rows) == len(ok), name
        failed = [r["doc_id"] for r in rows if ok[r["doc_id"]] and r["pass@1"] != 1.0]
        assert failed == [], (name, failed)
    assert out["backend"] == {"class": "Replay"}
    # the prompt is the chat template's, with the gen_prefix opening the assistant's turn
    first = backend.prompts[0]
    assert "You are a coder." in first and first.rstrip().endswith(he_docs[0]["prompt"].rstrip())
    assert "Here is the completed function:\n```python\n" in first


@needs_data
def test_gsm8k_cot_llama_reads_final_answer_and_boxed(chat_tok):
    opts = TaskOptions(data_dir=DATA_DIR, limit=3, chat_template=True)
    docs = get_task("gsm8k_cot_llama").load_docs(opts)[:3]
    gold = [d["answer"].split("####")[-1].strip() for d in docs]
    replies = [f"Let me think step by step.\nFirst ... then ...\nThe final answer is {gold[0]}",
               f"Working: 2 + 2 = 4.\nSo the answer is \\boxed{{{gold[1]}}}.",
               "The final answer is 123456789"]
    backend = Replay([(d["question"], r) for d, r in zip(docs, replies)])
    res = evaluate(None, ["gsm8k_cot_llama"], opts, tokenizer=chat_tok, backend=backend, progress=False)
    assert res["results"]["gsm8k_cot_llama"]["exact_match,strict-match"] == pytest.approx(1 / 3)
    assert res["results"]["gsm8k_cot_llama"]["exact_match,flexible-extract"] == pytest.approx(2 / 3)
    # lm-eval's 8 exemplars as user/assistant turns (few-shot as multi-turn, the CLI default)
    assert backend.prompts[0].count("<|user|>") == 9  # 8 exemplars + the question, each its own user turn
    assert backend.prompts[0].count("The final answer is") == 8 * 2 + 1  # instruction + answer per shot


@pytest.mark.slow
@needs_data
def test_task_iterative_scores_on_the_prompts_eval_uses(chat_tok, tmp_path, monkeypatch):
    """task_iterative evaluates candidates through the same runner with the model's chat settings: the
    prompts its evaluations send are exactly those of `eval --chat-template --system-prompt`."""
    from transformers import AutoModelForCausalLM

    from layerprune.evaluation import hf_backend
    from layerprune.scoring import score

    model = AutoModelForCausalLM.from_pretrained(TESTBED).eval()
    seen: list[str] = []
    original = hf_backend.HFBackend.loglikelihood

    def spy(self, requests):
        seen.extend(r.context for r in requests)
        return original(self, requests)

    monkeypatch.setattr(hf_backend.HFBackend, "loglikelihood", spy)
    score(model, chat_tok, "task_iterative", num_drop=1, options={
        "tasks": "arc_easy", "samples": 3, "data_dir": str(DATA_DIR), "chat_template": True,
        "system_prompt": "Answer briefly."}, protected=list(range(10)), progress=False)  # 2 candidates: quick
    scored = set(seen)
    seen.clear()
    out = tmp_path / "eval"
    evaluate(model, "arc_easy", TaskOptions(data_dir=DATA_DIR, limit=3, chat_template=True,
                                            system_prompt="Answer briefly."), tokenizer=chat_tok, out_dir=out,
             progress=False)
    evaluated = {json.loads(x)["context"] for x in (out / "samples_arc_easy.jsonl").read_text().splitlines()}
    assert scored == evaluated == set(seen)
    assert all("Answer briefly." in p and "<|" in p for p in scored)  # the chat template's rendering


def test_backend_protocol_is_documented_in_one_module():
    from layerprune.evaluation import requests

    assert "loglikelihood(requests)" in requests.__doc__ and "generate(requests)" in requests.__doc__
    assert isinstance(Replay([]), requests.Backend)


def test_chat_bad_inputs(tmp_path, capsys):
    tok = build_tokenizer()
    model = build_model(tok, layers=2, hidden=32)
    path = save_model(model, tok, tmp_path / "base-model")
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["eval", str(path), "--tasks", "arc_easy", "--chat-template", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "drop --chat-template" in err
    assert main(["eval", str(path), "--tasks", "arc_easy", "--fewshot-as-multiturn", "--out", str(out)]) == 2
    assert "--fewshot-as-multiturn needs --chat-template" in capsys.readouterr().err
    assert main(["eval", str(path), "--tasks", "humaneval_instrut", "--out", str(out)]) == 2
    assert "did you mean humaneval_instruct" in capsys.readouterr().err
    assert not out.exists()


@needs_data
def test_system_prompt_rejected_by_template_is_one_line_error():
    tok = build_tokenizer()
    model = build_model(tok, layers=2, hidden=32)
    tok.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                         "{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    opts = TaskOptions(data_dir=DATA_DIR, limit=1, chat_template=True, system_prompt="Be brief.")
    with pytest.raises(UsageError, match=r"--system-prompt: .*rejects a system turn \(System role not supported\)"):
        evaluate(model, "arc_easy", opts, tokenizer=tok, progress=False)
    # the task's own description as a system turn is dropped on retry, as lm-eval does
    res = evaluate(model, "mmlu_anatomy", TaskOptions(data_dir=DATA_DIR, limit=1, chat_template=True),
                   tokenizer=tok, progress=False)
    assert res["results"]["mmlu_anatomy"]["n"] == 1


def test_mbpp_code_extraction_keeps_the_first_word():
    """lm-eval's extract_code_blocks, except that code right after gen_prefix's fence keeps its first word."""
    from layerprune.evaluation.tasks.instruct import extract_code_block

    assert extract_code_block("def f(x):\n    return x\n```\nExplanation") == "def f(x):\n    return x"
    assert extract_code_block("\nimport re\nx = 1\n```") == "import re\nx = 1"
    assert extract_code_block("python\nx = 1\n```") == "x = 1"  # a language tag on its own line
    assert extract_code_block("Sure!\n```python\nx = 2\n```") == "Sure!"  # as lm-eval: the prefix's fence is open
    assert extract_code_block("no fence at all") == ""


def test_study_warns_and_report_marks_base_code_tasks_under_chat(tmp_path, capsys):
    from layerprune.study.tables import task_tables

    cfg = tmp_path / "study.yaml"
    cfg.write_text("name: chat\nmodels:\n  - name: m\n    tiny: {family: llama, layers: 4}\n    chat_template: true\n"
                   "pruning: {criteria: [reverse], num_drop: [1]}\neval:\n  tasks: [arc_easy, humaneval, mbpp_instruct]\n")
    assert main(["validate", str(cfg)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: model m uses its chat template but task humaneval is a base-style completion prompt; "
                   "use humaneval_instruct for instruct models"]
    rows = [{"model": "m", "criterion": None, "num_drop": 0, "arm": "none",
             "scores": {t: {"metric": "pass@1", "value": 0.5} for t in ("humaneval", "mbpp_instruct")}}]
    blocks = task_tables({"tasks": rows}, {"models": [{"name": "m", "chat_template": True}]})
    table = next(b for b in blocks if b[0] == "table")
    assert table[1][3:] == ["humaneval (pass@1) †", "mbpp_instruct (pass@1)"]
    assert any(b[0] == "p" and "humaneval_instruct" in b[1] for b in blocks)
