"""Instruct variants of the code and GSM8K tasks, for chat models (lm-eval 0.4.13's names, prompts, gen_prefix,
stops, filters and metrics). Use these under `--chat-template`; the base tasks send a bare function signature
or a completion-style few-shot prompt, which an instruct model answers with prose and fenced code.

* humaneval_instruct: user "Write a solution to the following problem and make sure that it passes the
  tests:\\n```python\\n{prompt}\\n```\\n", the answer opened by gen_prefix "Here is the completed function:
  \\n```python\\n{prompt}\\n"; humaneval's stops, 1024 tokens. Program (lm-eval's build_predictions_instruct):
  `prompt + generation up to the first "```"`, then the HumanEval test and `check(entry_point)`.
* humaneval_plus_instruct: HumanEval+ rows with humaneval_instruct's prompt and program (lm-eval 0.4.13 has
  no such task; this is humaneval_instruct over the EvalPlus rows and tests).
* mbpp_instruct: 3 shots (task_ids 2, 3, 4) as user/assistant turns, user "You are an expert Python
  programmer, and here is your task:\\n{text}\\nYour code should pass these tests:\\n{3 asserts}", answers
  "\\n```python\\n{code}\\n```", gen_prefix "\\n```python\\n", target delimiter "", no stop string but EOS,
  256 tokens. Program: lm-eval's extract_code_blocks (the first fenced block of "```" + generation), then
  the three asserts; one deliberate difference: lm-eval 0.4.13's regex eats the first word of code that
  starts right after the prefix's fence (every such answer fails there); here the language tag must end its
  line, so `def f(x): ...` stays intact. Everything else extracts exactly as lm-eval does.
* mbpp_plus_instruct: 0-shot over MBPP+ rows, "{prompt} Your code should satisfy the following
  assertion:\\n{test_list[0]}", gen_prefix "Here is a solution to this programming problem:\\n```python\\n",
  1024 tokens. The extracted program runs the EvalPlus tests, as our mbpp_plus does (lm-eval runs only
  test_list[0]).
* gsm8k_cot_llama: 8 fixed exemplars ending "The final answer is N", target delimiter "", stops
  "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>", "Q:", "</s>", "<|im_end|>"; strict-match
  `The final answer is ((-?[$0-9.,]{2,})|(-?[0-9]+))` and flexible-extract, both the last match.
"""

from __future__ import annotations

import re
from typing import Any

from layerprune.errors import UsageError
from layerprune.evaluation.tasks.base import TaskOptions
from layerprune.evaluation.tasks.code import HUMANEVAL_UNTIL, CodeTask
from layerprune.evaluation.tasks.exemplars import GSM8K_COT_LLAMA, MBPP as MBPP_SHOTS
from layerprune.evaluation.tasks.generative import FLEXIBLE, GSM8K, generation_request, regex_extract, render_qa

HUMANEVAL_TEXT = "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{}\n```\n"
HUMANEVAL_PREFIX = "Here is the completed function:\n```python\n{}\n"
MBPP_PREFIX = "\n```python\n"
MBPP_PLUS_PREFIX = "Here is a solution to this programming problem:\n```python\n"
LLAMA_UNTIL = ("<|eot_id|>", "<|start_header_id|>user<|end_header_id|>", "Q:", "</s>", "<|im_end|>")
LLAMA_TEXT = ("Given the following problem, reason and give a final answer to the problem.\nProblem: {}\n"
              'Your response should end with "The final answer is [answer]" where [answer] is the response to the '
              "problem.\n")
LLAMA_STRICT = r"The final answer is ((-?[$0-9.,]{2,})|(-?[0-9]+))"
# lm-eval's pattern is ```(?:\w+)?\n?(.*?)\n?``` : its optional language tag also swallows the first word of code
# that follows gen_prefix's fence directly ("def f(x):" → " f(x):", a SyntaxError, so every such answer scores
# 0; lm-evaluation-harness PRs #3710/#3769/#4091, open). Here the tag must end the line; otherwise identical.
_FENCED = re.compile(r"```(?:\w+(?=\n))?\n?(.*?)\n?```", re.DOTALL)

# base-style completion task → its instruct variant (studies warn when a chat model runs the former)
INSTRUCT_VARIANT = {"humaneval": "humaneval_instruct", "humaneval_plus": "humaneval_plus_instruct",
                    "mbpp": "mbpp_instruct", "mbpp_plus": "mbpp_plus_instruct"}


def mbpp_instruct_text(doc: dict[str, Any]) -> str:
    t = doc["test_list"]
    return (f"You are an expert Python programmer, and here is your task:\n{doc['text']}\nYour code should pass "
            f"these tests:\n{t[0]}\n{t[1]}\n{t[2]}")


