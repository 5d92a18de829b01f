"""Test-time scaling in a study: accuracy vs number of samples k per variant, and the "scaling gap".

    rows = scaling_curves(done, store, base, n_boot=1000, confidence=0.95)   # summary["scaling"]

For every evaluated variant whose generative tasks were sampled (``eval.num_samples > 1``), each task's curve is
the mean over documents of the per-document ``pass@k`` (and ``maj@k`` on answer tasks) that the task wrote into
samples_<task>.jsonl (`layerprune.evaluation.scaling`), for the filter of the task's headline metric
(``flexible-extract`` on GSM8K). The scaling gap of a variant is

    gap = (baseline pass@N − baseline pass@1) − (variant pass@N − variant pass@1)

per task, averaged over the generative tasks, with a paired bootstrap CI over documents (as retention):
gap > 0 means the variant gains less from sampling more than the unpruned model (arXiv 2510.22228).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from layerprune.study.metrics import _estimate, task_info
from layerprune.study.store import Store

_KEY = re.compile(r"^(pass|maj)@(\d+)(,.+)?$")
_ID = ("model", "criterion", "num_drop", "ratio", "arm")


def generative_tasks(names: list[str]) -> list[str]:
    """The generative tasks among `names` (the default task set of scaling curves)."""
    return [t for t in names if task_info(t)[0] == "generative"]


def per_doc_curves(eval_dir: Path) -> dict[str, dict[str, dict[int, np.ndarray]]]:
    """task → {"pass": {k: (n_docs,)}, "maj": {k: (n_docs,)}} for the sampled generative tasks of one eval."""
    out: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for path in sorted(eval_dir.glob("samples_*.jsonl")):
        task = path.stem[len("samples_"):]
        try:
            kind, metric = task_info(task)
        except Exception:  # a file of a task this version no longer knows: not part of the curves
            continue
        if kind != "generative":
            continue
        suffix = "," + metric.split(",", 1)[1] if "," in metric else None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        curves: dict[str, dict[int, list[float]]] = {"pass": {}, "maj": {}}
        for row in rows:
            for key, value in row.items():
                m = _KEY.match(key)
                if m and (m.group(3) or None) == suffix and isinstance(value, (int, float)):
                    curves[m.group(1)].setdefault(int(m.group(2)), []).append(float(value))
        ks = sorted(curves["pass"])
        if len(ks) > 1 and all(len(curves["pass"][k]) == len(rows) for k in ks):
            out[task] = {name: {k: np.asarray(v) for k, v in sorted(c.items()) if len(v) == len(rows)}
                         for name, c in curves.items() if c}
    return out


def scaling_curves(done: list[dict], store: Store, base: dict, n_boot: int = 1000,
                   confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per evaluated variant with sampled tasks: its curves and (for non-baselines) the scaling gap."""
    curves = {v["eval"]: per_doc_curves(store.step_dir(v["eval"])) for v in done}
    rows = []
    for v in done:
        mine = curves[v["eval"]]
        if not mine:
            continue
        row = {k: v[k] for k in _ID} | {"tasks": {t: {name: {str(k): float(a.mean()) for k, a in c.items()}
                                                      for name, c in tc.items()} for t, tc in mine.items()}}
        b = base.get(v["model"])
        if v["criterion"] is not None and b is not None:
            row["gap"] = _gap(mine, curves[b["eval"]], n_boot, confidence)
        rows.append(row)
    return rows


def _gap(variant: dict, baseline: dict, n_boot: int, confidence: float) -> dict[str, Any] | None:
    """Paired bootstrap of (baseline gain) − (variant gain) from pass@1 to pass@N over the shared tasks."""
    tasks = [t for t in variant if t in baseline and max(variant[t]["pass"]) == max(baseline[t]["pass"])]
    if not tasks:
        return None
    n = max(variant[tasks[0]]["pass"])

    def gain(c):
        return c["pass"][n] - c["pass"][1]

    est = _estimate(lambda bg, vg: bg - vg, [[gain(baseline[t]) for t in tasks], [gain(variant[t]) for t in tasks]],
                    n_boot, confidence, seed=0)
    return {"k": n, "tasks": tasks, **est.as_dict()}
