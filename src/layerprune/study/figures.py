"""One function per report figure; each takes the analysis summary and returns a matplotlib Figure (no pyplot
global state, Agg backend), or None when the study has nothing to draw for it."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from matplotlib.figure import Figure

_STYLE = {"classification": "-", "generative": "--"}


def retention_vs_ratio(summary: dict, model: str) -> Figure | None:
    rows = [r for r in summary["retention"] if r["model"] == model]
    arms = sorted({r["arm"] for r in rows}, key=lambda a: (a != "none", a))
    if not rows:
        return None
    fig = Figure(figsize=(4.2 * len(arms), 3.6), layout="constrained")
    axes = fig.subplots(1, len(arms), sharey=True, squeeze=False)[0]
    for ax, arm in zip(axes, arms):
        series = defaultdict(list)
        for r in rows:
            if r["arm"] == arm:
                series[(r["criterion"], r["kind"])].append((r["ratio"], r["retention"]))
        for i, ((crit, kind), pts) in enumerate(sorted(series.items())):
            pts.sort(key=lambda p: p[0])
            x = [0.0] + [p[0] for p in pts]
            y = [1.0] + [p[1]["value"] for p in pts]
            lo = [1.0] + [p[1]["lo"] for p in pts]
            hi = [1.0] + [p[1]["hi"] for p in pts]
            color = f"C{sorted({c for c, _ in series}).index(crit)}"
            ax.plot(x, y, _STYLE[kind], marker="o", color=color, label=f"{crit} · {kind}")
            ax.fill_between(x, lo, hi, color=color, alpha=0.12)
        ax.axhline(summary["threshold"], color="grey", lw=0.8, ls=":")
        ax.set_title(f"{model} — healing: {arm}")
        ax.set_xlabel("share of layers removed")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("retention (pruned / baseline)")
    axes[-1].legend(fontsize=7)
    return fig


def healing_gain(summary: dict, model: str) -> Figure | None:
    rows = [r for r in summary["retention"] if r["model"] == model and "recovery" in r]
    if not rows:
        return None
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind in zip(axes, ("classification", "generative")):
        sub = [r for r in rows if r["kind"] == kind]
        cuts = sorted({(r["criterion"], r["num_drop"]) for r in sub})
        arms = sorted({r["arm"] for r in sub})
        width = 0.8 / max(1, len(arms))
        for j, arm in enumerate(arms):
            vals = [next((r["recovery"] for r in sub if (r["criterion"], r["num_drop"]) == c and r["arm"] == arm), None)
                    for c in cuts]
            x = np.arange(len(cuts)) + j * width
            y = [v["value"] if v else np.nan for v in vals]
            err = [[max(0, v["value"] - v["lo"]) if v else 0 for v in vals], [max(0, v["hi"] - v["value"]) if v else 0 for v in vals]]
            ax.bar(x, y, width, yerr=np.nan_to_num(err), label=arm, color=f"C{j + 2}", capsize=2)
        ax.set_xticks(np.arange(len(cuts)) + 0.4 - width / 2, [f"{c}\nn={n}" for c, n in cuts], fontsize=7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{kind}: recovery by healing arm")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("recovery (healed−pruned)/(base−pruned)")
    axes[-1].legend(fontsize=7)
    return fig


DIAG_KEYS = ("rep_2", "rep_4", "self_bleu4", "bracket_error_share", "balanced_rate", "wrong_step_share")


def diagnostics_vs_ratio(summary: dict, model: str) -> Figure | None:
    rows = [d for d in summary["diagnostics"] if d["model"] == model and d["arm"] == "none"]
    keys = [k for k in DIAG_KEYS if any(k in d for d in rows)]
    if not rows or not keys:
        return None
    fig = Figure(figsize=(3.4 * len(keys), 3.2), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        series = defaultdict(list)
        for d in rows:
            if key in d:
                series[(d["task"], d["criterion"])].append((d["ratio"], d[key]))
        for (task, crit), pts in sorted(series.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{task} · {crit or 'baseline'}")
        ax.set_title(key)
        ax.set_xlabel("share of layers removed")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=6)
    return fig


def layer_scores(summary: dict, model: str) -> Figure | None:
    rows = [r for r in summary["layer_scores"] if r["label"].split(" ", 1)[1].startswith(f"{model}/")
            and isinstance(r["scores"], list) and r["scores"]]
    if not rows:
        return None
    fig = Figure(figsize=(7, 3.4), layout="constrained")
    ax = fig.subplots()
    seen = set()
    for r in rows:
        if r["method"] in seen:
            continue
        seen.add(r["method"])
        s = np.asarray([np.nan if v is None else v for v in r["scores"]], dtype=float)
        rng = np.nanmax(s) - np.nanmin(s)
        ax.plot(np.arange(len(s)), (s - np.nanmin(s)) / (rng if rng else 1), marker=".", label=r["method"])
    ax.set_xlabel("layer (or block start)")
    ax.set_ylabel("score, min-max normalised")
    ax.set_title(f"{model}: per-layer scores by criterion")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def speedup(summary: dict, model: str) -> Figure | None:
    rows = sorted((r for r in summary["speed"] if r["model"] == model), key=lambda r: r["ratio"])
    if not rows:
        return None
    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.subplots()
    x = [0] + [r["ratio"] for r in rows]
    for key, label in (("ideal_speedup", "ideal"), ("decode_speedup", "measured decode"),
                       ("prefill_speedup", "measured prefill")):
        ax.plot(x, [1.0] + [r[key] for r in rows], marker="o", label=label, ls="--" if key == "ideal_speedup" else "-")
    ax.set_xlabel("share of layers removed")
    ax.set_ylabel("speedup vs baseline")
    ax.set_title(f"{model}: measured vs ideal speedup")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


FIGURES = {
    "retention": retention_vs_ratio,
    "healing_gain": healing_gain,
    "diagnostics": diagnostics_vs_ratio,
    "layer_scores": layer_scores,
    "speedup": speedup,
}
