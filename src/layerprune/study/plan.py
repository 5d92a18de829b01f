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
    ev = cfg.eval.model_dump()
    for m in cfg.models:
        src = b.add("model", f"model {m.name}", {"model": m.model_dump(exclude={"name"})})
        L = _num_layers(m)

        def evaluate(model_step: str, what: str) -> str:
            return b.add("eval", f"eval {what}", {"eval": ev, "chat_template": m.chat_template,
                                                  "system_prompt": m.system_prompt, "seed": cfg.seed,
                                                  **_engine(cfg, "eval")}, (model_step,))

        def speed(model_step: str, what: str) -> str | None:
            if not cfg.speed.enabled:
                return None
            return b.add("speed", f"speed {what}", {"speed": cfg.speed.model_dump(), "seed": cfg.seed}, (model_step,))

        variants.append(_variant(m.name, None, 0, 0.0, "none", evaluate(src, m.name), speed(src, m.name), L))
        data = _healing_data(b, cfg, m, src)
        sizes = _sizes(cfg, L, m)
        for criterion in cfg.pruning.criteria:
            # One score step serves every size: see `layerprune.scoring.score` (one pass, or the first n rounds).
            score = b.add("score", f"score {m.name}/{criterion}", {
                "method": criterion, "num_drop": [n for n, _ in sizes], "protected": cfg.pruning.protected,
                "calibration": cfg.pruning.calibration.model_dump(), "seed": cfg.seed,
                "options": cfg.pruning.options.get(criterion, {}),
                **(_engine(cfg, "score") if criterion == "task_iterative" else {})}, (src,))
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
                    healed = b.add("heal", f"heal {tag}/{arm.label}", {
                        "arm": arm.kind, "responses": arm.responses,
                        "train": cfg.healing.train_for(arm).model_dump(), "seed": cfg.seed,
                        "chat_template": m.chat_template}, (pruned, data[arm.responses]))
                    variants.append(_variant(m.name, criterion, n, ratio, arm.label,
                                             evaluate(healed, f"{tag}/{arm.label}"), sp, L))
    return Plan(tuple(b.steps.values()), tuple(variants))


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
    needs = {a.responses for a in cfg.healing.arms if a.kind != "none"}
    if not needs:
        return {}
    pool = b.add("prompts", "prompts", {"prompts": cfg.healing.prompts.model_dump(), "seed": cfg.seed})
    out = {"original": pool}
    if "sgr" in needs:  # one SGR set per teacher: the unpruned model answers the pool
        out["sgr"] = b.add("sgr", f"sgr {m.name}", {"sgr": cfg.healing.sgr.model_dump(), "seed": cfg.seed,
                                                    "chat_template": m.chat_template, **_engine(cfg, "sgr")},
                                  (src, pool))
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
