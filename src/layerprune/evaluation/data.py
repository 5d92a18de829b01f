"""Where benchmark documents come from, and how each becomes the doc that lm-eval's templates render.

    root = resolve_data_dir(opts.data_dir)        # a Path, or None for the Hugging Face hub
    docs = load_docs("arc_easy", "eval", root)    # evaluated split, dataset order
    shots = load_docs("mmlu", "fewshot", root, subject="anatomy")

Data dir resolution: `--data-dir` > `$LAYERPRUNE_DATA` > `<repo>/../shared/data` when it exists > hub.
The value `hub` (flag or env var) forces the hub. Local files are the ones listed in the data dir's
SOURCES.md; the rebuild of each doc follows evaluation.md §C.3. Hub rows are lm-eval's datasets (§A.3).
Every loader returns the same normalized doc per dataset:

    arc_*        {question, choices, gold}          openbookqa  {question_stem, choices, gold}
    piqa         {goal, sol1, sol2, label}          boolq       {passage, question, label}
    winogrande   {contexts[2], continuation, gold}  hellaswag   {query, choices, label}
    mmlu         {question, choices[4], answer, subject}
"""

from __future__ import annotations

import bz2
import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from layerprune.errors import UsageError

HUB = "hub"
_REPO_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"

# dataset → (hub path, hub config, {"eval": split, "fewshot": split}); mmlu's config is the subject
HUB_IDS: dict[str, tuple[str, str | None, dict[str, str]]] = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", {"eval": "test", "fewshot": "train"}),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", {"eval": "test", "fewshot": "train"}),
    "openbookqa": ("allenai/openbookqa", "main", {"eval": "test", "fewshot": "train"}),
    "piqa": ("baber/piqa", None, {"eval": "validation", "fewshot": "train"}),
    "boolq": ("aps/super_glue", "boolq", {"eval": "validation", "fewshot": "train"}),
    "winogrande": ("allenai/winogrande", "winogrande_xl", {"eval": "validation", "fewshot": "train"}),
    "hellaswag": ("Rowan/hellaswag", None, {"eval": "validation", "fewshot": "train"}),
    "mmlu": ("cais/mmlu", None, {"eval": "test", "fewshot": "dev"}),
}


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The local data root, or None for the hub."""
    choice = data_dir if data_dir is not None else os.environ.get("LAYERPRUNE_DATA") or None
    if choice is None:
        return _REPO_DATA.resolve() if _REPO_DATA.is_dir() else None
    if str(choice) == HUB:
        return None
    path = Path(choice).expanduser()
    if not path.is_dir():
        raise UsageError(f"data dir {path} does not exist; pass --data-dir DIR (the shared data folder) or 'hub'")
    return path


def has_local_split(dataset: str, split: str) -> bool:
    """Local files hold the evaluated split of every dataset, and few-shot docs only for MMLU (dev)."""
    return split == "eval" or dataset == "mmlu"


def load_docs(dataset: str, split: str, root: Path | None, subject: str | None = None) -> list[dict[str, Any]]:
    """Normalized docs of `dataset`'s `split` ("eval" or "fewshot") from `root`, or the hub when None."""
    if root is None:
        return _load_hub(dataset, split, subject)
    if not has_local_split(dataset, split):
        raise UsageError(f"{dataset}: the data dir has no few-shot split; use --num-fewshot 0 or --data-dir hub")
    if dataset == "mmlu":
        sub = "test" if split == "eval" else "dev"
        return _read_mmlu(root / "mmlu" / sub / f"{subject}_{sub}.csv", subject)
    if dataset == "piqa":
        return _read_piqa(root / "piqa")
    if dataset == "hellaswag":
        return _read_hellaswag(root / "hellaswag" / "hellaswag_val_full.txt.bz2")
    rel, convert, layout = _LOCAL_JSONL[dataset]
    return list(map(_converted(root / rel, layout, convert), _rows(root / rel, layout)))


# ---- local files ----

