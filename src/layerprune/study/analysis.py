"""Gather a finished study's outputs and compute what the report shows (also saved as ROOT/summary.json).

Rows of `summary["retention"]`: one per (model, criterion, n, arm, kind) with retention (and, for healed arms,
recovery) and their bootstrap CIs; `summary["safe_depth"]`: per (model, criterion, arm, kind), the largest
removed-layer ratio whose retention CI lower bound stays ≥ the threshold; `summary["arm_gaps"]`: per cut, task
type and pair of healed arms, the paired recovery difference (`sgr_vs_original` is its SGR − original subset).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from layerprune.study.answers import answer_costs
from layerprune.study.metrics import (Estimate, load_scores, recovery, recovery_gap, retention, retention_gap,
                                      safe_ratio)
from layerprune.study.store import Store

KINDS = ("classification", "generative")


def load_study(root: Path) -> tuple[dict, list[dict], Store]:
    store = Store(root)
    plan_file = root / "plan.json"
    if not plan_file.is_file():
        from layerprune.errors import UsageError

        raise UsageError(f"{root} is not a study root (no plan.json); run `layerprune study CONFIG --root {root}`")
    plan = json.loads(plan_file.read_text())
    return plan, plan["variants"], store


def analyze(root: Path, threshold: float = 0.9, n_boot: int = 1000, confidence: float = 0.95) -> dict[str, Any]:
    plan, variants, store = load_study(root)
    done = [v for v in variants if store.is_done(v["eval"])]
    scores = {v["eval"]: load_scores(store.step_dir(v["eval"])) for v in done}
    base = {v["model"]: v for v in done if v["criterion"] is None}
    rows = []
    for v in done:
        b = base.get(v["model"])
        if v["criterion"] is None or b is None:
            continue
        pruned = next((p for p in done if _same_cut(p, v) and p["arm"] == "none"), None)
        for kind in KINDS:
            tasks = [t for t, s in scores[b["eval"]].items() if s.kind == kind]
            if not tasks:
                continue
            row = {k: v[k] for k in ("model", "criterion", "num_drop", "ratio", "arm")} | {"kind": kind}
            vals = lambda var: [scores[var["eval"]][t].values for t in tasks]  # noqa: E731
            row["retention"] = retention(vals(v), vals(b), n_boot, confidence).as_dict()
            if v["arm"] != "none" and pruned is not None:
                row["recovery"] = recovery(vals(v), vals(pruned), vals(b), n_boot, confidence).as_dict()
            rows.append(row)
    gaps = _arm_gaps(done, scores, base, n_boot, confidence)
    answers, speed = answer_costs(done, store, base), _speed(done, store, base)
    for row in speed:  # the unhealed cut's per-answer speedup beside its per-token ones
        cut = next((a for a in answers if a["arm"] == "none" and _same_cut(a, row)), None)
        if cut and cut.get("per_answer_speedup") is not None:
            row["per_answer_speedup"] = cut["per_answer_speedup"]
    return {
        "threshold": threshold, "confidence": confidence, "bootstrap": n_boot,
        "variants": len(variants), "evaluated": len(done),
        "tasks": _task_table(done, scores),
        "retention": rows,
        "arm_gaps": gaps,
        "sgr_vs_original": [{k: g[k] for k in g if k not in ("a", "b")} | {"gap": _oriented(g, "sgr", "original")}
                            for g in gaps if {g["a"], g["b"]} == {"sgr", "original"}],
        "safe_depth": _safe_depth(rows, threshold),
        "speed": speed,
        "layer_scores": _layer_scores(plan, store),
        "diagnostics": _diagnostics(done, store),
        "scaling": _scaling(plan, store, n_boot, confidence),
        "answers": answers,
        "schedules": _schedules(done, scores, base, n_boot, confidence),
    }


def _schedules(done: list[dict], scores: dict, base: dict, n_boot: int, confidence: float) -> list[dict]:
    """Iterative prune→heal vs one-shot with the same healing budget: retention difference, paired CI."""
    out = []
    for it in (v for v in done if v["arm"].endswith("+iterative") and v["model"] in base):
        arm = it["arm"].removesuffix("+iterative")
        rival = next((v for v in done if _same_cut(v, it) and v["arm"] == f"{arm}+budget"), None)
        if rival is None:  # one round only: the iterative chain *is* the one-shot cut
            rival = next((v for v in done if _same_cut(v, it) and v["arm"] == arm), None)
        if rival is None:
            continue
        b = base[it["model"]]
        for kind in KINDS:
            tasks = [t for t, s in scores[b["eval"]].items() if s.kind == kind]
            if tasks:
                vals = lambda var: [scores[var["eval"]][t].values for t in tasks]  # noqa: E731
                diff = retention_gap(vals(it), vals(rival), vals(b), n_boot, confidence)
                out.append({k: it[k] for k in ("model", "criterion", "num_drop", "ratio")} | {
                    "arm": arm, "kind": kind, "rival": rival["arm"], "schedule": it.get("schedule"),
                    "iterative_minus_oneshot": diff.as_dict()})
    return out


def _scaling(plan: dict, store: Store, n_boot: int, confidence: float) -> list[dict]:
    """Test-time scaling curves of the sampled evaluations (plan["scaling"]), gaps against the sampled baseline."""
    from layerprune.study.scaling import scaling_curves

    sampled = [v for v in plan.get("scaling", []) if store.is_done(v["eval"])]
    sampled_base = {v["model"]: v for v in sampled if v["criterion"] is None}
    return scaling_curves(sampled, store, sampled_base, n_boot, confidence) if sampled else []


def _arm_gaps(done: list[dict], scores: dict, base: dict, n_boot: int, confidence: float) -> list[dict]:
    """Per cut, task type and pair of healed arms (later − earlier in the config's order): recovery difference
    with its paired bootstrap CI — a CI that crosses 0 means the data cannot tell the arms apart."""
    order = list(dict.fromkeys(v["arm"] for v in done))
    out = []
    for p in done:
        if p["criterion"] is None or p["arm"] != "none" or p["model"] not in base:
            continue
        arms = {v["arm"]: v for v in done if _same_cut(v, p) and v["arm"] != "none"}
        pairs = [(a, b) for i, b in enumerate(order) for a in order[i + 1:] if {a, b} <= arms.keys()]
        b0 = base[p["model"]]
        for kind in KINDS:
            tasks = [t for t, s in scores[b0["eval"]].items() if s.kind == kind]
            vals = lambda var: [scores[var["eval"]][t].values for t in tasks]  # noqa: E731
            for a, b in pairs if tasks else []:
                gap = recovery_gap(vals(arms[a]), vals(arms[b]), vals(p), vals(b0), n_boot, confidence)
                out.append({k: p[k] for k in ("model", "criterion", "num_drop", "ratio")}
                           | {"kind": kind, "a": a, "b": b, "gap": gap.as_dict()})
    return out


def _oriented(g: dict, a: str, b: str) -> dict:
    """g's recovery gap as a − b (negated, interval flipped, when g holds b − a)."""
    e = g["gap"]
    return e if (g["a"], g["b"]) == (a, b) else {"value": -e["value"], "lo": -e["hi"], "hi": -e["lo"]}


def _same_cut(a: dict, b: dict) -> bool:
    return (a["model"], a["criterion"], a["num_drop"]) == (b["model"], b["criterion"], b["num_drop"])


def _task_table(done: list[dict], scores: dict) -> list[dict]:
    out = []
    for v in done:
        row = {k: v[k] for k in ("model", "criterion", "num_drop", "ratio", "arm")}
        row["scores"] = {t: {"metric": s.metric, "kind": s.kind, "value": float(s.values.mean()) if len(s.values) else None,
                             "n": int(len(s.values))} for t, s in scores[v["eval"]].items()}
        out.append(row)
    return out


def _safe_depth(rows: list[dict], threshold: float) -> list[dict]:
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        est = r["retention"]
        groups[(r["model"], r["criterion"], r["arm"], r["kind"])].append((r["ratio"], Estimate(est["value"], est["lo"], est["hi"])))
    return [{"model": m, "criterion": c, "arm": a, "kind": k, "safe_ratio": safe_ratio(pts, threshold),
             "ratios_tested": sorted(p[0] for p in pts)} for (m, c, a, k), pts in sorted(groups.items())]


def _speed(done: list[dict], store: Store, base: dict) -> list[dict]:
    from layerprune.study.speed import ideal_speedup

    def load(v):
        if not v.get("speed") or not store.is_done(v["speed"]):
            return None
        return json.loads((store.step_dir(v["speed"]) / "speed.json").read_text())

    out, seen = [], set()
    for v in done:
        if v["criterion"] is None or v["speed"] in seen or v["model"] not in base:
            continue
        seen.add(v["speed"])
        s, b = load(v), load(base[v["model"]])
        if s and b:
            out.append({"model": v["model"], "criterion": v["criterion"], "num_drop": v["num_drop"], "ratio": v["ratio"],
                        **_speedups(s, b), "ideal_speedup": ideal_speedup(b, s), "baseline": b, "pruned": s})
    return out


def _speedups(s: dict, b: dict) -> dict:
    """Measured speedups of a pruned model: the speed step's own paired, interleaved comparison with its baseline
    (None where the spread was too large to report; `notes` say so), else the ratio of the two steps' medians."""
    comp = {c["batch_size"]: c for c in s.get("comparison") or []}
    if not comp:
        return {"prefill_speedup": s["prefill_tokens_per_s"] / b["prefill_tokens_per_s"],
                "decode_speedup": s["decode_tokens_per_s"] / b["decode_tokens_per_s"]}
    one = comp.get(s.get("batch_size")) or next(iter(comp.values()))
    out = {"prefill_speedup": one.get("prefill_speedup"), "decode_speedup": one.get("decode_speedup")}
    serving = comp.get(s.get("serving_batch_size"))
    if serving is not None and serving is not one:
        out["serving_decode_speedup"] = serving.get("decode_speedup")
    notes = [c["note"] for c in comp.values() if c.get("note")]
    return out | ({"notes": notes} if notes else {})


def _layer_scores(plan: dict, store: Store) -> list[dict]:
    out = []
    for s in plan["steps"]:
        if s["kind"] != "score" or not store.is_done(s["id"]):
            continue
        data = json.loads((store.step_dir(s["id"]) / "scores.json").read_text())
        out.append({"label": s["label"], "method": data.get("method"), "num_drop": data["params"]["num_drop"],
                    "scores": data.get("scores"), "drop": data.get("drop"),
                    **({"stability": data["stability"]} if "stability" in data else {})})
    return out


def _diagnostics(done: list[dict], store: Store) -> list[dict]:
    """Mean per-doc generation diagnostics (Rep-n, Self-BLEU, bracket errors, ...) per model and task."""
    out = []
    for v in done:
        for f in sorted(store.step_dir(v["eval"]).glob("samples_*.jsonl")):
            sums: dict[str, list[float]] = defaultdict(list)
            with open(f) as fh:
                for line in fh:
                    for key, val in _flat(json.loads(line).get("diagnostics") or {}).items():
                        sums[key].append(val)
            if sums:
                out.append({k: v[k] for k in ("model", "criterion", "num_drop", "ratio", "arm")}
                           | {"task": f.stem[len("samples_"):], **{k: float(np.mean(x)) for k, x in sums.items()}})
    return out


def _flat(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out
