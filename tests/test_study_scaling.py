"""Test-time scaling in a study: sampled eval steps planned for the baseline and the chosen cut, curves whose
k=1 point is the sampled accuracy, and a scaling gap with a paired bootstrap interval."""

import json
from pathlib import Path

import pytest
import yaml

from layerprune.cli import main
from layerprune.study.analysis import analyze
from layerprune.study.config import load_study_config
from layerprune.study.plan import make_plan
from layerprune.testbed.tasks import MathItems

TESTBED = Path(__file__).resolve().parents[1] / "src" / "layerprune" / "testbed" / "model"


def _config(tmp_path: Path, scaling: dict | None) -> Path:
    cfg = {"name": "s", "seed": 3, "models": [{"name": "tb", "path": str(TESTBED)}],
           "pruning": {"criteria": ["reverse", "random"], "num_drop": [3]},
           "eval": {"tasks": ["testbed_facts", "testbed_math"], "limit": 6, "batch_size": 8},
           "speed": {"enabled": False}, "report": {"bootstrap": 100}}
    if scaling is not None:
        cfg["eval"]["scaling"] = scaling
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plan_adds_sampled_evals_only_when_asked(tmp_path):
    plain = make_plan(load_study_config(_config(tmp_path, None)))
    with_curves = make_plan(load_study_config(_config(tmp_path, {"samples": 4, "temperature": 0.9})))
    assert plain.scaling == ()
    # the unsampled plan is a subset: turning curves on reuses every existing step
    assert {s.id for s in plain.steps} < {s.id for s in with_curves.steps}
    assert [(v["criterion"], v["num_drop"]) for v in with_curves.scaling] == [(None, 0), ("reverse", 3)]
    steps = with_curves.by_id()
    for v in with_curves.scaling:
        ev = steps[v["eval"]].params["eval"]
        assert ev["tasks"] == ["testbed_math"] and ev["num_samples"] == 4 and ev["temperature"] == 0.9
        own = next(u for u in with_curves.variants if (u["criterion"], u["num_drop"], u["arm"]) ==
                   (v["criterion"], v["num_drop"], v["arm"]))
        assert steps[v["eval"]].deps == steps[own["eval"]].deps  # same model as the variant's greedy eval


@pytest.mark.slow
def test_study_curves_start_at_sampled_accuracy(tmp_path, one_thread):
    root = tmp_path / "root"
    assert main(["study", str(_config(tmp_path, {"samples": 4, "temperature": 0.9})), "--root", str(root)]) == 0
    summary = analyze(root, n_boot=100)
    rows = {r["criterion"]: r for r in summary["scaling"]}
    assert set(rows) == {None, "reverse"}
    plan = json.loads((root / "plan.json").read_text())
    for v in plan["scaling"]:
        samples = [json.loads(x) for x in (root / "steps" / v["eval"] / "samples_testbed_math.jsonl").read_text().splitlines()]
        sampled_acc = sum(sum(MathItems.answer(t) == r["doc"]["target"] for t in r["resps"]) / 4 for r in samples) / len(samples)
        curve = rows[v["criterion"]]["tasks"]["testbed_math"]
        assert curve["pass"]["1"] == pytest.approx(sampled_acc)
        assert curve["pass"]["1"] <= curve["pass"]["2"] <= curve["pass"]["4"]
        assert set(curve["maj"]) == {"1", "2", "4"}
    gap = rows["reverse"]["gap"]
    assert gap["k"] == 4 and gap["tasks"] == ["testbed_math"] and gap["lo"] <= gap["value"] <= gap["hi"]
    base, cut = rows[None]["tasks"]["testbed_math"]["pass"], rows["reverse"]["tasks"]["testbed_math"]["pass"]
    assert gap["value"] == pytest.approx((base["4"] - base["1"]) - (cut["4"] - cut["1"]))
    report = (root / "report.md").read_text()
    assert "## Test-time scaling" in report and (root / "figures" / "scaling_tb.png").is_file()
    assert "baseline" in report.split("## Test-time scaling")[1]
