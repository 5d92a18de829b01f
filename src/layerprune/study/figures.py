"""One function per report figure; each takes the analysis summary and returns a matplotlib Figure (no pyplot
global state, Agg backend), or None when the study has nothing to draw for it.

Conventions shared by every figure, so a new criterion or healing arm needs no code here:
- colours come from one mapping, `colour(name)`: fixed for the names the package ships, a stable hash into a
  20-colour palette for any other, so a criterion or arm has the same colour in every figure and every report;
- task types are told apart by line style, measurements (decode, prefill, per answer) by marker/line style;
- every y axis has a plausible range (`_Axis`): the axis fits the data inside it, and a value outside is drawn
  at the edge with a triangle and listed under the figure and in `fig.offscale` (the report repeats the list),
  so one absurd number (a speedup of 10⁸) never squashes the rest into a flat line;
- figures are drawn at the pixel width the HTML shows them (`WIDTH_IN` × `DPI` ≈ 1000 px), so text stays readable.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

DPI = 100
WIDTH_IN = 10.0
_FONT = {"font.size": 9}

# Names the package ships; anything else gets a stable hashed colour from tab20 (see `colour`).
_COLOURS = {
    # criteria
    "reverse": "#1f77b4", "bi": "#d62728", "angular": "#2ca02c", "cosine_block": "#17becf", "ppl": "#bcbd22",
    "taylor": "#8c564b", "sleb": "#e377c2", "task_iterative": "#7f7f7f", "random": "#aec7e8",
    # healing arms
    "none": "#555555", "original": "#ff7f0e", "sgr": "#9467bd", "kd": "#1f9e89", "linear": "#b8860b",
    "linear+sgr": "#c71585", "partial": "#6b8e23", "lm": "#4682b4",
}
_KIND_STYLE = {"classification": "-", "generative": "--"}
_MEASURE_STYLE = {"ideal_speedup": ":", "decode_speedup": "-", "prefill_speedup": "--"}


def colour(name: str | None) -> str:
    """The one colour of a criterion or healing arm, identical across figures and studies."""
    name = str(name)
    if name in _COLOURS:
        return _COLOURS[name]
    r, g, b, _ = colormaps["tab20"](zlib.crc32(name.encode()) % 20)
    return f"#{int(255 * r):02x}{int(255 * g):02x}{int(255 * b):02x}"


def _kind_style(kind: str) -> str:
    return _KIND_STYLE.get(kind, ":")


class _Axis:
    """A y range that fits the data but never leaves [lo, hi]; values outside are clipped, marked and listed."""

    def __init__(self, lo: float, hi: float, what: str):
        self.lo, self.hi, self.what = lo, hi, what
        self.notes: list[str] = []

    def limits(self, values) -> tuple[float, float]:
        v = np.asarray([x for x in values if x is not None], dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return self.lo, self.hi
        lo, hi = max(self.lo, float(v.min())), min(self.hi, float(v.max()))
        pad = 0.06 * (hi - lo) if hi > lo else 0.1
        return max(self.lo, lo - pad), min(self.hi, hi + pad)

    def plot(self, ax, x, y, label: str, where: str, **kw) -> None:
        """ax.plot with y clipped to the axis' limits; clipped points get a ▲/▼ at the edge and a note."""
        lo, hi = ax.get_ylim()
        y = np.asarray([np.nan if v is None else v for v in y], dtype=float)
        ax.plot(x, np.clip(y, lo, hi), label=label, **kw)
        for xi, yi in zip(x, y):
            if np.isfinite(yi) and not lo <= yi <= hi:
                ax.plot([xi], [hi if yi > hi else lo], marker="^" if yi > hi else "v", ms=9, color=kw.get("color"),
                        markeredgecolor="black", zorder=5, clip_on=False)
                self.notes.append(f"{self.what} {yi:.3g} ({where}, {label}, x={xi:.2f})")


def _figure(rows: int, height_per_row: float) -> Figure:
    fig = Figure(figsize=(WIDTH_IN, 0.4 + height_per_row * rows), dpi=DPI, layout="constrained")
    fig.offscale = []  # type: ignore[attr-defined]
    return fig


def _finish(fig: Figure, axes: list[_Axis]) -> Figure:
    notes = [n for a in axes for n in a.notes]
    fig.offscale = notes  # type: ignore[attr-defined]
    if notes:
        more = f" (+{len(notes) - 3} more)" if len(notes) > 3 else ""
        fig.supxlabel("▲▼ off scale, drawn at the edge: " + "; ".join(notes[:3]) + more, fontsize=7, color="#b00")
    return fig


def _grid(fig: Figure, n: int, cols: int = 3, sharey: bool = True):
    ncols = min(cols, n)
    nrows = -(-n // ncols)
    axes = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _legend(fig: Figure, colours: dict[str, str], styles: dict[str, str]) -> None:
    handles = [Line2D([], [], color=c, lw=2, label=n) for n, c in colours.items()]
    handles += [Line2D([], [], color="black", ls=s, label=n) for n, s in styles.items()]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)


