"""Every criterion against an independent straightforward computation on the same calibration windows:
similarity scores from output_hidden_states + explicit cosines, ablation choices from physically removing
layers on a deepcopy, Taylor from autograd over all batches at once. Plus selection rules and determinism."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from layerprune.activations import LayerRunner
from layerprune.calibration import CalibrationSpec, load_calibration
from layerprune.errors import UsageError
from layerprune.families import decoder_layers, final_norm, get_module, spec_for
from layerprune.scoring import SCORERS, score
from layerprune.scoring.selection import best_block, one_size, parse_protect, resolve_sizes
from layerprune.surgery import remove_layers
from layerprune.tiny import tiny_model, tiny_tokenizer

FAMILIES = ["llama", "qwen2", "gemma2", "gpt2", "falcon", "opt"]  # plain, sliding, alternating, gpt2, tuple out


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matmuls on a shared 2-core machine are ~20x faster single-threaded.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "text.txt"
    path.write_text(json.__doc__ + copy.__doc__ + math.__doc__ + (F.__doc__ or "") + torch.__doc__)
    return path


@pytest.fixture(scope="module")
def cal(text_file):
    return load_calibration(tiny_tokenizer(), CalibrationSpec(str(text_file), seq_len=24, num_samples=5, seed=3))


def hidden_states(model, ids, post_norm=False):
    """HF hidden_states; pre-norm: rerun with the final norm replaced by identity so hs[L] is the raw output."""
    spec = spec_for(model.config)
    parent, _, name = spec.final_norm.rpartition(".")
    norm = final_norm(model)
    if not post_norm:
        setattr(get_module(model, parent), name, torch.nn.Identity())
    try:
        with torch.no_grad():
            return model(ids, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        setattr(get_module(model, parent), name, norm)


def cos(a, b):  # (..., D) → (...)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def naive_nll(model, ids_all, removed):
    m = copy.deepcopy(model)
    if removed:
        remove_layers(m, sorted(removed))
    total = 0.0
    with torch.no_grad():
        for ids in ids_all.split(2):
            logp = m(ids, use_cache=False).logits[:, :-1].log_softmax(-1)
            total -= logp.gather(-1, ids[:, 1:, None]).sum().item()
    return total


@pytest.mark.parametrize("post_norm", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_similarity_scores_match_hidden_states(family, post_norm, cal):
    model = tiny_model(family, num_layers=6)
    hs = [torch.cat(x) for x in zip(*(hidden_states(model, ids, post_norm) for ids in cal.input_ids.split(2)))]
    n = 2  # hs[k]: (N, T, D)
    bi = [1 - cos(hs[k], hs[k + 1]).mean().item() for k in range(6)]
    ang = [(torch.arccos(cos(hs[s][:, -1], hs[s + n][:, -1]).clamp(-1, 1)) / math.pi).mean().item()
           for s in range(6 - n + 1)]
    blk = [cos(hs[s], hs[s + n]).mean().item() for s in range(6 - n + 1)]
    kw = dict(num_drop=n, calibration=cal, protected="none", post_norm=post_norm, batch_size=2)
    got = {m: score(model, None, m, **kw) for m in ("bi", "angular", "cosine_block")}
    assert got["bi"]["scores"] == pytest.approx(bi, abs=1e-5)
    assert got["angular"]["scores"] == pytest.approx(ang, abs=1e-4)
    assert got["cosine_block"]["scores"] == pytest.approx(blk, abs=1e-5)
    assert got["bi"]["drop"] == sorted(sorted(range(6), key=lambda k: bi[k])[:n])
    start = min(range(len(ang)), key=ang.__getitem__)
    assert got["angular"]["drop"] == [start, start + 1] and got["angular"]["granularity"] == "block"
    start = max(range(len(blk)), key=blk.__getitem__)
    assert got["cosine_block"]["drop"] == [start, start + 1]


def test_post_norm_changes_only_the_last_layer(cal):
    model = tiny_model("llama")
    pre = score(model, None, "bi", num_drop=1, calibration=cal, protected="none")["scores"]
    post = score(model, None, "bi", num_drop=1, calibration=cal, protected="none", post_norm=True)["scores"]
    assert pre[:-1] == pytest.approx(post[:-1], abs=1e-9) and abs(pre[-1] - post[-1]) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_sleb_and_ppl_choose_what_the_naive_loop_chooses(family, cal):
    model = tiny_model(family, seed=1, num_layers=6)
    protected = [0]
    removed, trajectory = set(), []
    for _ in range(3):  # naive SLEB: rebuild the model for every candidate, run it whole
        nll = {j: naive_nll(model, cal.input_ids, removed | {j}) for j in range(6) if j not in removed | {0}}
        best = min(nll, key=lambda j: (nll[j], j))
        trajectory.append(nll)
        removed.add(best)
    got = score(model, None, "sleb", num_drop=3, calibration=cal, protected=protected, batch_size=2)
    assert got["drop"] == sorted(removed)
    for r, want in zip(got["rounds"], trajectory):
        assert {int(j): v for j, v in r["nll"].items()} == pytest.approx(want, rel=1e-5)

    ppl = score(model, None, "ppl", num_drop=2, calibration=cal, protected=protected, batch_size=2)
    tokens = cal.input_ids.shape[0] * (cal.input_ids.shape[1] - 1)
    want = [None] + [math.exp(trajectory[0][j] / tokens) for j in range(1, 6)]
    assert ppl["scores"][0] is None and ppl["scores"][1:] == pytest.approx(want[1:], rel=1e-5)
    assert ppl["drop"] == sorted(sorted(range(1, 6), key=lambda j: want[j])[:2])


def test_runner_recomputes_only_layers_after_the_candidate(cal):
    model = tiny_model("qwen2", num_layers=8)
    runner = LayerRunner(model)
    ids = cal.input_ids[:2]
    full, entering = runner.run(ids, capture={5})
    assert runner.layer_forwards == 8
    resumed, _ = runner.run(ids, skip={5}, resume=(6, entering[5]))
    assert runner.layer_forwards == 8 + 2  # layers 6 and 7 only
    pruned = copy.deepcopy(model)
    remove_layers(pruned, [5])
    torch.testing.assert_close(resumed, pruned(ids.clone(), use_cache=False).logits.detach(), rtol=0, atol=1e-6)
    assert not any("forward" in layer.__dict__ for layer in decoder_layers(model))  # stubs are removed


def test_taylor_matches_autograd(cal):
    model = tiny_model("llama", seed=2)
    got = score(model, None, "taylor", num_drop=2, calibration=cal, protected="none", batch_size=2)
    params = [list(layer.parameters()) for layer in decoder_layers(model)]
    loss = sum(F.cross_entropy(model(ids, use_cache=False).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
               for ids in cal.input_ids.split(2))
    grads = torch.autograd.grad(loss, [p for ps in params for p in ps])
    it = iter(grads)
    want = [sum((p * next(it)).abs().sum().item() for p in ps) for ps in params]
    assert got["scores"] == pytest.approx(want, rel=1e-4)
    assert got["drop"] == sorted(sorted(range(6), key=want.__getitem__)[:2])
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # model left as it was


def test_reverse_random_and_protection(cal):
    model = tiny_model("llama", num_layers=8)
    assert score(model, None, "reverse", num_drop=3)["drop"] == [5, 6, 7]
    assert score(model, None, "reverse", num_drop=3, protected="-1")["drop"] == [4, 5, 6]
    a = score(model, None, "random", num_drop=3, seed=7)
    assert a["drop"] == score(model, None, "random", num_drop=3, seed=7)["drop"]
    assert a["scores"] != score(model, None, "random", num_drop=3, seed=8)["scores"]
    for method in ("bi", "ppl", "sleb", "taylor", "angular", "cosine_block"):
        got = score(model, None, method, num_drop=2, calibration=cal, protected="2-5", batch_size=5)
        assert not set(got["drop"]) & {2, 3, 4, 5}, method
    assert score(model, None, "sleb", num_drop=1, calibration=cal)["params"]["protected"] == [0, 7]
    assert score(model, None, "ppl", num_drop=1, calibration=cal)["params"]["protected"] == [0, 1, 2, 3, 6, 7]


def test_selection_rules():
    assert resolve_sizes(32, ratio=0.25) == [8] and resolve_sizes(6, ratio=0.1) == [1]
    assert resolve_sizes(32, ratio=[0.25, 0.125, 0.13]) == [4, 8] and resolve_sizes(8, num_drop=[3, 1, 3]) == [1, 3]
    with pytest.raises(UsageError, match="one set of layers"):
        one_size(8, num_drop=[1, 2])
    assert parse_protect("0-2,-1", 8) == [0, 1, 2, 7] and parse_protect("none", 8) == []
    assert best_block([0.3, 0.1, 0.2, 0.0], 2, protected=[3]) == [1, 2]  # starts 2 and 3 cover layer 3
    assert best_block([0.3, 0.1, 0.2, 0.5], 2, protected=[], highest=True) == [3, 4]
    bad = {"num_drop=0": dict(num_drop=0), "num_drop=L": dict(num_drop=6), "ratio=1": dict(ratio=1.0),
           "ratio=0": dict(ratio=0.0), "both": dict(num_drop=1, ratio=0.5), "neither": {},
           "one bad of several": dict(num_drop=[1, 6]), "one bad ratio": dict(ratio=[0.5, 1.0])}
    for name, kw in bad.items():
        with pytest.raises(UsageError):
            resolve_sizes(6, **kw)
    with pytest.raises(UsageError, match="protected"):
        score(tiny_model("llama"), None, "reverse", num_drop=3, protected="0-3")
    with pytest.raises(UsageError, match="unknown method 'nope'; known: reverse, random, bi"):
        score(tiny_model("llama"), None, "nope", num_drop=1)


@pytest.mark.parametrize("method", ["reverse", "random", "bi", "angular", "cosine_block", "ppl", "taylor", "sleb"])
def test_one_run_serves_several_sizes_exactly(method, cal):
    # Block criteria score every size from one pass; iterative ones answer n from their first n rounds.
    model = tiny_model("qwen2", seed=5, num_layers=7)
    kw = dict(calibration=cal, protected=[0], batch_size=2, seed=1)
    many = score(model, None, method, num_drop=[3, 1, 2], **kw)
    assert many["params"]["sizes"] == [1, 2, 3] and many["drop"] == many["drops"]["3"]
    for n in (1, 2, 3):
        one = score(model, None, method, num_drop=n, **kw)
        assert many["drops"][str(n)] == one["drop"], n
        if method in ("angular", "cosine_block"):
            assert many["block_scores"][str(n)] == pytest.approx(one["scores"], abs=1e-12)
    assert many["scores"] == pytest.approx(one["scores"], abs=1e-12)  # the largest size's


def test_every_scorer_is_documented():
    import importlib

    for name, scorer in SCORERS.items():
        doc = importlib.import_module(scorer.fn.__module__).__doc__
        assert f"``{name}``" in doc and "arXiv" in doc or name in ("random",), name


# ---- CLI: `layerprune score` and `layerprune prune --method/--scores` -------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from layerprune.tiny import save_tiny

    return save_tiny("qwen2", tmp_path_factory.mktemp("qwen2") / "model", num_layers=6)


def _cli(*args):
    from layerprune.cli import main

    return main([str(a) for a in args])


CAL = ["--seq-len", "24", "--num-samples", "4", "--batch-size", "2"]


def test_score_cli_writes_a_deterministic_record(saved, text_file, tmp_path):
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        assert _cli("score", saved, "--method", "sleb", "--num-drop", "2", "--calibration", text_file, *CAL,
                    "--seed", "4", "--out", out) == 0
    a, b = (json.loads(p.read_text()) for p in outs)
    assert a.pop("timings") != {} and b.pop("timings") != {}
    assert a == b
    assert a["method"] == "sleb" and a["params"]["protected"] == [0, 5] and a["params"]["seed"] == 4
    assert a["calibration"]["source"] == str(text_file) and a["calibration"]["windows"] == 4
    assert a["model"]["source"] == str(saved) and a["model"]["fingerprint"].startswith("sha256:")
    assert len(a["rounds"]) == 2 and a["drop"] == sorted(r["chosen"] for r in a["rounds"])
    assert a["layer_forwards"] > 0 and a["versions"]["torch"]


BAD_SCORE = {
    "unknown method": (["--method", "magic", "--num-drop", "1"], "unknown method 'magic'; known: reverse"),
    "num-drop = L": (["--method", "bi", "--num-drop", "6"], "drop between 1 and 5"),
    "num-drop < 1": (["--method", "bi", "--num-drop", "0"], "drop between 1 and 5"),
    "ratio 1.5": (["--method", "bi", "--ratio", "1.5"], "outside \\(0, 1\\)"),
    "ratio 0": (["--method", "bi", "--ratio", "0"], "outside \\(0, 1\\)"),
    "missing file": (["--method", "bi", "--num-drop", "1", "--calibration", "{tmp}/none.txt"], "does not exist"),
    "empty file": (["--method", "bi", "--num-drop", "1", "--calibration", "{tmp}/empty.txt"], "is empty"),
    "short file": (["--method", "bi", "--num-drop", "1", "--calibration", "{tmp}/short.txt"], "has only 7 tokens"),
    "no field": (["--method", "bi", "--num-drop", "1", "--calibration", "{tmp}/r.jsonl"], "no text field 'text'"),
    "hub offline": (["--method", "bi", "--num-drop", "1"], "emozilla/pg19.*offline.*local file"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCORE))
def test_score_cli_bad_input(case, saved, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("hello")
    (tmp_path / "r.jsonl").write_text('{"question": "what?"}\n')
    args, message = BAD_SCORE[case]
    out = tmp_path / "out" / "scores.json"
    assert _cli("score", saved, *[a.format(tmp=tmp_path) for a in args], *CAL, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert not out.parent.exists()


def test_prune_by_method_then_reuse_scores(saved, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from layerprune.surgery import skipped_layers

    out = tmp_path / "pruned"
    assert _cli("prune", saved, "--method", "bi", "--ratio", "0.34", "--calibration", text_file, *CAL,
                "--out", out) == 0
    record = json.loads((out / "pruning.json").read_text())
    assert record["method"] == "bi" and record["scores"]["method"] == "bi" and len(record["removed"]) == 2
    assert record["removed"] == record["scores"]["drop"]
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    original = AutoModelForCausalLM.from_pretrained(saved).eval()
    ids = torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), skipped_layers(original, record["removed"]):
        torch.testing.assert_close(reloaded(ids).logits, original(ids, use_cache=False).logits, rtol=0, atol=1e-5)

    scores = tmp_path / "s.json"
    assert _cli("score", saved, "--method", "bi", "--ratio", "0.34", "--calibration", text_file, *CAL,
                "--out", scores) == 0
    again = tmp_path / "again"
    assert _cli("prune", saved, "--scores", scores, "--out", again) == 0
    rec2 = json.loads((again / "pruning.json").read_text())
    assert rec2["removed"] == record["removed"] and rec2["scores"]["scores"] == record["scores"]["scores"]
    # one scores file for several ratios: prune picks a size, and refuses to guess or invent one
    multi = tmp_path / "multi.json"
    assert _cli("score", saved, "--method", "bi", "--ratio", "0.2,0.34", "--calibration", text_file, *CAL,
                "--out", multi) == 0
    assert json.loads(multi.read_text())["drops"]["2"] == record["removed"]
    picked = tmp_path / "picked"
    assert _cli("prune", saved, "--scores", multi, "--ratio", "0.34", "--out", picked) == 0
    assert json.loads((picked / "pruning.json").read_text())["removed"] == record["removed"]
    for args, message in ((["--scores", multi], "holds drops for 1, 2 layers; choose one with --num-drop"),
                          (["--scores", multi, "--num-drop", "3"], "not 3; rescore with --num-drop 3"),
                          (["--method", "bi", "--num-drop", "1,2", "--calibration", text_file],
                           "pruning removes one set of layers")):
        assert _cli("prune", saved, *args, "--out", tmp_path / "z") == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
    # a scores file for another model is refused; --drop and --method together are refused
    assert _cli("prune", out, "--scores", scores, "--out", tmp_path / "x") == 2
    assert _cli("prune", saved, "--drop", "1", "--method", "bi", "--num-drop", "1", "--out", tmp_path / "y") == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_task_iterative_matches_physical_removal(data_dir):
    from layerprune.evaluation.runner import evaluate
    from layerprune.evaluation.tasks.base import TaskOptions

    model, tok = tiny_model("llama", seed=3, num_layers=4), tiny_tokenizer()
    opts = {"tasks": "arc_easy,openbookqa", "samples": 12}

    def acc(m):
        out = evaluate(m, ["arc_easy", "openbookqa"], TaskOptions(limit=12), tokenizer=tok, progress=False)
        return [out["results"][t]["acc"] for t in ("arc_easy", "openbookqa")]

    base = acc(model)
    got = score(model, tok, "task_iterative", num_drop=2, options=opts, batch_size=8)
    assert got["params"]["protected"] == [0] and got["baseline_task_scores"] == dict(zip(["arc_easy", "openbookqa"], base))
    removed = []
    for r in got["rounds"]:
        want = {}
        for j in (j for j in range(1, 4) if j not in removed):
            m = copy.deepcopy(model)
            remove_layers(m, sorted(removed + [j]))
            want[j] = sum(a / b for a, b in zip(acc(m), base)) / 2
        assert {int(j): v for j, v in r["score"].items()} == pytest.approx(want, abs=1e-9)
        assert r["chosen"] == max(want, key=lambda j: (want[j], j))
        removed.append(r["chosen"])
    assert got["drop"] == sorted(removed)
