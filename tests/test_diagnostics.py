"""Degeneration diagnostics on hand-checked examples, NLTK's BLEU where installed, and real GSM8K/HumanEval data."""

import gzip
import json
import math
import os
import random
import re
from pathlib import Path

import pytest

from layerprune.errors import UsageError
from layerprune.evaluation.diagnostics import (
    arithmetic_step_errors,
    brackets_balanced,
    rep_n,
    self_bleu4,
    sentence_bleu4,
    summarize,
)
from layerprune.execution import run_programs

DATA = Path(os.environ.get("LAYERPRUNE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
GSM8K_TEST = DATA / "gsm8k" / "test.jsonl"
HUMANEVAL = DATA / "humaneval" / "HumanEval.jsonl.gz"


# ------------------------------------------------------------------------------------------ Rep-n


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("a a a a", 2, 100 * (1 - 1 / 3)),  # 3 bigrams, 1 unique
        ("a a a a", 3, 100 * (1 - 1 / 2)),
        ("a a a a", 4, 0.0),  # a single 4-gram is unique
        ("a b a b a b", 2, 100 * (1 - 2 / 5)),  # ab ba ab ba ab
        ("the cat sat on the mat", 1, 100 * (1 - 5 / 6)),
        ("the cat sat on the mat", 2, 0.0),
        ("a\ta\n a   a", 2, 100 * (1 - 1 / 3)),  # whitespace tokens: any run of whitespace splits
        ("a b", 3, 0.0),  # fewer tokens than n
        ("", 2, 0.0),
    ],
)
def test_rep_n_hand_checked(text, n, expected):
    assert rep_n(text, n) == pytest.approx(expected, abs=1e-12)


def test_rep_n_rejects_n_below_one():
    with pytest.raises(ValueError):
        rep_n("a b", 0)


# ---------------------------------------------------------------------------------------- BLEU


def test_sentence_bleu4_hand_checked():
    assert sentence_bleu4("a b c d".split(), ["a b c d".split()]) == pytest.approx(1.0)
    # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> epsilon 0.1 / 1; equal lengths, no brevity penalty
    expected = (3 / 4 * 2 / 3 * 1 / 2 * 0.1) ** 0.25
    assert sentence_bleu4("a b c d".split(), ["a b c e".split()]) == pytest.approx(expected)
    # hypothesis of 2 tokens: p1 = p2 = 1, no 3/4-grams -> 0.1 / 1 each; BP = exp(1 - 4/2)
    expected = math.exp(1 - 4 / 2) * (0.1 * 0.1) ** 0.25
    assert sentence_bleu4("a b".split(), ["a b c d".split()]) == pytest.approx(expected)
    # the closest reference length (5, not 2) sets the brevity penalty: 4 < 5 -> exp(1 - 5/4)
    refs = ["a b".split(), "a b c d e".split()]
    expected = math.exp(1 - 5 / 4) * (1 * 1 * 1 * 1) ** 0.25
    assert sentence_bleu4("a b c d".split(), refs) == pytest.approx(expected)
    assert sentence_bleu4("x y".split(), ["a b".split()]) == 0.0  # no unigram match


def test_self_bleu4_hand_checked():
    assert self_bleu4("Only one sentence here.") == 0.0
    # two identical 3-token sentences: p1 = p2 = p3 = 1, p4 = 0.1 / 1
    assert self_bleu4("The cat sat. The cat sat.") == pytest.approx(0.1**0.25)
    assert self_bleu4("a b c d\na b c d") == pytest.approx(1.0)  # newlines split too
    assert self_bleu4("Cats purr softly. Dogs bark loudly! Birds sing?") == 0.0  # no shared words
    assert self_bleu4("It costs 3.5 dollars.") == 0.0  # a decimal point is not a sentence end
    loop = "The answer is 5. " * 50
    diverse = "First add the apples. Then subtract what Tom ate. The answer is 5."
    assert self_bleu4(loop) > 0.9 > self_bleu4(diverse)


