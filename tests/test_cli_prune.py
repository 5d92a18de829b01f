"""`layerprune prune` / `info` end to end on saved tiny checkpoints, and every bad input: exit 2, one line,
nothing written."""

import json
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import layerprune.pruning
from layerprune.cli import main
from layerprune.tiny import save_tiny


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama") / "model")


def test_prune_then_info(llama_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", str(llama_dir), "--drop", "1,4-5", "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "generation_config.json", "pruning.json",
            "tokenizer.json"} <= {p.name for p in out.iterdir()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any load warning fails the test
        model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched weights
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert AutoTokenizer.from_pretrained(out)("Hi (x)").input_ids == AutoTokenizer.from_pretrained(llama_dir)("Hi (x)").input_ids

    record = json.loads((out / "pruning.json").read_text())
    assert record["removed"] == [1, 4, 5] and record["kept"] == [0, 2, 3]
    assert record["method"] == "manual" and record["source"]["model"] == str(llama_dir)
    assert record["source"]["fingerprint"].startswith("sha256:") and record["versions"]["transformers"]

    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["num_layers"] == 3 and shown["family"] == "llama"
    assert shown["pruning"]["removed"] == [1, 4, 5]
    assert shown["parameters"]["decoder_layers"] == sum(p.numel() for p in model.model.layers.parameters())
    assert shown["parameters"]["total"] == sum(p.numel() for p in model.parameters())

    # pruning the pruned model reports indices in the first model's numbering
    again = tmp_path / "again"
    assert main(["prune", str(out), "--drop", "1", "--out", str(again)]) == 0
    rec2 = json.loads((again / "pruning.json").read_text())
    assert rec2["removed"] == [1, 2, 4, 5] and rec2["kept"] == [0, 3] and rec2["original_num_layers"] == 6


def test_issue_acceptance_five_layers(tmp_path):
    """The issue's check: a 6+-layer llama with --drop 1,4-5 ... here an 8-layer one keeps 5."""
    from transformers import LlamaConfig

    from layerprune.tiny import FAMILY_KWARGS, tiny_tokenizer

    src = tmp_path / "llama8"
    cfg = LlamaConfig(**{**FAMILY_KWARGS["llama"], "num_hidden_layers": 8})
    AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    out = tmp_path / "p"
    proc = subprocess.run([sys.executable, "-m", "layerprune", "prune", str(src), "--drop", "1,4-5", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "missing" not in proc.stderr.lower() and "unexpected" not in proc.stderr.lower()
    info = subprocess.run([sys.executable, "-m", "layerprune", "info", str(out)], capture_output=True, text=True)
    assert info.returncode == 0
    assert "layers:      5" in info.stdout and "removed:     [1, 4, 5]" in info.stdout


BAD = {
    "out of range": (["--drop", "6"], "out of range"),
    "duplicate": (["--drop", "1,1"], "more than once"),
    "overlapping range": (["--drop", "1-3,2"], "more than once"),
    "descending": (["--drop", "5-3"], "descending"),
    "not an integer": (["--drop", "one"], "bad layer spec"),
    "empty": (["--drop", ""], "empty"),
    "all layers": (["--drop", "0-5"], "cannot remove all"),
    "negative": (["--drop", "-1"], "bad layer spec|negative"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_drop_spec(case, llama_dir, tmp_path, capsys):
    args, message = BAD[case]
    out = tmp_path / "out"
    assert main(["prune", str(llama_dir), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_sources(tmp_path, capsys):
    out = tmp_path / "out"
    cases = {
        str(tmp_path / "nope" / "model"): "does not exist",
        str(tmp_path): "not a model directory",
    }
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    cases[str(tmp_path / "cfg")] = "not supported; supported: .*llama"
    for src, message in cases.items():
        assert main(["prune", src, "--drop", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
        assert not out.exists()
    assert main(["info", str(tmp_path / "cfg")]) == 2


def test_existing_output_needs_overwrite(llama_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["prune", str(llama_dir), "--drop", "1", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert main(["prune", str(llama_dir), "--drop", "1", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "pruning.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or backup directories left


def test_failure_while_saving_leaves_nothing(llama_dir, tmp_path, monkeypatch):
    def broken_write(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(layerprune.pruning, "write_json", broken_write)  # fails after the weights are written
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        layerprune.pruning.prune(str(llama_dir), "1", out)
    assert list(tmp_path.iterdir()) == []


def test_dtype_option(llama_dir, tmp_path):
    out = tmp_path / "bf16"
    assert main(["prune", str(llama_dir), "--drop", "0", "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert main(["prune", str(llama_dir), "--drop", "0", "--out", str(tmp_path / "x"), "--dtype", "fp8"]) == 2


@pytest.mark.parametrize("argv", [["score", "m", "--method", "bi", "--num-drop", "abc", "--out", "s.json"],
                                  ["prune", "m"], ["nope"], ["eval", "m", "--tasks", "arc_easy", "--limit", "x"]])
def test_malformed_command_line_is_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "--help" in err, err
