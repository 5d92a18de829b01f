"""Selection stability over calibration draws: exact overlap/frequency arithmetic, a deterministic criterion
is perfectly stable, and a model built so that several layers tie is flagged unstable when draws differ."""

import json
import random

import pytest
import torch

from layerprune.calibration import CalibrationSpec, load_calibration
from layerprune.cli import main
from layerprune.scoring.stability import jaccard, selection_stability, summarize
from layerprune.tiny import save_tiny, tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """Many short, different documents: each seed's shuffle puts different text in the windows."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "(x)", "[1, 2]", "print", "sum", "42", "the", "of", "{k: v}"]
    path = tmp_path_factory.mktemp("cal") / "docs.jsonl"
    with path.open("w") as f:
        for _ in range(200):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))}) + "\n")
    return path


def test_jaccard_and_summary_by_hand():
    assert jaccard([1, 2], [2, 3]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0
    runs = [{"model": {"num_layers": 4}, "drops": {"2": d}, "scores": s, "calibration": None}
            for d, s in (([1, 2], [0.0, 1.0, 2.0, None]), ([1, 2], [2.0, 1.0, 0.0, None]), ([2, 3], [1.0, 1.0, 1.0, None]))]
    st = summarize(runs, [0, 1, 2], threshold=0.75)
    assert st["frequency"]["2"] == [0.0, round(2 / 3, 4), 1.0, round(1 / 3, 4)]
    # pairs (0,1)=1, (0,2)=1/3, (1,2)=1/3 → mean 5/9
    assert st["overlap"]["2"]["mean"] == pytest.approx(5 / 9, abs=1e-4)
    assert st["overlap"]["2"]["min"] == pytest.approx(1 / 3, abs=1e-4)
    assert st["unstable"] == ["2"]
    assert st["scores"]["mean"][:3] == [1.0, 1.0, 1.0] and st["scores"]["max"][0] == 2.0
    assert st["scores"]["mean"][3] is None


def test_reverse_is_perfectly_stable(docs):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    rec = selection_stability(model, tok, "reverse", seeds=[0, 1, 2], num_drop=[1, 2])
    st = rec["stability"]
    assert {k: v["mean"] for k, v in st["overlap"].items()} == {"1": 1.0, "2": 1.0}
    assert st["unstable"] == [] and st["frequency"]["2"] == [0, 0, 0, 0, 1.0, 1.0]


def _ambiguous_model():
    """Every layer writes almost nothing to the residual stream (o/down projections scaled to 1e-3), so all
    six layers have nearly the same block influence and which is lowest depends on the calibration text."""
    model = tiny_model("llama", seed=3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(1e-3)
            layer.mlp.down_proj.weight.mul_(1e-3)
    return model


def test_ambiguous_model_is_flagged_unstable(docs):
    tok = tiny_tokenizer()
    cal = dict(calibration=str(docs), seq_len=16, num_samples=4, protected="none")
    rec = selection_stability(_ambiguous_model(), tok, "bi", seeds=[0, 1, 2, 3, 4, 5], num_drop=[2], **cal)
    st = rec["stability"]
    assert st["overlap"]["2"]["mean"] < 1.0 and "2" in st["unstable"]
    assert sum(st["frequency"]["2"]) == pytest.approx(2.0)  # each draw drops exactly two layers
    assert len({tuple(p["drops"]["2"]) for p in st["per_seed"]}) > 1
    assert rec["drops"] == st["per_seed"][0]["drops"]  # the record's own choice is the first draw's
    # the draws really differ: seed 0 and 1 give different windows
    w0, w1 = (load_calibration(tok, CalibrationSpec(str(docs), seq_len=16, num_samples=4, seed=s)).input_ids for s in (0, 1))
    assert not torch.equal(w0, w1)


def test_cli_writes_stability_and_rejects_one_seed(tmp_path, docs, capsys):
    model_dir = tmp_path / "m"
    save_tiny("llama", model_dir)
    out = tmp_path / "scores.json"
    argv = ["score", str(model_dir), "--method", "bi", "--num-drop", "1,2", "--calibration", str(docs),
            "--seq-len", "16", "--num-samples", "2", "--out", str(out)]
    assert main(argv + ["--calibration-seeds", "0"]) == 2
    assert "at least two seeds" in capsys.readouterr().err and not out.exists()
    assert main(argv + ["--calibration-seeds", "0,1,2"]) == 0
    rec = json.loads(out.read_text())
    assert rec["stability"]["seeds"] == [0, 1, 2] and set(rec["stability"]["overlap"]) == {"1", "2"}
    assert [p["calibration"]["seed"] for p in rec["stability"]["per_seed"]] == [0, 1, 2]
    assert rec["model"]["source"] == str(model_dir)


@pytest.mark.slow
def test_study_option_records_stability(tmp_path, data_dir):
    import yaml

    from layerprune.study.analysis import analyze

    gsm = str(data_dir / "gsm8k" / "train.jsonl")
    cfg = {"name": "st", "models": [{"name": "m", "tiny": {"family": "llama", "layers": 4}}],
           "pruning": {"criteria": ["bi"], "num_drop": [1], "calibration_seeds": [0, 1, 2],
                       "calibration": {"source": gsm, "text_field": "question", "seq_len": 16, "num_samples": 2}},
           "eval": {"tasks": ["piqa"], "limit": 4, "data_dir": str(data_dir)}, "speed": {"enabled": False},
           "report": {"bootstrap": 100}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["study", str(path), "--root", str(tmp_path / "root")]) == 0
    (row,) = analyze(tmp_path / "root", n_boot=100)["layer_scores"]
    st = row["stability"]
    assert st["seeds"] == [0, 1, 2] and row["drop"] == st["per_seed"][0]["drops"]["1"]
    assert sum(st["frequency"]["1"]) == pytest.approx(1.0)
    report = (tmp_path / "root" / "report.md").read_text()
    assert "## Selection stability" in report and "bi" in report.split("## Selection stability")[1]
