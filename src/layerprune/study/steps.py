"""One runner per step kind: read the dependencies' outputs, call the library verb, write into `out`.

Every runner is a thin adapter over a public function (`prune`, `score`, `evaluate`, `generate_sgr`, `heal`,
`speed.measure`), so a study does exactly what the CLI verbs do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from layerprune.study.config import ModelConfig


def model_path(step_dir: Path) -> str:
    """Where a model-producing step's model is: its own `model/` folder, or the path recorded in model.json."""
    if (step_dir / "model").is_dir():
        return str(step_dir / "model")
    return json.loads((step_dir / "model.json").read_text())["path"]


def model_dtype(step_dir: Path) -> str | None:
    """The dtype a source model is loaded in (ModelConfig.dtype); derived checkpoints keep their own (None)."""
    meta = step_dir / "model.json"
    return json.loads(meta.read_text()).get("dtype") if meta.exists() else None


def _resolve(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or not (base / p).exists() else (base / p).resolve())


def _engine(ctx) -> tuple[str, object]:
    """(engine, VLLMSettings or None) of this step (`plan._engine`)."""
    p = ctx.step.params
    if p.get("engine", "hf") == "hf":
        return "hf", None
    from layerprune.evaluation.vllm_backend import VLLMSettings

    return p["engine"], VLLMSettings(**p["engine_settings"])


def run_model(ctx, out: Path) -> None:
    from layerprune.provenance import fingerprint_source
    from layerprune.tiny import save_tiny

    m = ModelConfig.model_validate({"name": "x", **ctx.step.params["model"]})
    if m.tiny is not None:
        save_tiny(m.tiny.family, out / "model", seed=m.tiny.seed, num_layers=m.tiny.layers)
        return
    path = _resolve(m.path, ctx.base_dir)
    (out / "model.json").write_text(json.dumps({"path": path, "dtype": m.dtype, "fingerprint": fingerprint_source(path)},
                                               indent=2))


def run_score(ctx, out: Path) -> None:
    from layerprune.loading import load_model
    from layerprune.provenance import write_json
    from layerprune.scoring import score

    p, cal = ctx.step.params, ctx.step.params["calibration"]
    model, tokenizer = load_model(model_path(ctx.input(0)), dtype=model_dtype(ctx.input(0)), device=ctx.cfg.device)
    record = score(model, tokenizer, p["method"], num_drop=p["num_drop"], protected=p["protected"], seed=p["seed"],
                   calibration=_resolve(cal["source"], ctx.base_dir) if cal["source"] else None,
                   seq_len=cal["seq_len"], num_samples=cal["num_samples"], text_field=cal["text_field"],
                   options=_score_options(ctx))
    write_json(out / "scores.json", record)


def _score_options(ctx) -> dict | None:
    """Per-criterion options; a task-aware criterion reads the study's eval data unless told otherwise."""
    options = dict(ctx.step.params["options"])
    if ctx.step.params.get("engine"):
        options.update(engine=ctx.step.params["engine"], engine_settings=ctx.step.params["engine_settings"],
                       model_path=model_path(ctx.input(0)))
    data_dir = ctx.cfg.eval.data_dir
    if ctx.step.params["method"] == "task_iterative" and data_dir and "data_dir" not in options:
        options["data_dir"] = _resolve(data_dir, ctx.base_dir)
    return options or None


def run_prune(ctx, out: Path) -> None:
    from layerprune.pruning import prune
    from layerprune.scoring.files import drop_for

    path = ctx.input(1) / "scores.json"
    scores = json.loads(path.read_text())
    drop = drop_for(scores, path, num_drop=ctx.step.params["num_drop"])
    prune(model_path(ctx.input(0)), drop, out / "model", method=scores["method"], scores=scores,
          dtype=model_dtype(ctx.input(0)),
          device=ctx.cfg.device)


def run_eval(ctx, out: Path) -> None:
    from layerprune.evaluation.runner import evaluate
    from layerprune.evaluation.tasks.base import TaskOptions

    p, ev = ctx.step.params, ctx.step.params["eval"]
    opts = TaskOptions(
        data_dir=Path(_resolve(ev["data_dir"], ctx.base_dir)) if ev["data_dir"] else None,
        num_fewshot=ev["num_fewshot"], limit=ev["limit"], seed=p["seed"], chat_template=p["chat_template"],
        system_prompt=p["system_prompt"], max_new_tokens=ev["max_new_tokens"], temperature=ev["temperature"],
        top_p=ev["top_p"], num_samples=ev["num_samples"])
    evaluate(model_path(ctx.input(0)), ev["tasks"], opts, out_dir=out, batch_size=ev["batch_size"],
             dtype=model_dtype(ctx.input(0)),
             device=ctx.cfg.device, progress=False, engine=_engine(ctx)[0], engine_settings=_engine(ctx)[1])


