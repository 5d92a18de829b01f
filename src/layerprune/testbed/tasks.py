"""Testbed tasks: seeded generated items that separate classification from generative reasoning.

Classification (log-likelihood over choices, `acc`):
* `testbed_facts`: a fixed fictional knowledge base, "The capital of Zorvia is" → one of 4 capitals.
* `testbed_compare`: "Which is larger: 37 or 52? Answer:" → " 37" | " 52".
* `testbed_category`: "A banana is a kind of" → " fruit" | " animal" | ...
Generative (greedy, zero-shot, stop at a newline):
* `testbed_math`: "Question: Compute (3 * 4) - 2.\\nAnswer:" → " 3 * 4 = 12. 12 - 2 = 10. Answer: 10";
  `exact_match` on the final number, `steps_match` on the whole worked solution.
* `testbed_code`: a nested container described in words → a one-line `def f(x): return [x, (x + 1, 2)]`;
  `pass_at_1` by running asserts through `layerprune.execution.run_programs`.

The knowledge base is fixed (it is the model's world); the evaluated items depend only on `opts.seed`.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Sequence

from layerprune.evaluation.requests import GenerationRequest, LoglikelihoodRequest
from layerprune.evaluation.scaling import scaling_metrics
from layerprune.evaluation.tasks.base import TaskOptions
from layerprune.evaluation.tasks.generative import diagnostics_of

Item = dict[str, Any]
N_ITEMS = 500  # evaluated items per task; --limit takes the first N
UNTIL = ("\n",)
MAX_NEW = 64

# ---- the knowledge base ----

_SYLLABLES = "zor vi ka mel tor an bri sel dun ra pho lek qua min ost ur gal fen".split()
_RELATIONS = ("capital", "language")
CATEGORIES = {
    "fruit": "apple banana cherry grape lemon mango peach plum".split(),
    "animal": "horse tiger rabbit eagle shark camel otter mouse".split(),
    "color": "red blue green yellow purple orange brown pink".split(),
    "tool": "hammer saw wrench drill shovel chisel rake axe".split(),
    "instrument": "piano violin guitar flute drum harp trumpet cello".split(),
}
N_COUNTRIES = 24


def _name(rnd: random.Random, parts: int, taken: set[str]) -> str:
    while True:
        name = "".join(rnd.choice(_SYLLABLES) for _ in range(parts)).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def knowledge_base() -> dict[str, dict[str, str]]:
    """{country: {"capital": name, "language": name}}, the same on every call."""
    rnd, taken = random.Random("testbed-kb-v1"), set()
    countries = [_name(rnd, 2, taken) + "ia" for _ in range(N_COUNTRIES)]
    return {c: {"capital": _name(rnd, 2, taken), "language": _name(rnd, 2, taken) + "ish"} for c in countries}


KB = knowledge_base()


def article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


# ---- item generators (each returns prompt/answer text plus what scoring needs) ----

def fact_item(rnd: random.Random) -> Item:
    country, rel = rnd.choice(sorted(KB)), rnd.choice(_RELATIONS)
    gold = KB[country][rel]
    others = sorted({v[rel] for v in KB.values()} - {gold})
    choices = rnd.sample(others, 3) + [gold]
    rnd.shuffle(choices)
    return {"prompt": f"The {rel} of {country} is", "choices": choices, "gold": choices.index(gold),
            "answer": f" {gold}.", "instruction": f"What is the {rel} of {country}?",
            "output": f"The {rel} of {country} is {gold}."}


def compare_item(rnd: random.Random) -> Item:
    a, b = rnd.sample(range(1, 100), 2)
    choices = [str(a), str(b)]
    return {"prompt": f"Which is larger: {a} or {b}? Answer:", "choices": choices, "gold": int(b > a),
            "answer": f" {max(a, b)}", "instruction": f"Which is larger: {a} or {b}?", "output": str(max(a, b))}


def category_item(rnd: random.Random) -> Item:
    kind = rnd.choice(sorted(CATEGORIES))
    word = rnd.choice(CATEGORIES[kind])
    choices = sorted(CATEGORIES)
    return {"prompt": f"{article(word)} {word} is a kind of", "choices": choices, "gold": choices.index(kind),
            "answer": f" {kind}.", "instruction": f"What kind of thing is {article(word).lower()} {word}?",
            "output": f"{article(word)} {word} is a kind of {kind}."}


_OPS: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
                                              "*": lambda a, b: a * b}


def math_item(rnd: random.Random) -> Item:
    """(a op1 b) op2 c with operands 1-5, op1 in + - *, op2 in + - (small tables a 12-layer model can learn
    on a CPU budget); the solution shows both steps."""
    a, b, c = (rnd.randint(1, 5) for _ in range(3))
    op1, op2 = rnd.choice("+-*"), rnd.choice("+-")
    r1 = _OPS[op1](a, b)
    r2 = _OPS[op2](r1, c)
    steps = f"{a} {op1} {b} = {r1}. {r1} {op2} {c} = {r2}. Answer: {r2}"
    question = f"Compute ({a} {op1} {b}) {op2} {c}."
    return {"prompt": f"Question: {question}\nAnswer:", "answer": f" {steps}", "target": str(r2),
            "instruction": question, "output": steps}


# code: containers of fixed arity described in prefix order ("a list of A and B", "a dict mapping K to V"),
# so the words parse one way only and the model must close brackets in the order it opened them
_CONTAINERS = {"list": ("[", "]"), "pair": ("(", ")")}


def _expr(rnd: random.Random, depth: int) -> tuple[str, str]:
    """(words, python) of a random expression; depth > 0 may nest containers."""
    roll = rnd.random()
    if depth > 0 and roll < 0.45:
        if rnd.random() < 0.25:
            key, (vw, vp) = rnd.randint(1, 9), _expr(rnd, depth - 1)
            return f"a dict mapping {key} to {vw}", f"{{{key}: {vp}}}"
        return _container(rnd, depth - 1)
    n = rnd.randint(1, 9)
    return rnd.choice([("x", "x"), (f"x plus {n}", f"x + {n}"), (f"x times {n}", f"x * {n}"), (str(n), str(n))])


def _container(rnd: random.Random, depth: int) -> tuple[str, str]:
    """A list or pair of two expressions of at most `depth` further nesting."""
    kind = rnd.choice(sorted(_CONTAINERS))
    (aw, ap), (bw, bp) = _expr(rnd, depth), _expr(rnd, depth)
    left, right = _CONTAINERS[kind]
    return f"a {kind} of {aw} and {bw}", f"{left}{ap}, {bp}{right}"


def code_item(rnd: random.Random) -> Item:
    """A list or pair whose members may be one more list, pair or one-entry dict: at most 2 bracket levels."""
    words, python = _container(rnd, 1)
    code = f"def f(x): return {python}"
    description = f"Write a Python function f(x) that returns {words}."
    return {"prompt": f"Task: {description}\nCode:", "answer": f" {code}", "code": code,
            "tests": code_tests(code), "instruction": description, "output": code}


def code_tests(code: str) -> str:
    """Asserts on three inputs, the expected values computed by running the reference code."""
    scope: dict[str, Any] = {}
    exec(code, scope)  # our own generated one-liner
    return "\n".join(f"assert f({x}) == {scope['f'](x)!r}" for x in (0, 3, -2))


GENERATORS: dict[str, Callable[[random.Random], Item]] = {
    "facts": fact_item, "compare": compare_item, "category": category_item, "math": math_item, "code": code_item}


def items(kind: str, seed: int, n: int = N_ITEMS, split: str = "eval") -> list[Item]:
    rnd = random.Random(f"testbed-{kind}-{split}-{seed}")
    return [GENERATORS[kind](rnd) for _ in range(n)]


# ---- tasks ----

class ChoiceItems:
    """Zero-shot multiple choice over generated items: acc = argmax of the choices' log-likelihoods."""

    kind = "classification"
    primary_metric = "acc"
    version = "1.0"

    def __init__(self, item_kind: str):
        self.item_kind, self.name = item_kind, f"testbed_{item_kind}"

    def load_docs(self, opts: TaskOptions) -> list[Item]:
        return items(self.item_kind, opts.seed)

    def requests(self, doc_id: int, doc: Item, opts: TaskOptions) -> list[LoglikelihoodRequest]:
        return [LoglikelihoodRequest(doc["prompt"], " " + c, group=doc_id) for c in doc["choices"]]

    def score(self, doc: Item, requests: Sequence, results: Sequence, opts: TaskOptions) -> dict[str, float]:
        lls = [r.logprob for r in results]
        return {"acc": float(max(range(len(lls)), key=lls.__getitem__) == doc["gold"])}

    def record(self, doc: Item, requests: Sequence, results: Sequence, opts: TaskOptions) -> dict[str, Any]:
        return {"context": doc["prompt"], "target": doc["gold"], "loglikelihoods": [r.logprob for r in results]}


