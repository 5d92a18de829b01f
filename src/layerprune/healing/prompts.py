"""Prompt pools for SGR and healing: read rows, normalize them to chat messages, shuffle, cut, filter.

    pool = load_prompts("alpaca.jsonl")                      # or a hub id: "tatsu-lab/alpaca:train"
    chosen = select(pool, num=1000, seed=42, keep=lambda p: ...)

Row formats (one JSON object per line, or the rows of a hub dataset):

* Alpaca: ``instruction`` (+ optional ``input``, appended after a blank line) and optional ``output``;
* ``messages``: a list of ``{"role", "content"}``; a final assistant turn is the original answer;
* ``conversations``: ShareGPT ``{"from", "value"}`` (human/gpt/system) or ``{"role", "content"}`` turns;
* ``prompt``: plain text, with an optional answer in ``response``, ``completion`` or ``output``.

Each prompt gets a stable id, a hash of its messages, so reruns and shards agree on which prompt is which
without depending on the file's order; duplicate prompts keep their first occurrence.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from layerprune.errors import UsageError

FORMATS = ("messages", "conversations", "instruction", "prompt")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
          "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
_ANSWER_FIELDS = ("response", "completion", "output")


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[dict, ...]  # the turns before the answer; ends with a user turn
    original: str | None  # the source's own answer, when it has one


def prompt_id(messages: Iterable[dict]) -> str:
    blob = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_row(row: Any, where: str) -> Prompt:
    """One source row → Prompt; `where` ("file.jsonl:12") locates errors."""
    if not isinstance(row, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(row).__name__}; one object per line")
    if "messages" in row or "conversations" in row:
        turns = _turns(row.get("messages", row.get("conversations")), where)
        original = None
        if turns and turns[-1]["role"] == "assistant":
            original = turns.pop()["content"]
    elif "instruction" in row:
        text = _text(row["instruction"], "instruction", where)
        extra = row.get("input") or ""
        turns = [{"role": "user", "content": f"{text}\n\n{extra}" if extra else text}]
        original = row.get("output")
    elif "prompt" in row:
        turns = [{"role": "user", "content": _text(row["prompt"], "prompt", where)}]
        original = next((row[k] for k in _ANSWER_FIELDS if isinstance(row.get(k), str)), None)
    else:
        raise UsageError(f"{where}: row has none of the fields {', '.join(FORMATS)}; "
                         "give each row messages, conversations, instruction or prompt")
    if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise UsageError(f"{where}: the prompt must end with a non-empty user turn; fix or remove the row")
    return Prompt(prompt_id(turns), tuple(turns), original if isinstance(original, str) else None)


def _text(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _turns(value: Any, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise UsageError(f"{where}: messages/conversations must be a list of turns")
    turns = []
    for turn in value:
        role = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
        content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        if role not in _ROLES or not isinstance(content, str):
            raise UsageError(f"{where}: turn {turn!r:.80} needs a role (user/assistant/system or human/gpt) "
                             "and string content")
        turns.append({"role": _ROLES[role], "content": content})
    return turns


def read_jsonl(path: str | Path) -> Iterable[tuple[str, dict]]:
    """(where, row) for every non-blank line; bad JSON is a UsageError naming file and line."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{n}: not valid JSON ({err.msg}); one JSON object per line") from None


def load_prompts(spec: str, info: dict | None = None) -> list[Prompt]:
    """All prompts of a local JSONL file or a hub dataset (``org/name`` or ``org/name:split``), in source
    order, duplicates removed. `info`, when given, receives where they came from: ``repo`` and the resolved
    commit ``revision`` for a hub dataset, the ``rows`` read and the ``unique`` prompts kept."""
    info = {} if info is None else info
    rows = _hub_rows(spec, info) if _is_hub_id(spec) else read_jsonl(_local(spec))
    seen: dict[str, Prompt] = {}
    count = 0
    for where, row in rows:
        p = parse_row(row, where)
        seen.setdefault(p.id, p)
        count += 1
    if not seen:
        raise UsageError(f"prompt source {spec} has no rows; pass a non-empty JSONL file or dataset")
    info.update(rows=count, unique=len(seen))
    return list(seen.values())


def _local(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"prompt file {spec} does not exist; pass a JSONL file or a hub dataset id")
    return path


def _is_hub_id(spec: str) -> bool:
    name = spec.split(":")[0]
    return not Path(spec).expanduser().exists() and name.count("/") == 1 and not name.startswith((".", "/", "~")) \
        and not name.endswith((".jsonl", ".json"))


def _hub_rows(spec: str, info: dict) -> Iterable[tuple[str, dict]]:
    import datasets

    from layerprune.hub import dataset_revision

    name, _, split = spec.partition(":")
    revision = dataset_revision(name)  # pinned, so the recorded commit is the one read (None offline: cache)
    info.update(repo=name, split=split or "train", revision=revision)
    try:
        ds = datasets.load_dataset(name, split=split or "train", revision=revision)
    except Exception as err:  # offline, unknown id, unknown split: all one message
        raise UsageError(f"cannot load dataset {name!r} split {split or 'train'!r}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    for i, row in enumerate(ds):
        yield f"{spec}[{i}]", row


def select(pool: list[Prompt], num: int | None, seed: int, keep: Callable[[Prompt], bool] | None = None,
           allow_fewer: bool = False, stats: dict | None = None) -> list[Prompt]:
    """Shuffle with `seed` (Python's Mersenne Twister, so the order is fixed for a pool and seed), then take
    the first `num` prompts that pass `keep` (all when num is None). Fewer than `num` usable prompts is a
    UsageError naming the count, unless `allow_fewer`. `stats` receives ``available`` (the pool),
    ``skipped`` (prompts `keep` rejected before the selection was full) and ``selected``."""
    if num is not None and num < 1:
        raise UsageError(f"--num {num}: ask for at least one prompt")
    order = list(pool)
    random.Random(seed).shuffle(order)
    chosen, skipped = [], 0
    for p in order:
        if keep is None or keep(p):
            chosen.append(p)
            if num is not None and len(chosen) == num:
                break
        else:
            skipped += 1
    if stats is not None:
        stats.update(available=len(pool), skipped=skipped, selected=len(chosen), requested=num,
                     allow_fewer=allow_fewer)
    if not chosen:
        raise UsageError("no prompt passes the length filter; raise --max-prompt-tokens")
    if num is not None and len(chosen) < num and not allow_fewer:
        why = f" ({skipped} over the prompt-token limit)" if skipped else ""
        raise UsageError(f"asked for {num} prompts but the source has only {len(chosen)} usable of {len(pool)} "
                         f"unique{why}; lower num or set allow_fewer: true (--allow-fewer) to take them all")
    return chosen
