"""One runner per step kind: read the dependencies' outputs, call the library verb, write into `out`.

Every runner is a thin adapter over a public function (`prune`, `score`, `evaluate`, `generate_sgr`, `heal`,
`speed.speed_record`), so a study does exactly what the CLI verbs do.
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
    from layerprune.hub import fetch_model
    from layerprune.provenance import fingerprint_source
    from layerprune.tiny import save_tiny

    m = ModelConfig.model_validate({"name": "x", **ctx.step.params["model"]})
    if m.tiny is not None:
        save_tiny(m.tiny.family, out / "model", seed=m.tiny.seed, num_layers=m.tiny.layers)
        return
    # a hub id is downloaded first (pinned to the resolved commit), so the fingerprint covers the real files
    src = fetch_model(_resolve(m.path, ctx.base_dir))
    record = {**src, "dtype": m.dtype, "fingerprint": fingerprint_source(src["path"])}
    (out / "model.json").write_text(json.dumps(record, indent=2))


def run_score(ctx, out: Path) -> None:
    from layerprune.loading import load_model
    from layerprune.provenance import write_json
    from layerprune.scoring import score

    p, cal = ctx.step.params, ctx.step.params["calibration"]
    model, tokenizer = load_model(model_path(ctx.input(0)), dtype=model_dtype(ctx.input(0)), device=ctx.cfg.device)

    def run(seed: int) -> dict:
        return score(model, tokenizer, p["method"], num_drop=p["num_drop"], protected=p["protected"], seed=seed,
                     calibration=_resolve(cal["source"], ctx.base_dir) if cal["source"] else None,
                     seq_len=cal["seq_len"], num_samples=cal["num_samples"], text_field=cal["text_field"],
                     options=_score_options(ctx))

    if p.get("calibration_seeds"):  # selection stability: one run per calibration draw
        from layerprune.scoring.stability import selection_stability

        record = selection_stability(model, tokenizer, p["method"], p["calibration_seeds"], score_fn=run)
    else:
        record = run(p["seed"])
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
    for key in ("chat_template", "system_prompt", "fewshot_as_multiturn"):  # the model's prompt, as in eval
        if key in ctx.step.params and key not in options:
            options[key] = ctx.step.params[key]
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
        system_prompt=p["system_prompt"], fewshot_as_multiturn=p.get("fewshot_as_multiturn"),
        max_new_tokens_cap=ev["max_new_tokens"],
        max_new_tokens_by_task=tuple(sorted(ev.get("max_new_tokens_by_task", {}).items())),
        temperature=ev["temperature"], top_p=ev["top_p"], num_samples=ev["num_samples"],
        allow_weaker_sandbox=ev.get("allow_weaker_sandbox", False))
    evaluate(model_path(ctx.input(0)), ev["tasks"], opts, out_dir=out, batch_size=ev["batch_size"],
             dtype=model_dtype(ctx.input(0)),
             device=ctx.cfg.device, progress=False, resume_dir=ctx.work / "tasks",  # a rerun runs only unfinished tasks
             engine=_engine(ctx)[0], engine_settings=_engine(ctx)[1])


def run_speed(ctx, out: Path) -> None:
    """Time the step's model; a pruned one interleaved with its baseline (second dependency) in this process."""
    from layerprune.loading import load_model
    from layerprune.provenance import write_json
    from layerprune.study.speed import speed_record

    sp = dict(ctx.step.params["speed"])
    sp.pop("enabled")
    models = [load_model(model_path(ctx.input(i)), dtype=model_dtype(ctx.input(i)), device=ctx.cfg.device,
                         tokenizer=False)[0] for i in range(len(ctx.step.deps))]
    write_json(out / "speed.json", speed_record(models[0], models[1] if len(models) > 1 else None, **sp,
                                                seed=ctx.step.params["seed"]))


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
    info: dict = {"source": pr["source"]}
    pool = load_prompts(source, info)
    from layerprune.healing.chat import SYSTEM_PROMPT

    keep = _token_limit(ctx, pr["max_prompt_tokens"], ctx.step.params.get("system_prompt", SYSTEM_PROMPT))
    chosen = select(pool, pr["num"], ctx.step.params["seed"], keep=keep, allow_fewer=pr["allow_fewer"], stats=info)
    lines = [json.dumps({"id": p.id, "messages": list(p.messages) + (
        [{"role": "assistant", "content": p.original}] if p.original is not None else [])}) for p in chosen]
    (out / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    (out / "prompts.json").write_text(json.dumps({**info, "max_prompt_tokens": pr["max_prompt_tokens"],
                                                  "seed": ctx.step.params["seed"]}, indent=2))


def _token_limit(ctx, limit: int | None, system: str):
    """Keep prompts whose rendered text (system prompt and chat template, as SGR shows it) fits `limit` tokens of
    the model's tokenizer (the step's dependency when a limit is set)."""
    if limit is None:
        return None
    from layerprune.errors import UsageError
    from layerprune.healing.chat import render_prompt, with_system
    from layerprune.loading import load_tokenizer

    tok = load_tokenizer(model_path(ctx.input(0)))
    if tok is None:
        raise UsageError("healing.prompts.max_prompt_tokens needs the model's tokenizer; save one with the model")
    return lambda p: len(tok(render_prompt(tok, with_system(list(p.messages), system)))["input_ids"]) <= limit


def _renamed(source: str, fields: dict[str, str], dest: Path) -> Path:
    with open(source) as f, open(dest, "w") as g:
        for line in f:
            if line.strip():
                row = json.loads(line)
                g.write(json.dumps({fields.get(k, k): v for k, v in row.items()}) + "\n")
    return dest


def run_sgr(ctx, out: Path) -> None:
    """The unpruned model answers the pool; generated into the work dir so a crash resumes mid-way."""
    from layerprune.healing.chat import SYSTEM_PROMPT
    from layerprune.healing.sgr import generate_sgr

    sgr, p = ctx.step.params["sgr"], ctx.step.params
    work_file = ctx.work / "sgr.jsonl"
    generate_sgr(model_path(ctx.input(0)), str(ctx.input(1) / "prompts.jsonl"), work_file, seed=p["seed"],
                 shuffle_seed=p["seed"], max_new_tokens=sgr["max_new_tokens"], temperature=sgr["temperature"],
                 top_p=sgr["top_p"], batch_size=sgr["batch_size"], device=ctx.cfg.device,
                 process_group_timeout_s=sgr["process_group_timeout_s"],
                 dtype=model_dtype(ctx.input(0)), engine=_engine(ctx)[0], engine_settings=_engine(ctx)[1],
                 system_prompt=p.get("system_prompt", SYSTEM_PROMPT))
    os.replace(work_file, out / "sgr.jsonl")


def run_heal(ctx, out: Path) -> None:
    """Train in the work dir (trainer checkpoints survive a crash), then move the healed model into place."""
    from layerprune.study.config import TrainConfig

    p = ctx.step.params
    target = ctx.work / "model"
    if p["arm"] == "linear":
        if not (target / "healing.json").exists():
            _repair(ctx, target)
        os.replace(target, out / "model")
        return
    data_dir = ctx.input(1)
    data = data_dir / ("sgr.jsonl" if (data_dir / "sgr.jsonl").exists() else "prompts.jsonl")
    field = "response" if p["responses"] == "sgr" else "original"
    train = TrainConfig.model_validate(p["train"])
    config = train.heal_config(field, p["seed"])
    if not (target / "healing.json").exists():
        call = dict(model=model_path(ctx.input(0)), data=data, out=target, config=config, overwrite=target.exists())
        if p["arm"] == "kd":
            from layerprune.healing.kd import KDConfig

            call["kd"] = KDConfig(teacher=model_path(ctx.input(2)), student=config.mode, **p["kd"])
        _train("distill" if p["arm"] == "kd" else "heal", call, train.processes, ctx.work)
    os.replace(target, out / "model")


def _train(fn: str, call: dict, processes: int, work: Path) -> None:
    """heal/distill in this process, or as DDP under `accelerate launch` (study/launch.py)."""
    if processes > 1:
        from layerprune.study.launch import train_in_processes

        return train_in_processes(fn, call, processes, work / "launch.log")
    if fn == "distill":
        from layerprune.healing.kd import distill

        return distill(**call)
    from layerprune.healing.sft import heal

    return heal(**call)


def _repair(ctx, target: Path) -> None:
    """`linear`: ReplaceMe's repair on the study's pruning calibration text."""
    from layerprune.healing.linear import LinearConfig, repair

    p, cal = ctx.step.params, ctx.step.params["calibration"]
    config = LinearConfig(calibration=_resolve(cal["source"], ctx.base_dir) if cal["source"] else None,
                          text_field=cal["text_field"], seq_len=cal["seq_len"], num_samples=cal["num_samples"],
                          seed=p["seed"], **p["linear"])
    repair(model_path(ctx.input(0)), target, config, overwrite=target.exists(), device=ctx.cfg.device)


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