class GenerativeItems:
    """Zero-shot greedy generation up to the end of the line."""

    kind = "generative"
    version = "1.0"
    diagnostics_kind = "text"

    def __init__(self, item_kind: str):
        self.item_kind, self.name = item_kind, f"testbed_{item_kind}"

    def load_docs(self, opts: TaskOptions) -> list[Item]:
        return items(self.item_kind, opts.seed)

    def requests(self, doc_id: int, doc: Item, opts: TaskOptions) -> list[GenerationRequest]:
        limit = min(MAX_NEW, opts.max_new_tokens or MAX_NEW, opts.max_new_tokens_cap or MAX_NEW)  # a cap, never a raise
        return [GenerationRequest(doc["prompt"], until=UNTIL, max_new_tokens=limit, seed=opts.seed + doc_id,
                                  temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k,
                                  num_samples=opts.num_samples)]

    def record(self, doc: Item, requests: Sequence, results: Sequence, opts: TaskOptions) -> dict[str, Any]:
        texts = list(results[0].texts)
        return {"context": doc["prompt"], "target": doc["answer"].strip(), "resps": texts,
                "diagnostics": diagnostics_of(texts, self.diagnostics_kind)}


class MathItems(GenerativeItems):
    diagnostics_kind = "math"
    primary_metric = "exact_match"

    def score(self, doc: Item, requests: Sequence, results: Sequence, opts: TaskOptions) -> dict[str, float]:
        answers = [self.answer(t) for t in results[0].texts]
        metrics = {"exact_match": float(answers[0] == doc["target"]),
                   "steps_match": float(results[0].texts[0].strip() == doc["answer"].strip())}
        if len(answers) > 1:  # test-time scaling: pass@k and majority vote over the samples
            metrics.update(scaling_metrics([(a, a == doc["target"]) for a in answers]))
        return metrics

    @staticmethod
    def answer(text: str) -> str | None:
        found = re.findall(r"Answer: (-?\d+)", text.strip())
        return found[-1] if found else None


