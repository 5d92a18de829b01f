"""Test-time scaling metrics: pass@k against the closed form, majority vote by hand, and a sampled testbed
evaluation whose k=1 point is the sampled accuracy (the mean over samples, not a greedy run)."""

import math
from pathlib import Path

import pytest

from layerprune.evaluation.runner import evaluate
from layerprune.evaluation.scaling import majority_correct, scaling_ks, scaling_metrics
from layerprune.evaluation.tasks.base import TaskOptions

TESTBED = Path(__file__).resolve().parents[1] / "src" / "layerprune" / "testbed" / "model"


def test_ks():
    assert scaling_ks(1) == [1] and scaling_ks(8) == [1, 2, 4, 8] and scaling_ks(6) == [1, 2, 4, 6]


@pytest.mark.parametrize("n,c", [(8, 0), (8, 1), (8, 3), (8, 8), (6, 2), (5, 4)])
def test_pass_at_k_equals_closed_form(n, c):
    outcomes = [(None, i < c) for i in range(n)]
    got = scaling_metrics(outcomes, vote=False)
    for k in scaling_ks(n):
        assert got[f"pass@{k}"] == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_majority_vote_by_hand():
    assert majority_correct([("18", True), ("17", False), ("18", True)]) == 1.0
    assert majority_correct([("17", False), ("18", True), ("17", False)]) == 0.0
    assert majority_correct([("17", False), ("18", True)]) == 0.0  # tie: first seen wins
    assert majority_correct([(None, False), ("18", True)]) == 1.0  # no answer does not vote
    assert majority_correct([(None, False), (None, False)]) == 0.0
    got = scaling_metrics([("3", False), ("5", True), ("5", True), ("3", False), ("5", True)], suffix=",x")
    assert [got[f"maj@{k},x"] for k in (1, 2, 4, 5)] == [0.0, 0.0, 0.0, 1.0]
    assert got["pass@1,x"] == pytest.approx(3 / 5) and got["pass@2,x"] == pytest.approx(1 - 1 / 10)


def test_sampled_testbed_curve_starts_at_sampled_accuracy(one_thread, tmp_path):
    opts = TaskOptions(limit=6, num_samples=4, temperature=0.9, top_p=0.95)
    out = evaluate(str(TESTBED), ["testbed_math", "testbed_code"], opts, out_dir=tmp_path, progress=False)
    math_res, code_res = out["results"]["testbed_math"], out["results"]["testbed_code"]
    for res in (math_res, code_res):
        assert {"pass@1", "pass@2", "pass@4"} <= set(res)
        assert res["pass@1"] <= res["pass@2"] <= res["pass@4"]
    assert {"maj@1", "maj@2", "maj@4"} <= set(math_res) and "maj@1" not in code_res
    # k=1 of the curve is the mean per-sample accuracy; maj@1 is the first sample's, i.e. exact_match
    import json
    rows = [json.loads(line) for line in (tmp_path / "samples_testbed_math.jsonl").read_text().splitlines()]
    per_sample = [sum(r == row["doc"]["target"] for r in (_answer(t) for t in row["resps"])) / 4 for row in rows]
    assert math_res["pass@1"] == pytest.approx(sum(per_sample) / len(rows))
    assert math_res["maj@1"] == pytest.approx(math_res["exact_match"])
    assert all(len(row["resps"]) == 4 for row in rows)


def _answer(text):
    from layerprune.testbed.tasks import MathItems
    return MathItems.answer(text)
