"""Study metrics from per-document scores: retention, recovery, and paired bootstrap confidence intervals.

    retention = pruned / baseline                      recovery = (healed - pruned) / (baseline - pruned)

All models of a study are evaluated on the same documents in the same order, so the bootstrap resamples
document indices once per replicate and applies them to every model (paired). A task type's value is the
mean of its tasks' values; each task is resampled independently.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

@dataclass(frozen=True)
class TaskScores:
    task: str
    kind: str  # "classification" | "generative"
    metric: str
    values: np.ndarray  # (n_docs,) per-document metric values, in document order


def task_info(name: str) -> tuple[str, str]:
    """(kind, headline metric) of a task, from the task registry."""
    from layerprune.evaluation.tasks import get_task

    task = get_task(name)
    return task.kind, task.primary_metric


def load_scores(eval_dir: Path) -> dict[str, TaskScores]:
    """Per-task per-document headline values of one evaluated model (a group pools its members' docs)."""
    results = json.loads((eval_dir / "results.json").read_text())["results"]
    members = {name: _member_names(name) for name in results}
    in_groups = {m for name, ms in members.items() if ms != [name] for m in ms}
    out = {}
    for name in results:
        if name in in_groups:
            continue
        kind, metric = task_info(name)
        values: list[float] = []
        for member in members[name]:
            with open(eval_dir / f"samples_{member}.jsonl") as f:
                values += [float(json.loads(line)[metric]) for line in f]
        out[name] = TaskScores(name, kind, metric, np.asarray(values, dtype=np.float64))
    return out


def _member_names(name: str) -> list[str]:
    from layerprune.evaluation.tasks import get_task

    task = get_task(name)
    return [t.name for t in task.tasks] if getattr(task, "tasks", None) else [name]


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


def _ci(point: float, reps: np.ndarray, confidence: float) -> Estimate:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0 or not np.isfinite(point):
        return Estimate(float(point), float("nan"), float("nan"))
    a = (1 - confidence) / 2
    return Estimate(float(point), float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a)))


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den == 0, 1, den), np.nan)


def retention(pruned: list[np.ndarray], baseline: list[np.ndarray], n_boot: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> Estimate:
    """Mean over tasks of mean(pruned)/mean(baseline), with a paired bootstrap CI over documents."""
    return _estimate(lambda p, b: _ratio(p, b), [pruned, baseline], n_boot, confidence, seed)


def recovery(healed: list[np.ndarray], pruned: list[np.ndarray], baseline: list[np.ndarray], n_boot: int = 1000,
             confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean over tasks of (healed - pruned)/(baseline - pruned): 1 = fully recovered, 0 = no gain."""
    return _estimate(lambda h, p, b: _ratio(h - p, b - p), [healed, pruned, baseline], n_boot, confidence, seed)


def recovery_gap(healed_a: list[np.ndarray], healed_b: list[np.ndarray], pruned: list[np.ndarray],
                 baseline: list[np.ndarray], n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Recovery of arm a minus recovery of arm b, paired over documents: a CI excluding 0 is a real difference."""
    def gap(a, b, p, base):
        return _ratio(a - p, base - p) - _ratio(b - p, base - p)

    return _estimate(gap, [healed_a, healed_b, pruned, baseline], n_boot, confidence, seed)


def retention_gap(a: list[np.ndarray], b: list[np.ndarray], baseline: list[np.ndarray], n_boot: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Retention of model a minus retention of model b, paired over documents (a CI excluding 0: a real difference)."""
    return _estimate(lambda x, y, base: _ratio(x, base) - _ratio(y, base), [a, b, baseline], n_boot, confidence, seed)


def _estimate(fn, arrays: list[list[np.ndarray]], n_boot: int, confidence: float, seed: int) -> Estimate:
    rng = np.random.default_rng(seed)
    points, reps = [], []
    for per_model in zip(*arrays):  # one task at a time: (model_a_values, model_b_values, ...)
        n = len(per_model[0])
        if n == 0 or any(len(v) != n for v in per_model):
            raise ValueError("models were evaluated on different documents; cannot pair them")
        points.append(fn(*(np.asarray(v.mean()) for v in per_model)))
        idx = rng.integers(0, n, size=(n_boot, n))  # (B, n) resampled document indices, shared by all models
        reps.append(fn(*(v[idx].mean(axis=1) for v in per_model)))  # (B,)
    # a task where the ratio is undefined (e.g. baseline == pruned for recovery) drops out of the mean
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices → NaN, reported as n/a
        point = float(np.nanmean(points))
        return _ci(point, np.nanmean(np.stack(reps), axis=0), confidence)


def safe_ratio(points: list[tuple[float, Estimate]], threshold: float) -> float:
    """Largest ratio up to which every retention CI lower bound stays ≥ threshold (0 when none does)."""
    best = 0.0
    for ratio, est in sorted(points, key=lambda p: p[0]):
        if not (np.isfinite(est.lo) and est.lo >= threshold):
            break
        best = ratio
    return best
