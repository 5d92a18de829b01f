"""A tiny study end to end: report sections, kill -9 + resume equals an uninterrupted run, one executor per root,
same seed → same numbers."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from layerprune.cli import main
from layerprune.study.store import Store

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, data_dir: Path, **over) -> Path:
    cfg = {
        "name": "t", "seed": 7,
        "models": [{"name": "m", "tiny": {"family": "llama", "layers": 4}}],
        "pruning": {"criteria": ["reverse", "bi"], "num_drop": [1, 2],
                    "calibration": {"source": str(data_dir / "gsm8k" / "train.jsonl"), "text_field": "question",
                                    "seq_len": 32, "num_samples": 4}},
        "eval": {"tasks": ["arc_easy", "piqa"], "limit": 6, "data_dir": str(data_dir), "batch_size": 8},
        "speed": {"prompt_tokens": 16, "new_tokens": 4, "repeats": 1},
        "report": {"bootstrap": 100},
    }
    cfg.update(over)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _numbers(root: Path) -> dict:
    """Everything a study computed, minus timings: per-step results and scores."""
    out = {}
    for d in sorted((root / "steps").iterdir()):
        if (d / "results.json").exists():
            out[d.name] = json.loads((d / "results.json").read_text())["results"]
        if (d / "scores.json").exists():
            s = json.loads((d / "scores.json").read_text())
            out[d.name] = {"scores": s["scores"], "drop": s["drop"]}
    return out


def _runs(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / "index.sqlite") as con:
        return dict(con.execute("SELECT id, runs FROM steps"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("ref")
    cfg = _config(tmp, data_dir)
    root = tmp / "root"
    assert main(["study", str(cfg), "--root", str(root)]) == 0
    return cfg, root


def test_report_has_every_section(reference):
    _, root = reference
    md = (root / "report.md").read_text()
    for section in ("Safe depth (the recommendation)", "Retention by criterion and ratio", "Per-task scores",
                    "Healing: recovery and arm vs. arm", "Diagnostics vs. ratio", "Per-layer scores", "Speed",
                    "Provenance"):
        assert f"## {section}" in md, section
    assert (root / "figures" / "retention_m.png").stat().st_size > 1000
    assert (root / "figures" / "layer_scores_m.png").exists() and (root / "figures" / "speedup_m.png").exists()
    html = (root / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="figures' not in html  # self-contained
    summary = json.loads((root / "summary.json").read_text())
    assert {r["kind"] for r in summary["retention"]} == {"classification"}
    assert len(summary["safe_depth"]) == 2  # (reverse, bi) × classification, arm none
    # one bi score step for both sizes; each pruned model removed that size's layers from it
    (bi,) = [d for d in (root / "steps").iterdir() if (d / "scores.json").exists()
             and json.loads((d / "scores.json").read_text())["method"] == "bi"]
    drops = json.loads((bi / "scores.json").read_text())["drops"]
    removed = sorted(json.loads(p.read_text())["removed"] for p in (root / "steps").glob("*/model/pruning.json")
                     if json.loads(p.read_text())["method"] == "bi")
    assert set(drops) == {"1", "2"} and removed == sorted(drops.values())


def test_same_seed_same_numbers(reference, tmp_path):
    cfg, root = reference
    again = tmp_path / "again"
    assert main(["study", str(cfg), "--root", str(again), "--no-report"]) == 0
    assert _numbers(again) == _numbers(root)


def test_second_executor_is_refused(reference, tmp_path, capsys):
    cfg, _ = reference
    root = tmp_path / "locked"
    with Store(root).lock():
        assert main(["study", str(cfg), "--root", str(root)]) == 2
    assert "another layerprune study is running" in capsys.readouterr().err


def _finished(root: Path) -> set[str]:
    """Published steps. A `.<id>.*` temp dir may already hold step.json: it is written just before the rename."""
    steps = root / "steps"
    return {d.name for d in steps.iterdir() if not d.name.startswith(".") and Store(root).is_done(d.name)} \
        if steps.is_dir() else set()


def _kill_after(cfg: Path, root: Path, done: int) -> None:
    """Start an executor, SIGKILL it once `done` steps have finished (or it ends by itself)."""
    proc = subprocess.Popen([sys.executable, "-m", "layerprune", "study", str(cfg), "--root", str(root), "--no-report"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if len(_finished(root)) >= done:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()


def test_kill_minus_nine_then_resume(reference, tmp_path):
    cfg, ref_root = reference
    root = tmp_path / "crashy"
    _kill_after(cfg, root, 2)
    first = _finished(root)
    _kill_after(cfg, root, 7)
    assert main(["study", str(cfg), "--root", str(root), "--no-report"]) == 0
    assert _numbers(root) == _numbers(ref_root)
    runs = _runs(root)
    assert first and all(runs[s] == 1 for s in first)  # finished steps were never rerun
    assert not [p for p in (root / "steps").iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert main(["status", str(root)]) == 0
