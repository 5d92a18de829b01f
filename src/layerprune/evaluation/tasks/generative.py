"""Generative reasoning tasks: gsm8k, gsm8k_cot (lm-eval 0.4.13 prompts, filters and metric) and math.

* gsm8k: `"Question: {q}\\nAnswer:"`, 5 shots from train drawn as lm-eval's default sampler does
  (one `random.Random(seed)` advanced doc by doc in eval order: `rnd.sample(train, 5)`), each shot
  `"Question: {q}\\nAnswer: {full answer}\\n\\n"`; stop at "Question:", "</s>", "<|im_end|>".
* gsm8k_cot: 8 fixed Wei et al. exemplars (`exemplars.GSM8K_COT`), `"Q: {q}\\nA:"`, stop at "Q:".
* Both report `exact_match,strict-match` and `exact_match,flexible-extract`: lm-eval's RegexFilter
  (`re.findall`, group_select, first non-empty group, strip, "[invalid]") then take_first, then
  exact_match with `regexes_to_ignore` [",", "\\$", "(?s).*#### ", "\\.$"] on both sides and ignore_case.
* math: lm-eval's minerva_math prompt (4 fixed exemplars, `"Problem:\\n{p}\\n\\nSolution:"`, stop at
  "Problem:") over the local MATH test file; `math_verify` = `verify(parse(solution), parse(generation))`.

Scores use the first sample (lm-eval's take_first); with `num_samples > 1` the mean over samples is added, and
the test-time scaling curve: pass@k and majority vote maj@k for k = 1, 2, 4, … n (`evaluation.scaling`).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Sequence

from layerprune.errors import UsageError
from layerprune.evaluation import diagnostics
from layerprune.evaluation.chat import qa_turns, render, system_turns
from layerprune.evaluation.data import resolve_data_dir
from layerprune.evaluation.requests import GenerationRequest, GenerationResult
from layerprune.evaluation.scaling import scaling_metrics
from layerprune.evaluation.tasks.base import TaskOptions
from layerprune.evaluation.tasks.exemplars import GSM8K_COT, MINERVA_MATH

GSM8K_UNTIL = ("Question:", "</s>", "<|im_end|>")
COT_UNTIL = ("Q:", "</s>", "<|im_end|>")
MATH_UNTIL = ("Problem:",)
STRICT = r"#### (\-?[0-9\.\,]+)"
COT_STRICT = r"The answer is (\-?[0-9\.\,]+)."
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
INVALID = "[invalid]"
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


# ---- data ----

def read_jsonl(path: Path, layout: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a missing file or bad line raises UsageError naming it."""
    if not path.is_file():
        raise UsageError(f"missing data file {path}; expected {layout} (see the data dir's SOURCES.md)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UsageError(f"{path}:{lineno}: malformed JSON ({err.msg}); expected {layout}") from None
    return rows


def hub_rows(path: str, name: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face hub dataset; offline or unknown ids become a one-line UsageError."""
    try:
        import datasets

        return [dict(r) for r in datasets.load_dataset(path, name, split=split)]
    except Exception as err:  # offline, missing package, unknown id: say what to do instead
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"cannot load {path} ({split}) from the hub: {first}; pass --data-dir DIR") from None


def gsm8k_split(opts: TaskOptions, split: str) -> list[dict[str, Any]]:
    root = resolve_data_dir(opts.data_dir)
    if root is None:
        return hub_rows("openai/gsm8k", "main", split)
    return read_jsonl(root / "gsm8k" / f"{split}.jsonl", "JSONL {question, answer ending in '#### N'}")


# ---- lm-eval's filters and metric ----

def regex_extract(text: str, pattern: str, group_select: int = 0) -> str:
    """lm-eval's RegexFilter on one response."""
    matches = re.findall(pattern, text)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), INVALID)
    return match.strip()


def exact_match(prediction: str, reference: str) -> float:
    """lm-eval's exact_match with gsm8k's regexes_to_ignore and ignore_case."""
    for pattern in IGNORE:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return float(prediction.lower() == reference.lower())


def generation_request(context: str, until: tuple[str, ...], doc_id: int, opts: TaskOptions,
                       default_max_new: int = 256) -> GenerationRequest:
    """A request with the run's decoding options; `default_max_new` is the task's lm-eval max_gen_toks, which
    `opts.max_new_tokens` replaces and `opts.max_new_tokens_cap` can only lower."""
    limit = opts.max_new_tokens or default_max_new
    if opts.max_new_tokens_cap is not None:
        limit = min(limit, opts.max_new_tokens_cap)
    return GenerationRequest(context=context, until=until, max_new_tokens=limit,
                             temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k,
                             num_samples=opts.num_samples, seed=opts.seed + doc_id)


