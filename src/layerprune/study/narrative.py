"""Plain-language findings from the analysis summary, stated with their intervals, whatever they show.

Three questions from the paper: does classification retain more than generative reasoning after pruning; does
SGR healing recover more than healing on the dataset's original responses (judged on the paired bootstrap CI of
the difference); does retention fall at higher ratios. Each answer says when the data cannot tell instead of
claiming a difference.
"""

from __future__ import annotations

from collections import defaultdict


def _fmt(e: dict) -> str:
    if e["value"] != e["value"]:
        return "n/a (undefined: no difference to divide by)"
    if e["lo"] != e["lo"]:
        return f"{100 * e['value']:.0f}%"
    return f"{100 * e['value']:.0f}% [{100 * e['lo']:.0f}, {100 * e['hi']:.0f}]"


def _compare(a: dict, b: dict) -> str:
    """'higher' / 'lower' when the intervals do not overlap, else 'not distinguishable'."""
    if a["lo"] == a["lo"] and b["lo"] == b["lo"]:
        if a["lo"] > b["hi"]:
            return "higher"
        if a["hi"] < b["lo"]:
            return "lower"
    return "not distinguishable"


def findings(s: dict) -> list[str]:
    details = _kind_gap(s) + _sgr_vs_original(s) + _ratio_trend(s)
    if not details:
        return ["Not enough finished evaluations to compare anything yet."]
    return _overview(s) + details


def _overview(s: dict) -> list[str]:
    """One line per question: how many comparisons came out which way."""
    out = []
    gaps = [line for line in _kind_gap(s)]
    if gaps:
        more = sum("retains more than" in line for line in gaps)
        out.append(f"Overview — classification vs. generative: classification retained more in {more} of "
                   f"{len(gaps)} pruned models (non-overlapping 95% intervals); see the lines below.")
    sgr = [g["gap"] for g in s.get("sgr_vs_original", [])]
    if sgr:
        better = sum(g["lo"] == g["lo"] and g["lo"] > 0 for g in sgr)
        worse = sum(g["hi"] == g["hi"] and g["hi"] < 0 for g in sgr)
        out.append(f"Overview — SGR vs. original responses: SGR recovered more in {better}, original responses in "
                   f"{worse}, and the data could not tell in {len(sgr) - better - worse} of {len(sgr)} comparisons "
                   "(paired bootstrap CI of the recovery difference).")
    return out + _best_arms(s)


def _best_arms(s: dict) -> list[str]:
    """Per (model, layers removed, task type): the arm (with its criterion) of highest retention, and the arms of
    the same cut whose intervals overlap it (not distinguishable on this data)."""
    cuts = defaultdict(lambda: defaultdict(dict))  # (model, n, ratio, kind) → criterion → arm → estimate
    for r in s["retention"]:
        if r["criterion"] is not None and r["retention"]["value"] == r["retention"]["value"]:
            cuts[(r["model"], r["num_drop"], r["ratio"], r["kind"])][r["criterion"]][r["arm"]] = r["retention"]
    out = []
    for (model, n, ratio, kind), by_crit in sorted(cuts.items()):
        if max(len(arms) for arms in by_crit.values()) < 2:
            continue
        pairs = [(c, a) for c, arms in by_crit.items() for a in arms]
        crit, arm = max(pairs, key=lambda ca: by_crit[ca[0]][ca[1]]["value"])
        best = by_crit[crit][arm]
        ties = [a for a, e in by_crit[crit].items() if a != arm and _compare(best, e) == "not distinguishable"]
        tail = (f"not distinguishable from {', '.join(ties)} at that cut" if ties
                else "above every other arm at that cut (non-overlapping intervals)")
        out.append(f"Overview — best arm, {model}, {n} layers removed ({ratio:.0%}), {kind}: {arm} ({crit}) "
                   f"retains {_fmt(best)}; {tail}.")
    return out


def _kind_gap(s: dict) -> list[str]:
    rows = defaultdict(dict)
    for r in s["retention"]:
        if r["arm"] == "none":
            rows[(r["model"], r["criterion"], r["num_drop"], r["ratio"])][r["kind"]] = r["retention"]
    out = []
    for (model, crit, n, ratio), kinds in sorted(rows.items()):
        if {"classification", "generative"} <= kinds.keys():
            c, g = kinds["classification"], kinds["generative"]
            verdict = {"higher": "retains more than", "lower": "retains less than",
                       "not distinguishable": "is not distinguishable from"}[_compare(c, g)]
            out.append(f"{model}, {crit}, {n} layers removed ({ratio:.0%}): classification retention {_fmt(c)} "
                       f"{verdict} generative retention {_fmt(g)}.")
    return out


def _sgr_vs_original(s: dict) -> list[str]:
    rec = defaultdict(dict)
    for r in s["retention"]:
        if "recovery" in r:
            rec[(r["model"], r["criterion"], r["num_drop"], r["kind"])][r["arm"]] = r["recovery"]
    out = []
    for g in s.get("sgr_vs_original", []):
        arms = rec[(g["model"], g["criterion"], g["num_drop"], g["kind"])]
        gap = g["gap"]
        if gap["lo"] == gap["lo"] and gap["lo"] > 0:
            verdict = "SGR recovers more"
        elif gap["hi"] == gap["hi"] and gap["hi"] < 0:
            verdict = "original responses recover more"
        else:
            verdict = "no difference the data can resolve"
        out.append(f"{g['model']}, {g['criterion']}, {g['num_drop']} layers, {g['kind']}: recovery with SGR "
                   f"{_fmt(arms['sgr'])} vs. original responses {_fmt(arms['original'])}; paired difference "
                   f"{_fmt(gap)} — {verdict}.")
    return out


def _ratio_trend(s: dict) -> list[str]:
    series = defaultdict(list)
    for r in s["retention"]:
        series[(r["model"], r["criterion"], r["arm"], r["kind"])].append((r["ratio"], r["retention"]))
    out = []
    for (model, crit, arm, kind), pts in sorted(series.items()):
        if len(pts) < 2:
            continue
        pts.sort(key=lambda p: p[0])
        (r0, e0), (r1, e1) = pts[0], pts[-1]
        trend = {"higher": "falls", "lower": "rises", "not distinguishable": "does not change distinguishably"}
        out.append(f"{model}, {crit}, healing {arm}, {kind}: retention {trend[_compare(e0, e1)]} from "
                   f"{_fmt(e0)} at {r0:.0%} to {_fmt(e1)} at {r1:.0%} of layers removed.")
    return out
