"""Multiple-choice tasks scored by log-likelihood, with lm-eval 0.4.13's prompts, few-shot rules and metrics.

One class, `ChoiceTask`, driven by a `ChoiceSpec` per task (evaluation.md §A.1-A.3):

    context      = [system/description] + shots × (text + " " + answer + "\\n\\n") + text(doc)
    requests     = (context, " " + choice) for each choice          # the delimiter is "" under a chat template
    winogrande   = (prefix-with-option_i, " " + suffix) for each option  # "multiple input", partial scoring
    acc          = argmax(lls) == gold;  acc_norm = argmax(lls / len(choice)) == gold   (character length)

Few-shot shots: `random` draws `random.Random(seed).sample(pool, n)` with one generator advancing doc by
doc in dataset order (seed 1234 by default, as lm-eval); `first_n` (MMLU) takes the first n dev rows.
MMLU defaults to 5 shots (the standard report; lm-eval's YAML leaves it at 0, pass --num-fewshot 0).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from layerprune.errors import UsageError
from layerprune.evaluation.data import has_local_split, load_docs, resolve_data_dir
from layerprune.evaluation.requests import LoglikelihoodRequest, LoglikelihoodResult
from layerprune.evaluation.chat import Turn, qa_turns, render, system_turns, target_delimiter
from layerprune.evaluation.tasks.base import TaskGroup, TaskOptions

Doc = dict[str, Any]


@dataclass(frozen=True)
class ChoiceSpec:
    name: str
    dataset: str  # key in evaluation.data
    text: Callable[[Doc], str]  # the question (or, multiple-input, unused)
    choices: Callable[[Doc], list[str]]  # continuations, or the contexts for multiple-input tasks
    gold: Callable[[Doc], int]
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    continuation: Callable[[Doc], str] | None = None  # set → multiple-input (winogrande)
    description: str = ""
    sampler: str = "random"  # or "first_n"
    default_fewshot: int = 0
    subject: str | None = None
    version: str = "1.0"


class ChoiceTask:
    kind = "classification"
    primary_metric = "acc"

    def __init__(self, spec: ChoiceSpec):
        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self._pool: list[Doc] = []
        self._drawn: list[list[Doc]] = []  # shots of doc 0, 1, … (the generator advances in doc order)
        self._rng = random.Random(1234)

    def num_fewshot(self, opts: TaskOptions) -> int:
        return self.spec.default_fewshot if opts.num_fewshot is None else opts.num_fewshot

    def load_docs(self, opts: TaskOptions) -> list[Doc]:
        spec, n = self.spec, self.num_fewshot(opts)
        root = resolve_data_dir(opts.data_dir)
        if n and root is not None and not has_local_split(spec.dataset, "fewshot"):
            raise UsageError(f"{spec.name}: {n}-shot needs the train split, which the data dir {root} lacks; "
                             "use --num-fewshot 0, or --data-dir hub to draw shots from the hub")
        docs = load_docs(spec.dataset, "eval", root, spec.subject)
        self._pool = load_docs(spec.dataset, "fewshot", root, spec.subject) if n else []
        if n > len(self._pool):
            raise UsageError(f"{spec.name}: --num-fewshot {n} exceeds the {len(self._pool)} few-shot docs")
        self._rng, self._drawn = random.Random(opts.seed), []
        return docs

    def _shots(self, doc_id: int, n: int) -> list[Doc]:
        if n == 0:
            return []
        if self.spec.sampler == "first_n":
            return self._pool[:n]
        while len(self._drawn) <= doc_id:
            self._drawn.append(self._rng.sample(self._pool, n))
        return self._drawn[doc_id]

    def _turns(self, doc_id: int, opts: TaskOptions) -> list[Turn]:
        """System (system prompt + description) and the shots; the evaluated question comes later."""
        spec = self.spec
        out = system_turns(opts.system_prompt, spec.description)
        for shot in self._shots(doc_id, self.num_fewshot(opts)):
            gold = spec.gold(shot)
            if spec.continuation:  # multiple-input: the question is the gold context, the answer the suffix
                q, a = spec.choices(shot)[gold], spec.continuation(shot)
            else:
                q, a = spec.text(shot), spec.choices(shot)[gold]
            out += qa_turns(q, a)
        return out

    def requests(self, doc_id: int, doc: Doc, opts: TaskOptions) -> list[LoglikelihoodRequest]:
        spec, prior = self.spec, self._turns(doc_id, opts)
        delim = target_delimiter(opts)
        if spec.continuation:
            cont = delim + spec.continuation(doc)
            return [LoglikelihoodRequest(render(prior + qa_turns(c, target_delimiter=""), opts), cont, group=doc_id)
                    for c in spec.choices(doc)]
        context = render(prior + qa_turns(spec.text(doc)), opts)
        return [LoglikelihoodRequest(context, delim + c, group=doc_id) for c in spec.choices(doc)]

    def score(self, doc: Doc, requests: Sequence[LoglikelihoodRequest],
              results: Sequence[LoglikelihoodResult], opts: TaskOptions) -> dict[str, float]:
        lls = np.array([r.logprob for r in results])
        lengths = np.array([float(len(c)) for c in self.spec.choices(doc)])  # characters, no delimiter
        gold = self.spec.gold(doc)
        preds = {"acc": np.argmax(lls), "acc_norm": np.argmax(lls / lengths)}
        return {m: float(preds[m] == gold) for m in self.spec.metrics}

    def record(self, doc: Doc, requests: Sequence[LoglikelihoodRequest],
               results: Sequence[LoglikelihoodResult], opts: TaskOptions) -> dict[str, Any]:
        contexts = [r.context for r in requests]
        return {"context": contexts if self.spec.continuation else contexts[0],
                "continuations": [r.continuation for r in requests], "target": self.spec.gold(doc),
                "loglikelihoods": [r.logprob for r in results], "is_greedy": [r.is_greedy for r in results]}


# ---- the tasks ----

def _fixed(*choices: str) -> Callable[[Doc], list[str]]:
    return lambda d: list(choices)


def _arc(name: str) -> ChoiceTask:
    return ChoiceTask(ChoiceSpec(name, name, lambda d: f"Question: {d['question']}\nAnswer:",
                                 lambda d: d["choices"], lambda d: d["gold"]))


SPECS: dict[str, Callable[[], ChoiceTask]] = {
    "arc_easy": lambda: _arc("arc_easy"),
    "arc_challenge": lambda: _arc("arc_challenge"),
    "openbookqa": lambda: ChoiceTask(ChoiceSpec("openbookqa", "openbookqa", lambda d: d["question_stem"],
                                                lambda d: d["choices"], lambda d: d["gold"])),
    "piqa": lambda: ChoiceTask(ChoiceSpec("piqa", "piqa", lambda d: f"Question: {d['goal']}\nAnswer:",
                                          lambda d: [d["sol1"], d["sol2"]], lambda d: d["label"])),
    "hellaswag": lambda: ChoiceTask(ChoiceSpec("hellaswag", "hellaswag", lambda d: d["query"],
                                               lambda d: d["choices"], lambda d: d["label"])),
    "boolq": lambda: ChoiceTask(ChoiceSpec(
        "boolq", "boolq", lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", _fixed("no", "yes"),
        lambda d: d["label"], metrics=("acc",), version="2.0")),
    "winogrande": lambda: ChoiceTask(ChoiceSpec(
        "winogrande", "winogrande", lambda d: "", lambda d: d["contexts"], lambda d: d["gold"], metrics=("acc",),
        continuation=lambda d: d["continuation"])),
}

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies sociology "
    "us_foreign_policy virology world_religions"
).split()


def _mmlu_text(d: Doc) -> str:
    a, b, c, e = d["choices"]
    return f"{d['question'].strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {e}\nAnswer:"


def mmlu_subject(subject: str) -> ChoiceTask:
    about = subject.replace("_", " ")
    return ChoiceTask(ChoiceSpec(
        f"mmlu_{subject}", "mmlu", _mmlu_text, _fixed("A", "B", "C", "D"), lambda d: d["answer"], metrics=("acc",),
        description=f"The following are multiple choice questions (with answers) about {about}.\n\n",
        sampler="first_n", default_fewshot=5, subject=subject))


def mmlu_group() -> TaskGroup:
    """`mmlu`: all 57 subjects, reported with the size-weighted mean (lm-eval's weight_by_size)."""
    return TaskGroup("mmlu", [mmlu_subject(s) for s in MMLU_SUBJECTS], metrics=("acc",), weight_by_size=True)
