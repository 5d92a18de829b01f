"""StudyConfig → an immutable, ordered plan of steps. A step's id is a hash of its inputs (its parameters and
the ids of the steps it reads), so identical work is planned once — one SGR set per teacher, one baseline eval
per model, one score per (model, criterion) for all its sizes — and a changed setting gives new ids while finished steps with unchanged inputs are reused.

    plan = make_plan(cfg)
    for step in plan.steps: print(step.id, step.deps)       # dependency order
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from layerprune.errors import UsageError
from layerprune.study.config import ModelConfig, StudyConfig

KINDS = ("model", "score", "prune", "prompts", "sgr", "heal", "eval", "speed", "check")


@dataclass(frozen=True)
class Step:
    kind: str
    label: str  # human-readable, e.g. "eval tiny/bi/n2/sgr"
    params: dict[str, Any] = field(hash=False)  # everything that determines the output (JSON-serializable)
    deps: tuple[str, ...] = ()  # ids of the steps whose outputs this step reads
    id: str = ""

    def __post_init__(self):
        blob = json.dumps({"kind": self.kind, "params": self.params, "deps": self.deps}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        slug = self.label.replace(" ", "-").replace("/", "_")
        object.__setattr__(self, "id", f"{slug}-{digest}")


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    variants: tuple[dict[str, Any], ...]  # one per evaluated model: {model, criterion, n, ratio, arm, eval, speed}
    scaling: tuple[dict[str, Any], ...] = ()  # sampled evaluations for test-time scaling curves, same shape

    def by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for s in self.steps if s.kind == k) for k in KINDS if any(s.kind == k for s in self.steps)}


class _Builder:
    def __init__(self):
        self.steps: dict[str, Step] = {}

    def add(self, kind: str, label: str, params: dict[str, Any], deps: tuple[str, ...] = ()) -> str:
        step = Step(kind, label, params, deps)
        self.steps.setdefault(step.id, step)  # identical inputs → one step
        return step.id


def make_plan(cfg: StudyConfig) -> Plan:
    b = _Builder()
    variants: list[dict[str, Any]] = []
    ev = _eval_params(cfg)
    for m in cfg.models:
        src = b.add("model", f"model {m.name}", {"model": m.model_dump(exclude={"name"})})
        L = _num_layers(m)
        prompt = _prompt_params(m)  # one prompt rendering for scoring (task_iterative) and every evaluation

        def evaluate(model_step: str, what: str) -> str:
            return b.add("eval", f"eval {what}", {"eval": ev, **prompt, "seed": cfg.seed, **_engine(cfg, "eval")},
                         (model_step,))

        def speed(model_step: str, what: str) -> str | None:
            if not cfg.speed.enabled:
                return None
            # a pruned model is timed interleaved with its baseline (deps: pruned, source): load drift hits both
            deps = (model_step,) if model_step == src else (model_step, src)
            return b.add("speed", f"speed {what}", {"speed": cfg.speed.model_dump(), "seed": cfg.seed}, deps)

        variants.append(_variant(m.name, None, 0, 0.0, "none", evaluate(src, m.name), speed(src, m.name), L))
        data = _healing_data(b, cfg, m, src)
        sizes = _sizes(cfg, L, m)
        for criterion in cfg.pruning.criteria:
            # One score step serves every size: see `layerprune.scoring.score` (one pass, or the first n rounds).
            score = b.add("score", f"score {m.name}/{criterion}", {
                "method": criterion, "num_drop": [n for n, _ in sizes], "protected": cfg.pruning.protected,
                "calibration": cfg.pruning.calibration.model_dump(), "seed": cfg.seed,
                "options": cfg.pruning.options.get(criterion, {}),
                **(prompt if criterion == "task_iterative" else {}),
                **({"calibration_seeds": cfg.pruning.calibration_seeds} if cfg.pruning.calibration_seeds else {}),
                **(_engine(cfg, "score") if criterion == "task_iterative" else {})},
                (src,))

            def heal(model_step: str, tag: str, arm, train: dict) -> str:
                return _heal_step(b, cfg, m, arm, tag, model_step, data, src, train)

            for n, ratio in sizes:
                tag = f"{m.name}/{criterion}/n{n}"
                pruned = b.add("prune", f"prune {tag}", {"num_drop": n}, (src, score))
                sp = speed(pruned, tag)
                if cfg.check.enabled:
                    b.add("check", f"check {tag}", {"check": cfg.check.model_dump(), **_engine(cfg, "check")},
                          (pruned,))
                variants.append(_variant(m.name, criterion, n, ratio, "none", evaluate(pruned, tag), sp, L))
                for arm in cfg.healing.arms:
                    if arm.kind == "none":
                        continue
                    healed = heal(pruned, tag, arm, cfg.healing.train_for(arm).model_dump())
                    variants.append(_variant(m.name, criterion, n, ratio, arm.label,
                                             evaluate(healed, f"{tag}/{arm.label}"), sp, L))
            if cfg.pruning.schedule == "iterative":
                variants += _iterative(b, cfg, m, criterion, src, score, sizes, heal, evaluate, L)
    scaling = _scaling(b, cfg, variants)
    return Plan(tuple(b.steps.values()), tuple(variants), tuple(scaling))


def _scaling(b: _Builder, cfg: StudyConfig, variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A sampled eval step per chosen variant (baseline, first criterion's cuts, its healed arms), reading the
    same model step as that variant's own eval."""
    sc = cfg.eval.scaling
    if sc is None:
        return []
    from layerprune.study.scaling import generative_tasks

    tasks = sc.tasks or generative_tasks(cfg.eval.tasks)
    if not tasks:
        raise UsageError("eval.scaling: the study has no generative task; list some in eval.scaling.tasks")
    criteria = sc.criteria or cfg.pruning.criteria[:1]
    ev = {**_eval_params(cfg), "tasks": tasks, "limit": sc.limit or cfg.eval.limit,
          "num_samples": sc.samples, "temperature": sc.temperature, "top_p": sc.top_p}
    out = []
    for v in variants:
        if v["criterion"] is not None and (v["criterion"] not in criteria or
                                           (v["arm"] != "none" and sc.arms is not None and v["arm"] not in sc.arms)):
            continue
        step = b.steps[v["eval"]]
        sampled = b.add("eval", step.label.replace("eval ", "scaling ", 1), {**step.params, "eval": ev}, step.deps)
        out.append({**v, "eval": sampled, "speed": None})
    return out