def test_bleu_matches_nltk_with_smoothing_method1():
    bleu = pytest.importorskip("nltk.translate.bleu_score")
    smooth = bleu.SmoothingFunction().method1
    rng = random.Random(0)
    vocab = "the cat sat on a mat dog ran".split()

    def words(lo, hi):
        return [rng.choice(vocab) for _ in range(rng.randint(lo, hi))]

    for _ in range(200):
        hyp, refs = words(1, 12), [words(0, 12) for _ in range(rng.randint(1, 4))]
        assert sentence_bleu4(hyp, refs) == pytest.approx(bleu.sentence_bleu(refs, hyp, smoothing_function=smooth))
    for _ in range(50):  # self-BLEU: each sentence against all the others, the naive O(S^2) way
        text = " ".join(" ".join(words(1, 8)) + rng.choice(".!?") for _ in range(rng.randint(2, 8)))
        sentences = [s.split() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
        naive = [
            bleu.sentence_bleu(sentences[:i] + sentences[i + 1 :], s, smoothing_function=smooth)
            for i, s in enumerate(sentences)
        ]
        assert self_bleu4(text) == pytest.approx(sum(naive) / len(naive))


# ------------------------------------------------------------------------------------ brackets


@pytest.mark.parametrize(
    "code, balanced",
    [
        ("def f(x):\n    return [x, {1: (2, 3)}]\n", True),
        ("s = '((' + \"[\"  # ]]})\n", True),  # brackets in strings and comments do not count
        ('x = """ ( [ """ + str(1)', True),
        ("def f():\n  x = (1,\n2)\n y = 3", True),  # bad indentation is not a bracket problem
        ("x = f(1, 2", False),  # never closed
        ("x = (1, 2]", False),  # closed by the wrong bracket
        ("x = 1)", False),  # unmatched closer
        ("x = [1, (2, 3]]", False),
        ('s = """never ends', False),  # cannot be tokenized
    ],
)
def test_brackets_balanced(code, balanced):
    assert brackets_balanced(code) is balanced


@pytest.mark.skipif(not HUMANEVAL.exists(), reason=f"no HumanEval data at {HUMANEVAL}")
def test_brackets_of_humaneval_solutions():
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    programs = [p["prompt"] + p["canonical_solution"] for p in problems]
    assert all(brackets_balanced(p) for p in programs)
    # Cut each solution right after its last opening bracket: an unfinished generation.
    cut = [p[: max(p.rfind("("), p.rfind("[")) + 1] for p in programs]
    assert not any(brackets_balanced(p) for p in cut)


# ---------------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<<48/2=24>>", (1, 0)),
        ("<<48/2=25>>", (1, 1)),
        ("<<(20+30)/2=25>> and <<100*.6=60>>", (2, 0)),
        ("She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs and makes 9 * 2 = $<<9*2=18>>18.", (2, 0)),
        ("3 + 4 = 7 and 6 * 7 = 41", (2, 1)),
        ("He has 1,200 + 300 = 1,500 apples", (1, 0)),
        ("2 + 3 * 4 = 14", (1, 0)),  # usual precedence
        ("$5 x 3 = $15 and 12 × 2 = 24 and 9 ÷ 3 = 3", (3, 0)),
        ("1/3 = 0.33, 2.5 * 4 = 10.0, 2/3 = 0.67", (3, 0)),  # one unit in the last written place
        ("7 / 2 = 3", (1, 1)),
        ("5 / 0 = 0", (1, 1)),
        ("so 10 - 4 = 3 * 2 = 6", (1, 0)),  # "10 - 4 = 3 * 2" is a rewrite; "3 * 2 = 6" is checked
        ("12 slices * 1/3 = 4 slices", (0, 0)),  # the tail of a longer expression
        ("7 / 2 = 3 1/2 hours", (0, 0)),  # mixed number
        ("3 / 6 = 50%", (0, 0)),
        ("The answer is 42.", (0, 0)),
    ],
)
def test_arithmetic_step_errors_hand_checked(text, expected):
    assert arithmetic_step_errors(text) == expected


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason=f"no GSM8K data at {GSM8K_TEST}")
def test_arithmetic_steps_of_gsm8k_gold_answers():
    answers = [json.loads(line)["answer"] for line in GSM8K_TEST.read_text(encoding="utf-8").splitlines()]
    checked, wrong = map(sum, zip(*map(arithmetic_step_errors, answers)))
    annotations = sum(a.count("<<") for a in answers)
    assert checked > annotations > 4000  # every annotation plus some plain steps
    assert wrong / checked < 0.002  # gold solutions: (nearly) all steps are right

    def off_by_one(match):
        return f"<<{match.group(1)}={float(match.group(2).replace(',', '')) + 1}>>"

    corrupted = [re.sub(r"<<([^<>]*)=([^<>=]*)>>", off_by_one, a) for a in answers[:200]]
    checked, wrong = map(sum, zip(*map(arithmetic_step_errors, corrupted)))
    n_annotations = sum(a.count("<<") for a in corrupted)
    assert wrong >= n_annotations > 500


# ------------------------------------------------------------------------------------ summarize


def test_summarize_text():
    summary = summarize(["a a a a", "the cat sat on the mat"], kind="text")
    assert summary["n"] == 2
    assert summary["rep_2"] == pytest.approx((100 * (1 - 1 / 3) + 0) / 2)
    assert summary["rep_3"] == pytest.approx((50 + 0) / 2)
    assert summary["rep_4"] == 0.0
    assert summary["mean_tokens"] == 5.0 and summary["mean_chars"] == (7 + 22) / 2
    assert summary["self_bleu4"] == 0.0  # one sentence each
    assert "outcomes" not in summary and "arithmetic_steps_checked" not in summary


def test_summarize_code_with_real_execution_results():
    programs = ["assert True", "x = (1, 2", "assert 1 == 2", "print(undefined)"]
    summary = summarize(programs, kind="code", exec_results=run_programs(programs, timeout=5.0))
    assert summary["balanced_bracket_rate"] == 0.75
    assert summary["outcomes"] == {
        "passed": 1, "assertion": 1, "bracket_syntax": 1, "other_syntax": 0,
        "name_error": 1, "runtime_error": 0, "timeout": 0,
    }  # fmt: skip


def test_summarize_math():
    texts = ["3 + 4 = 7. Then 7 * 2 = 15.", "<<10/2=5>> so the answer is 5.", "No arithmetic."]
    summary = summarize(texts, kind="math")
    assert (summary["arithmetic_steps_checked"], summary["arithmetic_steps_wrong"]) == (3, 1)
    assert summary["arithmetic_wrong_rate"] == pytest.approx(1 / 3)
    assert summarize(["No arithmetic."], kind="math")["arithmetic_wrong_rate"] is None


def test_summarize_rejects_bad_input():
    with pytest.raises(UsageError):
        summarize(["x"], kind="poem")
    with pytest.raises(ValueError):
        summarize([], kind="text")
    with pytest.raises(ValueError):
        summarize(["assert True", "assert True"], kind="code", exec_results=run_programs(["assert True"]))
