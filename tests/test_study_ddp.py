"""`healing.train.processes: N`: a study's heal step trains as DDP under `accelerate launch` with N processes
(CPU gloo processes here; GPUs under Ray), for the SFT and the KD arms, with the world size and effective batch
recorded; one process keeps the step's identity it had before the option existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from layerprune.study.config import load_study_config
from layerprune.study.execute import run_study
from layerprune.study.plan import make_plan

TINY = Path(__file__).resolve().parents[1] / "configs" / "ci" / "tiny.yaml"


def _config(tmp_path: Path, processes: int | None) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["models"][0]["tiny"]["layers"] = 4
    raw["pruning"] = {**raw["pruning"], "criteria": ["reverse"], "ratios": [0.25]}
    raw["healing"]["arms"] = ["sgr", "kd"]
    raw["healing"]["prompts"]["num"] = 8
    raw["healing"]["train"].update(max_steps=2, batch_size=2)
    if processes is not None:
        raw["healing"]["train"]["processes"] = processes
    raw["eval"].update(tasks=["arc_easy"], limit=4)
    raw["speed"] = {"enabled": False}
    for key in ("calibration",):
        raw["pruning"][key]["source"] = str((TINY.parent / raw["pruning"][key]["source"]).resolve())
    raw["healing"]["prompts"]["source"] = str((TINY.parent / raw["healing"]["prompts"]["source"]).resolve())
    raw["eval"]["data_dir"] = str((TINY.parent / raw["eval"]["data_dir"]).resolve())
    path = tmp_path / f"study{processes}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _heal_ids(path: Path) -> list[str]:
    return sorted(s.id for s in make_plan(load_study_config(path)).steps if s.kind == "heal")


def test_one_process_keeps_the_heal_steps_identity(tmp_path):
    assert _heal_ids(_config(tmp_path, None)) == _heal_ids(_config(tmp_path, 1))
    assert set(_heal_ids(_config(tmp_path, 2))).isdisjoint(_heal_ids(_config(tmp_path, 1)))


@pytest.mark.slow
def test_heal_steps_train_as_ddp_under_two_processes(tmp_path):
    if not (TINY.parent / "../../../shared/data/gsm8k/train.jsonl").resolve().is_file():
        pytest.skip("benchmark data not found at ../shared/data")
    cfg = load_study_config(_config(tmp_path, 2))
    root = tmp_path / "root"
    run_study(cfg, root, base_dir=tmp_path)
    records = [json.loads(p.read_text()) for p in sorted(root.glob("steps/*/model/healing.json"))]
    assert len(records) == 2  # the sgr and the kd arm
    for rec in records:
        assert rec["world_size"] == 2 and rec["hyperparameters"]["effective_batch"] == 2 * 1 * 2  # batch × accum × 2
        assert rec["steps"] == 2
    assert sorted(r["arm"] for r in records) == ["kd", "lora"]
    assert not list(root.glob("work/*/model"))  # every trained model moved into its step folder