class CodeItems(GenerativeItems):
    diagnostics_kind = "code"
    primary_metric = "pass_at_1"

    def score(self, doc: Item, requests: Sequence, results: Sequence, opts: TaskOptions) -> dict[str, float]:
        from layerprune.execution import run_programs

        programs = [text.strip() + "\n" + doc["tests"] + "\n" for text in results[0].texts]
        passed = [r.status == "passed" for r in run_programs(programs, timeout=5.0, workers=1)]
        metrics = {"pass_at_1": float(passed[0])}
        if len(passed) > 1:  # test-time scaling: unbiased pass@k over the samples (code has no vote)
            metrics.update(scaling_metrics([(None, ok) for ok in passed], vote=False))
        return metrics


TASKS: dict[str, Callable[[], Any]] = {
    "testbed_facts": lambda: ChoiceItems("facts"),
    "testbed_compare": lambda: ChoiceItems("compare"),
    "testbed_category": lambda: ChoiceItems("category"),
    "testbed_math": lambda: MathItems("math"),
    "testbed_code": lambda: CodeItems("code"),
}
CLASSIFICATION = ("testbed_facts", "testbed_compare", "testbed_category")
GENERATIVE = ("testbed_math", "testbed_code")


def score_model(model, tokenizer, names: Sequence[str] = (*CLASSIFICATION, *GENERATIVE), limit: int | None = None,
                seed: int = 1234, batch_size: int = 32) -> dict[str, dict[str, Any]]:
    """Run testbed tasks through the evaluation engine (HFBackend + runner.run_task): {task: metrics}."""
    from layerprune.evaluation.hf_backend import HFBackend
    from layerprune.evaluation.runner import run_task

    backend = HFBackend(model.eval(), tokenizer, batch_size=batch_size, progress=False)
    opts = TaskOptions(limit=limit, seed=seed)
    return {name: run_task(TASKS[name](), backend, opts)[0] for name in names}
