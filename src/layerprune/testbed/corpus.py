"""The testbed's training text and its chat-style SGR prompt pool, both generated from a seed.

Training documents are items of every testbed skill in the exact formats the tasks evaluate, one per
paragraph ("prompt + answer\\n\\n"), so a packed sequence also looks like a few-shot context; a share
of items is rendered as a chat (the tokenizer's template, with or without the SGR system prompt) so
healing on chat-formatted self-generated answers exercises the same skills. The bracket-closing items
use the `brackets` probe's format ("Input: ( [\\nOutput: ] )").

    for text in training_documents(seed): ...     # endless stream of paragraphs
    rows = prompt_pool(num=1000, seed=0)          # [{"instruction", "input", "output"}]
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

from layerprune import provenance
from layerprune.errors import UsageError
from layerprune.evaluation.tasks.probes import bracket_item
from layerprune.testbed.tasks import GENERATORS

SYSTEM_PROMPT = "You are a helpful assistant."  # what SGR prepends (healing.chat.SYSTEM_PROMPT)
# share of each skill in the training stream; facts get more since they must be memorized
MIX = {"facts": 0.2, "compare": 0.12, "category": 0.08, "math": 0.25, "code": 0.25, "brackets": 0.1}
CHAT_SHARE = 0.15
END, USER, ASSISTANT, SYSTEM = "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"
# Jinja chat template: "<|role|>\ncontent<|end|>\n" per turn, then "<|assistant|>\n" as generation prompt
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def bracket_row(rnd: random.Random) -> dict[str, Any]:
    item = bracket_item(rnd)
    return {"prompt": f"Input: {item['question']}\nOutput:", "answer": f" {item['answer']}",
            "instruction": f"Close the brackets: {item['question']}", "output": item["answer"]}


def _item(kind: str, rnd: random.Random) -> dict[str, Any]:
    return bracket_row(rnd) if kind == "brackets" else GENERATORS[kind](rnd)


def render_chat(instruction: str, output: str | None, system: bool) -> str:
    """The chat template's text for one exchange (kept in sync with CHAT_TEMPLATE by a test)."""
    text = f"{SYSTEM}\n{SYSTEM_PROMPT}{END}\n" if system else ""
    text += f"{USER}\n{instruction}{END}\n{ASSISTANT}\n"
    return text if output is None else text + f"{output}{END}\n"


def training_documents(seed: int) -> Iterator[str]:
    """Endless paragraphs; eval items are drawn from other seeds' streams, so exact repeats are chance."""
    rnd = random.Random(f"testbed-train-{seed}")
    kinds, weights = list(MIX), list(MIX.values())
    while True:
        item = _item(rnd.choices(kinds, weights)[0], rnd)
        if rnd.random() < CHAT_SHARE:
            yield render_chat(item["instruction"], item["output"], system=rnd.random() < 0.5)
        else:
            yield item["prompt"] + item["answer"] + "\n\n"


def tokenizer_sample(seed: int, n: int = 6000) -> list[str]:
    stream = training_documents(seed)
    return [next(stream) for _ in range(n)]


def prompt_pool(num: int, seed: int = 0) -> list[dict[str, str]]:
    """`num` Alpaca-style rows over all skills in equal shares, for `layerprune sgr` / healing. Instructions are
    unique (SGR keeps one row per prompt); a skill with fewer distinct items (facts, category: ~40 each) gives
    what it has and the others make up the difference."""
    kinds = [*GENERATORS, "brackets"]
    streams = {k: _distinct(k, random.Random(f"testbed-{k}-pool-{seed}")) for k in kinds}
    picked: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    open_kinds = list(kinds)
    while open_kinds and sum(map(len, picked.values())) < num:
        for kind in list(open_kinds):  # round robin: equal shares while every skill has items left
            if sum(map(len, picked.values())) == num:
                break
            it = next(streams[kind], None)
            if it is None:
                open_kinds.remove(kind)
            else:
                picked[kind].append({"instruction": it["instruction"], "input": "", "output": it["output"]})
    rows = [r for k in kinds for r in picked[k]]
    random.Random(f"testbed-pool-{seed}").shuffle(rows)
    return rows


def _distinct(kind: str, rnd: random.Random, patience: int = 2000) -> Iterator[dict[str, Any]]:
    """Items of `kind` with instructions not seen before; ends after `patience` draws bring nothing new."""
    seen, misses = set(), 0
    while misses < patience:
        it = _item(kind, rnd)
        if it["instruction"] in seen:
            misses += 1
            continue
        seen.add(it["instruction"])
        misses = 0
        yield it


def write_prompt_pool(out: str | Path, num: int, seed: int = 0) -> int:
    """Write `prompt_pool(num, seed)` as JSONL (atomically); returns the row count."""
    if num < 1:
        raise UsageError(f"--num must be at least 1, got {num}")
    if Path(out).is_dir():
        raise UsageError(f"--out {out} is a directory; give a file path such as prompts.jsonl")
    rows = prompt_pool(num, seed)
    provenance.write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)