def diagnostics_of(texts: Sequence[str], kind: str, exec_results=None) -> dict[str, Any]:
    """Degeneration diagnostics of the generations (Rep-n, Self-BLEU, lengths, kind-specific counts)."""
    return diagnostics.summarize(list(texts), kind, exec_results=exec_results)


def render_qa(shots: Sequence[tuple[str, str]], question: str, template: str, opts: TaskOptions,
              target_delimiter: str = " ", gen_prefix: str | None = None) -> str:
    """lm-eval's fewshot_context: [system] + per shot (template(q) + delimiter + answer + "\\n\\n") + question
    [+ gen_prefix], plain or through the chat template (`evaluation.chat`)."""
    turns = system_turns(opts.system_prompt)
    for q, a in shots:
        turns += qa_turns(template.format(q), a, gen_prefix, target_delimiter)
    turns += qa_turns(question, None, gen_prefix, target_delimiter)
    return render(turns, opts, gen_prefix)


class FewshotDraws:
    """lm-eval's default sampler: `Random(seed).sample(pool, k)` once per eval doc, in doc order.

    `shots(doc_id)` replays the generator up to `doc_id`, so the answer does not depend on the order in
    which documents are asked for. `Random.sample` picks by position, so sampling indices is the same."""

    def __init__(self, pool_size: int, k: int, seed: int):
        self.pool_size, self.k = pool_size, k
        self.rnd = random.Random(seed)
        self.draws: list[list[int]] = []

    def shots(self, doc_id: int) -> list[int]:
        while len(self.draws) <= doc_id:
            self.draws.append(self.rnd.sample(range(self.pool_size), self.k) if self.k else [])
        return self.draws[doc_id]


# ---- tasks ----

class GSM8K:
    """lm-eval's `gsm8k` (cot=False) or `gsm8k_cot` (cot=True)."""

    kind = "generative"
    primary_metric = "exact_match,flexible-extract"  # a degraded model's answer is often not "#### N"-formatted

    def __init__(self, cot: bool = False):
        self.cot = cot
        self.name = "gsm8k_cot" if cot else "gsm8k"
        self._train: list[dict[str, Any]] | None = None
        self._draws: dict[tuple[int, int], FewshotDraws] = {}

    def load_docs(self, opts: TaskOptions) -> list[dict[str, Any]]:
        return gsm8k_split(opts, "test")

    def num_fewshot(self, opts: TaskOptions) -> int:
        k = (8 if self.cot else 5) if opts.num_fewshot is None else opts.num_fewshot
        if k < 0 or (self.cot and k > len(GSM8K_COT)):
            raise UsageError(f"{self.name}: num_fewshot {k} is out of range; use 0..{len(GSM8K_COT) if self.cot else 'N'}")
        return k

    def context(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions) -> str:
        k = self.num_fewshot(opts)
        if self.cot:
            return render_qa(GSM8K_COT[:k], f"Q: {doc['question']}\nA:", "Q: {}\nA:", opts)
        train = self.train_docs(opts) if k else []
        draws = self._draws.setdefault((k, opts.seed), FewshotDraws(len(train), k, opts.seed))
        shots = [(train[i]["question"], train[i]["answer"]) for i in draws.shots(doc_id)]
        return render_qa(shots, f"Question: {doc['question']}\nAnswer:", "Question: {}\nAnswer:", opts)

    def train_docs(self, opts: TaskOptions) -> list[dict[str, Any]]:
        if self._train is None:
            self._train = gsm8k_split(opts, "train")
        return self._train

    def requests(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions) -> list[GenerationRequest]:
        until = COT_UNTIL if self.cot else GSM8K_UNTIL
        return [generation_request(self.context(doc_id, doc, opts), until, doc_id, opts)]

    def reference(self, doc: dict[str, Any]) -> str:
        return doc["answer"].split("####")[-1].strip() if self.cot else doc["answer"]

    def extracted(self, text: str) -> dict[str, str]:
        return {"strict-match": regex_extract(text, COT_STRICT if self.cot else STRICT),
                "flexible-extract": regex_extract(text, FLEXIBLE, group_select=-1)}

    def score(self, doc, requests: Sequence, results: Sequence[GenerationResult], opts) -> dict[str, float]:
        texts = results[0].texts
        ref = self.reference(doc)
        per_sample = [{f: exact_match(p, ref) for f, p in self.extracted(t).items()} for t in texts]
        metrics = {f"exact_match,{f}": v for f, v in per_sample[0].items()}  # take_first
        if len(texts) > 1:
            for f in per_sample[0]:
                metrics[f"exact_match_mean,{f}"] = sum(s[f] for s in per_sample) / len(texts)
                answers = [_vote_key(self.extracted(t)[f]) for t in texts]
                metrics.update(scaling_metrics(list(zip(answers, (s[f] for s in per_sample))), suffix="," + f))
        return metrics

    def record(self, doc, requests: Sequence, results: Sequence[GenerationResult], opts) -> dict[str, Any]:
        texts = results[0].texts
        return {"target": self.reference(doc), "resps": list(texts),
                "filtered": {f: p for f, p in self.extracted(texts[0]).items()},
                "diagnostics": diagnostics_of(texts, "math")}


