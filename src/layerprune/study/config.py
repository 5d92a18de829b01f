"""The study schema: the only home of a study's defaults. Unknown keys are rejected with their path.

    cfg = load_study_config("configs/ci/tiny.yaml")       # UsageError on any problem, before any work

A study prunes each model with each criterion at each ratio (or layer count), heals each pruned model with each
healing arm, and evaluates baseline, pruned and healed models on the same tasks.
"""

from __future__ import annotations

import difflib

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from layerprune.errors import UsageError
from layerprune.healing.kd import STUDENTS, KDConfig
from layerprune.healing.linear import LinearConfig
from layerprune.healing.sft import HealConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModel(_Strict):
    """Build a tiny random model from a transformers config instead of loading one (smoke studies, CI)."""

    family: str = "llama"
    layers: int = Field(8, ge=2)
    seed: int = 0


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="short label used in step names and the report")
    path: str | None = Field(None, description="local directory or hub id")
    tiny: TinyModel | None = None
    dtype: str | None = Field(None, description="float32 | bfloat16 | float16; default: the checkpoint's")
    num_layers: int | None = Field(None, ge=2, description="layer count, to plan offline when the config is unreachable")
    chat_template: bool = False
    system_prompt: str | None = None
    fewshot_as_multiturn: bool | None = Field(None, description="few-shot as chat turns; default: on with chat_template")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.tiny is None):
            raise ValueError(f"model {self.name!r}: give exactly one of `path` or `tiny`")
        return self


class CalibrationConfig(_Strict):
    source: str | None = Field(None, description=".txt/.jsonl path or hub dataset id; default: the criterion's own")
    text_field: str = "text"
    seq_len: int = Field(128, ge=8)
    num_samples: int = Field(32, ge=1)


class PruningConfig(_Strict):
    criteria: list[str] = Field(default_factory=lambda: ["reverse", "bi"], min_length=1)
    ratios: list[float] | None = Field(None, description="fractions of layers to remove, each in (0, 1)")
    num_drop: list[int] | None = Field(None, description="layer counts to remove (instead of ratios)")
    protected: list[int] | None = Field(None, description="layers no criterion may remove; default: each criterion's own")
    calibration: CalibrationConfig = CalibrationConfig()
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-criterion options, e.g. {task_iterative: {tasks: gsm8k, samples: 50}}")
    schedule: Literal["oneshot", "iterative"] = Field(
        "oneshot", description="iterative: also cut `step` layers, re-score, heal, repeat (per healing arm), "
                               "beside one-shot pruning healed with the same total optimizer steps")
    step: int | None = Field(None, ge=1, description="iterative: layers removed per prune→heal round")
    calibration_seeds: list[int] | None = Field(
        None, min_length=2, description="repeat each criterion over these calibration draws: selection stability "
                                        "(the first seed's choice is pruned; the report flags unstable choices)")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v):
        for r in v or []:
            if not 0 < r < 1:
                raise ValueError(f"ratio {r} is outside (0, 1)")
        return v

    @field_validator("num_drop")
    @classmethod
    def _counts(cls, v):
        for n in v or []:
            if n < 1:
                raise ValueError(f"num_drop {n} must be at least 1")
        return v

    @model_validator(mode="after")
    def _one_size(self):
        if (self.ratios is None) == (self.num_drop is None):
            raise ValueError("pruning: give exactly one of `ratios` or `num_drop`")
        if (self.schedule == "iterative") != (self.step is not None):
            raise ValueError("pruning: `step` (layers per round) goes with `schedule: iterative`, and only with it")
        if self.schedule == "iterative" and self.protected is not None:
            raise ValueError("pruning: `protected` indices shift between iterative rounds; drop it or use oneshot")
        return self


class PromptsConfig(_Strict):
    source: str | None = Field(None, description="JSONL of Alpaca/messages/prompt rows, or a hub dataset id")
    fields: dict[str, str] = Field(default_factory=dict,
                                   description="rename source fields first, e.g. {question: instruction, answer: output}")
    num: int = Field(200, ge=1)
    allow_fewer: bool = Field(False, description="take every usable prompt when the source has fewer than `num` "
                                                 "(recorded); otherwise that is an error naming the count")
    max_prompt_tokens: int | None = Field(None, ge=1, description="skip prompts longer than this (the teacher's "
                                                                  "tokens, chat template included); counted")


