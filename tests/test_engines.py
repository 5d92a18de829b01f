"""Engine selection in the main environment (vLLM itself is tested in tests/test_vllm_engine.py, in the venv
scripts/install-vllm-cpu.sh makes): `--engine vllm` without vLLM is one line naming the extra, exit 2, nothing
written; the study's `engine:` and `check:` keys plan as documented and leave HF-engine step ids unchanged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from layerprune.cli import main
from layerprune.errors import UsageError
from layerprune.study.config import load_study_config
from layerprune.study.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
TESTBED = ROOT / "src" / "layerprune" / "testbed" / "model"
HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here, so the missing-vLLM message cannot be shown")
@pytest.mark.parametrize("verb", [
    ["eval", str(TESTBED), "--tasks", "testbed_math", "--limit", "2"],
    ["sgr", str(TESTBED), "--prompts", "POOL", "--num", "2"],
    ["check", str(TESTBED)],
])
def test_engine_vllm_without_vllm_names_the_extra(tmp_path, capsys, verb):
    from layerprune.testbed.corpus import write_prompt_pool

    write_prompt_pool(tmp_path / "pool.jsonl", 4)
    out = tmp_path / "out"
    argv = [str(tmp_path / "pool.jsonl") if a == "POOL" else a for a in verb]
    argv += ["--engine", "vllm"] + (["--out", str(out / "x.jsonl" if verb[0] == "sgr" else out)])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs vLLM" in err and "'.[vllm]'" in err and "install-vllm-cpu.sh" in err
    assert not out.exists()


def test_unknown_engine_and_engine_for_a_non_task_criterion(tmp_path, capsys):
    assert main(["eval", str(TESTBED), "--tasks", "testbed_math", "--engine", "tgi"]) == 2
    assert "unknown engine; choose one of hf, vllm" in capsys.readouterr().err
    assert main(["score", str(TESTBED), "--method", "reverse", "--num-drop", "1", "--engine", "vllm",
                 "--out", str(tmp_path / "s.json")]) == 2
    assert "concerns task_iterative" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def _config(tmp_path, **extra):
    raw = yaml.safe_load((ROOT / "configs" / "ci" / "tiny.yaml").read_text())
    raw["pruning"]["criteria"] = ["reverse", "task_iterative"]
    raw.update(extra)
    path = ROOT / "configs" / "ci" / f"_engine_test_{tmp_path.name}.yaml"  # relative paths resolve from here
    path.write_text(yaml.safe_dump(raw))
    try:
        return load_study_config(path)
    finally:
        path.unlink()


def test_study_engine_and_check_keys(tmp_path):
    a = make_plan(_config(tmp_path))
    b = make_plan(_config(tmp_path, engine={"sgr": "vllm", "eval": "vllm", "score": "vllm", "tensor_parallel_size": 2},
                          check={"enabled": True, "prompts": 4}))
    with pytest.raises(UsageError, match="engine.sgr"):
        _config(tmp_path, engine={"sgr": "tgi"})
    assert "check" not in a.counts() and b.counts()["check"] == a.counts()["prune"]
    by_kind = {k: [s for s in b.steps if s.kind == k] for k in ("sgr", "eval", "score", "check")}
    assert all(s.params["engine"] == "vllm" and s.params["engine_settings"]["tensor_parallel_size"] == 2
               for k in ("sgr", "eval", "check") for s in by_kind[k])
    assert {s.params["method"]: s.params.get("engine") for s in by_kind["score"]} == {"reverse": None,
                                                                                      "task_iterative": "vllm"}
    assert all(s.params["check"]["prompts"] == 4 for s in by_kind["check"])
    # the HF engine adds nothing to a step's parameters: finished steps of existing studies keep their ids
    assert all("engine" not in s.params for s in a.steps)
    same = [s.id for s in a.steps if s.kind == "model" or s.params.get("method") == "reverse"]
    assert same and set(same) <= {s.id for s in b.steps}