def math_verify_score(solution: str, generation: str) -> float:
    """lm-eval minerva_math's `math_verify` metric: verify(gold=parse(solution), target=parse(generation))."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise UsageError("the math task needs math-verify; pip install 'layerprune[eval]'") from None
    return float(bool(verify(gold=parse(solution), target=parse(generation))))


class MathTask:
    """Minerva-style 4-shot MATH over the 5000-problem test set (local file or EleutherAI/hendrycks_math)."""

    name = "math"
    kind = "generative"
    primary_metric = "math_verify"

    def load_docs(self, opts: TaskOptions) -> list[dict[str, Any]]:
        root = resolve_data_dir(opts.data_dir)
        if root is None:
            docs = [{"problem": r["problem"], "solution": r["solution"], "category": subject}
                    for subject in MATH_SUBJECTS for r in hub_rows("EleutherAI/hendrycks_math", subject, "test")]
        else:
            rows = read_jsonl(root / "math" / "math.jsonl", "JSONL {context, answer, chain_of_thought, category}")
            docs = [{"problem": r["context"], "solution": r["chain_of_thought"], "answer": r["answer"],
                     "category": r["category"]} for r in rows]
        return docs

    def requests(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions) -> list[GenerationRequest]:
        k = len(MINERVA_MATH) if opts.num_fewshot is None else opts.num_fewshot
        if not 0 <= k <= len(MINERVA_MATH):
            raise UsageError(f"math: num_fewshot {k} is out of range; use 0..{len(MINERVA_MATH)}")
        context = render_qa(MINERVA_MATH[:k], f"Problem:\n{doc['problem']}\n\nSolution:", "Problem:\n{}\n\nSolution:", opts)
        return [generation_request(context, MATH_UNTIL, doc_id, opts)]

    def score(self, doc, requests: Sequence, results: Sequence[GenerationResult], opts) -> dict[str, float]:
        scores = [math_verify_score(doc["solution"], t) for t in results[0].texts]
        metrics = {"math_verify": scores[0]}
        if len(scores) > 1:
            metrics["math_verify_mean"] = sum(scores) / len(scores)
            answers = [_math_answer(t) for t in results[0].texts]
            metrics.update(scaling_metrics(list(zip(answers, (s > 0 for s in scores)))))
        return metrics

    def record(self, doc, requests: Sequence, results: Sequence[GenerationResult], opts) -> dict[str, Any]:
        texts = results[0].texts
        return {"target": doc.get("answer", ""), "category": doc["category"], "resps": list(texts),
                "diagnostics": diagnostics_of(texts, "math")}


def _vote_key(extracted: str) -> str | None:
    """An extracted GSM8K answer as exact_match compares it (ignored regexes, case); None if nothing was found."""
    if extracted == INVALID:
        return None
    for pattern in IGNORE:
        extracted = re.sub(pattern, "", extracted)
    return extracted.lower()


def _math_answer(generation: str) -> str | None:
    """The answer math_verify reads from a generation, as a string to vote on (None when it finds none)."""
    from math_verify import parse

    parsed = parse(generation)
    return str(parsed[-1]) if parsed else None


TASKS = {"gsm8k": lambda: GSM8K(cot=False), "gsm8k_cot": lambda: GSM8K(cot=True), "math": MathTask}
