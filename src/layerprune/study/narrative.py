"""The report's answer in words: a one-line scale of the study and a headline of at most five sentences, every
number taken from the analysis summary (the tables carry the rest; sentences are only for conclusions).

The headline answers, where the data can:
1. the safe depth per task type — the largest share of layers removed with retention's CI lower bound ≥ the
   threshold at that ratio and every smaller one, the criterion and healing arm that reach it, and its interval;
2. how far classification and generative retention differ without healing at the tested ratios;
3. which healing arm recovers most, counting only paired comparisons whose interval excludes 0.
With several models, each sentence lists every model; a question the data cannot answer is left out or says so.
"""

from __future__ import annotations

from collections import defaultdict

from layerprune.study.figures import arms_in_order


def pct(e: dict) -> str:
    """'82% [78, 87]', '82%' without an interval, 'n/a' when undefined."""
    v, lo, hi = e["value"], e.get("lo"), e.get("hi")
    if v is None or v != v:
        return "n/a"
    if lo is None or lo != lo:
        return f"{100 * v:.0f}%"
    return f"{100 * v:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def verdict(gap: dict) -> int:
    """+1 when the interval lies above 0, −1 below, 0 when it crosses 0 (or is undefined): cannot tell."""
    lo, hi = gap.get("lo"), gap.get("hi")
    if lo is not None and lo == lo and lo > 0:
        return 1
    if hi is not None and hi == hi and hi < 0:
        return -1
    return 0


def n_layers(s: dict, model: str) -> int | None:
    """The unpruned model's layer count, from any cut: num_drop / ratio."""
    for r in s["retention"]:
        if r["model"] == model and r["ratio"]:
            return round(r["num_drop"] / r["ratio"])
    return None


def scale_line(s: dict, name: str) -> str:
    """'demo — 1 model (testbed, 12 layers) · 3 criteria × 3 ratios (…) · 3 healing arms (…) · 6 tasks, 100
    documents each · 57 of 57 planned models evaluated'."""
    models = list(dict.fromkeys(v["model"] for v in s["tasks"]))
    crits = list(dict.fromkeys(v["criterion"] for v in s["tasks"] if v["criterion"] is not None))
    ratios = sorted({v["ratio"] for v in s["tasks"] if v["criterion"] is not None})
    arms = arms_in_order(s["tasks"]) if s["tasks"] else []
    tasks = {t: sc["n"] for v in s["tasks"] for t, sc in v["scores"].items()}
    docs = sorted(set(tasks.values()))
    ms = ", ".join(f"{m}, {n_layers(s, m)} layers" if n_layers(s, m) else m for m in models)
    doc = f"{docs[0]} documents each" if len(docs) == 1 else (f"{docs[0]}–{docs[-1]} documents" if docs else "")
    return (f"{name} — {len(models)} model{'s' * (len(models) != 1)} ({ms}) · {len(crits)} criteria × "
            f"{len(ratios)} ratios ({', '.join(f'{r:.0%}' for r in ratios)}) · {len(arms)} healing arms "
            f"({', '.join(arms)}) · {len(tasks)} task{'s' * (len(tasks) != 1)}, {doc} · {s['evaluated']} of "
            f"{s['variants']} planned models evaluated")


def headline(s: dict) -> list[str]:
    """At most five sentences answering how far the model(s) can be pruned; every number is in summary.json."""
    out = [t for kind in _kinds(s) if (t := _safe_sentence(s, kind))]
    out += [t for t in (_gap_sentence(s), _healing_sentence(s)) if t]
    return out[:5] or ["Not enough finished evaluations to answer anything yet."]


def _kinds(s: dict) -> list[str]:
    return list(dict.fromkeys(d["kind"] for d in s["safe_depth"]))


def _retention_at(s: dict, model: str, crit: str, arm: str, kind: str, ratio: float) -> dict | None:
    return next((r["retention"] for r in s["retention"] if (r["model"], r["criterion"], r["arm"], r["kind"]) ==
                 (model, crit, arm, kind) and abs(r["ratio"] - ratio) < 1e-9), None)


def _how(crit: str, arm: str) -> str:
    return f"{crit} without healing" if arm == "none" else f"{crit} healed with {arm}"


