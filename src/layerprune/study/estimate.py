"""What a study will cost, from its config and plan alone: printed by `study --dry-run` before any GPU hour.

    print(format_estimate(cfg, plan))

Per step kind: SGR generates at most prompts × max_new_tokens tokens per teacher; a heal step takes
ceil(prompts × epochs / (batch × accumulation)) optimizer steps (one process; `max_steps` caps it) over at most
prompts × max_length tokens; an eval step scores docs × tasks (docs read from the data when it is local, else
the benchmark's published test-set size); plus the hub repos that will be downloaded. Every number is an upper
bound or an exact count of work items, not a time: README ("running the paper configs") turns them into hours.
"""

from __future__ import annotations

import math

from layerprune.study.config import StudyConfig
from layerprune.study.plan import Plan

# Published sizes of the split each task evaluates (lm-eval's), used when the data is not local.
DOCS = {"mmlu": 14042, "arc_challenge": 1172, "arc_easy": 2376, "hellaswag": 10042, "winogrande": 1267,
        "piqa": 1838, "openbookqa": 500, "boolq": 3270, "gsm8k": 1319, "math": 5000, "humaneval": 164,
        "humaneval_plus": 164, "mbpp": 500, "mbpp_plus": 378, "arithmetic": 1000, "brackets": 1000,  # probes: N_ITEMS
        "humaneval_instruct": 164, "humaneval_plus_instruct": 164, "mbpp_instruct": 500, "mbpp_plus_instruct": 378,
        "gsm8k_cot": 1319, "gsm8k_cot_llama": 1319}


def estimate(cfg: StudyConfig, plan: Plan) -> dict:
    """{kind: {...numbers...}} for the steps the plan holds, and `downloads`."""
    counts = plan.counts()
    pr, sgr = cfg.healing.prompts, cfg.healing.sgr
    prompts = pr.num  # an upper bound when allow_fewer (the source may hold fewer)
    out: dict = {"downloads": downloads(cfg)}
    if counts.get("sgr"):
        out["sgr"] = {"steps": counts["sgr"], "prompts": prompts, "max_new_tokens": sgr.max_new_tokens,
                      "max_generated_tokens": counts["sgr"] * prompts * sgr.max_new_tokens}
    heals = [s for s in plan.steps if s.kind == "heal"]
    if heals:
        per = []
        for s in heals:
            t = s.params["train"]
            steps = math.ceil(prompts * t["epochs"] / (t["batch_size"] * t["grad_accum"]))
            per.append(min(steps, t["max_steps"]) if t["max_steps"] else steps)
        t = heals[0].params["train"]
        out["heal"] = {"steps": len(heals), "optimizer_steps_each": max(per), "optimizer_steps_total": sum(per),
                       "effective_batch": t["batch_size"] * t["grad_accum"],
                       "max_tokens_each": math.ceil(prompts * t["epochs"]) * t["max_length"]}
    if counts.get("eval"):
        docs, source = eval_docs(cfg)
        out["eval"] = {"steps": counts["eval"], "tasks": len(cfg.eval.tasks), "docs_each": docs,
                       "docs_total": None if docs is None else docs * counts["eval"], "docs_from": source}
    if counts.get("score"):
        out["score"] = {"steps": counts["score"]}
    return out


def eval_docs(cfg: StudyConfig) -> tuple[int | None, str]:
    """Docs one eval step scores (all tasks), and where the counts came from."""
    from pathlib import Path

    from layerprune.evaluation.tasks import get_task
    from layerprune.evaluation.tasks.base import TaskGroup, TaskOptions

    total, sources = 0, set()
    opts = TaskOptions(data_dir=Path(cfg.eval.data_dir) if cfg.eval.data_dir else None)
    for name in cfg.eval.tasks:
        task, n = get_task(name), None
        if opts.data_dir is not None:  # count local data; never download in a dry run
            try:
                members = task.tasks if isinstance(task, TaskGroup) else [task]
                n = sum(len(m.load_docs(opts)) for m in members)
                sources.add("the data")
            except Exception:
                n = None
        if n is None:
            n = DOCS.get(name)
            sources.add("published test-set sizes")
        if n is None:
            return None, f"unknown for {name}"
        total += min(n, cfg.eval.limit) if cfg.eval.limit else n
    return total, " and ".join(sorted(sources))


def downloads(cfg: StudyConfig) -> list[str]:
    """Hub repos the study reads (models, prompt datasets), with their size when the hub answers."""
    from layerprune.healing.prompts import _is_hub_id as is_dataset_id
    from layerprune.hub import is_hub_id

    items = [("model", m.path) for m in cfg.models if m.path and is_hub_id(m.path)]
    src = cfg.healing.prompts.source
    if src and any(a.kind != "none" for a in cfg.healing.arms) and is_dataset_id(src):
        items.append(("dataset", src.split(":")[0]))
    return [f"{kind} {repo}{_size(kind, repo)}" for kind, repo in items]


def _size(kind: str, repo: str) -> str:
    from layerprune.hub import MODEL_FILES, SKIP

    try:
        import fnmatch

        from huggingface_hub import HfApi

        api = HfApi()
        info = (api.model_info if kind == "model" else api.dataset_info)(repo, files_metadata=True)
        files = [s for s in info.siblings or [] if kind == "dataset" or (
            any(fnmatch.fnmatch(s.rfilename, p) for p in MODEL_FILES)
            and not any(fnmatch.fnmatch(s.rfilename, p) for p in SKIP))]
        return f" ({_bytes(sum(s.size or 0 for s in files))})"
    except Exception:
        return " (size: hub not reachable)"


def _bytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def format_estimate(cfg: StudyConfig, plan: Plan) -> str:
    e = estimate(cfg, plan)
    fewer = " (at most: allow_fewer)" if cfg.healing.prompts.allow_fewer else ""
    lines = ["estimated work:"]
    if "sgr" in e:
        s = e["sgr"]
        lines.append(f"  sgr    {s['steps']} × {s['prompts']:,} prompts{fewer} × ≤{s['max_new_tokens']:,} new "
                     f"tokens = ≤{s['max_generated_tokens']:,} generated tokens")
    if "heal" in e:
        h = e["heal"]
        lines.append(f"  heal   {h['steps']} × {h['optimizer_steps_each']:,}{fewer} optimizer steps (batch "
                     f"{h['effective_batch']}) = {h['optimizer_steps_total']:,}; "
                     f"≤{h['max_tokens_each']:,} tokens each")
    if "eval" in e:
        v = e["eval"]
        docs = "?" if v["docs_each"] is None else f"{v['docs_each']:,}"
        total = "?" if v["docs_total"] is None else f"{v['docs_total']:,}"
        lines.append(f"  eval   {v['steps']} × {v['tasks']} tasks, {docs} docs each = {total} docs "
                     f"(counts from {v['docs_from']})")
    if "score" in e:
        lines.append(f"  score  {e['score']['steps']} scoring runs")
    lines.append("downloads: " + ("; ".join(e["downloads"]) if e["downloads"] else "none (all local)"))
    return "\n".join(lines)