def _iterative(b: _Builder, cfg: StudyConfig, m: ModelConfig, criterion: str, src: str, score: str,
               sizes: list[tuple[int, float]], heal, evaluate, L: int) -> list[dict[str, Any]]:
    """Cut `step` layers, re-score the healed model, heal, repeat (NVIDIA's "cut, heal, repeat"), per healing arm;
    and, for comparison, the one-shot cut healed with the same total optimizer steps. A round that cuts a size
    the one-shot plan also cuts from the source reuses its steps, so step == target equals one-shot exactly."""
    out, step, one_shot_sizes = [], cfg.pruning.step, {n for n, _ in sizes}
    for arm in (a for a in cfg.healing.arms if a.kind != "none"):
        train = cfg.healing.train_for(arm).model_dump()
        current, removed, rounds = src, 0, 0
        for n, ratio in sizes:
            while removed < n:
                k = min(step, n - removed)
                tag = f"{m.name}/{criterion}/iter{step}/n{removed + k}"
                rescored = score if removed == 0 and k in one_shot_sizes else b.add(
                    "score", f"score {tag}", {**b.steps[score].params, "num_drop": [k]}, (current,))
                pruned = b.add("prune", f"prune {tag}" if current != src else f"prune {m.name}/{criterion}/n{k}",
                               {"num_drop": k}, (current, rescored))
                current = heal(pruned, tag if current != src else f"{m.name}/{criterion}/n{k}", arm, train)
                removed, rounds = removed + k, rounds + 1
            schedule = {"kind": "iterative", "step": step, "rounds": rounds, "heal_budget": _budget(train, rounds)}
            what = f"{m.name}/{criterion}/n{n}/{arm.label}" + ("+iterative" if rounds > 1 else "")  # 1 round: one-shot
            out.append(_variant(m.name, criterion, n, ratio, f"{arm.label}+iterative", evaluate(current, what), None, L)
                       | {"schedule": schedule})
            if rounds > 1:  # one-shot with the iterative chain's total healing budget
                tag = f"{m.name}/{criterion}/n{n}"
                pruned = b.add("prune", f"prune {tag}", {"num_drop": n}, (src, score))
                budget = heal(pruned, f"{tag}/budget{rounds}x", arm, _scaled(train, rounds))
                out.append(_variant(m.name, criterion, n, ratio, f"{arm.label}+budget",
                                    evaluate(budget, f"{tag}/{arm.label}+budget"), None, L)
                           | {"schedule": {"kind": "oneshot", "heal_budget": _budget(train, rounds)}})
    return out


def _scaled(train: dict[str, Any], rounds: int) -> dict[str, Any]:
    """The same recipe trained `rounds` times as long: max_steps × rounds, or epochs × rounds."""
    if train["max_steps"] is not None:
        return {**train, "max_steps": train["max_steps"] * rounds}
    return {**train, "epochs": train["epochs"] * rounds}


def _budget(train: dict[str, Any], rounds: int) -> str:
    return (f"{train['max_steps'] * rounds} optimizer steps" if train["max_steps"] is not None
            else f"{train['epochs'] * rounds:g} epochs")


def _prompt_params(m: ModelConfig) -> dict[str, Any]:
    """How the model's prompts are rendered (fewshot_as_multiturn only when set, so older step ids stay)."""
    out = {"chat_template": m.chat_template, "system_prompt": m.system_prompt}
    if m.fewshot_as_multiturn is not None:
        out["fewshot_as_multiturn"] = m.fewshot_as_multiturn
    return out