class SGRConfig(_Strict):
    temperature: float = Field(0.9, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(1024, ge=1)
    batch_size: int = Field(8, ge=1)
    process_group_timeout_s: int = Field(7200, ge=60, description="collective timeout under accelerate launch")


_H = HealConfig()  # healing defaults live in HealConfig; the study reuses them
_KD = KDConfig()
_LIN = LinearConfig()


class TrainConfig(_Strict):
    mode: Literal["lora", "qlora", "full", "partial", "lm"] = _H.mode
    lora_r: int = _H.lora_r
    lora_alpha: int = _H.lora_alpha
    lora_dropout: float = _H.lora_dropout
    lr: float | None = Field(_H.lr, description="default: 2e-4 for LoRA arms, 2e-5 for full/partial")
    warmup_steps: int = _H.warmup_steps
    epochs: float = _H.epochs
    max_steps: int | None = Field(None, description="stop after N optimizer steps (default: one epoch)")
    batch_size: int = _H.batch_size
    grad_accum: int = _H.grad_accum
    max_length: int = _H.max_length
    partial_layers: int = _H.partial_layers
    process_group_timeout_s: int = Field(_H.process_group_timeout_s, ge=60,
                                         description="collective timeout under accelerate launch (torch: 10 min)")
    keep_truncated: bool = Field(_H.keep_truncated, description="train on SGR responses cut at max_new_tokens too")
    processes: int = Field(1, ge=1, description="processes per heal step: DDP under accelerate launch on the step's "
                                                "devices (give Ray's heal steps as many GPUs); effective batch = "
                                                "batch_size × grad_accum × processes")

    def heal_config(self, response_field: str, seed: int) -> HealConfig:
        fields = self.model_dump(exclude={"processes"})
        fields["max_steps"] = -1 if self.max_steps is None else self.max_steps
        return HealConfig(**fields, response_field=response_field, seed=seed)


ArmKind = Literal["none", "original", "sgr", "partial", "lm", "kd", "linear", "linear+sgr"]
DATA_FREE_ARMS = ("none", "linear")  # arms that train on no responses


class ArmConfig(_Strict):
    """A healing arm: `none` (no healing), `original` (dataset responses), `sgr` (the unpruned model's own
    responses), `partial` (last k layers + head, Lu et al.), `lm` (LM loss on plain text, Gromov et al.),
    `kd` (logit distillation from the unpruned model on the SGR rows), `linear` (training-free ReplaceMe repair
    on the pruning calibration text), `linear+sgr` (the linear repair, then SFT on SGR)."""

    kind: ArmKind
    name: str | None = None
    data: Literal["original", "sgr"] | None = Field(
        None, description="responses trained on; default: sgr for `sgr`, `kd`, `linear+sgr`, the dataset's original "
                          "ones otherwise")
    train: TrainConfig | None = Field(None, description="replaces healing.train for this arm")

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def responses(self) -> str:
        return self.data or ("sgr" if self.kind in ("sgr", "kd", "linear+sgr") else "original")


class KDOptions(_Strict):
    """`kd` arms: TRL GKD settings (the student is `train.mode`: lora, qlora or full)."""

    lmbda: float = Field(_KD.lmbda, ge=0, le=1, description="share of on-policy batches")
    beta: float = Field(_KD.beta, ge=0, le=1, description="0 forward KL … 1 reverse KL")
    temperature: float = Field(_KD.temperature, gt=0)
    max_new_tokens: int = Field(_KD.max_new_tokens, ge=1, description="on-policy answer length")


class LinearOptions(_Strict):
    """`linear` arms: calibration is `pruning.calibration` (default source: healing.linear.DEFAULT_CALIBRATION)."""

    ridge: float = Field(_LIN.ridge, ge=0)
    alpha: float | None = Field(_LIN.alpha, description="fold I + α(T − I); default: α by calibration NLL")


class HealingConfig(_Strict):
    arms: list[ArmConfig] = Field(default_factory=lambda: [ArmConfig(kind="none")])
    prompts: PromptsConfig = PromptsConfig()
    sgr: SGRConfig = SGRConfig()
    train: TrainConfig = TrainConfig()
    kd: KDOptions = KDOptions()
    linear: LinearOptions = LinearOptions()

    @model_validator(mode="after")
    def _kd_student(self):
        for arm in self.arms:
            if arm.kind == "kd" and self.train_for(arm).mode not in STUDENTS:
                raise ValueError(f"arm {arm.label!r}: a kd student trains as {', '.join(STUDENTS)}, "
                                 f"not {self.train_for(arm).mode!r}; set its train.mode")
            if arm.kind in DATA_FREE_ARMS and (arm.data or arm.train):
                raise ValueError(f"arm {arm.label!r} trains on nothing; drop its `data`/`train`")
        return self

    @field_validator("arms", mode="before")
    @classmethod
    def _arm_names(cls, v):
        return [{"kind": a} if isinstance(a, str) else a for a in v]

    def train_for(self, arm: ArmConfig) -> TrainConfig:
        """The arm's training settings; `partial` and `lm` arms fix the mode to their own."""
        base = arm.train or self.train
        return base.model_copy(update={"mode": arm.kind}) if arm.kind in ("partial", "lm") else base


class ScalingConfig(_Strict):
    """Test-time scaling curves: a sampled evaluation of the baseline and chosen pruned/healed variants, giving
    pass@k (and majority vote maj@k on answer tasks) for k = 1, 2, 4, … samples (`layerprune.study.scaling`)."""

    samples: int = Field(8, ge=2, description="samples per document: the curve's largest k")
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    tasks: list[str] | None = Field(None, description="default: the study's generative tasks")
    limit: int | None = Field(None, ge=1, description="documents per task; default: eval.limit")
    criteria: list[str] | None = Field(None, description="criteria whose cuts get curves; default: the first")
    arms: list[str] | None = Field(None, description="healing arm labels that get curves; default: every arm")


class EvalConfig(_Strict):
    tasks: list[str] = Field(min_length=1)
    limit: int | None = Field(None, ge=1)
    num_fewshot: int | None = Field(None, ge=0)
    data_dir: str | None = None
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int | None = Field(None, ge=1, description="a cap over each task's own generation limit "
                                       "(lm-eval's max_gen_toks): lowers it, never raises it; default: no cap")
    max_new_tokens_by_task: dict[str, int] = Field(default_factory=dict,
                                                   description="explicit per-task limits, e.g. {gsm8k: 512}")
    temperature: float = 0.0
    top_p: float = 1.0
    num_samples: int = 1
    scaling: ScalingConfig | None = Field(None, description="test-time scaling curves; off by default")
    allow_weaker_sandbox: bool = Field(False, description="run generated code without Landlock/seccomp if missing")


class SpeedConfig(_Strict):
    """How the speed step measures (layerprune.study.speed): a pruned model is timed interleaved with its baseline."""

    enabled: bool = True
    prompt_tokens: int = Field(128, ge=1)
    new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(1, ge=1, description="the interactive batch (decode tokens/s a single user sees)")
    serving_batch_size: int = Field(8, ge=1, description="a serving batch, measured as well")
    repeats: int = Field(5, ge=1, description="interleaved rounds (each times baseline and pruned model once)")
    warmup_max: int = Field(10, ge=1, description="warm-up runs at most, until two decode timings agree")
    warmup_tolerance: float = Field(0.1, gt=0, description="relative agreement that ends the warm-up")
    max_spread: float = Field(0.25, gt=0, description="IQR/median of the paired ratios above which no speedup "
                                                     "is reported, only a note that the machine was too busy")
    max_seconds: float | None = Field(None, gt=0, description="stop repeating (after 3 rounds) past this time")


class ExecutorConfig(_Strict):
    """Where the steps run: `local` (one process, in order) or `ray` (each ready step a Ray task; docs/scale-out.md)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster: `auto`, HOST:PORT or ray://...; default: start Ray "
                                                   "on this machine (127.0.0.1 only)")
    resources: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per step kind, what its Ray task asks for: {num_cpus, num_gpus, memory, "
                                          "<custom>: n}; default: 1 GPU for model steps when the cluster has GPUs, "
                                          "else 1 CPU (e.g. {heal: {num_gpus: 4}})")
    max_retries: int = Field(2, ge=0, description="times a step is retried when its node or worker is lost")

    @field_validator("resources")
    @classmethod
    def _kinds(cls, v):
        from layerprune.study.plan import KINDS

        for kind, req in v.items():
            if kind not in KINDS:
                raise ValueError(f"unknown step kind {kind!r}; one of {', '.join(KINDS)}")
            for name, amount in req.items():
                if amount < 0:
                    raise ValueError(f"{kind}.{name}: {amount} must be >= 0")
        return v


Engine = Literal["hf", "vllm"]


class EngineConfig(_Strict):
    """Which engine generates, per step kind: `hf` (the reference) or `vllm` (the 'vllm' extra). Log-likelihood
    tasks always score on the HF engine; `score` concerns task-aware criteria (task_iterative)."""

    sgr: Engine = "hf"
    eval: Engine = "hf"
    score: Engine = "hf"
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs one model is split over")
    max_model_len: int | None = Field(None, ge=2, description="vLLM: context length; default the checkpoint's")


class CheckConfig(_Strict):
    """Engine parity check (`layerprune check`) on every pruned model: vLLM vs the HF engine."""

    enabled: bool = False
    prompts: int = Field(16, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    atol: float | None = Field(None, gt=0, description="default: 1e-3 in float32, 0.1 in bfloat16/float16")


class ReportConfig(_Strict):
    safe_threshold: float = Field(0.9, gt=0, le=1, description="retention CI lower bound needed to call a ratio safe")
    bootstrap: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)


class StudyConfig(_Strict):
    name: str = "study"
    seed: int = 1234
    device: str = "cpu"
    models: list[ModelConfig] = Field(min_length=1)
    pruning: PruningConfig
    healing: HealingConfig = HealingConfig()
    eval: EvalConfig
    speed: SpeedConfig = SpeedConfig()
    engine: EngineConfig = EngineConfig()
    check: CheckConfig = CheckConfig()
    report: ReportConfig = ReportConfig()
    executor: ExecutorConfig = ExecutorConfig()

    @model_validator(mode="after")
    def _unique_names(self):
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        labels = [a.label for a in self.healing.arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"healing arm labels must be unique, got {labels}; give arms a `name`")
        return self


def load_study_config(path: str | Path) -> StudyConfig:
    """Parse and validate a study YAML; every problem is a one-line UsageError naming the key's path."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"study config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path} must hold a mapping of study settings")
    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (check the spelling)" if e["type"] == "extra_forbidden" else e["msg"]
        raise UsageError(f"{path}: {where}: {msg}") from None
    check_names(cfg)
    return cfg


def check_names(cfg: StudyConfig) -> None:
    """Criteria, tasks and families must exist; checked before any work starts."""
    from layerprune.evaluation.tasks import known_tasks
    from layerprune.families import supported
    from layerprune.scoring import SCORERS

    for m in cfg.models:
        if m.tiny and m.tiny.family not in supported():
            raise UsageError(f"models.{m.name}.tiny.family: unknown family {m.tiny.family!r}; one of {supported()}")
    for c in cfg.pruning.criteria:
        if c not in SCORERS:
            raise UsageError(f"pruning.criteria: unknown criterion {c!r}; known: {', '.join(SCORERS)}")
    tasks = set(known_tasks())
    for t in cfg.eval.tasks:
        if t not in tasks:
            close = difflib.get_close_matches(t, sorted(tasks), n=4, cutoff=0.75)
            if close:
                raise UsageError(f"eval.tasks: unknown task {t!r}; did you mean {', '.join(close)}?")
            names = sorted({"mmlu_<subject>" if k.startswith("mmlu_") else k for k in tasks})
            raise UsageError(f"eval.tasks: unknown task {t!r}; known: {', '.join(names)}")
