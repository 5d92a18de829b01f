"""``task_iterative`` — the seed paper's own selector ("On the Limits of Layer Pruning for Generative Reasoning
in LLMs", arXiv 2602.01997; `layer_pruner/script.py`, methods.md §1.3): iterative greedy on task accuracy.

Round r, with R removed so far, scores every alive unprotected candidate j by

    s(j) = (1/|tasks|) Σ_task  score_task(model without R ∪ {j}) / score_task(model without R=∅)

(the denominator is the *unpruned* model's score, as in the paper) and removes argmax_j s(j); ties go to the
later layer index, as in the paper. score_task is the task's `primary_metric` (e.g. ``acc``, ``pass@1``,
``exact_match,flexible-extract``) from `layerprune.evaluation.runner.evaluate` on the first
``samples`` documents of the task's evaluation split. Candidates are evaluated on the unpruned model with the
layers skipped (`surgery.skipped_layers`), which computes exactly what removal computes.

Options (``--tasks``, ``--task-samples``, ``data_dir``; ``chat_template``, ``system_prompt``,
``fewshot_as_multiturn`` render the prompts exactly as ``eval`` does, so a chat model is scored on its chat
prompts — a study passes its model's settings): tasks default ``gsm8k,humaneval`` (the paper: gsm8k, humaneval+,
xsum), samples default 100. Layer 0 is protected by default. Unlike the paper (temperature 0.9), generation
is greedy, so a round is reproducible.
"""

from __future__ import annotations

from pathlib import Path

from layerprune.errors import UsageError
from layerprune.scoring.base import Context, Result
from layerprune.surgery import skipped_layers

DEFAULT_TASKS = "gsm8k,humaneval"


def _task_scores(ctx: Context, tasks: list[str], samples: int, skip: list[int], engine=None) -> dict[str, float]:
    from layerprune.evaluation.runner import evaluate
    from layerprune.evaluation.tasks import get_task
    from layerprune.evaluation.tasks.base import TaskOptions

    opts = task_options(ctx.options, samples)
    with skipped_layers(ctx.model, skip):
        if engine is not None:  # the same candidate in vLLM's worker; log-likelihoods on the HF model above
            engine.skip_layers(skip)
            if opts.chat_template:  # rendered as `evaluate` renders them
                from dataclasses import replace

                from layerprune.evaluation.chat import chat_renderer

                opts = replace(opts, chat_renderer=chat_renderer(ctx.tokenizer, None, opts.system_prompt))
            return {t: float(_run(t, engine, opts)[get_task(t).primary_metric]) for t in tasks}
        out = evaluate(ctx.model, tasks, opts, tokenizer=ctx.tokenizer, progress=False, batch_size=ctx.batch_size)
    return {t: float(out["results"][t][get_task(t).primary_metric]) for t in tasks}


def task_options(options: dict, samples: int):
    """The evaluation options candidates are scored with: the same prompt rendering as `eval` (chat template,
    system prompt, few-shot turns) so layers are chosen on the prompts that are evaluated."""
    from layerprune.evaluation.tasks.base import TaskOptions

    data_dir = options.get("data_dir")
    return TaskOptions(limit=samples, max_new_tokens=int(options.get("max_new_tokens", 256)),
                       data_dir=Path(data_dir) if data_dir else None,
                       chat_template=bool(options.get("chat_template", False)),
                       system_prompt=options.get("system_prompt"),
                       fewshot_as_multiturn=options.get("fewshot_as_multiturn"))


def _run(name: str, backend, opts) -> dict:
    """One task's aggregate metrics on `backend` (a group's size-weighted mean over its members)."""
    from layerprune.evaluation.runner import aggregate_group, run_task
    from layerprune.evaluation.tasks import get_task
    from layerprune.evaluation.tasks.base import TaskGroup

    task = get_task(name)
    if not isinstance(task, TaskGroup):
        return run_task(task, backend, opts)[0]
    results = {m.name: run_task(m, backend, opts)[0] for m in task.tasks}
    return aggregate_group(task, results)


def _vllm_engine(ctx: Context):
    """A vLLM engine of the scored checkpoint that can bypass layers (options engine=vllm), else None."""
    if ctx.options.get("engine", "hf") == "hf":
        return None
    from layerprune.evaluation.hf_backend import HFBackend
    from layerprune.evaluation.vllm_backend import VLLMBackend, VLLMSettings

    if not ctx.options.get("model_path"):
        raise UsageError("task_iterative with engine vllm needs the checkpoint's path (options model_path)")
    settings = VLLMSettings(**{**ctx.options.get("engine_settings", {}), "layer_skipping": True})
    return VLLMBackend(ctx.options["model_path"], settings, tokenizer=ctx.tokenizer, progress=False,
                       scorer=lambda: HFBackend(ctx.model, ctx.tokenizer, batch_size=ctx.batch_size, progress=False))


def task_iterative(ctx: Context) -> Result:
    tasks = [t.strip() for t in str(ctx.options.get("tasks", DEFAULT_TASKS)).split(",") if t.strip()]
    samples = int(ctx.options.get("samples", 100))
    if ctx.tokenizer is None:
        raise UsageError("task_iterative needs the model's tokenizer to build prompts; use a checkpoint with one")
    engine = _vllm_engine(ctx)
    try:
        return _greedy_rounds(ctx, tasks, samples, engine)
    finally:
        if engine is not None:
            engine.close()


def _greedy_rounds(ctx: Context, tasks: list[str], samples: int, engine) -> Result:
    baseline = _task_scores(ctx, tasks, samples, [], engine)
    zero = [t for t, v in baseline.items() if v <= 0]
    if zero:
        raise UsageError(f"the unpruned model scores 0 on {', '.join(zero)} over {samples} samples, so the "
                         "normalised score is undefined; use more --task-samples or other --tasks")
    removed: list[int] = []
    rounds = []
    for r in range(ctx.num_drop):
        candidates = [j for j in range(ctx.num_layers) if j not in removed and j not in ctx.protected]
        desc = f"task_iterative round {r + 1}/{ctx.num_drop}"
        per_task = {j: _task_scores(ctx, tasks, samples, removed + [j], engine)
                    for j in ctx.each(candidates, desc, unit="candidate")}
        score = {j: sum(per_task[j][t] / baseline[t] for t in tasks) / len(tasks) for j in candidates}
        chosen = max(candidates, key=lambda j: (score[j], j))
        rounds.append({"removed_before": sorted(removed), "score": {str(j): score[j] for j in candidates},
                       "task_scores": {str(j): per_task[j] for j in candidates}, "chosen": chosen})
        removed.append(chosen)
    first = rounds[0]["score"]
    scores = [first.get(str(j)) for j in range(ctx.num_layers)]
    return Result(scores, select="highest", rounds=rounds,
                  extra={"baseline_task_scores": baseline, "tasks": tasks, "task_samples": samples,
                         "chat_template": bool(ctx.options.get("chat_template", False)),
                         "system_prompt": ctx.options.get("system_prompt")})