def extract_code_block(text: str) -> str:
    """lm-eval mbpp utils.extract_code_blocks (the first fenced block, the opening fence being in gen_prefix),
    without its first-word bug (see `_FENCED`)."""
    matches = _FENCED.findall("```" + text)
    if not matches:
        matches = _FENCED.findall(re.sub(r"```python", "```", text))
    return matches[0] if matches else ""


class InstructCodeTask(CodeTask):
    """A code task whose prompt asks in words and whose answer is fenced code (see module doc)."""

    def __init__(self, flavor: str, plus: bool = False, **kwargs):
        super().__init__(flavor, plus, **kwargs)
        self.name = self.name + "_instruct"

    def context(self, doc: dict[str, Any], opts: TaskOptions) -> str:
        if self.flavor == "humaneval":
            return render_qa([], HUMANEVAL_TEXT.format(doc["prompt"]), "{}", opts,
                             gen_prefix=HUMANEVAL_PREFIX.format(doc["prompt"]))
        if self.plus:
            k = 0 if opts.num_fewshot is None else opts.num_fewshot
            if k:
                raise UsageError(f"{self.name} is 0-shot (as lm-eval); drop --num-fewshot")
            text = f"{doc['prompt']} Your code should satisfy the following assertion:\n{doc['test_list'][0]}"
            return render_qa([], text, "{}", opts, gen_prefix=MBPP_PLUS_PREFIX)
        k = len(MBPP_SHOTS) if opts.num_fewshot is None else opts.num_fewshot
        if not 0 <= k <= len(MBPP_SHOTS):
            raise UsageError(f"{self.name}: num_fewshot {k} is out of range; use 0..{len(MBPP_SHOTS)}")
        shots = [(mbpp_instruct_text(s), s["code"] + "\n```") for s in MBPP_SHOTS[:k]]
        return render_qa(shots, mbpp_instruct_text(doc), "{}", opts, target_delimiter="", gen_prefix=MBPP_PREFIX)

    def requests(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions):
        if self.flavor == "humaneval":
            return [generation_request(self.context(doc, opts), HUMANEVAL_UNTIL, doc_id, opts, 1024)]
        return [generation_request(self.context(doc, opts), (), doc_id, opts, 1024 if self.plus else 256)]

    def completion(self, text: str) -> str:
        """The code lm-eval's filter keeps of a generation (without humaneval's prompt)."""
        if self.flavor == "humaneval":
            return text if text.find("```") == -1 else text[: text.find("```")]
        return extract_code_block(text)

    def program(self, doc: dict[str, Any], completion: str) -> str:
        return super().program(doc, self.completion(completion))

    def solution(self, doc: dict[str, Any], completion: str) -> str:
        return super().solution(doc, self.completion(completion))


class GSM8KCotLlama(GSM8K):
    """lm-eval's gsm8k_cot_llama (see module doc)."""

    def __init__(self):
        super().__init__(cot=True)
        self.name = "gsm8k_cot_llama"

    def context(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions) -> str:
        k = self.num_fewshot(opts)
        return render_qa(GSM8K_COT_LLAMA[:k], LLAMA_TEXT.format(doc["question"]), LLAMA_TEXT, opts,
                         target_delimiter="")

    def requests(self, doc_id: int, doc: dict[str, Any], opts: TaskOptions):
        return [generation_request(self.context(doc_id, doc, opts), LLAMA_UNTIL, doc_id, opts)]

    def extracted(self, text: str) -> dict[str, str]:
        return {"strict-match": regex_extract(text, LLAMA_STRICT, group_select=-1),
                "flexible-extract": regex_extract(text, FLEXIBLE, group_select=-1)}


TASKS = {
    "humaneval_instruct": lambda: InstructCodeTask("humaneval"),
    "humaneval_plus_instruct": lambda: InstructCodeTask("humaneval", plus=True),
    "mbpp_instruct": lambda: InstructCodeTask("mbpp"),
    "mbpp_plus_instruct": lambda: InstructCodeTask("mbpp", plus=True),
    "gsm8k_cot_llama": GSM8KCotLlama,
}


def chat_task_warnings(models, tasks) -> list[str]:
    """One line per (chat-template model, base-style completion task): lm-eval runs it, but an instruct model
    answers in prose and fenced code that the base task's stops and program do not expect."""
    out = []
    for m in models:
        if getattr(m, "chat_template", False):
            for t in tasks:
                if t in INSTRUCT_VARIANT:
                    out.append(f"warning: model {m.name} uses its chat template but task {t} is a base-style "
                               f"completion prompt; use {INSTRUCT_VARIANT[t]} for instruct models")
    return out
