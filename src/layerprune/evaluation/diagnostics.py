"""Degeneration and diagnostic measures for generated text (seed paper, `analysis/calc_self_bleu.py`
and `all_viz.ipynb`; methods.md §1.4).

Tokenization: every measure here works on whitespace tokens, `text.split()`; punctuation stays
attached to words ("5." and "5" differ). Sentences for Self-BLEU come from a regex splitter: a
break after ".", "!" or "?" followed by whitespace, and at every newline (no NLTK data needed).

* `rep_n`: 100 · (1 − unique n-grams / total n-grams); 0 = no repetition, → 100 = one n-gram looped.
* `self_bleu4`: within one response, each sentence is scored by BLEU-4 against all the others,
  and the scores are averaged; in [0, 1] (NLTK's scale), high = the response repeats itself.
* `brackets_balanced`: bracket matching on Python tokens, so brackets in strings/comments do not count.
* `arithmetic_step_errors`: re-computes written arithmetic ("<<48/2=24>>", "3 + 4 = 7").
"""

from __future__ import annotations

import ast
import io
import math
import operator
import re
import tokenize
from collections import Counter
from typing import Sequence

from layerprune.errors import UsageError
from layerprune.evaluation.metrics import mean
from layerprune.execution import ERROR_CLASSES, ExecutionResult

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_EPSILON = 0.1  # NLTK SmoothingFunction().method1: zero n-gram matches count as 0.1
_CLOSERS = {")": "(", "]": "[", "}": "{"}

# A number as written in prose: optional "$", thousands commas, decimals ("1,234.5", "$3", "0.75").
_NUM = r"\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_OP = r"[-+*/×x÷]"
# "a op b (op c ...) = r": the left side starts a number (not inside a word, a decimal or a
# negative number), and the result must not go on as an expression ("10 - 4 = 3 * 2" is a
# rewrite, not a step). The result sits in a lookahead so "2 + 3 = 5 + 1 = 6" also checks "5 + 1 = 6".
_PLAIN_STEP = re.compile(
    rf"(?<![\w.,$])({_NUM}(?:\s*{_OP}\s*{_NUM})+)"
    rf"(?=\s*=\s*(-?{_NUM})(?![\d.,]?\d|[A-Za-z])(?![ \t]*(?:{_OP}[ \t]*\d|\d|%)))"
)
# A step whose text before ends in a digit or an operator is the tail of something longer
# ("12 slices * 1/3 = 4", "$409 000 + 2 = ..."): not checked.
_CONTINUES = "+-*/×x÷–−(^"
_ANNOTATION = re.compile(r"<<([^<>]*)=([^<>=]*)>>")  # GSM8K calculator annotation <<expr=result>>
# An annotation with the "= $" that introduces it in GSM8K prose ("16 - 3 = <<16-3=13>>13"):
# removed before plain steps are searched, so the prose echo of an annotation is not counted twice.
_ANNOTATION_IN_PROSE = re.compile(r"(?:=\s*\$?\s*)?<<[^<>]*>>")
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def rep_n(text: str, n: int) -> float:
    """Rep-n in percent on whitespace tokens; 0.0 when the text has fewer than n tokens.

    >>> rep_n("a a a a", 2)  # bigrams (a a) x3, 1 unique: 100 * (1 - 1/3)
    66.66666666666667
    """
    if n < 1:
        raise ValueError(f"rep_n needs n >= 1, got {n}")
    grams = _ngrams(text.split(), n)
    total = sum(grams.values())
    return 100.0 * (1.0 - len(grams) / total) if total else 0.0


