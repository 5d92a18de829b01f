"""The evaluation engine on a tiny real model: backend exactness, tasks, runner outputs, CLI, bad input."""

from __future__ import annotations

import json

import pytest

from layerprune.evaluation.chat import chat_renderer
import torch
import torch.nn.functional as F

from eval_helpers import build_model, build_tokenizer, save_model
from layerprune.cli import main
from layerprune.errors import UsageError
from layerprune.evaluation import data
from layerprune.evaluation.hf_backend import HFBackend
from layerprune.evaluation.requests import LoglikelihoodRequest as LL
from layerprune.evaluation.runner import evaluate
from layerprune.evaluation.tasks import get_task, known_tasks
from layerprune.evaluation.tasks.base import TaskOptions
from layerprune.families import FAMILIES


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    return build_model(tok, layers=3, hidden=64), tok


def _plain_logprob(model, ctx: list[int], cont: list[int], max_length: int) -> float:
    """The textbook computation, one sequence at a time: sum log p(cont | ctx) over one full forward."""
    ids = (ctx + cont)[-(max_length + 1):][:-1]
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(logp[len(ids) - len(cont) + k, t].item() for k, t in enumerate(cont))


REQUESTS = [
    LL("Question: What is the sky?\nAnswer:", " blue", group=0),
    LL("Question: What is the sky?\nAnswer:", " a large green apple tree", group=0),
    LL("Question: What is the sky?\nAnswer:", " Answer: blue", group=0),
    LL("The cat sat so the cat", " was happy.", group=1),  # winogrande style: contexts differ, suffix shared
    LL("The cat sat so the dog", " was happy.", group=1),
    LL("", " hello there"),  # empty context → prefix token
    LL("Trailing space ", "moves"),  # the space joins the continuation
    LL("Passage: text\nQuestion: is it?\nAnswer:", " no"),  # grouped by identical context
    LL("Passage: text\nQuestion: is it?\nAnswer:", " yes"),
]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_prefix_shared_loglikelihoods_equal_plain_forward(tiny, batch_size):
    model, tok = tiny
    backend = HFBackend(model, tok, batch_size=batch_size, progress=False)
    got = backend.loglikelihood(REQUESTS)
    for req, res in zip(REQUESTS, got):
        ctx, cont = backend.encode_pair(req.context, req.continuation)
        assert res.logprob == pytest.approx(_plain_logprob(model, ctx, cont, backend.max_length), abs=1e-4)


SHOTS = "".join(f"Question: what is {i} plus {i}?\nAnswer: {2 * i}\n\n" for i in range(1, 9))  # 5-shot-like header


