"""`study --dry-run` tells the scale before any GPU hour: the paper configs validate, use the paper's recipe
(effective batch 4 × 2, 8192 generated tokens, task-default eval limits) and print the estimated work."""

import math
from pathlib import Path

import pytest

from layerprune.cli import main
from layerprune.study.config import load_study_config
from layerprune.study.estimate import estimate
from layerprune.study.plan import make_plan

PAPER = sorted((Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_uses_the_paper_recipe_and_dry_run_prints_estimates(path, tmp_path, capsys):
    cfg = load_study_config(path)
    t = cfg.healing.train
    assert (t.batch_size, t.grad_accum, t.max_length) == (4, 2, 8192)
    assert cfg.healing.sgr.max_new_tokens == 8192 and cfg.eval.max_new_tokens is None
    assert cfg.healing.prompts.allow_fewer  # Alpaca has 52,002 rows, fewer than num: said, not silent
    assert main(["study", str(path), "--root", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = make_plan(cfg)
    e = estimate(cfg, plan)
    steps = math.ceil(cfg.healing.prompts.num * t.epochs / (t.batch_size * t.grad_accum))
    assert e["heal"]["optimizer_steps_each"] == steps == 12500
    assert e["sgr"]["max_generated_tokens"] == cfg.healing.prompts.num * 8192
    assert e["eval"]["docs_each"] > 30000 and e["eval"]["steps"] == plan.counts()["eval"]
    assert f"{steps:,}" in out and "819,200,000 generated tokens" in out and "docs each" in out
    assert f"model {cfg.models[0].path}" in out and "dataset tatsu-lab/alpaca" in out
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


def test_eval_docs_are_counted_from_local_data(data_dir, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"models: [{{name: m, tiny: {{}}}}]\npruning: {{num_drop: [1]}}\n"
                    f"eval: {{tasks: [gsm8k, piqa], data_dir: {data_dir}, limit: 1500}}\n")
    cfg = load_study_config(path)
    e = estimate(cfg, make_plan(cfg))["eval"]
    assert e["docs_each"] == 1319 + 1500 and e["docs_from"] == "the data"  # piqa has 1838, limit cuts it
