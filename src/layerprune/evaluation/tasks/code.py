"""Code tasks: humaneval, mbpp (lm-eval 0.4.13 prompts and stops) and their EvalPlus versions.

* humaneval / humaneval_plus: the raw `prompt`, 0-shot, stop at "\\nclass", "\\ndef", "\\n#", "\\nif",
  "\\nprint"; the program is `prompt + completion + "\\n" + test + "\\ncheck(entry_point)"` (lm-eval's
  `build_predictions` + code_eval, i.e. human-eval's check program).
* mbpp: lm-eval's 3-shot Austin et al. prompt (`exemplars.MBPP`: task_ids 2, 3, 4, `code + "\\n[DONE]"`), stop at "[DONE]";
  the program is `completion + "\\n" + the three test_list asserts`.
* mbpp_plus: the same prompt over EvalPlus MBPP+ (`prompt` instead of `text`); the program adds the
  row's `test_imports` before the completion and runs the EvalPlus `test` (base + plus inputs) when the
  row has one, else the `test_list` asserts.

Programs run with `layerprune.execution.run_programs` (one sandboxed interpreter each). Per doc:
`pass@k` for k in (1, 10, 100) up to n samples, with the unbiased estimator (greedy n=1: solved or not).
EvalPlus rows load from `<data dir>/humaneval_plus/humaneval_plus.jsonl` or `mbpp_plus/mbpp_plus.jsonl`
when present, else from the hub (`evalplus/humanevalplus`, `evalplus/mbppplus`, split test).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Sequence

from layerprune.errors import UsageError
from layerprune.evaluation.data import resolve_data_dir
from layerprune.evaluation.metrics import pass_at_k
from layerprune.evaluation.scaling import scaling_ks
from layerprune.evaluation.requests import GenerationRequest, GenerationResult
from layerprune.evaluation.tasks.base import TaskOptions
from layerprune.evaluation.tasks.exemplars import MBPP as MBPP_SHOTS
from layerprune.evaluation.tasks.generative import diagnostics_of, generation_request, hub_rows, read_jsonl, render_qa
from layerprune.execution import run_programs

HUMANEVAL_UNTIL = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_UNTIL = ("[DONE]",)
MBPP_TEST_IDS = range(11, 511)
PASS_KS = (1, 10, 100)
TIMEOUT_S = 3.0  # human-eval's and lm-eval code_eval's per-program limit
WORKERS = 2

HUMANEVAL_LAYOUT = "JSONL {task_id, prompt, canonical_solution, test, entry_point}"
MBPP_LAYOUT = "JSONL {text, code, task_id, test_setup_code, test_list, challenge_test_list}"
MBPP_PLUS_LAYOUT = "JSONL {task_id, prompt, code, test_imports, test_list, test}"


def mbpp_text(doc: dict[str, Any]) -> str:
    """lm-eval's mbpp doc_to_text (mbpp_plus uses `prompt` where MBPP has `text`)."""
    tests = doc["test_list"]
    return (f"You are an expert Python programmer, and here is your task: {doc.get('prompt', doc.get('text'))} "
            f"Your code should pass these tests:\n\n{tests[0]}\n{tests[1]}\n{tests[2]}\n[BEGIN]\n")


