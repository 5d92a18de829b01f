"""Length and cost per answer: compressed models can emit more tokens, so the speedup a user sees is per answer.

    rows = answer_costs(done, store, base)   # summary["answers"]

Per evaluated variant and generative task, from the ``generated_tokens`` / ``finish_reasons`` that the runner
writes into samples_<task>.jsonl: mean and median generated tokens per answer and the share of answers that hit
the token limit (finish reason "length"). With the variant's speed step (its decode tokens/s) and the baseline's:

    seconds per answer   = mean tokens per answer / decode tokens/s
    per-answer speedup   = per-token decode speedup × (baseline tokens per answer / variant tokens per answer)

The per-token speedup is the speed step's own paired measurement when it has one (``comparison``), else the ratio
of the two steps' decode tokens/s. A healed variant shares its pruned model's speed but not its lengths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from layerprune.study.store import Store

_ID = ("model", "criterion", "num_drop", "ratio", "arm")


def task_lengths(eval_dir: Path) -> dict[str, dict[str, float]]:
    """task → {mean, median, hit_limit, answers} over every generated sample of the task (tasks with counts)."""
    out = {}
    for path in sorted(eval_dir.glob("samples_*.jsonl")):
        tokens, reasons = [], []
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            tokens += row.get("generated_tokens") or []
            reasons += row.get("finish_reasons") or []
        if tokens:
            out[path.stem[len("samples_"):]] = {
                "mean": float(np.mean(tokens)), "median": float(np.median(tokens)),
                "hit_limit": float(np.mean([r == "length" for r in reasons])) if reasons else None,
                "answers": len(tokens)}
    return out


def answer_costs(done: list[dict], store: Store, base: dict) -> list[dict[str, Any]]:
    lengths = {v["eval"]: task_lengths(store.step_dir(v["eval"])) for v in done}
    rows = []
    for v in done:
        tasks = lengths[v["eval"]]
        if not tasks:
            continue
        row = {k: v[k] for k in _ID} | {"tasks": tasks, "tokens_per_answer": _pooled(tasks)}
        speed = _speed(store, v)
        if speed:
            row["seconds_per_answer"] = row["tokens_per_answer"] / speed["decode_tokens_per_s"]
        b = base.get(v["model"])
        if b is not None and b is not v and speed and lengths.get(b["eval"]):
            shared = [t for t in tasks if t in lengths[b["eval"]]]
            per_token = _per_token_speedup(speed, _speed(store, b))
            if shared and per_token is not None:
                mine = _pooled({t: tasks[t] for t in shared})
                theirs = _pooled({t: lengths[b["eval"]][t] for t in shared})
                row.update(per_token_speedup=per_token, length_ratio=mine / theirs,
                           per_answer_speedup=per_token * theirs / mine)
        rows.append(row)
    return rows


def _pooled(tasks: dict[str, dict]) -> float:
    """Mean tokens per answer over all answers of the given tasks."""
    return sum(t["mean"] * t["answers"] for t in tasks.values()) / sum(t["answers"] for t in tasks.values())


def _speed(store: Store, v: dict) -> dict | None:
    sid = v.get("speed")
    if not sid or not store.is_done(sid):
        return None
    return json.loads((store.step_dir(sid) / "speed.json").read_text())


def _per_token_speedup(variant: dict, baseline: dict | None) -> float | None:
    for c in variant.get("comparison") or []:  # the speed step's own paired, interleaved measurement
        if c.get("batch_size") == variant.get("batch_size"):
            return c.get("decode_speedup")  # None when the measurement was too noisy to report
    if baseline and baseline.get("decode_tokens_per_s"):
        return variant["decode_tokens_per_s"] / baseline["decode_tokens_per_s"]
    return None
