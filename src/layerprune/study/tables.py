"""The report's tables, as ("table", header, rows) blocks built from the analysis summary.

Layout shared by the retention, recovery and arm-vs-arm tables: one row per criterion × ratio (× model when a study
has several), one column per task type × healing arm, value and interval in one cell ("82 [78, 87]", percent).
Columns come from the data, so a new criterion, arm or task type appears without code changes.
"""

from __future__ import annotations

from collections import defaultdict

from layerprune.study.figures import arms_in_order, speed_keys
from layerprune.study.narrative import n_layers, pct, retention_at, verdict

Block = tuple


def cell(e: dict | None, scale: float = 100.0, signed: bool = False) -> str:
    """'82 [78, 87]' (scaled), '82' without an interval, 'n/a' when undefined, '' when absent."""
    if e is None:
        return ""
    v, lo, hi = e["value"], e.get("lo"), e.get("hi")
    if v is None or v != v:
        return "n/a"
    def f(x: float) -> str:
        x = scale * x
        x = 0.0 if round(x) == 0 else x  # no "-0"
        return f"{x:+.0f}" if signed and x else f"{x:.0f}"

    if lo is None or lo != lo:
        return f(v)
    return f"{f(v)} [{f(lo)}, {f(hi)}]"


def _models(s: dict) -> list[str]:
    return list(dict.fromkeys(v["model"] for v in s["tasks"]))


def _lead(s: dict, model: str, crit: str) -> list:
    return ([model] if len(_models(s)) > 1 else []) + [crit]


def _lead_head(s: dict) -> list[str]:
    return (["model"] if len(_models(s)) > 1 else []) + ["criterion"]


def safe_depth_table(s: dict) -> Block:
    kinds = list(dict.fromkeys(d["kind"] for d in s["safe_depth"]))
    groups: dict[tuple, dict] = defaultdict(dict)
    for d in s["safe_depth"]:
        groups[(d["model"], d["criterion"], d["arm"])][d["kind"]] = d
    rows = []
    for (m, c, a), by_kind in groups.items():
        cells = []
        for k in kinds:
            d = by_kind.get(k)
            if d is None:
                cells.append("")
            elif d["safe_ratio"] == 0:
                first = min(d["ratios_tested"])
                est = retention_at(s, m, c, a, k, first)
                cells.append(f"not safe · at {first:.0%}: {pct(est)}" if est else "not safe")
            else:
                n = n_layers(s, m)
                est = retention_at(s, m, c, a, k, d["safe_ratio"])
                layers = f" ({round(d['safe_ratio'] * n)}/{n})" if n else ""
                cells.append(f"{d['safe_ratio']:.0%}{layers}" + (f" · {pct(est)}" if est else ""))
        rows.append(_lead(s, m, c) + [a] + cells)
    return ("table", _lead_head(s) + ["healing"] + kinds, rows)


def _grid(s: dict, rows_in: list[dict], value) -> list[Block]:
    """Rows criterion × ratio, columns task type × arm; value(row) → cell text."""
    arms = arms_in_order(rows_in)
    kinds = list(dict.fromkeys(r["kind"] for r in rows_in))
    cols = [(k, a) for k in kinds for a in arms if any(r["kind"] == k and r["arm"] == a for r in rows_in)]
    grid: dict[tuple, dict] = defaultdict(dict)
    for r in rows_in:
        grid[(r["model"], r["criterion"], r["num_drop"], r["ratio"])][(r["kind"], r["arm"])] = value(r)
    body = [_lead(s, m, c) + [f"{ratio:.0%} ({n})"] + [cells.get(col, "") for col in cols]
            for (m, c, n, ratio), cells in sorted(grid.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][3]))]
    head = _lead_head(s) + ["removed (layers)"] + [f"{k} · {a}" for k, a in cols]
    return [("table", head, body)] if body else []


def retention_table(s: dict) -> list[Block]:
    return _grid(s, s["retention"], lambda r: cell(r["retention"]))


def recovery_table(s: dict) -> list[Block]:
    return _grid(s, [r for r in s["retention"] if "recovery" in r], lambda r: cell(r["recovery"]))


def arm_gap_table(s: dict) -> list[Block]:
    """Per cut: 'a − b' recovery difference in points [CI] and who wins, or 'cannot tell'."""
    def text(g: dict) -> str:
        v = verdict(g["gap"])
        winner = {1: f"{g['a']} better", -1: f"{g['b']} better", 0: "cannot tell"}[v]
        return f"{winner} · {cell(g['gap'], signed=True)}"

    rows = [g | {"arm": f"{g['a']} − {g['b']}"} for g in s.get("arm_gaps", [])]
    return _grid(s, rows, text)