@pytest.mark.parametrize("batch_size", [1, 4, 9])
def test_questions_sharing_a_header_run_it_once_and_score_exactly(tiny, batch_size):
    model, tok = tiny
    questions = [f"Question: what is {a} plus {b}?\nAnswer:" for a, b in ((3, 4), (10, 1), (7, 7), (2, 9), (5, 8))]
    reqs = [LL(SHOTS + q, f" {c}", group=g) for g, q in enumerate(questions) for c in ("7", "11", "fourteen")]
    reqs.append(LL(SHOTS + questions[0], " 7 or 8"))  # a longer choice of an ungrouped request
    positions = []  # input positions each forward computes: [B, T] → B·T
    embed = model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda m, a: positions.append(a[0].numel()))
    try:
        backend = HFBackend(model, tok, batch_size=batch_size, progress=False)
        got = backend.loglikelihood(reqs)
    finally:
        handle.remove()
    header = len(tok.encode(SHOTS))
    assert header > 64 and sum(positions) < header * 2 + 30 * len(reqs)  # the header ran once, not per question
    for req, res in zip(reqs, got):
        ctx, cont = backend.encode_pair(req.context, req.continuation)
        assert res.logprob == pytest.approx(_plain_logprob(model, ctx, cont, backend.max_length), abs=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shared_header_cache_is_exact_for_every_family(family):
    # The header's cache is copied per question: sliding-window, hybrid and legacy caches must all survive it.
    from layerprune.tiny import tiny_model, tiny_tokenizer

    model, tok = tiny_model(family), tiny_tokenizer()
    shots = "".join(f"Q: {i}+{i}?\nA: {2 * i}\n\n" for i in range(1, 6))  # ~75 byte tokens
    reqs = [LL(shots + f"Q: {a}+{b}?\nA:", f" {c}", group=g) for g, (a, b) in enumerate(((3, 4), (1, 1), (2, 5)))
            for c in ("7", "2")]
    positions = []
    handle = model.get_input_embeddings().register_forward_pre_hook(lambda m, a: positions.append(a[0].numel()))
    try:
        backend = HFBackend(model, tok, batch_size=4, progress=False)
        got = backend.loglikelihood(reqs)
    finally:
        handle.remove()
    assert sum(positions) < 2 * len(tok.encode(shots))  # the header ran once
    for req, res in zip(reqs, got):
        ctx, cont = backend.encode_pair(req.context, req.continuation)
        assert res.logprob == pytest.approx(_plain_logprob(model, ctx, cont, backend.max_length), abs=1e-4)


def test_encoding_follows_hflm(tiny):
    model, tok = tiny
    backend = HFBackend(model, tok, progress=False)
    assert backend.adds_bos and backend.info()["adds_bos"]
    ctx, cont = backend.encode_pair("Trailing space ", "moves")
    assert ctx == tok.encode("Trailing space") and ctx + cont == tok.encode("Trailing space moves")
    ctx, cont = backend.encode_pair("", " hello")
    assert ctx == [tok.bos_token_id] and cont == tok.encode(" hello", add_special_tokens=False)
    no_bos = HFBackend(model, tok, add_bos_token=False, progress=False)
    assert not no_bos.adds_bos and no_bos.encode_pair("Hi", " there")[0] == tok.encode("Hi", add_special_tokens=False)
    assert backend.tok_encode("<s>Hi") == tok.encode("Hi")  # text that already starts with BOS gets no second one


def test_left_truncation_matches_plain_forward(tiny):
    model, tok = tiny
    backend = HFBackend(model, tok, batch_size=4, max_length=12, progress=False)
    reqs = [LL("one two three four five six seven eight nine ten eleven", c, group=0) for c in (" twelve", " zero")]
    for req, res in zip(reqs, backend.loglikelihood(reqs)):
        ctx, cont = backend.encode_pair(req.context, req.continuation)
        assert res.logprob == pytest.approx(_plain_logprob(model, ctx, cont, 12), abs=1e-4)


def test_runner_writes_results_and_samples(tiny, tmp_path, data_dir):
    model, tok = tiny
    out = evaluate(model, "arc_easy,winogrande", TaskOptions(limit=3, data_dir=data_dir), out_dir=tmp_path,
                   tokenizer=tok, batch_size=4, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"] == out["results"]
    assert set(out["results"]["arc_easy"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}
    assert set(out["results"]["winogrande"]) == {"acc", "acc_stderr", "n"}
    assert out["config"]["limit"] == 3 and out["config"]["data_dir"] == str(data_dir)
    assert out["config"]["code_sandbox"]["guard"] and {"seccomp", "landlock_abi"} <= set(out["config"]["code_sandbox"])
    assert out["model"]["fingerprint"].startswith("sha256:") and out["backend"]["adds_bos"] is True
    rows = [json.loads(x) for x in (tmp_path / "samples_arc_easy.jsonl").read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == [0, 1, 2]
    assert rows[0]["context"].startswith("Question: ") and rows[0]["context"].endswith("\nAnswer:")
    assert len(rows[0]["loglikelihoods"]) == 4 and all(c.startswith(" ") for c in rows[0]["continuations"])
    assert out["results"]["arc_easy"]["acc"] == pytest.approx(sum(r["acc"] for r in rows) / 3)
    best = max(range(4), key=lambda i: rows[0]["loglikelihoods"][i])
    assert rows[0]["acc"] == float(best == rows[0]["target"])


def test_mmlu_group_is_size_weighted(tiny, data_dir):
    model, tok = tiny
    out = evaluate(model, ["mmlu"], TaskOptions(limit=1, data_dir=data_dir, num_fewshot=0), tokenizer=tok,
                   batch_size=64, progress=False)
    subjects = [k for k in out["results"] if k.startswith("mmlu_")]
    assert len(subjects) == 57 and out["results"]["mmlu"]["n"] == 57
    assert out["results"]["mmlu"]["acc"] == pytest.approx(sum(out["results"][s]["acc"] for s in subjects) / 57)


def test_hub_rows_rebuild_the_local_docs(data_dir):
    wino = data._HUB_CONVERT["winogrande"]({"sentence": "Sarah was a much better surgeon than Maria so _ always "
                                            "got the easier cases.", "option1": "Sarah", "option2": "Maria",
                                            "answer": "2"}, None)
    assert wino == data.load_docs("winogrande", "eval", data_dir)[0]
    boolq = data.load_docs("boolq", "eval", data_dir)[0]
    first = json.loads((data_dir / "boolq/boolq.jsonl").read_text().splitlines()[0])
    assert get_task("boolq").spec.text(boolq) == first["query"][len("Passage: "):] + "\nAnswer:"
    hs = data._HUB_CONVERT["hellaswag"]({"activity_label": "Roof shingle removal", "ctx_a": "A man is on a roof.",
                                         "ctx_b": "he", "label": "3", "endings": [" a [title] b", "c", "d", "e"]}, None)
    assert hs["query"] == "Roof shingle removal: A man is on a roof. He" and hs["choices"][0] == "a. b"


def test_chat_template_wraps_prompt_and_drops_delimiter(tiny, data_dir):
    model, tok = tiny
    tok.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"
    try:
        task = get_task("arc_easy")
        opts = TaskOptions(data_dir=data_dir, chat_template=True, system_prompt="Be brief.",
                           chat_renderer=chat_renderer(tok))
        doc = task.load_docs(opts)[0]
        reqs = task.requests(0, doc, opts)
    finally:
        tok.chat_template = None
    assert reqs[0].context == f"<|system|>Be brief.\n<|user|>Question: {doc['question']}\nAnswer:\n<|assistant|>"
    assert [r.continuation for r in reqs] == doc["choices"]


def test_registry_lists_tasks():
    names = known_tasks()
    for name in ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "openbookqa", "mmlu",
                 "mmlu_anatomy"):
        assert name in names
    with pytest.raises(UsageError, match="unknown task 'arc_medium'; known: .*arc_easy"):
        get_task("arc_medium")


def test_bad_input_raises_usage_errors(tiny, tmp_path, data_dir):
    model, tok = tiny
    with pytest.raises(UsageError, match="--limit must be a positive"):
        evaluate(model, "arc_easy", TaskOptions(limit=0), tokenizer=tok, progress=False)
    with pytest.raises(UsageError, match="needs the train split"):
        evaluate(model, "arc_easy", TaskOptions(num_fewshot=2, data_dir=data_dir), tokenizer=tok, progress=False)
    with pytest.raises(UsageError, match="exceeds the 5 few-shot docs"):
        evaluate(model, "mmlu_anatomy", TaskOptions(num_fewshot=6, data_dir=data_dir), tokenizer=tok, progress=False)
    with pytest.raises(UsageError, match=f"missing data file {tmp_path}/arc/arc_easy.jsonl; expected JSONL"):
        evaluate(model, "arc_easy", TaskOptions(data_dir=tmp_path), tokenizer=tok, progress=False)
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq/boolq.jsonl").write_text('{"query": "Passage: a\\nQuestion: b?", "gold": 1}\n{"query": 3}\n')
    with pytest.raises(UsageError, match=r"boolq\.jsonl:2: malformed row"):
        evaluate(model, "boolq", TaskOptions(data_dir=tmp_path), tokenizer=tok, progress=False)


def test_cli_eval_writes_outputs_and_exits_2_on_bad_input(tiny, tmp_path, data_dir, capsys):
    model, tok = tiny
    path = save_model(model, tok, tmp_path / "model")
    out = tmp_path / "run"
    code = main(["eval", str(path), "--tasks", "piqa,boolq", "--limit", "2", "--batch-size", "4", "--data-dir",
                 str(data_dir), "--out", str(out), "--no-progress"])
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["piqa"]["n"] == 2 and saved["model"]["path"] == str(path)
    assert saved["config"]["max_new_tokens"] is None and saved["config"]["batch_size"] == 4  # None: task defaults
    assert len((out / "samples_boolq.jsonl").read_text().splitlines()) == 2
    assert main(["eval", str(path), "--tasks", "nope", "--out", str(out)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