class CodeTask:
    """One code benchmark; `flavor` is "humaneval" or "mbpp", `plus` selects the EvalPlus rows."""

    kind = "generative"
    primary_metric = "pass@1"
    runs_code = True  # evaluate() checks the sandbox before loading the model

    def __init__(self, flavor: str, plus: bool = False, timeout: float = TIMEOUT_S, workers: int = WORKERS):
        self.flavor, self.plus = flavor, plus
        self.name = flavor + ("_plus" if plus else "")
        self.timeout, self.workers = timeout, workers
        self._executed: dict[tuple[str, tuple[str, ...]], list] = {}

    # ---- documents and prompts ----

    def load_docs(self, opts: TaskOptions) -> list[dict[str, Any]]:
        root = resolve_data_dir(opts.data_dir)
        if self.plus:
            return self._evalplus_rows(root)
        if self.flavor == "humaneval":
            if root is None:
                return hub_rows("openai/openai_humaneval", None, "test")
            return _read_gz_jsonl(root / "humaneval" / "HumanEval.jsonl.gz")
        return [r for r in self._mbpp_rows(root, "test") if r["task_id"] in MBPP_TEST_IDS]

    def _mbpp_rows(self, root: Path | None, split: str) -> list[dict[str, Any]]:
        if root is None:
            return hub_rows("google-research-datasets/mbpp", "full", split)
        return read_jsonl(root / "mbpp" / "mbpp.jsonl", MBPP_LAYOUT)

    def _evalplus_rows(self, root: Path | None) -> list[dict[str, Any]]:
        base = f"{self.flavor}_plus"  # also the instruct variants' rows
        local = root / base / f"{base}.jsonl" if root is not None else None
        if local is not None and local.is_file():
            return read_jsonl(local, HUMANEVAL_LAYOUT if self.flavor == "humaneval" else MBPP_PLUS_LAYOUT)
        hub_id = "evalplus/humanevalplus" if self.flavor == "humaneval" else "evalplus/mbppplus"
        try:
            return hub_rows(hub_id, None, "test")
        except UsageError as err:
            raise UsageError(f"{self.name}: no local file {local} and {err}") from None

    def context(self, doc: dict[str, Any], opts: TaskOptions) -> str:
        if self.flavor == "humaneval":
            return render_qa([], doc["prompt"], "{}", opts)
        k = len(MBPP_SHOTS) if opts.num_fewshot is None else opts.num_fewshot
        if not 0 <= k <= len(MBPP_SHOTS):
            raise UsageError(f"{self.name}: num_fewshot {k} is out of range; use 0..{len(MBPP_SHOTS)}")
        shots = [(mbpp_text(s), s["code"] + "\n[DONE]") for s in MBPP_SHOTS[:k]]
        return render_qa(shots, mbpp_text(doc), "{}", opts, target_delimiter="")

    def requests(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions) -> list[GenerationRequest]:
        until = HUMANEVAL_UNTIL if self.flavor == "humaneval" else MBPP_UNTIL
        default = 1024 if self.flavor == "humaneval" else 256  # lm-eval's max_gen_toks for humaneval / mbpp
        return [generation_request(self.context(doc, opts), until, doc_id, opts, default)]

    # ---- execution and scoring ----

    def program(self, doc: dict[str, Any], completion: str) -> str:
        if self.flavor == "humaneval":
            return doc["prompt"] + completion + "\n" + doc["test"] + "\n" + f"check({doc['entry_point']})"
        if self.plus:
            imports = "\n".join(doc.get("test_imports") or [])
            tests = doc.get("test") or "\n".join(doc["test_list"])
            return f"{imports}\n{completion}\n{tests}" if imports else f"{completion}\n{tests}"
        return completion + "\n" + "\n".join(doc["test_list"])

    def executed(self, doc: dict[str, Any], texts: Sequence[str], opts: TaskOptions) -> list:
        """Execution results of every sample, run once per (doc, texts) and reused by score and record."""
        key = (str(doc["task_id"]), tuple(texts))
        if key not in self._executed:
            programs = [self.program(doc, t) for t in texts]
            self._executed[key] = run_programs(programs, timeout=self.timeout, workers=self.workers,
                                               allow_weaker_sandbox=opts.allow_weaker_sandbox)
        return self._executed[key]

    def score(self, doc, requests: Sequence, results: Sequence[GenerationResult], opts) -> dict[str, float]:
        outcomes = self.executed(doc, results[0].texts, opts)
        n, c = len(outcomes), sum(o.status == "passed" for o in outcomes)
        return {f"pass@{k}": pass_at_k(n, c, k) for k in sorted({*scaling_ks(n), *PASS_KS}) if k <= n}

    def record(self, doc, requests: Sequence, results: Sequence[GenerationResult], opts) -> dict[str, Any]:
        texts = results[0].texts
        outcomes = self.executed(doc, texts, opts)
        self._executed.pop((str(doc["task_id"]), tuple(texts)), None)  # scored and recorded: free it
        return {"task_id": doc["task_id"], "resps": list(texts),
                "status": [o.status for o in outcomes], "error_class": [o.error_class for o in outcomes],
                "message": [o.message for o in outcomes], "duration": [round(o.duration, 3) for o in outcomes],
                "diagnostics": diagnostics_of([self.solution(doc, t) for t in texts], "code", exec_results=outcomes)}

    def solution(self, doc: dict[str, Any], completion: str) -> str:
        """The code the model is responsible for, prompt included where it holds the signature."""
        return doc["prompt"] + completion if self.flavor == "humaneval" else completion


def _read_gz_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UsageError(f"missing data file {path}; expected gzip {HUMANEVAL_LAYOUT} (see SOURCES.md)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


TASKS = {
    "humaneval": lambda: CodeTask("humaneval"),
    "humaneval_plus": lambda: CodeTask("humaneval", plus=True),
    "mbpp": lambda: CodeTask("mbpp"),
    "mbpp_plus": lambda: CodeTask("mbpp", plus=True),
}
