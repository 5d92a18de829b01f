"""The report's evidence on *where* generative reasoning breaks, beyond greedy accuracy: test-time scaling curves,
length and cost per answer, selection stability over calibration draws, and iterative vs one-shot schedules.

Each function takes the analysis summary (`analysis.analyze`) and returns report blocks (tables) or a Figure; a
study without the data returns nothing, so these sections appear only where the study measured them. Colours
come from `figures.colour`, so a criterion or arm looks the same here as in every other figure.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from layerprune.study.figures import _Axis, _figure, _finish, _grid, _legend, _rc, colour
from layerprune.study.narrative import verdict
from layerprune.study.tables import cell

Block = tuple


def variant_name(r: dict) -> str:
    """'baseline', 'bi 33% (4)', 'bi 33% (4) · sgr'."""
    if r["criterion"] is None:
        return "baseline"
    cut = f"{r['criterion']} {r['ratio']:.0%} ({r['num_drop']})"
    return cut if r["arm"] == "none" else f"{cut} · {r['arm']}"


# ---- test-time scaling ----

def scaling_figure(summary: dict, model: str) -> Figure | None:
    """pass@k vs k (log2 axis), one panel per sampled task; baseline in black, variants in their criterion's colour
    (dashed when healed)."""
    rows = [r for r in summary.get("scaling", []) if r["model"] == model]
    tasks = list(dict.fromkeys(t for r in rows for t in r["tasks"]))
    if not rows or not tasks:
        return None
    with _rc():
        fig = _figure(-(-len(tasks) // 3), 2.8)
        axes = _grid(fig, len(tasks))
        yaxis = _Axis(0.0, 1.0, "pass@k")
        for ax, task in zip(axes, tasks):
            ax.set_ylim(0.0, 1.02)
            for r in rows:
                curve = r["tasks"].get(task, {}).get("pass")
                if not curve:
                    continue
                ks = sorted(curve, key=int)
                style = dict(color="black" if r["criterion"] is None else colour(r["criterion"]),
                             ls="-" if r["arm"] == "none" else "--", marker="o", ms=3)
                yaxis.plot(ax, [int(k) for k in ks], [curve[k] for k in ks], variant_name(r), task, **style)
            ax.set_xscale("log", base=2)
            ax.set_title(task, fontsize=9)
            ax.set_xlabel("samples k")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("pass@k")
        crits = {"baseline": "black"} | {r["criterion"]: colour(r["criterion"]) for r in rows if r["criterion"]}
        _legend(fig, crits, {"pruned": "-", "healed": "--"})
        return _finish(fig, [yaxis])


def scaling_table(summary: dict) -> list[Block]:
    """Per variant and task: pass@1, pass@N, maj@N (%); the variant's scaling gap in points [CI] (one number
    over its generative tasks, study/scaling.py) on its first row."""
    body = []
    for r in summary.get("scaling", []):
        gap = r.get("gap")
        for i, (task, c) in enumerate(r["tasks"].items()):
            n = max(c["pass"], key=int)
            maj = c.get("maj", {}).get(n)
            body.append([r["model"], variant_name(r), task, f"{100 * c['pass']['1']:.0f}", f"{100 * c['pass'][n]:.0f}",
                         "" if maj is None else f"{100 * maj:.0f}", n,
                         cell(gap, signed=True) if gap and i == 0 else ""])
    head = ["model", "variant", "task", "pass@1", "pass@N", "maj@N", "N", "scaling gap (points, mean over tasks)"]
    return [("table", head, body)] if body else []


# ---- length and cost per answer ----

def answers_table(summary: dict) -> list[Block]:
    body = []
    for r in summary.get("answers", []):
        hits = [t["hit_limit"] for t in r["tasks"].values() if t.get("hit_limit") is not None]
        body.append([r["model"], variant_name(r), f"{r['tokens_per_answer']:.1f}",
                     f"{100 * max(hits):.0f}" if hits else "",
                     _x(r.get("length_ratio")), _x(r.get("per_token_speedup")), _x(r.get("per_answer_speedup"))])
    head = ["model", "variant", "tokens / answer", "hit limit % (worst task)", "length vs baseline ×",
            "per-token speedup ×", "per-answer speedup ×"]
    return [("table", head, body)] if body else []


def _x(v) -> str:
    return "" if v is None or v != v else f"{v:.2f}"


# ---- selection stability ----

def stability_table(summary: dict) -> list[Block]:
    body = []
    for r in summary.get("layer_scores", []):
        st = r.get("stability")
        if not st:
            continue
        for size, ov in st["overlap"].items():
            flag = "UNSTABLE" if size in st["unstable"] else "stable"
            body.append([r["label"].split(" ", 1)[1], size, len(st["seeds"]), f"{ov['mean']:.2f}", f"{ov['min']:.2f}",
                         f"{flag} (threshold {st['threshold']:.2f})"])
    head = ["scoring", "layers dropped", "draws", "mean overlap", "min overlap", "verdict"]
    return [("table", head, body)] if body else []


def stability_figure(summary: dict, model: str) -> Figure | None:
    """Heat-map: how often each layer is chosen, one row per criterion × size."""
    rows = [r for r in summary.get("layer_scores", []) if r.get("stability")
            and r["label"].split(" ", 1)[1].startswith(f"{model}/")]
    if not rows:
        return None
    labels, grid = [], []
    for r in rows:
        for size, freq in r["stability"]["frequency"].items():
            labels.append(f"{r['method']} · drop {size}")
            grid.append(freq)
    width = max(len(f) for f in grid)
    data = np.full((len(grid), width), np.nan)
    for i, f in enumerate(grid):
        data[i, :len(f)] = f
    with _rc():
        fig = _figure(1, 0.5 + 0.35 * len(labels))
        ax = fig.subplots()
        im = ax.imshow(data, vmin=0, vmax=1, cmap="Blues", aspect="auto")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, label="share of draws that drop it")
        return fig


# ---- iterative vs one-shot ----

def schedules_table(summary: dict) -> list[Block]:
    body = []
    for r in summary.get("schedules", []):
        d = r["iterative_minus_oneshot"]
        v = {1: "iterative better", -1: "one-shot better", 0: "cannot tell"}[verdict(d)]
        sched = r.get("schedule") or {}
        body.append([r["model"], r["criterion"], f"{r['ratio']:.0%} ({r['num_drop']})", r["arm"], r["kind"],
                     f"{sched.get('rounds', '')} × {sched.get('step', '')}", sched.get("heal_budget", ""),
                     f"{v} · {cell(d, signed=True)}"])
    head = ["model", "criterion", "removed", "healing", "task type", "rounds × layers", "healing budget (each)",
            "iterative − one-shot retention, points [CI]"]
    return [("table", head, body)] if body else []


FIGURES = {"scaling": scaling_figure, "stability": stability_figure}
