"""`layerprune report ROOT`: ROOT/report.md, ROOT/report.html (self-contained) and ROOT/figures/*.png.

The report is built as a list of blocks (heading, paragraph, table, figure) rendered twice — Markdown and
HTML — so both always say the same thing.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from layerprune.provenance import now, versions, write_json, write_text
from layerprune.study.analysis import analyze, load_study
from layerprune.study.figures import FIGURES
from layerprune.study.narrative import findings

Block = tuple


def make_report(root: str | Path, threshold: float | None = None) -> Path:
    root = Path(root)
    plan, variants, store = load_study(root)
    cfg = _config(root)
    rep = cfg.get("report", {})
    summary = analyze(root, threshold or rep.get("safe_threshold", 0.9), rep.get("bootstrap", 1000),
                      rep.get("confidence", 0.95))
    summary["provenance"] = {"root": str(root), "created": now(), "versions": versions(), "seed": cfg.get("seed")}
    write_json(root / "summary.json", summary)
    blocks = _blocks(summary, cfg, root)
    write_text(root / "report.md", _markdown(blocks, root))
    write_text(root / "report.html", _html(blocks, root, cfg.get("name", "study")))
    return root / "report.md"


def _config(root: Path) -> dict:
    import yaml

    path = root / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def _blocks(s: dict, cfg: dict, root: Path) -> list[Block]:
    models = sorted({v["model"] for v in s["tasks"]})
    b: list[Block] = [("h", 1, f"Layer-pruning study: {cfg.get('name', 'study')}"),
                      ("p", f"{s['evaluated']} of {s['variants']} planned models evaluated. Seed {cfg.get('seed')}; "
                            f"{int(100 * s['confidence'])}% paired bootstrap intervals over documents "
                            f"({s['bootstrap']} replicates). Generated {s['provenance']['created']} by layerprune "
                            f"{s['provenance']['versions']['layerprune']} (transformers "
                            f"{s['provenance']['versions']['transformers']}).")]
    b += [("h", 2, "What this study shows")] + [("p", t) for t in findings(s)]
    b += [("h", 2, "Safe depth"),
          ("p", f"Largest share of layers removed whose retention CI lower bound stays ≥ {s['threshold']:.0%} of "
                "baseline at that ratio and every smaller one tested (0 = no tested ratio is safe)."),
          ("table", ["model", "criterion", "healing", "task type", "safe ratio", "ratios tested"],
           [[d["model"], d["criterion"], d["arm"], d["kind"], f"{d['safe_ratio']:.2f}",
             ", ".join(f"{r:.2f}" for r in d["ratios_tested"])] for d in s["safe_depth"]])]
    b += [("h", 2, "Retention vs. pruning ratio")] + _figure(s, "retention", models, root)
    b += [("table", ["model", "criterion", "n", "ratio", "healing", "type", "retention", "CI", "recovery", "CI"],
           [[r["model"], r["criterion"], r["num_drop"], f"{r['ratio']:.2f}", r["arm"], r["kind"],
             _pct(r["retention"]["value"]), _ci(r["retention"]),
             _pct(r["recovery"]["value"]) if "recovery" in r else "", _ci(r["recovery"]) if "recovery" in r else ""]
            for r in s["retention"]])]
    b += [("h", 2, "Per-task scores")] + _task_tables(s, cfg)
    b += [("h", 2, "Healing gain by arm")] + _figure(s, "healing_gain", models, root, "No healing arms were run.")
    b += [("h", 2, "Diagnostics vs. ratio"),
          ("p", "Means over generative documents: Rep-n (repeated n-grams, %), within-response Self-BLEU-4, share "
                "of code failures that are bracket errors, share of programs whose brackets balance, share of "
                "checkable arithmetic steps that are wrong.")]
    b += _figure(s, "diagnostics", models, root, "No generative task with diagnostics was evaluated.")
    b += [("h", 2, "Per-layer scores by criterion")] + _figure(s, "layer_scores", models, root,
                                                               "Only criteria without per-layer scores were run.")
    b += [("h", 2, "Measured vs. ideal speedup"),
          ("p", "Ideal: decoder-layer + head parameters before / after removal (per-token matmul work).")]
    b += _figure(s, "speedup", models, root, "Speed was not measured (speed.enabled: false).")
    b += [("table", ["model", "criterion", "n", "ratio", "prefill ×", "decode ×", "ideal ×"],
           [[r["model"], r["criterion"], r["num_drop"], f"{r['ratio']:.2f}", f"{r['prefill_speedup']:.2f}",
             f"{r['decode_speedup']:.2f}", f"{r['ideal_speedup']:.2f}"] for r in s["speed"]])] if s["speed"] else []
    b += [("h", 2, "Provenance"), ("p", "Config as run: `config.yaml`; plan: `plan.json`; every number above: "
                                        "`summary.json`; per-document outputs: `steps/<eval step>/samples_<task>.jsonl`.")]
    return b


def _figure(s: dict, name: str, models: list[str], root: Path, empty: str | None = None) -> list[Block]:
    out = []
    for m in models:
        fig = FIGURES[name](s, m)
        if fig is None:
            continue
        path = root / "figures" / f"{name}_{m}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
        out.append(("img", path.relative_to(root).as_posix(), f"{name} — {m}"))
    return out or ([("p", empty)] if empty else [])


def _task_tables(s: dict, cfg: dict | None = None) -> list[Block]:
    from layerprune.evaluation.tasks.instruct import INSTRUCT_VARIANT

    out = []
    chat = {m.get("name") for m in (cfg or {}).get("models", []) if m.get("chat_template")}
    for model in sorted({v["model"] for v in s["tasks"]}):
        rows = [v for v in s["tasks"] if v["model"] == model]
        tasks = sorted({t for v in rows for t in v["scores"]})
        marked = [t for t in tasks if model in chat and t in INSTRUCT_VARIANT]  # base-style prompt, chat model
        head = ["criterion", "n", "healing"] + [
            (f"{t} ({rows[0]['scores'][t]['metric']})" if t in rows[0]["scores"] else t) + (" †" if t in marked else "")
            for t in tasks]
        body = [[v["criterion"] or "baseline", v["num_drop"], v["arm"]] +
                [_pct(v["scores"][t]["value"]) if t in v["scores"] else "" for t in tasks]
                for v in sorted(rows, key=lambda v: (v["criterion"] is not None, str(v["criterion"]), v["num_drop"], v["arm"]))]
        out += [("h", 3, model), ("table", head, body)]
        if marked:
            out.append(("p", "† base-style completion prompt under a chat template; an instruct model's prose and "
                             "fenced code defeat its stops: use " + ", ".join(INSTRUCT_VARIANT[t] for t in marked) + "."))
    return out


def _pct(x: Any) -> str:
    return "" if x is None or x != x else f"{100 * x:.1f}"


def _ci(e: dict) -> str:
    return "" if e["lo"] != e["lo"] else f"[{100 * e['lo']:.1f}, {100 * e['hi']:.1f}]"


def _markdown(blocks: list[Block], root: Path) -> str:
    out = []
    for blk in blocks:
        if blk[0] == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif blk[0] == "p":
            out.append(blk[1])
        elif blk[0] == "img":
            out.append(f"![{blk[2]}]({blk[1]})")
        elif blk[0] == "table" and blk[2]:
            out.append("| " + " | ".join(map(str, blk[1])) + " |\n|" + "---|" * len(blk[1]))
            out[-1] += "".join("\n| " + " | ".join(map(str, r)) + " |" for r in blk[2])
    return "\n\n".join(out) + "\n"


def _html(blocks: list[Block], root: Path, title: str) -> str:
    body = []
    for blk in blocks:
        if blk[0] == "h":
            body.append(f"<h{blk[1]}>{html.escape(blk[2])}</h{blk[1]}>")
        elif blk[0] == "p":
            body.append(f"<p>{html.escape(blk[1])}</p>")
        elif blk[0] == "img":
            data = base64.b64encode((root / blk[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(blk[2])}" src="data:image/png;base64,{data}"></figure>')
        elif blk[0] == "table" and blk[2]:
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in blk[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in blk[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
