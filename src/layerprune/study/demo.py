"""`layerprune demo`: the study of `demo.yaml` on the packaged testbed model, offline, on a CPU.

    report = run_demo("layerprune-demo")          # ≈ 13 min on 2 cores; quick=True ≈ 1 minute

The demo writes its inputs (calibration text from the testbed corpus, the SGR prompt pool) under OUT/inputs,
runs the study with OUT as its root (rerun to resume) and returns the report path.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import yaml

from layerprune.errors import UsageError
from layerprune.provenance import write_text
from layerprune.study.config import StudyConfig, check_names
from layerprune.study.execute import run_study
from layerprune.study.report import make_report

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def testbed_model_dir() -> Path:
    import layerprune.testbed

    path = Path(layerprune.testbed.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise UsageError(f"the testbed checkpoint is missing from {path}; run `layerprune testbed train --out {path}`")
    return path


def demo_config(quick: bool = False, engine: str = "hf") -> StudyConfig:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    overrides = raw.pop("quick")
    if quick:
        raw = _merge(raw, overrides)
    raw["models"][0]["path"] = str(testbed_model_dir())
    if engine != "hf":  # SGR, generative evaluation and task-aware scoring on that engine
        raw["engine"] = {"sgr": engine, "eval": engine, "score": engine}
    cfg = StudyConfig.model_validate(raw)
    check_names(cfg)
    return cfg


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def write_inputs(out: Path, cfg: StudyConfig) -> None:
    """Calibration text and the prompt pool, from the testbed's own generators (deterministic)."""
    from layerprune.testbed.corpus import training_documents, write_prompt_pool

    inputs = out / "inputs"
    if not (inputs / "calibration.txt").exists():
        docs = islice(training_documents(seed=cfg.seed), 400)
        write_text(inputs / "calibration.txt", "".join(docs))
    if not (inputs / "prompts.jsonl").exists():
        write_prompt_pool(inputs / "prompts.jsonl", num=max(512, cfg.healing.prompts.num), seed=cfg.seed)


def run_demo(out: str | Path = "layerprune-demo", quick: bool = False, engine: str = "hf") -> Path:
    out = Path(out)
    from layerprune.evaluation.vllm_backend import check_engine, import_vllm

    if check_engine(engine) == "vllm":
        import_vllm()  # missing vLLM: one line naming the extra, before anything is written
    cfg = demo_config(quick, engine)
    out.mkdir(parents=True, exist_ok=True)
    write_inputs(out, cfg)
    run_study(cfg, out, base_dir=out)
    return make_report(out)
