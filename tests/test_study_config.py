"""Study configs: shipped ones validate and plan offline; bad ones are refused before any work, naming the key."""

from pathlib import Path

import pytest

from layerprune.cli import main
from layerprune.study.config import load_study_config
from layerprune.study.plan import make_plan

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: p.name)  # demo.yaml: test_demo
def test_shipped_configs_validate_and_plan(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_paper_configs_share_work():
    cfg = load_study_config(CONFIGS / "paper" / "qwen2.5-7b-instruct.yaml")
    plan = make_plan(cfg)
    counts = plan.counts()
    assert counts["sgr"] == 1 and counts["prompts"] == 1  # one SGR set per teacher, shared by every pruned model
    assert counts["score"] == 3 and counts["prune"] == 3  # reverse, bi, task_iterative at 7 layers
    assert counts["eval"] == 1 + 3 * 3  # baseline once + (none, original, sgr) per pruned model
    baseline = [v for v in plan.variants if v["criterion"] is None]
    assert len(baseline) == 1 and baseline[0]["num_layers"] == 28


def test_one_score_step_serves_every_size():
    plan = make_plan(load_study_config(CONFIGS / "ci" / "tiny.yaml"))  # reverse, bi × ratios 0.34, 0.5 of 6
    scores = [s for s in plan.steps if s.kind == "score"]
    assert [(s.params["method"], s.params["num_drop"]) for s in scores] == [("reverse", [2, 3]), ("bi", [2, 3])]
    prunes = [s for s in plan.steps if s.kind == "prune"]
    assert sorted(s.params["num_drop"] for s in prunes) == [2, 2, 3, 3]
    assert all(s.deps[1] in {x.id for x in scores} for s in prunes)


def test_plan_ids_are_stable_and_input_derived(tmp_path):
    a = make_plan(load_study_config(CONFIGS / "ci" / "tiny.yaml"))
    b = make_plan(load_study_config(CONFIGS / "ci" / "tiny.yaml"))
    assert [s.id for s in a.steps] == [s.id for s in b.steps]
    text = (CONFIGS / "ci" / "tiny.yaml").read_text().replace("limit: 8", "limit: 9")
    (tmp_path / "c.yaml").write_text(text)
    c = make_plan(load_study_config(tmp_path / "c.yaml"))
    changed = {s.kind for s in c.steps if s.id not in {x.id for x in a.steps}}
    assert changed == {"eval"}  # only the evals depend on the eval limit; pruning and healing are reused


BAD = {
    "typo": ("pruning:\n  critera: [bi]\n", "pruning.critera: unknown key"),
    "ratio": ("pruning:\n  ratios: [1.5]\n", "ratios.*outside"),
    "criterion": ("pruning:\n  criteria: [magic]\n", "unknown criterion 'magic'"),
    "task": ("eval:\n  tasks: [nope]\n", "unknown task 'nope'"),
    "sizes": ("pruning:\n  ratios: [0.5]\n  num_drop: [2]\n", "exactly one of"),
}


def _write(tmp_path, patch: str) -> Path:
    import yaml

    base = yaml.safe_load((CONFIGS / "ci" / "tiny.yaml").read_text())
    for key, value in yaml.safe_load(patch).items():
        base[key] = {**base[key], **value}
        if key == "pruning" and "num_drop" in value and "ratios" not in value:
            base[key].pop("ratios", None)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configs_are_refused_before_work(case, tmp_path, capsys):
    patch, message = BAD[case]
    root = tmp_path / "root"
    assert main(["study", str(_write(tmp_path, patch)), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert not root.exists()


def test_too_many_layers_for_the_model(tmp_path, capsys):
    p = _write(tmp_path, "pruning:\n  num_drop: [6]\n")
    assert main(["validate", str(p)]) == 2
    assert "leaves too few" in capsys.readouterr().err
