"""Hub ids as users give them, against a local hub emulator on 127.0.0.1 (tests/hub_emulator.py): the study's
model step downloads before it fingerprints and records repo + commit; prompt pools from a hub dataset record
the dataset's commit. huggingface_hub reads HF_ENDPOINT when imported, so the hub-using code runs in a
subprocess whose environment points at the emulator (HF_HUB_OFFLINE=0 there only)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hub_emulator import HubEmulator
from layerprune.tiny import save_tiny

ROWS = [{"instruction": f"Say the number {i}." + " Please." * i, "output": f"{i}"} for i in range(5)]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    save_tiny("qwen2", tmp / "model", num_layers=3)
    (tmp / "model" / "original").mkdir()
    (tmp / "model" / "original" / "consolidated.00.pth").write_bytes(b"x" * 400_000)  # never downloaded
    (tmp / "data" / "data").mkdir(parents=True)
    (tmp / "data" / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with HubEmulator() as emu:
        emu.shas = {"model": emu.add_repo("model", "org/tiny", tmp / "model"),
                    "dataset": emu.add_repo("dataset", "org/prompts", tmp / "data")}
        yield emu


def _run(hub, tmp_path: Path, code: str) -> dict:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", STUDY + textwrap.dedent(code)], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


STUDY = """
import json, sys
from pathlib import Path
from layerprune.errors import UsageError
from layerprune.study.config import StudyConfig
from layerprune.study.execute import StepContext, _run_step
from layerprune.study.plan import make_plan
from layerprune.study.steps import RUNNERS
from layerprune.study.store import Store

def run(num, **prompts):
    cfg = StudyConfig.model_validate({
        "models": [{"name": "m", "path": "org/tiny", "num_layers": 3}],
        "pruning": {"criteria": ["reverse"], "num_drop": [1]},
        "healing": {"arms": ["original"], "prompts": {"source": "org/prompts", "num": num, **prompts}},
        "eval": {"tasks": ["arc_easy"]}})
    plan = make_plan(cfg)
    store = Store(Path("root-%d" % num))
    store.register(plan.steps)
    out = {}
    for step in plan.steps:
        if step.kind in ("model", "prompts"):
            _run_step(step, StepContext(cfg, step, store, Path(".")), RUNNERS[step.kind], lambda s: None)
            d = store.step_dir(step.id)
            out[step.kind] = json.loads((d / ("model.json" if step.kind == "model" else "prompts.json")).read_text())
    return out
"""


def test_study_model_step_downloads_then_fingerprints_and_pins_the_commit(hub, tmp_path):
    out = _run(hub, tmp_path, """
    from transformers import AutoConfig
    from layerprune.provenance import fingerprint_dir, fingerprint_source
    AutoConfig.from_pretrained("org/tiny")          # caches config.json alone, as planning may
    try:
        fingerprint_source("org/tiny"); config_only = "fingerprinted"
    except UsageError:
        config_only = "refused"
    res = run(3)
    m = res["model"]
    path = Path(m["path"])
    from layerprune.loading import load_model
    model, tok = load_model("org/tiny")             # the hub id itself, as from_pretrained resolves it
    from layerprune.study.estimate import downloads
    cfg = StudyConfig.model_validate({"models": [{"name": "m", "path": "org/tiny", "num_layers": 3}],
                                      "pruning": {"num_drop": [1]}, "eval": {"tasks": ["gsm8k"]},
                                      "healing": {"arms": ["sgr"], "prompts": {"source": "org/prompts"}}})
    print(json.dumps({**res, "config_only": config_only, "downloads": downloads(cfg),
                      "dir_fingerprint": fingerprint_dir(path),
                      "files": sorted(p.name for p in path.iterdir()), "layers": model.config.num_hidden_layers,
                      "tokenizer": tok is not None}))
    """)
    m = out["model"]
    assert out["config_only"] == "refused"  # a config-only cache no longer stands for the model's weights
    assert m["repo"] == "org/tiny" and m["revision"] == hub.shas["model"]
    assert m["fingerprint"] == out["dir_fingerprint"]
    assert "model.safetensors" in out["files"] and "config.json" in out["files"] and "original" not in out["files"]
    assert out["layers"] == 3 and out["tokenizer"]
    # what a dry run says will be downloaded: the files loading needs, sized by the hub (original/ excluded)
    size = sum(f.stat().st_size for f in Path(m["path"]).iterdir()) / 1e6
    data = len("".join(json.dumps(r) + "\n" for r in ROWS)) / 1e6
    assert out["downloads"] == [f"model org/tiny ({size:.1f} MB)", f"dataset org/prompts ({data:.1f} MB)"]
    assert not any("original/" in r for r in hub.requests if "/resolve/" in r)
    p = out["prompts"]
    assert p["repo"] == "org/prompts" and p["revision"] == hub.shas["dataset"]
    assert (p["rows"], p["unique"], p["available"], p["selected"], p["skipped"]) == (5, 5, 5, 3, 0)


def test_prompt_pool_larger_than_source_is_refused_or_recorded(hub, tmp_path):
    out = _run(hub, tmp_path, """
    try:
        run(10); refused = None
    except UsageError as err:
        refused = str(err)
    print(json.dumps({"refused": refused, "fewer": run(11, allow_fewer=True)["prompts"]}))
    """)
    assert "only 5 usable" in out["refused"] and "allow_fewer" in out["refused"]
    f = out["fewer"]
    assert (f["requested"], f["selected"], f["allow_fewer"]) == (11, 5, True)


def test_max_prompt_tokens_skips_and_counts(hub, tmp_path):
    from layerprune.healing.chat import render_prompt, with_system
    from layerprune.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    lengths = sorted(len(tok(render_prompt(tok, with_system([{"role": "user", "content": r["instruction"]}])))
                         ["input_ids"]) for r in ROWS)
    limit = lengths[2]  # the three shortest prompts fit
    out = _run(hub, tmp_path, f"""
    fits = run(5, max_prompt_tokens={limit}, allow_fewer=True)["prompts"]
    try:
        run(5, max_prompt_tokens={limit}); refused = None
    except UsageError as err:
        refused = str(err)
    print(json.dumps({{"fits": fits, "refused": refused}}))
    """)
    assert (out["fits"]["selected"], out["fits"]["skipped"], out["fits"]["max_prompt_tokens"]) == (3, 2, limit)
    assert "only 3 usable of 5" in out["refused"] and "2 over the prompt-token limit" in out["refused"]
