"""`layerprune demo --quick`: the whole pipeline on the packaged testbed model, offline, as CI runs it."""

import contextlib
import html
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

from layerprune.cli import main
from layerprune.study.demo import demo_config, testbed_model_dir

pytestmark = pytest.mark.slow


def test_demo_configs_validate():
    full, quick = demo_config(), demo_config(quick=True)
    assert full.pruning.criteria == ["reverse", "bi"] and [a.kind for a in full.healing.arms] == [
        "none", "original", "sgr", "kd", "linear"]
    assert quick.eval.limit < full.eval.limit and quick.models[0].path == str(testbed_model_dir())


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One `layerprune demo --quick` for this module: (study root, what it printed)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out, buf.getvalue()


def test_quick_demo_end_to_end(quick_demo):
    out, printed = quick_demo
    assert str(out / "report.md") in printed and "report.html" in printed
    md = (out / "report.md").read_text()
    for section in ("Safe depth (the recommendation)", "Retention by criterion and ratio",
                    "Healing: recovery and arm vs. arm", "Diagnostics vs. ratio", "Per-layer scores"):
        assert f"## {section}" in md
    summary = json.loads((out / "summary.json").read_text())
    assert {r["kind"] for r in summary["retention"]} == {"classification", "generative"}
    assert {r["arm"] for r in summary["retention"]} == {"none", "original", "sgr", "kd", "linear"}
    assert "Best arm per cut and task type" in md  # the best-arm table of the healing section
    assert (out / "figures" / "retention_testbed.png").exists()
    # a rerun resumes: nothing left to do
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    import sqlite3

    with sqlite3.connect(out / "index.sqlite") as con:
        runs = [r for (r,) in con.execute("SELECT runs FROM steps")]
    assert runs and all(r == 1 for r in runs)  # the rerun found every step done and ran none again


def _screenshot_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "report_screenshot.py"
    spec = importlib.util.spec_from_file_location("report_screenshot", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_first_screen_in_a_browser(quick_demo, tmp_path):
    """The demo's report in real headless Chromium at 1280×800: the answer comes before the first collapsed section,
    and the first screen's pixels show text and the retention figure's coloured lines."""
    from PIL import Image

    from layerprune.study.narrative import headline

    shot = _screenshot_script()
    if shot.chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it when missing)")
    out, _ = quick_demo
    dom = shot.render(out / "report.html", tmp_path / "first_screen.png")
    first = dom.index("<details")
    answer = dom[:first]
    summary = json.loads((out / "summary.json").read_text())
    lines = headline(summary)
    assert 1 <= len(lines) <= 5
    for sentence in lines:  # the headline, as the browser built it, from summary.json's numbers
        assert html.escape(sentence, quote=False) in answer, sentence
    assert "Safe depth (the recommendation)" in answer and "<table" in answer
    assert 'alt="Retention vs. share of layers removed' in answer and "data:image/png;base64," in answer
    img = np.asarray(Image.open(tmp_path / "first_screen.png").convert("RGB")).astype(int)  # (800, 1280, 3)
    assert img.shape == (800, 1280, 3)
    ink = (img.min(axis=2) < 200).mean()  # share of pixels that are not white or near-white
    saturated = (img.max(axis=2) - img.min(axis=2) > 80).sum()  # coloured pixels: only the figure's lines and bands
    assert ink > 0.02, f"screenshot is (nearly) blank: {ink:.3%} non-white pixels"
    assert saturated > 2000, f"the retention figure is not on the first screen ({saturated} coloured pixels)"


def test_report_verb_rewrites_the_report_without_rerunning(quick_demo):
    import sqlite3

    out, _ = quick_demo
    for name in ("report.md", "report.html"):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.index("retention_testbed.png") < md.index("## Safe depth") < md.index("## Retention by criterion")
    assert "<details" in (out / "report.html").read_text()
    with sqlite3.connect(out / "index.sqlite") as con:
        assert all(r == 1 for (r,) in con.execute("SELECT runs FROM steps"))  # no step ran again
