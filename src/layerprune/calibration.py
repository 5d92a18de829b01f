"""Calibration text → fixed-length token windows for the layer-importance criteria.

    cal = load_calibration(tokenizer, "notes.txt", seq_len=256, num_samples=32, seed=0)
    cal.input_ids          # (N, seq_len) LongTensor, N <= num_samples
    cal.description        # source, windows, tokens, seed, BOS ... (copied into scores.json)

Sources: a ``.txt`` file (the whole file is one document), a ``.jsonl`` file (one document per line, text in ``text_field``), or a hub dataset id ``name[:config]`` read
with `datasets` (``split``, column ``text_field``).

Window recipe (SLEB-style, deterministic): documents are shuffled with ``seed``, each is tokenized without
special tokens and followed by the tokens of ``"\\n\\n"``, and the stream is cut into consecutive windows of
``seq_len`` tokens — ``seq_len - 1`` body tokens after a BOS token when BOS is on. Tokenizing stops once
``num_samples`` windows are filled; a source that yields fewer windows gives fewer (recorded). Every window
has exactly ``seq_len`` tokens, so no padding is ever needed and "non-pad tokens" means all tokens.
BOS defaults to on when the tokenizer has one (Gemma's perplexity collapses without it, methods.md §5).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from layerprune.errors import UsageError

LOCAL_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class CalibrationSpec:
    """What to read and how to cut it. `bos=None` means "on if the tokenizer has a BOS token"."""

    source: str
    seq_len: int = 256
    num_samples: int = 32
    seed: int = 0
    text_field: str = "text"
    split: str = "train"
    bos: bool | None = None


@dataclass
class Calibration:
    input_ids: torch.Tensor  # (N, seq_len) token windows
    description: dict[str, Any] = field(default_factory=dict)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.input_ids), batch_size):
            yield self.input_ids[i : i + batch_size]  # (b, T)


def load_calibration(tokenizer, spec: CalibrationSpec) -> Calibration:
    """Read `spec.source`, tokenize and cut into windows; every bad input is a one-line UsageError."""
    _check_sizes(spec)
    if tokenizer is None:
        raise UsageError("the model has no tokenizer, so calibration text cannot be tokenized; use a checkpoint "
                         "that ships one")
    docs = _read_docs(spec)
    random.Random(spec.seed).shuffle(docs)
    bos = tokenizer.bos_token_id is not None if spec.bos is None else spec.bos
    if bos and tokenizer.bos_token_id is None:
        raise UsageError("BOS asked for but the tokenizer has no BOS token; drop --bos")
    body = spec.seq_len - 1 if bos else spec.seq_len
    ids, total = _token_stream(tokenizer, docs, body * spec.num_samples)
    count = min(len(ids) // body, spec.num_samples)
    if count == 0:
        raise UsageError(f"calibration source {spec.source} has only {total} tokens, fewer than one window of "
                         f"{body}; pass a longer text or a smaller --seq-len")
    windows = torch.tensor(ids[: count * body], dtype=torch.long).view(count, body)  # (N, body)
    if bos:
        windows = torch.cat([torch.full((count, 1), tokenizer.bos_token_id, dtype=torch.long), windows], dim=1)
    description = {
        "source": spec.source, "split": spec.split if _is_hub(spec.source) else None,
        "text_field": spec.text_field if not spec.source.endswith(".txt") else None,
        "documents": len(docs), "seq_len": spec.seq_len, "windows": count, "requested_windows": spec.num_samples,
        "tokens": count * spec.seq_len, "seed": spec.seed, "bos": bos,
        "recipe": "shuffle documents with seed; tokenize each + '\\n\\n'; consecutive windows",
    }
    return Calibration(windows, description)


def _check_sizes(spec: CalibrationSpec) -> None:
    if spec.seq_len < 2:
        raise UsageError(f"--seq-len {spec.seq_len}: a window needs at least 2 tokens")
    if spec.num_samples < 1:
        raise UsageError(f"--num-samples {spec.num_samples}: need at least one calibration window")


def _token_stream(tokenizer, docs: list[str], needed: int) -> tuple[list[int], int]:
    """Token ids of the documents, each followed by the separator, until `needed` ids are collected."""
    sep = tokenizer("\n\n", add_special_tokens=False).input_ids
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False, verbose=False).input_ids)
        ids.extend(sep)
        if len(ids) >= needed:
            break
    return ids, len(ids)


def _is_hub(source: str) -> bool:
    return not Path(source).expanduser().exists() and not source.endswith(LOCAL_SUFFIXES)


def _read_docs(spec: CalibrationSpec) -> list[str]:
    path = Path(spec.source).expanduser()
    if _is_hub(spec.source):
        return _hub_docs(spec)
    if not path.is_file():
        raise UsageError(f"calibration file {spec.source} does not exist; check the path")
    if path.suffix == ".jsonl":
        docs = _jsonl_docs(path, spec.text_field)
    elif path.suffix == ".txt":
        docs = [path.read_text(encoding="utf-8")]
    else:
        raise UsageError(f"calibration file {spec.source}: unknown format; use a .txt or .jsonl file")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UsageError(f"calibration file {spec.source} is empty; pass a file with text in it")
    return docs


def _jsonl_docs(path: Path, text_field: str) -> list[str]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{path}:{n} is not valid JSON; each line must be one JSON object") from None
            if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                raise UsageError(f"{path}:{n} has no text field {text_field!r} (fields: {keys}); "
                                 "pass --text-field NAME")
            docs.append(row[text_field])
    return docs


def _hub_docs(spec: CalibrationSpec) -> list[str]:
    name, _, config = spec.source.partition(":")
    hint = "pass a local file instead: --calibration FILE.txt, or FILE.jsonl with --text-field NAME"
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UsageError(f"calibration dataset {spec.source!r} is on the hub but this machine is offline; {hint}")
    try:
        import datasets

        data = datasets.load_dataset(name, config or None, split=spec.split)
    except Exception as err:  # noqa: BLE001 - any hub/network/parse failure is reported the same way
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"cannot load calibration dataset {spec.source!r} split {spec.split!r} ({first}); "
                         f"{hint}") from None
    if spec.text_field not in data.column_names:
        raise UsageError(f"dataset {spec.source!r} has no column {spec.text_field!r} "
                         f"(columns: {', '.join(data.column_names)}); pass --text-field NAME")
    return [t for t in data[spec.text_field] if isinstance(t, str) and t.strip()]