def sentence_bleu4(hypothesis: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """BLEU-4 of one token list against references; uniform weights, NLTK smoothing method1.

    Modified precision p_n clips each hypothesis n-gram count by its max count in any reference;
    a zero p_n becomes epsilon / (number of hypothesis n-grams). No unigram match gives 0.
    Brevity penalty uses the closest reference length (the shorter one on ties).
    """
    if not hypothesis or not references:
        return 0.0
    max_ref: list[Counter] = [Counter() for _ in range(4)]
    for reference in references:
        for n in range(4):
            max_ref[n] |= _ngrams(reference, n + 1)  # Counter "|" keeps the max count
    clipped = [sum((_ngrams(hypothesis, n + 1) & max_ref[n]).values()) for n in range(4)]
    ref_lengths = Counter(len(r) for r in references)
    return _bleu_from_counts(hypothesis, clipped, ref_lengths)


def self_bleu4(text: str) -> float:
    """Mean BLEU-4 of each sentence against the other sentences of the same text.

    0.0 when the text has fewer than two sentences (nothing to compare).
    """
    sentences = [s.split() for s in _SENTENCE_BREAK.split(text) if s.strip()]
    if len(sentences) < 2:
        return 0.0
    # For each n, the two largest per-sentence counts of every n-gram: the max over "all
    # sentences but i" is then the largest one unless sentence i owns it. O(tokens), not O(S^2).
    counts = [[_ngrams(s, n + 1) for s in sentences] for n in range(4)]  # (4, S) Counters
    top = [_top_two(per_sentence) for per_sentence in counts]
    lengths = Counter(len(s) for s in sentences)
    scores = []
    for i, sentence in enumerate(sentences):
        clipped = [
            sum(min(c, _max_other(top[n][g], i)) for g, c in counts[n][i].items()) for n in range(4)
        ]
        scores.append(_bleu_from_counts(sentence, clipped, lengths - Counter({len(sentence): 1})))
    return mean(scores)


def brackets_balanced(code: str) -> bool:
    """True when every (, [ and { in the Python tokens of `code` is closed in order.

    Brackets inside strings and comments are not tokens, so they do not count. Code that cannot be
    tokenized (an unclosed bracket at the end, an unterminated triple-quoted string) gives False.
    Indentation plays no part in brackets, so lines are dedented first and bad indentation
    cannot stop the tokenizer.
    """
    source = "\n".join(line.lstrip() for line in code.splitlines()) + "\n"
    stack: list[str] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.OP:
                continue
            if token.string in ("(", "[", "{"):
                stack.append(token.string)
            elif token.string in _CLOSERS and (not stack or stack.pop() != _CLOSERS[token.string]):
                return False
    except (tokenize.TokenError, SyntaxError):
        return False
    return not stack


def arithmetic_step_errors(text: str) -> tuple[int, int]:
    """(checked, wrong) arithmetic steps in `text`.

    Steps are GSM8K calculator annotations `<<expr=result>>` and plain "a + b = c" chains with
    + - * / × x ÷ (usual precedence, no parentheses). A step is wrong when the re-computed value
    differs from the written result by more than one unit in its last written decimal place
    (1e-6 relative for whole numbers). Steps that cannot be parsed are not counted.

    >>> arithmetic_step_errors("<<48/2=24>> so 24 + 3 = 28")
    (2, 1)
    """
    steps = [(m.group(1), m.group(2)) for m in _ANNOTATION.finditer(text)]
    prose = _ANNOTATION_IN_PROSE.sub(" ", text)
    for m in _PLAIN_STEP.finditer(prose):
        before = prose[: m.start()].rstrip()
        if not before or not (before[-1] in _CONTINUES or before[-1].isdigit()):
            steps.append((m.group(1), m.group(2)))
    checked = wrong = 0
    for expression, written in steps:
        verdict = _step_is_right(expression, written)
        if verdict is not None:
            checked += 1
            wrong += not verdict
    return checked, wrong


def summarize(
    texts: Sequence[str], kind: str, exec_results: Sequence[ExecutionResult] | None = None
) -> dict:
    """Diagnostics over many generations: means of Rep-2/3/4, Self-BLEU-4 and length, plus

    * kind="code": `balanced_bracket_rate` (pass full programs, prompt included, so the brackets
      the prompt opens are closed) and, with `exec_results` (one per text), `outcomes`: counts of
      "passed" and of every error class;
    * kind="math": checked and wrong arithmetic steps and `arithmetic_wrong_rate` (None if none checked).
    """
    if kind not in ("math", "code", "text"):
        raise UsageError(f"unknown diagnostics kind {kind!r}; use 'math', 'code' or 'text'")
    if not texts:
        raise ValueError("summarize() needs at least one text")
    if exec_results is not None and (kind != "code" or len(exec_results) != len(texts)):
        raise ValueError("exec_results must be given for kind='code' only, one per text")
    summary = {"n": len(texts), **{f"rep_{n}": mean([rep_n(t, n) for t in texts]) for n in (2, 3, 4)}}
    summary["self_bleu4"] = mean([self_bleu4(t) for t in texts])
    summary["mean_tokens"] = mean([len(t.split()) for t in texts])
    summary["mean_chars"] = mean([len(t) for t in texts])
    if kind == "code":
        summary["balanced_bracket_rate"] = mean([brackets_balanced(t) for t in texts])
        if exec_results is not None:
            outcomes = Counter(r.error_class or "passed" for r in exec_results)
            summary["outcomes"] = {name: outcomes[name] for name in ("passed", *ERROR_CLASSES)}
    if kind == "math":
        steps = [arithmetic_step_errors(t) for t in texts]
        checked, wrong = sum(c for c, _ in steps), sum(w for _, w in steps)
        summary["arithmetic_steps_checked"] = checked
        summary["arithmetic_steps_wrong"] = wrong
        summary["arithmetic_wrong_rate"] = wrong / checked if checked else None
    return summary


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(zip(*(tokens[i:] for i in range(n))))


def _bleu_from_counts(hypothesis: Sequence[str], clipped: list[int], ref_lengths: Counter) -> float:
    """BLEU-4 from clipped match counts per order (4,) and the multiset of reference lengths."""
    if clipped[0] == 0:
        return 0.0
    log_precision = 0.0
    for n, matches in enumerate(clipped, start=1):
        total = max(1, len(hypothesis) - n + 1)  # hypothesis n-grams (NLTK floors it at 1)
        log_precision += 0.25 * math.log((matches or _EPSILON) / total)
    hyp_len = len(hypothesis)
    ref_len = min((length for length, count in ref_lengths.items() if count > 0),
                  key=lambda length: (abs(length - hyp_len), length))  # fmt: skip
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def _top_two(per_sentence: list[Counter]) -> dict:
    """n-gram -> (largest count, index of its sentence, second largest count)."""
    top: dict = {}
    for index, counter in enumerate(per_sentence):
        for gram, count in counter.items():
            first, owner, second = top.get(gram, (0, -1, 0))
            if count > first:
                top[gram] = (count, index, first)
            elif count > second:
                top[gram] = (first, owner, count)
    return top


def _max_other(entry: tuple[int, int, int], index: int) -> int:
    first, owner, second = entry
    return second if owner == index else first


def _step_is_right(expression: str, written: str) -> bool | None:
    """True/False when both sides parse as numbers/arithmetic, None when the step is not checkable."""
    try:
        result_text = written.strip().replace(",", "").replace("$", "")
        result = float(result_text)
        value = _evaluate(expression.replace(",", "").replace("$", ""))
    except (ValueError, SyntaxError, OverflowError, RecursionError):
        return None
    if value is None:  # division by zero: a checkable, wrong step
        return False
    decimals = len(result_text.partition(".")[2])
    tolerance = 10.0**-decimals if decimals else 1e-6 * max(1.0, abs(result))
    return abs(value - result) <= tolerance + 1e-12


def _evaluate(expression: str) -> float | None:
    """Value of + - * / arithmetic on numbers (floats); None on division by zero.

    Raises ValueError for anything else (names, calls, powers), so such steps are skipped.
    """
    source = expression.replace("×", "*").replace("÷", "/").replace("x", "*").strip()
    tree = ast.parse(source, mode="eval")

    def walk(node) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = walk(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not plain arithmetic: {ast.dump(node)}")

    try:
        return walk(tree.body)
    except ZeroDivisionError:
        return None
