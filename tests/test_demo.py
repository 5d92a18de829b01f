"""`layerprune demo --quick`: the whole pipeline on the packaged testbed model, offline, as CI runs it."""

import json

import pytest

from layerprune.cli import main
from layerprune.study.demo import demo_config, testbed_model_dir

pytestmark = pytest.mark.slow


def test_demo_configs_validate():
    full, quick = demo_config(), demo_config(quick=True)
    assert full.pruning.criteria == ["reverse", "bi", "angular"] and [a.kind for a in full.healing.arms] == [
        "none", "original", "sgr", "kd", "linear"]
    assert quick.eval.limit < full.eval.limit and quick.models[0].path == str(testbed_model_dir())


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.md") in printed and "report.html" in printed
    md = (out / "report.md").read_text()
    for section in ("What this study shows", "Safe depth", "Retention vs. pruning ratio", "Healing gain by arm",
                    "Diagnostics vs. ratio", "Per-layer scores by criterion"):
        assert f"## {section}" in md
    summary = json.loads((out / "summary.json").read_text())
    assert {r["kind"] for r in summary["retention"]} == {"classification", "generative"}
    assert {r["arm"] for r in summary["retention"]} == {"none", "original", "sgr", "kd", "linear"}
    assert "Overview — best arm" in md
    assert (out / "figures" / "retention_testbed.png").exists()
    # a rerun resumes: nothing left to do
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    import sqlite3

    with sqlite3.connect(out / "index.sqlite") as con:
        runs = [r for (r,) in con.execute("SELECT runs FROM steps")]
    assert runs and all(r == 1 for r in runs)  # the rerun found every step done and ran none again
