"""`layerprune report ROOT`: ROOT/report.md, ROOT/report.html (self-contained) and ROOT/figures/*.png.

The report leads with the answer and keeps the evidence one click away. First screen (1280×800 of the HTML, top
of report.md): the study's name and scale in one line, a headline of at most five sentences generated from the
numbers (narrative.py), the retention-vs-ratio figure, then the safe-depth recommendation. After it, a table of
contents and collapsible sections (`<details>` in HTML, plain `##` sections in Markdown, same order): retention,
healing, speed, diagnostics, per-layer scores, per-task scores, provenance. A table cell carries each number;
sentences are kept for conclusions.

The report is built as a list of blocks rendered twice — Markdown and HTML — so both always say the same thing.
Blocks: ("h", level, text), ("p", text), ("lead", sentences), ("img", path, alt), ("table", head, rows),
("toc", [(id, title)]), ("open", id, title) … ("close",).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from layerprune.provenance import now, versions, write_json, write_text
from layerprune.study.analysis import analyze, load_study
from layerprune.study.figures import DPI, FIGURES
from layerprune.study.narrative import headline, scale_line
from layerprune.study.reasoning import FIGURES as REASONING_FIGURES
from layerprune.study.reasoning import answers_table, scaling_table, schedules_table, stability_table
from layerprune.study.tables import (arm_gap_table, best_arm_table, recovery_table, retention_table,
                                     safe_depth_table, speed_table, task_tables)

Block = tuple

SECTIONS = (("retention", "Retention by criterion and ratio"), ("healing", "Healing: recovery and arm vs. arm"),
            ("schedules", "Iterative vs. one-shot pruning"), ("scaling", "Test-time scaling"),
            ("speed", "Speed"), ("answers", "Length and cost per answer"), ("diagnostics", "Diagnostics vs. ratio"),
            ("layer-scores", "Per-layer scores"), ("stability", "Selection stability"),
            ("tasks", "Per-task scores"), ("provenance", "Provenance"))
# sections shown only when the study measured them: summary key that must be non-empty
OPTIONAL = {"schedules": "schedules", "scaling": "scaling", "answers": "answers", "stability": "stability"}


def make_report(root: str | Path, threshold: float | None = None) -> Path:
    root = Path(root)
    load_study(root)  # a UsageError naming the fix when ROOT is not a study root
    cfg = _config(root)
    rep = cfg.get("report", {})
    summary = analyze(root, threshold or rep.get("safe_threshold", 0.9), rep.get("bootstrap", 1000),
                      rep.get("confidence", 0.95))
    summary["provenance"] = {"root": str(root), "created": now(), "versions": versions(), "seed": cfg.get("seed")}
    write_json(root / "summary.json", summary)
    blocks = build_blocks(summary, cfg, root)
    write_text(root / "report.md", _markdown(blocks))
    write_text(root / "report.html", _html(blocks, root, cfg.get("name", "study")))
    return root / "report.md"


def _config(root: Path) -> dict:
    import yaml

    path = root / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def build_blocks(s: dict, cfg: dict, root: Path) -> list[Block]:
    name = cfg.get("name", "study")
    models = list(dict.fromkeys(v["model"] for v in s["tasks"]))
    b: list[Block] = [("h", 1, f"How far can it be pruned? Layer-pruning study {name}"), ("p", scale_line(s, name)),
                      ("lead", headline(s))]
    b += _figures(s, "retention", models, root, "Retention vs. share of layers removed, one panel per healing arm",
                  "No pruned model has been evaluated yet.")
    b += [("h", 2, "Safe depth (the recommendation)"),
          ("p", f"Largest share of layers removed whose retention CI lower bound stays ≥ {s['threshold']:.0%} of "
                "baseline at that ratio and every smaller one tested; each cell: safe ratio (layers removed) · "
                "retention there [CI], or the retention at the smallest ratio tested when none is safe."),
          safe_depth_table(s)]
    b += [("toc", [sec for sec in SECTIONS if sec[0] not in OPTIONAL or _has(s, sec[0])])]
    b += _section("retention", [("p", f"Retention = pruned / baseline, in %, with {s['confidence']:.0%} paired "
                                      f"bootstrap intervals over documents ({s['bootstrap']} replicates).")]
                  + retention_table(s))
    b += _section("healing", _figures(s, "healing_gain", models, root, "Recovery by healing arm per cut")
                  + [("p", "Recovery = (healed − pruned) / (baseline − pruned), in %: 100 = fully recovered, "
                           "0 = no gain.")] + recovery_table(s)
                  + [("p", "Arm vs. arm: paired difference in recovery (percentage points) [CI]; 'cannot tell' "
                           "where the interval crosses 0.")] + arm_gap_table(s)
                  + [("p", "Best arm per cut and task type: highest retention, and the arms whose intervals overlap "
                           "it.")] + best_arm_table(s)
                  if any("recovery" in r for r in s["retention"]) else [("p", "No healing arms were run.")])
    if _has(s, "schedules"):
        b += _section("schedules", [("p", "Cut `step` layers, re-score the healed model, heal, repeat — against the "
                                          "one-shot cut healed with the same total optimizer steps. Paired difference "
                                          "in retention, percentage points [CI].")] + schedules_table(s))
    if _has(s, "scaling"):
        b += _section("scaling", _figures(s, "scaling", models, root, "pass@k vs number of samples k")
                      + [("p", "pass@k: unbiased estimator over N samples per document; maj@N: majority vote over the "
                               "N samples (answer tasks). Scaling gap = baseline's gain from k=1 to N minus the "
                               "variant's, points [CI]: > 0 means the variant gains less from sampling more.")]
                      + scaling_table(s))
    b += _section("speed", [("p", "Speedup vs. the unpruned model (×). Ideal: decoder-layer + head parameters before "
                                  "/ after removal (per-token matmul work); per-answer speedup appears when the speed "
                                  "step measured it.")]
                  + _figures(s, "speedup", models, root, "Measured vs. ideal speedup")
                  + (speed_table(s) or [("p", "Speed was not measured (speed.enabled: false).")])
                  + [("p", f"n/a for {r['criterion']} at {r['ratio']:.0%}: " + "; ".join(r["notes"]))
                     for r in s["speed"] if r.get("notes")])
    if _has(s, "answers"):
        b += _section("answers", [("p", "Generated tokens per answer and the share of answers that hit the token "
                                        "limit; per-answer speedup = per-token decode speedup × baseline tokens per "
                                        "answer / variant tokens per answer.")] + answers_table(s))
    b += _section("diagnostics", [("p", "Means over generative documents: Rep-n (repeated n-grams, %), within-response "
                                        "Self-BLEU-4, share of code failures that are bracket errors, share of "
                                        "programs whose brackets balance, share of checkable arithmetic steps that "
                                        "are wrong. Ratio 0 is the unpruned model.")]
                  + _figures(s, "diagnostics", models, root, "Generation diagnostics vs. share of layers removed",
                             "No generative task with diagnostics was evaluated."))
    b += _section("layer-scores", _figures(s, "layer_scores", models, root, "Per-layer scores by criterion",
                                           "Only criteria without per-layer scores were run."))
    if _has(s, "stability"):
        b += _section("stability", [("p", "Each criterion repeated over independent calibration draws: Jaccard "
                                          "overlap of the chosen layer sets, and how often each layer is chosen.")]
                      + stability_table(s) + _figures(s, "stability", models, root, "Layer choice frequency"))
    b += _section("tasks", task_tables(s, cfg))
    p = s["provenance"]
    b += _section("provenance", [
        ("p", f"{s['evaluated']} of {s['variants']} planned models evaluated. Seed {cfg.get('seed')}; "
              f"{s['confidence']:.0%} paired bootstrap intervals over documents ({s['bootstrap']} replicates). "
              f"Generated {p['created']} by layerprune {p['versions']['layerprune']} (transformers "
              f"{p['versions']['transformers']})."),
        ("p", "Config as run: `config.yaml`; plan: `plan.json`; every number above: `summary.json`; per-document "
              "outputs: `steps/<eval step>/samples_<task>.jsonl`.")])
    return b


def _has(s: dict, sid: str) -> bool:
    if sid == "stability":
        return any(r.get("stability") for r in s.get("layer_scores", []))
    return bool(s.get(OPTIONAL[sid]))


def _section(sid: str, blocks: list[Block]) -> list[Block]:
    return [("open", sid, dict(SECTIONS)[sid])] + blocks + [("close",)]


def _figures(s: dict, name: str, models: list[str], root: Path, alt: str, empty: str | None = None) -> list[Block]:
    out: list[Block] = []
    for m in models:
        fig = {**FIGURES, **REASONING_FIGURES}[name](s, m)
        if fig is None:
            continue
        path = root / "figures" / f"{name}_{m}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=DPI)
        tmp.replace(path)
        out.append(("img", path.relative_to(root).as_posix(), f"{alt} — {m}"))
        if fig.offscale:
            out.append(("p", "Off the plotted range, drawn at the edge with ▲/▼: " + "; ".join(fig.offscale) + "."))
    return out or ([("p", empty)] if empty else [])


def _markdown(blocks: list[Block]) -> str:
    out = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif kind == "p":
            out.append(blk[1])
        elif kind == "lead":
            out.append("\n".join(f"- {t}" for t in blk[1]))
        elif kind == "img":
            out.append(f"![{blk[2]}]({blk[1]})")
        elif kind == "toc":
            out.append("Details: " + " · ".join(f"[{t}](#{_md_anchor(t)})" for _, t in blk[1]))
        elif kind == "open":
            out.append(f"## {blk[2]}")
        elif kind == "table" and blk[2]:
            out.append("| " + " | ".join(map(str, blk[1])) + " |\n|" + "---|" * len(blk[1]))
            out[-1] += "".join("\n| " + " | ".join(map(str, r)) + " |" for r in blk[2])
    return "\n\n".join(out) + "\n"


def _md_anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces → '-'."""
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1040px;margin:0.8em auto;padding:0 1em;color:#222;"
    "line-height:1.35;font-size:15px}"
    "h1{font-size:21px;margin:0.2em 0}h2{font-size:17px;margin:0.9em 0 0.3em}h3{font-size:15px}"
    ".scale{color:#555;font-size:13px;margin:0.2em 0 0.5em}"
    ".lead{margin:0.3em 0;padding-left:1.2em}.lead li{margin:0.15em 0}"
    "figure{margin:0.4em 0}img{max-width:100%;height:auto}"
    ".tbl{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:12.5px;margin:0.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 6px;white-space:nowrap;text-align:left}th{background:#f3f3f3}"
    "nav{font-size:13px;margin:1em 0;padding:0.4em 0.6em;background:#f6f6f6;border-radius:4px}"
    "nav a{margin-right:1em}details{border-top:1px solid #ddd;padding:0.3em 0}"
    "summary{cursor:pointer;font-weight:600;font-size:16px;padding:0.2em 0}"
    ".note{color:#b00;font-size:12.5px}"
)
# fragment links to a closed section open it
_SCRIPT = ("function o(){var e=document.getElementById(location.hash.slice(1));if(e&&e.tagName==='DETAILS')"
           "e.open=true}addEventListener('hashchange',o);o()")


def _html(blocks: list[Block], root: Path, title: str) -> str:
    body = []
    first_p = True
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            body.append(f"<h{blk[1]}>{html.escape(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            cls = ' class="scale"' if first_p else (' class="note"' if blk[1].startswith("Off the plotted") else "")
            body.append(f"<p{cls}>{html.escape(blk[1])}</p>")
            first_p = False
        elif kind == "lead":
            body.append('<ul class="lead">' + "".join(f"<li>{html.escape(t)}</li>" for t in blk[1]) + "</ul>")
        elif kind == "img":
            data = base64.b64encode((root / blk[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(blk[2])}" src="data:image/png;base64,{data}"></figure>')
        elif kind == "toc":
            body.append("<nav>Details: " + "".join(f'<a href="#{i}">{html.escape(t)}</a>' for i, t in blk[1])
                        + "</nav>")
        elif kind == "open":
            body.append(f'<details id="{blk[1]}"><summary>{html.escape(blk[2])}</summary>')
        elif kind == "close":
            body.append("</details>")
        elif kind == "table" and blk[2]:
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in blk[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in blk[2])
            body.append(f'<div class="tbl"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}<script>{_SCRIPT}</script></body></html>\n")