def _need(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise UsageError(f"missing data file {path}; expected {layout} (see the data dir's SOURCES.md)")
    return path


def _rows(path: Path, layout: str) -> Iterator[tuple[int, dict]]:
    """(line number, parsed row) of a JSONL file; a bad line raises UsageError naming file and line."""
    with open(_need(path, layout), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as err:
                    raise UsageError(f"{path}:{lineno}: malformed JSON ({err.msg}); expected {layout}") from None


def _converted(path: Path, layout: str, convert: Callable[[dict], dict]) -> Callable[[tuple[int, dict]], dict]:
    def run(item: tuple[int, dict]) -> dict:
        lineno, row = item
        try:
            return convert(row)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
            raise UsageError(f"{path}:{lineno}: malformed row ({type(err).__name__}: {err}); "
                             f"expected {layout}") from None
    return run


def _arc(row: dict) -> dict:
    query = row["query"]
    if not query.startswith("Question: "):
        raise ValueError("query does not start with 'Question: '")
    return {"question": query[len("Question: "):], "choices": list(row["choices"]), "gold": int(row["gold"])}


def _obqa(row: dict) -> dict:
    return {"question_stem": row["query"], "choices": list(row["choices"]), "gold": int(row["gold"])}


def _boolq(row: dict) -> dict:
    head, sep, tail = row["query"].rpartition("\nQuestion: ")  # the last marker: passages may contain one
    if not sep or not head.startswith("Passage: "):
        raise ValueError("query is not 'Passage: …\\nQuestion: …?'")
    return {"passage": head[len("Passage: "):], "question": tail.removesuffix("?"), "label": int(row["gold"])}


def _winogrande(row: dict) -> dict:
    contexts = list(row["context_options"])
    if len(contexts) != 2:
        raise ValueError("context_options must hold 2 strings")
    return {"contexts": contexts, "continuation": row["continuation"], "gold": int(row["gold"])}


_LOCAL_JSONL = {  # dataset → (file, converter, layout for messages)
    "arc_easy": ("arc/arc_easy.jsonl", _arc, "JSONL {query: 'Question: …', choices: [..], gold: int}"),
    "arc_challenge": ("arc/arc_challenge.jsonl", _arc, "JSONL {query: 'Question: …', choices: [..], gold: int}"),
    "openbookqa": ("openbookqa/openbook_qa.jsonl", _obqa, "JSONL {query, choices: [..], gold: int}"),
    "boolq": ("boolq/boolq.jsonl", _boolq, "JSONL {query: 'Passage: …\\nQuestion: …?', choices, gold}"),
    "winogrande": ("winogrande/winogrande.jsonl", _winogrande,
                   "JSONL {context_options: [2], continuation, gold: int}"),
}


def _read_piqa(folder: Path) -> list[dict]:
    layout = "piqa/valid.jsonl {goal, sol1, sol2} and piqa/valid-labels.lst (one 0/1 per line)"
    labels = _need(folder / "valid-labels.lst", layout).read_text().split()
    docs = []
    for lineno, row in _rows(folder / "valid.jsonl", layout):
        if lineno > len(labels) or labels[lineno - 1] not in ("0", "1"):
            raise UsageError(f"{folder / 'valid-labels.lst'}:{lineno}: missing or bad label; expected {layout}")
        try:  # sol strings keep their trailing spaces, as lm-eval's do
            docs.append({"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"],
                         "label": int(labels[lineno - 1])})
        except KeyError as err:
            raise UsageError(f"{folder / 'valid.jsonl'}:{lineno}: malformed row (no {err}); expected {layout}") from None
    return docs


def hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag `preprocess`: strip, ' [title]' → '. ', drop [tags], collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _read_hellaswag(path: Path) -> list[dict]:
    layout = "bzip2 text, 6 lines per item: 'activity_label: ctx', label, 4 endings"
    with bz2.open(_need(path, layout), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    lines = lines[:-1] if lines and lines[-1] == "" else lines
    if len(lines) % 6:
        raise UsageError(f"{path}: {len(lines)} lines is not a multiple of 6; expected {layout}")
    docs = []
    for start in range(0, len(lines), 6):
        label = lines[start + 1].strip()
        if label not in ("0", "1", "2", "3"):
            raise UsageError(f"{path}:{start + 2}: label {label!r} is not 0-3; expected {layout}")
        docs.append({"query": hellaswag_clean(lines[start]), "label": int(label),
                     "choices": [hellaswag_clean(e) for e in lines[start + 2 : start + 6]]})
    return docs


def _read_mmlu(path: Path, subject: str | None) -> list[dict]:
    layout = "CSV with header question,choice0,choice1,choice2,choice3,answer (answer 0-3), one per subject"
    with open(_need(path, layout), encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        docs = []
        for row in reader:
            try:
                answer = int(row["answer"])
                choices = [row[f"choice{i}"] for i in range(4)]
                if answer not in range(4) or None in choices or row["question"] is None:
                    raise ValueError("bad answer or missing column")
            except (KeyError, ValueError) as err:
                raise UsageError(f"{path}:{reader.line_num}: malformed row ({err}); expected {layout}") from None
            docs.append({"question": row["question"], "choices": choices, "answer": answer, "subject": subject})
    return docs


# ---- hub (lm-eval's dataset ids) ----

def _load_hub(dataset: str, split: str, subject: str | None) -> list[dict]:
    path, name, splits = HUB_IDS[dataset]
    try:
        import datasets
    except ImportError:
        raise UsageError("loading from the hub needs the `datasets` package; install layerprune[eval] "
                         "or pass --data-dir DIR") from None
    try:
        rows = datasets.load_dataset(path, subject if dataset == "mmlu" else name, split=splits[split])
    except Exception as err:  # offline, unknown id, …: one line that says what to do
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"cannot load {path} ({splits[split]}) from the hub: {first}; pass --data-dir DIR "
                         "with the local files") from None
    return [_HUB_CONVERT[dataset](dict(row), subject) for row in rows]


def _hub_winogrande(row: dict, _s) -> dict:
    idx = row["sentence"].index("_")
    return {"contexts": [row["sentence"][:idx] + row[k] for k in ("option1", "option2")],
            "continuation": row["sentence"][idx + 1:].strip(), "gold": {"1": 0, "2": 1}[row["answer"]]}


def _hub_hellaswag(row: dict, _s) -> dict:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"query": hellaswag_clean(row["activity_label"] + ": " + ctx), "label": int(row["label"]),
            "choices": [hellaswag_clean(e) for e in row["endings"]]}


_HUB_CONVERT: dict[str, Callable[[dict, str | None], dict]] = {
    "arc_easy": lambda r, _s: {"question": r["question"], "choices": r["choices"]["text"],
                               "gold": r["choices"]["label"].index(r["answerKey"])},
    "openbookqa": lambda r, _s: {"question_stem": r["question_stem"], "choices": r["choices"]["text"],
                                 "gold": r["choices"]["label"].index(r["answerKey"].lstrip())},
    "piqa": lambda r, _s: {"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(r["label"])},
    "boolq": lambda r, _s: {"passage": r["passage"], "question": r["question"], "label": int(r["label"])},
    "winogrande": _hub_winogrande,
    "hellaswag": _hub_hellaswag,
    "mmlu": lambda r, s: {"question": r["question"], "choices": list(r["choices"]), "answer": int(r["answer"]),
                          "subject": s},
}
_HUB_CONVERT["arc_challenge"] = _HUB_CONVERT["arc_easy"]
