"""Study arms `kd`, `linear`, `linear+sgr`: planned with the other arms, sharing the SGR set, the scoring runs
and (for `linear+sgr`) the linear repair; bad arm settings are refused before any work."""

from pathlib import Path

import pytest
import yaml

from layerprune.cli import main
from layerprune.study.config import load_study_config
from layerprune.study.plan import make_plan

TINY = Path(__file__).resolve().parents[1] / "configs" / "ci" / "tiny.yaml"
ARMS = ["none", "original", "sgr", "kd", "linear", "linear+sgr"]


def _config(tmp_path, arms, **healing):
    raw = yaml.safe_load(TINY.read_text())
    raw["healing"]["arms"] = arms
    raw["healing"].update(healing)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_new_arms_share_sgr_scores_and_the_linear_repair(tmp_path):
    plan = make_plan(load_study_config(_config(tmp_path, ARMS)))
    counts = plan.counts()
    cuts = 4  # reverse, bi × 2 sizes
    assert counts["sgr"] == 1 and counts["prompts"] == 1 and counts["score"] == 2 and counts["prune"] == cuts
    # per cut: original, sgr, kd, the linear repair (shared by linear and linear+sgr), SFT after it
    assert counts["heal"] == 5 * cuts
    assert counts["eval"] == 1 + cuts * len(ARMS)
    steps = plan.by_id()
    by_arm = {}
    for v in plan.variants:
        if v["criterion"] is not None:
            healed = steps[v["eval"]].deps[0]
            by_arm.setdefault(v["arm"], []).append(steps[healed])
    sgr = next(s.id for s in plan.steps if s.kind == "sgr")
    model = next(s.id for s in plan.steps if s.kind == "model")
    for kd in by_arm["kd"]:
        assert kd.params["arm"] == "kd" and kd.deps[1] == sgr and kd.deps[2] == model  # SGR rows, unpruned teacher
        assert kd.params["kd"] == {"lmbda": 0.0, "beta": 0.0, "temperature": 1.0, "max_new_tokens": 128}
    for lin, both in zip(by_arm["linear"], by_arm["linear+sgr"]):
        assert lin.params["arm"] == "linear" and steps[lin.deps[0]].kind == "prune"
        assert lin.params["calibration"]["source"].endswith("gsm8k/train.jsonl")  # the pruning calibration
        assert both.deps == (lin.id, sgr) and both.params["arm"] == "sgr"
    labels = {v["arm"] for v in plan.variants}
    assert labels == set(ARMS)


@pytest.mark.parametrize("arms, healing, message", [
    (["none", "distill"], {}, r"healing\.arms\.1\.kind: Input should be"),
    ([{"kind": "kd", "train": {"mode": "partial"}}], {}, "kd student trains as lora, qlora, full"),
    ([{"kind": "linear", "data": "sgr"}], {}, "trains on nothing"),
    (["kd"], {"kd": {"beta": 2}}, r"healing\.kd\.beta"),
])
def test_bad_arm_settings_are_one_line_exit_2(tmp_path, capsys, arms, healing, message):
    root = tmp_path / "root"
    assert main(["study", str(_config(tmp_path, arms, **healing)), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert not root.exists()


def test_report_names_the_best_arm_and_its_ties():
    from layerprune.study.tables import best_arm_table

    def row(crit, arm, kind, value, lo, hi):
        return {"model": "m", "criterion": crit, "num_drop": 4, "ratio": 1 / 3, "arm": arm, "kind": kind,
                "retention": {"value": value, "lo": lo, "hi": hi}}

    s = {"tasks": [{"model": "m"}],
         "retention": [row("bi", "none", "generative", 0.2, 0.1, 0.3),
                       row("bi", "kd", "generative", 0.6, 0.5, 0.7),
                       row("bi", "sgr", "generative", 0.55, 0.45, 0.65),
                       row("reverse", "kd", "generative", 0.4, 0.3, 0.5),
                       row("bi", "none", "classification", 0.5, 0.45, 0.55),
                       row("bi", "linear", "classification", 0.8, 0.75, 0.85)]}
    (table,) = best_arm_table(s)
    assert table[2] == [
        ["33% (4)", "classification", "linear (bi)", "80 [75, 85]", "above every other arm"],
        ["33% (4)", "generative", "kd (bi)", "60 [50, 70]", "cannot tell from sgr"]]


def test_sgr_prompts_open_with_the_models_own_system_prompt(tmp_path):
    def sgr_params(**model):
        raw = yaml.safe_load(TINY.read_text())
        raw["models"][0].update(model)
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(raw))
        return next(s.params for s in make_plan(load_study_config(path)).steps if s.kind == "sgr")

    assert "system_prompt" not in sgr_params()  # the paper's default; the step as before
    assert "system_prompt" not in sgr_params(chat_template=True)
    assert sgr_params(chat_template=True, system_prompt="Be brief.")["system_prompt"] == "Be brief."