def run_speed(ctx, out: Path) -> None:
    from layerprune.loading import load_model
    from layerprune.provenance import write_json
    from layerprune.study.speed import measure

    sp = ctx.step.params["speed"]
    model, _ = load_model(model_path(ctx.input(0)), dtype=model_dtype(ctx.input(0)), device=ctx.cfg.device,
                          tokenizer=False)
    write_json(out / "speed.json", measure(model, sp["prompt_tokens"], sp["new_tokens"], sp["batch_size"],
                                           sp["repeats"], seed=ctx.step.params["seed"]))


def run_prompts(ctx, out: Path) -> None:
    """The prompt pool: `num` prompts (seeded shuffle) with their original answers, as chat `messages` rows."""
    from layerprune.healing.prompts import load_prompts, select

    pr = ctx.step.params["prompts"]
    if not pr["source"]:
        from layerprune.errors import UsageError

        raise UsageError("healing.prompts.source is required when a healing arm is configured")
    source = _resolve(pr["source"], ctx.base_dir)
    if pr["fields"]:
        source = str(_renamed(source, pr["fields"], ctx.work / "renamed.jsonl"))
    chosen = select(load_prompts(source), pr["num"], ctx.step.params["seed"])
    lines = [json.dumps({"id": p.id, "messages": list(p.messages) + (
        [{"role": "assistant", "content": p.original}] if p.original is not None else [])}) for p in chosen]
    (out / "prompts.jsonl").write_text("\n".join(lines) + "\n")


def _renamed(source: str, fields: dict[str, str], dest: Path) -> Path:
    with open(source) as f, open(dest, "w") as g:
        for line in f:
            if line.strip():
                row = json.loads(line)
                g.write(json.dumps({fields.get(k, k): v for k, v in row.items()}) + "\n")
    return dest


def run_sgr(ctx, out: Path) -> None:
    """The unpruned model answers the pool; generated into the work dir so a crash resumes mid-way."""
    from layerprune.healing.sgr import generate_sgr

    sgr, p = ctx.step.params["sgr"], ctx.step.params
    work_file = ctx.work / "sgr.jsonl"
    generate_sgr(model_path(ctx.input(0)), str(ctx.input(1) / "prompts.jsonl"), work_file, seed=p["seed"],
                 shuffle_seed=p["seed"], max_new_tokens=sgr["max_new_tokens"], temperature=sgr["temperature"],
                 top_p=sgr["top_p"], batch_size=sgr["batch_size"], device=ctx.cfg.device,
                 dtype=model_dtype(ctx.input(0)), engine=_engine(ctx)[0], engine_settings=_engine(ctx)[1])
    os.replace(work_file, out / "sgr.jsonl")


def run_heal(ctx, out: Path) -> None:
    """Train in the work dir (trainer checkpoints survive a crash), then move the healed model into place."""
    from layerprune.healing.sft import heal
    from layerprune.study.config import TrainConfig

    p = ctx.step.params
    data_dir = ctx.input(1)
    data = data_dir / ("sgr.jsonl" if (data_dir / "sgr.jsonl").exists() else "prompts.jsonl")
    field = "response" if p["responses"] == "sgr" else "original"
    config = TrainConfig.model_validate(p["train"]).heal_config(field, p["seed"])
    target = ctx.work / "model"
    if not (target / "healing.json").exists():
        heal(model_path(ctx.input(0)), data, target, config, overwrite=target.exists())
    os.replace(target, out / "model")


def run_check(ctx, out: Path) -> None:
    """Engine parity of a pruned model (`layerprune check`); check.json says whether the engines agree."""
    from layerprune.check import check_engines

    c = ctx.step.params["check"]
    check_engines(model_path(ctx.input(0)), num_prompts=c["prompts"], max_new_tokens=c["max_new_tokens"],
                  atol=c["atol"], device=ctx.cfg.device, settings=_engine(ctx)[1], out=out / "check.json",
                  progress=False)


RUNNERS = {
    "model": run_model,
    "score": run_score,
    "prompts": run_prompts,
    "sgr": run_sgr,
    "heal": run_heal,
    "prune": run_prune,
    "eval": run_eval,
    "speed": run_speed,
    "check": run_check,
}