def _safe_sentence(s: dict, kind: str) -> str | None:
    models = list(dict.fromkeys(d["model"] for d in s["safe_depth"] if d["kind"] == kind))
    parts = []
    for m in models:
        rows = [d for d in s["safe_depth"] if d["model"] == m and d["kind"] == kind]
        best = max(d["safe_ratio"] for d in rows)
        prefix = f"{m}: " if len(models) > 1 else ""
        never = [c for c in dict.fromkeys(d["criterion"] for d in rows)
                 if all(d["safe_ratio"] == 0 for d in rows if d["criterion"] == c)]
        if best == 0:
            first = min(r for d in rows for r in d["ratios_tested"])
            cands = [(d, _retention_at(s, m, d["criterion"], d["arm"], kind, first)) for d in rows]
            d, e = max(cands, key=lambda c: _key(c[1]))
            there = f" (best there: {_how(d['criterion'], d['arm'])}, {pct(e)})" if e else ""
            parts.append(f"{prefix}no criterion or healing arm is safe even at {first:.0%} of layers removed{there}")
            continue
        ties = [(d, _retention_at(s, m, d["criterion"], d["arm"], kind, best)) for d in rows if d["safe_ratio"] == best]
        ties.sort(key=lambda c: _key(c[1]), reverse=True)
        d, e = ties[0]
        n = n_layers(s, m)
        layers = f" ({round(best * n)} of {n})" if n else ""
        more = (f"; {len(ties) - 1} other criterion/arm pair{'s reach' if len(ties) > 2 else ' reaches'} it too"
                if len(ties) > 1 else "")
        unsafe = (f"; {', '.join(never)} {'is' if len(never) == 1 else 'are'} not safe at any tested ratio"
                  if never else "")
        kept = f", retaining {pct(e)} of baseline" if e else ""
        parts.append(f"{prefix}up to {best:.0%} of layers{layers} can be removed with "
                     f"{_how(d['criterion'], d['arm'])}{kept}{more}{unsafe}")
    threshold = f" (retention CI lower bound ≥ {s['threshold']:.0%})"
    return f"{kind.capitalize()}{threshold}: " + "; ".join(parts) + "." if parts else None


def _key(e: dict | None) -> tuple:
    if not e or e["value"] != e["value"]:
        return (-1.0, -1.0)
    return (e["value"], e["lo"] if e["lo"] == e["lo"] else -1.0)


def _gap_sentence(s: dict) -> str | None:
    """Unhealed classification vs. generative retention at the same cuts."""
    cuts = defaultdict(dict)
    for r in s["retention"]:
        if r["arm"] == "none":
            cuts[(r["model"], r["criterion"], r["num_drop"])][r["kind"]] = (r["ratio"], r["retention"])
    pairs = [(k["classification"], k["generative"]) for k in cuts.values()
             if {"classification", "generative"} <= k.keys()]
    if not pairs:
        return None
    ratios = sorted({c[0] for c, _ in pairs})
    cv = sorted(c[1]["value"] for c, _ in pairs)
    gv = sorted(g[1]["value"] for _, g in pairs)
    higher = sum(c[1]["lo"] > g[1]["hi"] for c, g in pairs)
    lower = sum(c[1]["hi"] < g[1]["lo"] for c, g in pairs)
    span = _range(ratios)
    return (f"Without healing, at {span} of layers removed classification retains {_range(cv)} of baseline and "
            f"generative reasoning {_range(gv)}; classification retains more in {higher}, less in {lower} and "
            f"an indistinguishable amount in {len(pairs) - higher - lower} of {len(pairs)} cuts "
            f"(non-overlapping {s['confidence']:.0%} intervals).")


def _range(v: list[float]) -> str:
    return f"{100 * v[0]:.0f}%" if round(100 * v[0]) == round(100 * v[-1]) else f"{100 * v[0]:.0f}–{100 * v[-1]:.0f}%"


def _healing_sentence(s: dict) -> str | None:
    gaps = s.get("arm_gaps") or []
    if not gaps:
        rec = [r for r in s["retention"] if "recovery" in r]
        arms = arms_in_order(rec)
        if len(arms) != 1:
            return None
        up = sum(verdict(r["recovery"]) > 0 for r in rec)
        return (f"Healing with {arms[0]} recovers a share of the lost performance distinguishable from 0 in {up} of "
                f"{len(rec)} cuts and task types (recovery {_range(sorted(r['recovery']['value'] for r in rec))}).")
    wins, losses = defaultdict(int), defaultdict(int)
    for g in gaps:
        v = verdict(g["gap"])
        if v:
            wins[g["a"] if v > 0 else g["b"]] += 1
            losses[g["b"] if v > 0 else g["a"]] += 1
    arms = list(dict.fromkeys(a for g in gaps for a in (g["b"], g["a"])))
    told = sum(wins.values())
    n = len(gaps)
    if told == 0:
        return (f"Healing arms {_and(arms)} cannot be told apart: all {n} paired comparisons of their recovery "
                f"have an interval that includes 0.")
    net = {a: wins[a] - losses[a] for a in arms}
    top = max(net.values())
    best = [a for a in arms if net[a] == top]
    if len(best) > 1:
        return (f"No single best healing arm: {_and(best)} tie on paired comparisons won minus lost ({top}); "
                f"{n - told} of {n} comparisons cannot tell.")
    a = best[0]
    own = sum(a in (g["a"], g["b"]) for g in gaps)
    return (f"Best healing arm where the data can tell: {a}, which recovers more in {wins[a]} and less in "
            f"{losses[a]} of its {own} paired comparisons with {_and([x for x in arms if x != a])}; {n - told} of all "
            f"{n} comparisons cannot tell.")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