def speed_table(s: dict) -> list[Block]:
    rows = s["speed"]
    if not rows:
        return []
    keys = speed_keys(rows)
    head = _lead_head(s) + ["removed (layers)"] + [k.removesuffix("_speedup").replace("_", " ") + " ×" for k in keys]
    body = [_lead(s, r["model"], r["criterion"]) + [f"{r['ratio']:.0%} ({r['num_drop']})"]
            + [_times(r.get(k)) for k in keys]
            for r in sorted(rows, key=lambda r: (r["model"], str(r["criterion"]), r["ratio"]))]
    return [("table", head, body)]


def _times(v) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
        return "n/a"
    return f"{v:.2f}" if abs(v) < 1000 else f"{v:.3g}"


def _pct1(x) -> str:
    return "" if x is None or x != x else f"{100 * x:.1f}"


def task_tables(s: dict, cfg: dict | None = None) -> list[Block]:
    """Per model: every task's headline metric per variant. A base-style code task run under a chat template is
    marked † with its instruct variant named (an instruct model's prose and fences defeat its stops)."""
    from layerprune.evaluation.tasks.instruct import INSTRUCT_VARIANT

    out: list[Block] = []
    models = _models(s)
    chat = {m.get("name") for m in (cfg or {}).get("models", []) if m.get("chat_template")}
    for model in models:
        rows = [v for v in s["tasks"] if v["model"] == model]
        tasks = list(dict.fromkeys(t for v in rows for t in v["scores"]))
        metric = {t: sc["metric"] for v in rows for t, sc in v["scores"].items()}
        marked = [t for t in tasks if model in chat and t in INSTRUCT_VARIANT]
        head = ["criterion", "removed", "healing"] + [f"{t} ({metric[t]})" + (" †" if t in marked else "")
                                                      for t in tasks]
        body = [[v["criterion"] or "baseline", v["num_drop"], v["arm"]] +
                [_pct1(v["scores"][t]["value"]) if t in v["scores"] else "" for t in tasks]
                for v in sorted(rows, key=lambda v: (v["criterion"] is not None, str(v["criterion"]), v["num_drop"],
                                                     v["arm"]))]
        out += ([("h", 3, model)] if len(models) > 1 else []) + [("table", head, body)]
        if marked:
            out.append(("p", "† base-style completion prompt under a chat template; an instruct model's prose and "
                             "fenced code defeat its stops: use " + ", ".join(INSTRUCT_VARIANT[t] for t in marked) + "."))
    return out


def best_arm_table(s: dict) -> list[Block]:
    """Per cut (model, layers removed) and task type: the healing arm (with its criterion) of highest retention,
    and the arms of the same criterion and cut whose intervals overlap it (the data cannot tell them apart)."""
    cuts: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))  # (model, n, ratio, kind) → crit → arm → est
    for r in s["retention"]:
        if r["criterion"] is not None and r["retention"]["value"] == r["retention"]["value"]:
            cuts[(r["model"], r["num_drop"], r["ratio"], r["kind"])][r["criterion"]][r["arm"]] = r["retention"]
    body = []
    for (model, n, ratio, kind), by_crit in sorted(cuts.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3])):
        if max(len(arms) for arms in by_crit.values()) < 2:
            continue
        crit, arm = max(((c, a) for c, arms in by_crit.items() for a in arms), key=lambda ca: by_crit[ca[0]][ca[1]]["value"])
        best = by_crit[crit][arm]
        ties = [a for a, e in by_crit[crit].items() if a != arm and not _apart(best, e)]
        body.append(([model] if len(_models(s)) > 1 else []) + [f"{ratio:.0%} ({n})", kind, f"{arm} ({crit})",
                                                                 cell(best),
                                                                 "cannot tell from " + ", ".join(ties) if ties
                                                                 else "above every other arm"])
    head = (["model"] if len(_models(s)) > 1 else []) + ["removed (layers)", "task type", "best arm (criterion)",
                                                         "retention %", "vs. the other arms of that cut"]
    return [("table", head, body)] if body else []


def _apart(a: dict, b: dict) -> bool:
    """The two intervals do not overlap."""
    return a["lo"] == a["lo"] and b["lo"] == b["lo"] and (a["lo"] > b["hi"] or a["hi"] < b["lo"])
