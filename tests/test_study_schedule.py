"""Iterative prune→heal schedules: planned as a chain (each round re-scores and prunes the previous round's healed
model), equal to one-shot when the step is the target, compared with one-shot at the same healing budget; a tiny
study runs, resumes without redoing finished rounds, and reports the paired difference."""

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from layerprune.cli import main
from layerprune.errors import UsageError
from layerprune.study.analysis import analyze
from layerprune.study.config import load_study_config
from layerprune.study.plan import make_plan


def _config(tmp_path: Path, data_dir: Path, **pruning) -> Path:
    gsm = str(data_dir / "gsm8k" / "train.jsonl")
    cfg = {"name": "sched", "seed": 5, "models": [{"name": "m", "tiny": {"family": "llama", "layers": 6}}],
           "pruning": {"criteria": ["bi"], "num_drop": [2],
                       "calibration": {"source": gsm, "text_field": "question", "seq_len": 32, "num_samples": 4},
                       **pruning},
           "healing": {"arms": ["none", "original"],
                       "prompts": {"source": gsm, "fields": {"question": "instruction", "answer": "output"}, "num": 8},
                       "train": {"max_steps": 2, "batch_size": 4, "grad_accum": 1, "max_length": 384,
                                 "warmup_steps": 1, "lora_r": 4}},
           "eval": {"tasks": ["piqa"], "limit": 12, "data_dir": str(data_dir), "batch_size": 8},
           "speed": {"enabled": False}, "report": {"bootstrap": 100}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_iterative_plan_is_a_chain_with_matched_budget(tmp_path, data_dir):
    plan = make_plan(load_study_config(_config(tmp_path, data_dir, schedule="iterative", step=1)))
    steps = plan.by_id()
    it = next(v for v in plan.variants if v["arm"] == "original+iterative")
    assert it["schedule"] == {"kind": "iterative", "step": 1, "rounds": 2, "heal_budget": "4 optimizer steps"}
    # walk the chain back from the final eval: heal ← prune ← (heal of the previous round, its re-score)
    heal2 = steps[steps[it["eval"]].deps[0]]
    prune2 = steps[heal2.deps[0]]
    heal1, rescore = (steps[d] for d in prune2.deps)
    assert (heal2.kind, prune2.kind, heal1.kind, rescore.kind) == ("heal", "prune", "heal", "score")
    assert rescore.deps == (heal1.id,) and rescore.params["num_drop"] == [1] and prune2.params["num_drop"] == 1
    prune1 = steps[heal1.deps[0]]
    assert prune1.params["num_drop"] == 1 and steps[prune1.deps[0]].kind == "model"
    budget = next(v for v in plan.variants if v["arm"] == "original+budget")
    bheal = steps[steps[budget["eval"]].deps[0]]
    assert bheal.params["train"]["max_steps"] == 4 and steps[bheal.deps[0]].params["num_drop"] == 2
    oneshot = next(v for v in plan.variants if v["arm"] == "original" and v["num_drop"] == 2)
    assert bheal.deps[0] == steps[steps[oneshot["eval"]].deps[0]].deps[0]  # the same one-shot pruned model


def test_step_equal_to_target_is_one_shot(tmp_path, data_dir):
    plan = make_plan(load_study_config(_config(tmp_path, data_dir, schedule="iterative", step=2)))
    it = next(v for v in plan.variants if v["arm"] == "original+iterative")
    oneshot = next(v for v in plan.variants if v["arm"] == "original" and v["num_drop"] == 2)
    assert it["eval"] == oneshot["eval"] and it["schedule"]["rounds"] == 1
    assert not any(v["arm"] == "original+budget" for v in plan.variants)
    plain = make_plan(load_study_config(_config(tmp_path, data_dir)))
    assert {s.id for s in plain.steps} == {s.id for s in plan.steps}  # nothing new to run


def test_bad_schedule_settings(tmp_path, data_dir):
    with pytest.raises(UsageError, match="step"):
        load_study_config(_config(tmp_path, data_dir, schedule="iterative"))
    with pytest.raises(UsageError, match="protected"):
        load_study_config(_config(tmp_path, data_dir, schedule="iterative", step=1, protected=[0]))


@pytest.mark.slow
def test_iterative_study_runs_resumes_and_reports(tmp_path, data_dir, one_thread):
    cfg, root = _config(tmp_path, data_dir, schedule="iterative", step=1), tmp_path / "root"
    assert main(["study", str(cfg), "--root", str(root)]) == 0
    with sqlite3.connect(root / "index.sqlite") as con:
        runs = dict(con.execute("SELECT id, runs FROM steps"))
    assert main(["study", str(cfg), "--root", str(root)]) == 0  # a rerun redoes nothing
    with sqlite3.connect(root / "index.sqlite") as con:
        assert dict(con.execute("SELECT id, runs FROM steps")) == runs
    plan = json.loads((root / "plan.json").read_text())
    final = next(v for v in plan["variants"] if v["arm"] == "original+iterative")
    heal = next(s for s in plan["steps"] if s["id"] == next(
        s for s in plan["steps"] if s["id"] == final["eval"])["deps"][0])
    pruning = json.loads((root / "steps" / heal["id"] / "model" / "pruning.json").read_text())
    assert pruning["num_layers"] == 4 and len(pruning["removed"]) == 2 and pruning["original_num_layers"] == 6
    rows = analyze(root, n_boot=100)["schedules"]
    assert [(r["arm"], r["rival"], r["kind"]) for r in rows] == [("original", "original+budget", "classification")]
    d = rows[0]["iterative_minus_oneshot"]
    assert d["lo"] <= d["value"] <= d["hi"]
    report = (root / "report.md").read_text()
    assert "## Iterative vs. one-shot pruning" in report and "2 × 1" in report