def arms_in_order(rows: list[dict]) -> list[str]:
    """Healing arms as they first appear (the plan keeps the config's order), unhealed first."""
    seen = list(dict.fromkeys(r["arm"] for r in rows))
    return sorted(seen, key=lambda a: (a != "none", seen.index(a)))


def retention_vs_ratio(summary: dict, model: str) -> Figure | None:
    rows = [r for r in summary["retention"] if r["model"] == model]
    if not rows:
        return None
    arms = arms_in_order(rows)
    with _rc():
        fig = _figure(-(-len(arms) // 3), 2.9)
        axes = _grid(fig, len(arms))
        yaxis = _Axis(0.0, 1.5, "retention")
        lim = yaxis.limits([1.0, summary["threshold"]]
                           + [r["retention"][k] for r in rows for k in ("value", "lo", "hi")])
        crits = list(dict.fromkeys(r["criterion"] for r in rows))
        kinds = list(dict.fromkeys(r["kind"] for r in rows))
        for ax, arm in zip(axes, arms):
            ax.set_ylim(*lim)
            series = defaultdict(list)
            for r in rows:
                if r["arm"] == arm:
                    series[(r["criterion"], r["kind"])].append((r["ratio"], r["retention"]))
            for (crit, kind), pts in series.items():
                pts.sort(key=lambda p: p[0])
                x = [0.0] + [p[0] for p in pts]
                est = [{"value": 1.0, "lo": 1.0, "hi": 1.0}] + [p[1] for p in pts]
                c = colour(crit)
                yaxis.plot(ax, x, [e["value"] for e in est], f"{crit} · {kind}", f"healing {arm}", color=c,
                           ls=_kind_style(kind), marker="o", ms=3.5)
                ax.fill_between(x, np.clip(_arr(est, "lo"), *lim), np.clip(_arr(est, "hi"), *lim), color=c, alpha=0.1)
            ax.axhline(summary["threshold"], color="grey", lw=0.8, ls=":")
            ax.set_title(f"healing: {arm}", fontsize=9)
            ax.set_xlabel("share of layers removed")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("retention (pruned / baseline)")
        _legend(fig, {c: colour(c) for c in crits}, {k: _kind_style(k) for k in kinds}
                | {f"{summary['threshold']:.0%} threshold": ":"})
        return _finish(fig, [yaxis])


def _arr(est: list[dict], key: str) -> np.ndarray:
    return np.asarray([np.nan if e[key] is None else e[key] for e in est], dtype=float)


def healing_gain(summary: dict, model: str) -> Figure | None:
    rows = [r for r in summary["retention"] if r["model"] == model and "recovery" in r]
    if not rows:
        return None
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    arms = arms_in_order(rows)
    with _rc():
        fig = _figure(1, 2.9)
        axes = _grid(fig, len(kinds), cols=len(kinds))
        yaxis = _Axis(-1.0, 1.5, "recovery")
        lim = yaxis.limits([0.0] + [r["recovery"][k] for r in rows for k in ("value", "lo", "hi")])
        for ax, kind in zip(axes, kinds):
            ax.set_ylim(*lim)
            sub = [r for r in rows if r["kind"] == kind]
            cuts = sorted({(r["criterion"], r["num_drop"]) for r in sub}, key=lambda c: (str(c[0]), c[1]))
            width = 0.8 / max(1, len(arms))
            for j, arm in enumerate(arms):
                est = [next((r["recovery"] for r in sub if (r["criterion"], r["num_drop"]) == c and r["arm"] == arm),
                            {"value": np.nan, "lo": np.nan, "hi": np.nan}) for c in cuts]
                x = np.arange(len(cuts)) + j * width
                y, lo_, hi_ = (np.clip(_arr(est, k), *lim) for k in ("value", "lo", "hi"))
                err = np.nan_to_num([np.maximum(0, y - lo_), np.maximum(0, hi_ - y)])
                ax.bar(x, y, width, yerr=err, color=colour(arm), capsize=2, label=arm)
                for xi, e in zip(x, est):
                    v = e["value"]
                    if v is not None and np.isfinite(v) and not lim[0] <= v <= lim[1]:
                        ax.plot([xi], [lim[1] if v > lim[1] else lim[0]], marker="^" if v > lim[1] else "v", ms=9,
                                color=colour(arm), markeredgecolor="black", clip_on=False)
                        yaxis.notes.append(f"recovery {v:.3g} ({kind}, {arm}, x={xi:.2f})")
            ax.set_xticks(np.arange(len(cuts)) + 0.4 - width / 2, [f"{c}\nn={n}" for c, n in cuts], fontsize=7)
            ax.axhline(0, color="black", lw=0.6)
            ax.set_title(f"{kind}: recovery by healing arm", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("recovery\n(healed−pruned)/(base−pruned)")
        _legend(fig, {a: colour(a) for a in arms}, {})
        return _finish(fig, [yaxis])


DIAG_KEYS = ("rep_2", "rep_4", "self_bleu4", "bracket_error_share", "balanced_rate", "wrong_step_share")


def diagnostics_vs_ratio(summary: dict, model: str) -> Figure | None:
    rows = [d for d in summary["diagnostics"] if d["model"] == model and d["arm"] == "none"]
    keys = [k for k in DIAG_KEYS if any(k in d for d in rows)]
    if not rows or not keys:
        return None
    tasks = list(dict.fromkeys(d["task"] for d in rows))
    styles = dict(zip(tasks, ["-", "--", ":", "-."] * len(tasks)))
    crits = list(dict.fromkeys(d["criterion"] for d in rows if d["criterion"] is not None))
    with _rc():
        fig = _figure(-(-len(keys) // 3), 2.5)
        axes = _grid(fig, len(keys), sharey=False)
        for ax, key in zip(axes, keys):
            base = {d["task"]: d[key] for d in rows if d["criterion"] is None and key in d}
            for task in tasks:
                for crit in crits:
                    pts = sorted((d["ratio"], d[key]) for d in rows if d["task"] == task and d["criterion"] == crit
                                 and key in d)
                    if task in base:
                        pts = [(0.0, base[task])] + pts
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=colour(crit),
                                ls=styles[task])
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("share of layers removed")
            ax.grid(alpha=0.3)
        _legend(fig, {c: colour(c) for c in crits}, styles)
        return fig


def layer_scores(summary: dict, model: str) -> Figure | None:
    rows = [r for r in summary["layer_scores"] if r["label"].split(" ", 1)[1].startswith(f"{model}/")
            and isinstance(r["scores"], list) and r["scores"]]
    if not rows:
        return None
    with _rc():
        fig = _figure(1, 2.8)
        ax = fig.subplots()
        seen = set()
        for r in rows:
            if r["method"] in seen:
                continue
            seen.add(r["method"])
            s = np.asarray([np.nan if v is None else v for v in r["scores"]], dtype=float)
            rng = np.nanmax(s) - np.nanmin(s)
            ax.plot(np.arange(len(s)), (s - np.nanmin(s)) / (rng if rng else 1), marker=".", label=r["method"],
                    color=colour(r["method"]))
        ax.set_xlabel("layer (or block start)")
        ax.set_ylabel("score, min-max normalised")
        ax.grid(alpha=0.3)
        _legend(fig, {m: colour(m) for m in seen}, {})
        return fig


def speed_keys(rows: list[dict]) -> list[str]:
    """Every `*_speedup` measurement present (decode, prefill, and e.g. per answer when the speed step wrote it)."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k.endswith("_speedup")))
    return sorted(keys, key=lambda k: (k != "ideal_speedup", k not in _MEASURE_STYLE, k))


def speedup(summary: dict, model: str) -> Figure | None:
    rows = [r for r in summary["speed"] if r["model"] == model]
    if not rows:
        return None
    keys = speed_keys(rows)
    extra = iter(["-.", (0, (5, 1, 1, 1)), (0, (1, 3))] * len(keys))
    styles = {k: _MEASURE_STYLE.get(k) or next(extra) for k in keys}
    ideal = [r.get("ideal_speedup") for r in rows]
    top = max([2.0] + [2.0 * v for v in ideal if isinstance(v, (int, float)) and np.isfinite(v)])
    crits = list(dict.fromkeys(r["criterion"] for r in rows))
    with _rc():
        fig = _figure(1, 3.0)
        ax = fig.subplots()
        yaxis = _Axis(0.0, top, "speedup")
        ax.set_ylim(*yaxis.limits([1.0] + [r.get(k) for r in rows for k in keys]))
        for crit in crits:
            sub = sorted((r for r in rows if r["criterion"] == crit), key=lambda r: r["ratio"])
            for key in keys:
                yaxis.plot(ax, [0.0] + [r["ratio"] for r in sub], [1.0] + [_num(r.get(key)) for r in sub],
                           key.removesuffix("_speedup"), crit, color=colour(crit), ls=styles[key], marker="o", ms=3.5)
        ax.set_xlabel("share of layers removed")
        ax.set_ylabel("speedup vs baseline (×)")
        ax.grid(alpha=0.3)
        _legend(fig, {c: colour(c) for c in crits}, {k.removesuffix("_speedup"): styles[k] for k in keys})
        return _finish(fig, [yaxis])


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def _rc():
    """Font size for the figures built inside it (no pyplot global state)."""
    return rc_context(_FONT)


FIGURES = {
    "retention": retention_vs_ratio,
    "healing_gain": healing_gain,
    "diagnostics": diagnostics_vs_ratio,
    "layer_scores": layer_scores,
    "speedup": speedup,
}