def _heal_step(b: _Builder, cfg: StudyConfig, m: ModelConfig, arm, tag: str, pruned: str, data: dict[str, str],
               src: str, train: dict[str, Any]) -> str:
    """The step that produces `arm`'s model. `linear` is one shared step per cut (also the start of
    `linear+sgr`); `kd` reads the unpruned model as its teacher."""
    if arm.kind in ("linear", "linear+sgr"):
        linear = b.add("heal", f"heal {tag}/linear", {
            "arm": "linear", "linear": cfg.healing.linear.model_dump(),
            "calibration": cfg.pruning.calibration.model_dump(), "seed": cfg.seed}, (pruned,))
        if arm.kind == "linear":
            return linear
        pruned = linear  # linear+sgr: SFT on SGR from the repaired model
    if train.get("processes") == 1:  # one process: the step's identity as before the option existed
        train = {k: v for k, v in train.items() if k != "processes"}
    params = {"arm": "sgr" if arm.kind == "linear+sgr" else arm.kind, "responses": arm.responses,
              "train": train, "seed": cfg.seed, "chat_template": m.chat_template}
    if arm.kind == "kd":
        params["kd"] = cfg.healing.kd.model_dump()
        return b.add("heal", f"heal {tag}/{arm.label}", params, (pruned, data[arm.responses], src))
    return b.add("heal", f"heal {tag}/{arm.label}", params, (pruned, data[arm.responses]))


def _eval_params(cfg: StudyConfig) -> dict[str, Any]:
    """The eval section as step parameters; newer options only when set, so existing step ids stay valid."""
    ev = cfg.eval.model_dump(exclude={"scaling"})
    for key, default in (("allow_weaker_sandbox", False), ("max_new_tokens_by_task", {})):
        if ev.get(key) == default:
            ev.pop(key, None)
    return ev


def _engine(cfg: StudyConfig, kind: str) -> dict[str, Any]:
    """The step's engine parameters; nothing for the HF engine, so existing step ids do not change."""
    engine = "vllm" if kind == "check" else getattr(cfg.engine, kind)
    if engine == "hf":
        return {}
    return {"engine": engine, "engine_settings": cfg.engine.model_dump(include={"tensor_parallel_size", "max_model_len"})}


def _variant(model, criterion, n, ratio, arm, eval_id, speed_id, L) -> dict[str, Any]:
    return {"model": model, "criterion": criterion, "num_drop": n, "ratio": ratio, "arm": arm,
            "num_layers": L, "eval": eval_id, "speed": speed_id}


def _healing_data(b: _Builder, cfg: StudyConfig, m: ModelConfig, src: str) -> dict[str, str]:
    """Step ids of the training files: the prompt pool (original responses) and, if any arm needs it, SGR."""
    needs = {a.responses for a in cfg.healing.arms if a.kind not in ("none", "linear")}
    if not needs:
        return {}
    # a token limit is measured with the model's tokenizer, so the pool is then per model
    per_model = cfg.healing.prompts.max_prompt_tokens is not None
    # SGR prompts open with the system prompt the model is evaluated with (the paper's when none is set);
    # set only when given, so studies without one keep their steps
    system = {"system_prompt": m.system_prompt} if m.chat_template and m.system_prompt is not None else {}
    pool = b.add("prompts", f"prompts {m.name}" if per_model else "prompts",
                 {"prompts": cfg.healing.prompts.model_dump(), "seed": cfg.seed, **(system if per_model else {})},
                 (src,) if per_model else ())
    out = {"original": pool}
    if "sgr" in needs:  # one SGR set per teacher: the unpruned model answers the pool
        out["sgr"] = b.add("sgr", f"sgr {m.name}", {"sgr": cfg.healing.sgr.model_dump(), "seed": cfg.seed,
                                                    "chat_template": m.chat_template, **_engine(cfg, "sgr"),
                                                    **system}, (src, pool))
    return out


def _sizes(cfg: StudyConfig, L: int, m: ModelConfig) -> list[tuple[int, float]]:
    """(layers to drop, share of L actually removed), deduplicated; ratios round down, at least 1 layer."""
    counts = cfg.pruning.num_drop or [max(1, math.floor(r * L)) for r in cfg.pruning.ratios]
    for n in counts:
        if n >= L - len(set(cfg.pruning.protected or [])):
            raise UsageError(f"pruning: removing {n} of {m.name}'s {L} layers leaves too few; lower the ratio")
    return [(n, n / L) for n in sorted(set(counts))]


def _num_layers(m: ModelConfig) -> int:
    if m.tiny is not None:
        return m.tiny.layers
    if m.num_layers is not None:
        return m.num_layers
    from layerprune.families import num_layers
    from layerprune.loading import load_config

    try:
        return num_layers(load_config(m.path))
    except UsageError as err:
        raise UsageError(f"models.{m.name}: cannot read the layer count ({err}); add `num_layers:` to plan offline") from None
