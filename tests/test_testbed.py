"""The testbed: generated tasks (deterministic, reference answers checked by evaluating/executing them),
the prompt pool, the tokenizer's chat template, the shipped checkpoint's quality bars, and the train CLI."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from layerprune.cli import main
from layerprune.evaluation.requests import GenerationResult, LoglikelihoodResult
from layerprune.evaluation.tasks.base import TaskOptions
from layerprune.execution import run_programs
from layerprune.testbed import CLASSIFICATION, GENERATIVE, MODEL_DIR, TASKS, score_model
from layerprune.testbed.corpus import prompt_pool, render_chat, training_documents
from layerprune.testbed.tasks import CATEGORIES, GENERATORS, KB, items

OPTS = TaskOptions()


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_items_are_deterministic_per_seed(kind):
    assert items(kind, 7, 50) == items(kind, 7, 50)
    assert items(kind, 7, 50) != items(kind, 8, 50)


def test_knowledge_base_is_fixed_and_unambiguous():
    assert len(KB) == 24
    for rel in ("capital", "language"):
        values = [v[rel] for v in KB.values()]
        assert len(set(values)) == len(values)  # every answer names one country


def test_fact_compare_category_gold_answers_are_right():
    for it in items("facts", 0, 200):
        country, rel = re.fullmatch(r"The (\w+) of (\w+) is", it["prompt"]).group(2, 1)
        assert it["choices"][it["gold"]] == KB[country][rel] and len(set(it["choices"])) == 4
    for it in items("compare", 0, 200):
        a, b = map(int, re.findall(r"\d+", it["prompt"]))
        assert int(it["choices"][it["gold"]]) == max(a, b) != min(a, b)
    for it in items("category", 0, 200):
        word = it["prompt"].split()[1]
        assert word in CATEGORIES[it["choices"][it["gold"]]]


def test_math_solutions_are_correct_step_by_step():
    for it in items("math", 0, 300):
        expression = re.fullmatch(r"Question: Compute (.*)\.\nAnswer:", it["prompt"]).group(1)
        assert str(eval(expression)) == it["target"]  # noqa: S307 - our own generated arithmetic
        steps = re.findall(r"(-?\d+) ([-+*]) (\d+) = (-?\d+)\.", it["answer"])
        assert len(steps) == 2 and steps[0][3] == steps[1][0]
        assert all(str(eval(f"{a} {op} {b}")) == r for a, op, b, r in steps)  # noqa: S307
        assert it["answer"].endswith(f"Answer: {it['target']}")


def _words_to_python(words: list[str]) -> str:
    """An independent reading of the code descriptions (prefix order, fixed arity) into Python."""
    w = words.pop(0)
    if w == "x":
        if words[:1] in (["plus"], ["times"]):
            op, n = words.pop(0), words.pop(0)
            return f"x {'+' if op == 'plus' else '*'} {n}"
        return "x"
    if w.isdigit():
        return w
    assert w == "a"
    kind = words.pop(0)
    if kind == "dict":
        assert words.pop(0) == "mapping"
        key = words.pop(0)
        assert words.pop(0) == "to"
        return f"{{{key}: {_words_to_python(words)}}}"
    assert words.pop(0) == "of"
    first = _words_to_python(words)
    assert words.pop(0) == "and"
    second = _words_to_python(words)
    return f"[{first}, {second}]" if kind == "list" else f"({first}, {second})"


def test_code_references_match_descriptions_and_pass_their_tests():
    docs = items("code", 0, 60)
    for it in docs:
        words = re.search(r"returns (.*)\.\nCode:", it["prompt"]).group(1).split()
        assert it["code"] == f"def f(x): return {_words_to_python(words)}" and not words
    results = run_programs([it["code"] + "\n" + it["tests"] for it in docs[:20]], workers=2)
    assert all(r.status == "passed" for r in results), [r.message for r in results]
    assert run_programs(["def f(x): return None\n" + docs[0]["tests"]])[0].status == "failed"


def _gen(text: str) -> list[GenerationResult]:
    return [GenerationResult(texts=(text,))]


def test_generative_scores_reward_only_right_answers():
    math, code = TASKS["testbed_math"](), TASKS["testbed_code"]()
    m, c = items("math", 0, 1)[0], items("code", 0, 1)[0]
    assert math.score(m, [], _gen(m["answer"]), OPTS) == {"exact_match": 1.0, "steps_match": 1.0}
    assert math.score(m, [], _gen(f"Answer: {int(m['target']) + 1}"), OPTS)["exact_match"] == 0.0
    assert code.score(c, [], _gen(c["answer"]), OPTS) == {"pass_at_1": 1.0}
    assert code.score(c, [], _gen(c["answer"].rstrip(")]}")), OPTS) == {"pass_at_1": 0.0}  # unclosed


def test_choice_tasks_request_every_choice_and_pick_the_argmax():
    for name in CLASSIFICATION:
        task = TASKS[name]()
        doc = task.load_docs(OPTS)[0]
        reqs = task.requests(0, doc, OPTS)
        assert [r.continuation for r in reqs] == [" " + c for c in doc["choices"]]
        lls = [LoglikelihoodResult(-5.0, False) for _ in reqs]
        lls[doc["gold"]] = LoglikelihoodResult(-1.0, True)
        assert task.score(doc, reqs, lls, OPTS) == {"acc": 1.0}
        other = (doc["gold"] + 1) % len(lls)
        lls[other] = LoglikelihoodResult(-0.5, False)
        assert task.score(doc, reqs, lls, OPTS) == {"acc": 0.0}


def test_training_stream_uses_the_evaluated_formats():
    stream = training_documents(0)
    docs = [next(stream) for _ in range(400)]
    assert docs == [d for d, _ in zip(training_documents(0), range(400))]
    for prefix in ("The capital of", "Which is larger:", "Question: Compute", "Task: Write", "Input: ", "<|user|>"):
        assert any(d.startswith(prefix) or prefix in d for d in docs), prefix


def test_prompt_pool_covers_every_skill_and_cli_writes_it(tmp_path):
    rows = prompt_pool(60, seed=3)
    assert rows == prompt_pool(60, seed=3) and len(rows) == 60
    assert all(set(r) == {"instruction", "input", "output"} and r["output"] for r in rows)
    for marker in ("capital", "larger", "kind of thing", "Compute", "Python function", "Close the brackets"):
        assert sum(marker in r["instruction"] for r in rows) >= 5, marker
    # the demo's pool: 512 distinct instructions (SGR keeps one row per prompt), though two skills have ~40 each
    big = prompt_pool(512, seed=1234)
    assert len({r["instruction"] for r in big}) == 512
    for marker in ("larger", "Compute", "Python function", "Close the brackets"):  # they make up the difference
        assert sum(marker in r["instruction"] for r in big) > 512 // 6, marker
    out = tmp_path / "pool.jsonl"
    assert main(["testbed", "prompts", "--out", str(out), "--num", "12"]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == prompt_pool(12)
    assert main(["testbed", "prompts", "--out", str(tmp_path), "--num", "12"]) == 2


needs_checkpoint = pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").is_file(),
                                      reason=f"shipped testbed checkpoint absent ({MODEL_DIR}/model.safetensors)")


@pytest.fixture(scope="module")
def shipped():
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    return model, AutoTokenizer.from_pretrained(MODEL_DIR)


@needs_checkpoint
def test_shipped_tokenizer_renders_the_chat_template(shipped):
    _, tok = shipped
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == render_chat("Hi", None, system=True)
    assert tok.eos_token == "<|end|>" and tok.decode(tok.encode(text)) == text


@needs_checkpoint
def test_shipped_checkpoint_meets_the_quality_bars(shipped):
    model, tok = shipped
    assert model.config.num_hidden_layers >= 12 and len(tok) <= 512
    scores = score_model(model, tok, limit=40)
    for name in CLASSIFICATION:
        assert scores[name]["acc"] >= 0.9, (name, scores[name])
    assert scores["testbed_math"]["exact_match"] >= 0.8, scores["testbed_math"]
    assert scores["testbed_code"]["pass_at_1"] >= 0.8, scores["testbed_code"]


def test_train_cli_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "tb"
    assert main(["testbed", "train", "--max-steps", "5", "--out", str(out)]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 5 and all(r["loss"] > 0 for r in log)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 12 and tok.chat_template
    assert main(["testbed", "train", "--max-steps", "5", "--out", str(out)]) == 2  # non-empty, no --overwrite
