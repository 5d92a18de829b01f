"""`heal --mode linear` (ReplaceMe least squares folded into the MLP output projection): exact when the removed
block is exactly the linear form it fits, lower calibration NLL on the testbed, a plain reloadable checkpoint,
one-line refusals."""

import copy
import json
from itertools import islice

import pytest
import torch
from transformers import AutoModelForCausalLM

from layerprune.calibration import Calibration
from layerprune.cli import main
from layerprune.errors import UsageError
from layerprune.families import decoder_layers, get_module, spec_for
from layerprune.healing.linear import LinearConfig, collect, contiguous_blocks, fold, repair
from layerprune.pruning import prune
from layerprune.surgery import remove_layers
from layerprune.tiny import save_tiny, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


class KnownLinear(torch.nn.Module):
    """A decoder layer replaced by h ↦ h + s·m B, m = the previous layer's MLP projection output (captured by
    a hook): what the removed block contributes is exactly linear in that output."""

    def __init__(self, store, b, as_tuple):
        super().__init__()
        self.store, self.b, self.as_tuple = store, b, as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states + self.store["m"] @ self.b if self.b is not None else hidden_states
        return (out,) if self.as_tuple else out


def _returns_tuple(model, ids):
    seen = []
    h = decoder_layers(model)[0].register_forward_hook(lambda m, a, out: seen.append(isinstance(out, tuple)))
    with torch.no_grad():
        model(ids, use_cache=False)
    h.remove()
    return seen[0]


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gpt2", "granite", "cohere2", "falcon"])
def test_exactly_linear_block_is_reproduced(family):
    """gpt_neox/cohere2/falcon: parallel attention+MLP (the fold is exact there too); gpt2: Conv1D with bias;
    granite: residual multiplier."""
    torch.manual_seed(0)
    original = tiny_model(family, num_layers=6)
    spec = spec_for(original.config)
    d = original.config.get_text_config().hidden_size
    ids = torch.randint(4, original.config.get_text_config().vocab_size, (8, 24))
    pruned = copy.deepcopy(original)
    kept = remove_layers(pruned, [2, 3])
    as_tuple = _returns_tuple(original, ids)
    store = {}
    scale = float(getattr(original.config, spec.mlp_out_scale)) if spec.mlp_out_scale else 1.0
    get_module(decoder_layers(original)[1], spec.mlp_out).register_forward_hook(
        lambda m, a, out: store.__setitem__("m", out * scale))
    b = 0.3 * torch.randn(d, d)
    decoder_layers(original)[2] = KnownLinear(store, b, as_tuple)
    decoder_layers(original)[3] = KnownLinear(store, None, as_tuple)  # identity
    with torch.no_grad():
        want = original(ids[:2], use_cache=False).logits
        stats = collect(original, [(2, 3)], Calibration(ids), batch_size=4)
        before = pruned(ids[:2], use_cache=False).logits
        info = fold(pruned, (2, 3), stats[(2, 3)], kept, LinearConfig(alpha=1.0), nll=None)
        got = pruned(ids[:2], use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # the repaired model reproduces the original ...
    assert (before - want).abs().max() > 100 * (got - want).abs().max()  # ... where plain pruning is far off
    assert info["relative_error_repaired"] < 1e-8 < info["relative_error_pruned"]


def test_contiguous_blocks():
    assert contiguous_blocks([7, 3, 4, 0]) == [(0, 0), (3, 4), (7, 7)]


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    from layerprune.study.demo import testbed_model_dir
    from layerprune.testbed.corpus import training_documents

    root = tmp_path_factory.mktemp("linear")
    (root / "cal.txt").write_text("".join(islice(training_documents(seed=1234), 400)))
    return str(testbed_model_dir()), root


def test_calibration_nll_falls_for_every_demo_cut(testbed):
    """The demo's criteria and sizes (demo.yaml), each pruned and repaired on the demo's calibration text."""
    from layerprune.calibration import CalibrationSpec, load_calibration
    from layerprune.loading import load_model
    from layerprune.scoring import score
    from layerprune.study.demo import demo_config

    src, root = testbed
    cfg = demo_config()
    cal_cfg = cfg.pruning.calibration
    model, tok = load_model(src)
    cal = load_calibration(tok, CalibrationSpec(str(root / "cal.txt"), seq_len=cal_cfg.seq_len,
                                                num_samples=cal_cfg.num_samples, seed=cfg.seed))
    lin = LinearConfig(calibration=str(root / "cal.txt"), seq_len=cal_cfg.seq_len, num_samples=cal_cfg.num_samples,
                       seed=cfg.seed)
    seen = set()
    for criterion in cfg.pruning.criteria:
        drops = score(model, tok, criterion, num_drop=cfg.pruning.num_drop, calibration=cal, seed=cfg.seed)["drops"]
        for n, drop in drops.items():
            if tuple(drop) in seen:
                continue
            seen.add(tuple(drop))
            tag = f"{criterion}-{n}"
            prune(src, drop, root / f"p-{tag}")
            rec = repair(str(root / f"p-{tag}"), root / f"l-{tag}", lin)
            nll = rec["calibration_nll"]
            assert nll["repaired"] < nll["pruned"], (tag, drop, rec["blocks"])


def test_repaired_checkpoint_is_plain_and_reloads(testbed, tmp_path):
    src, root = testbed
    prune(src, "3,5-6", tmp_path / "pruned")
    rec = repair(str(tmp_path / "pruned"), tmp_path / "out", LinearConfig(calibration=str(root / "cal.txt"),
                                                                           seq_len=32, num_samples=8, alpha=1.0))
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert reloaded.config.to_dict() | {"_name_or_path": ""} == pruned.config.to_dict() | {"_name_or_path": ""}
    changed = {n for n, p in reloaded.state_dict().items() if not torch.equal(p, pruned.state_dict()[n])}
    assert changed == {"model.layers.2.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"}
    ids = torch.tensor([[1, 40, 41, 42, 43]])  # KV cache still right: greedy with cache == without
    a = reloaded.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    b = reloaded.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(a, b)
    saved = json.loads((tmp_path / "out" / "healing.json").read_text())
    assert saved["arm"] == "linear" and saved["calibration"]["windows"] == 8
    assert [b["removed"] for b in saved["blocks"]] == [[3, 3], [5, 6]]
    assert all(b["relative_error_repaired"] < b["relative_error_pruned"] for b in saved["blocks"])
    assert saved["source"]["fingerprint"] and (tmp_path / "out" / "pruning.json").is_file()


def test_block_at_layer_zero_with_tied_embeddings_is_left_and_said(testbed, tmp_path):
    src, root = testbed
    prune(src, "0", tmp_path / "pruned")
    rec = repair(str(tmp_path / "pruned"), tmp_path / "out", LinearConfig(calibration=str(root / "cal.txt"),
                                                                           seq_len=32, num_samples=4))
    assert rec["blocks"][0]["repaired"] is False and "tied" in rec["blocks"][0]["reason"]


def test_block_at_layer_zero_folds_into_untied_embedding(tmp_path):
    torch.manual_seed(0)
    original = tiny_model("llama", num_layers=4)
    original.config.tie_word_embeddings = False
    d = original.config.hidden_size
    ids = torch.randint(4, original.config.vocab_size, (8, 24))
    pruned = copy.deepcopy(original)
    kept = remove_layers(pruned, [0])
    b = torch.eye(d) + 0.3 * torch.randn(d, d)

    class Lin(torch.nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states @ b

    decoder_layers(original)[0] = Lin()
    with torch.no_grad():
        want = original(ids[:2], use_cache=False).logits
        stats = collect(original, [(0, 0)], Calibration(ids), batch_size=4)
        info = fold(pruned, (0, 0), stats[(0, 0)], kept, LinearConfig(alpha=1.0), nll=None)
        got = pruned(ids[:2], use_cache=False).logits
    assert info["folded_into"] == "input embedding"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    save_tiny("llama", tmp_path / "base", num_layers=4)
    cal = tmp_path / "cal.txt"
    cal.write_text("some calibration text " * 200)

    def run(*args):
        capsys.readouterr()  # drop what setting up printed
        code = main(["heal", *map(str, args), "--mode", "linear"])
        return code, capsys.readouterr().err.strip()

    code, err = run(tmp_path / "base", "--out", tmp_path / "o1", "--calibration", cal)
    assert code == 2 and "no pruning.json" in err and "\n" not in err
    prune(str(tmp_path / "base"), "2", tmp_path / "pruned")
    code, err = run(tmp_path / "pruned", "--out", tmp_path / "o2")  # default calibration is on the hub
    assert code == 2 and "offline" in err and "\n" not in err
    save_tiny("gemma2", tmp_path / "g", num_layers=4)
    prune(str(tmp_path / "g"), "2", tmp_path / "gp")
    code, err = run(tmp_path / "gp", "--out", tmp_path / "o3", "--calibration", cal)
    assert code == 2 and "gemma2 has no exact linear fold" in err and "\n" not in err
    assert not any(p.name.startswith(("o1", "o2", "o3", ".o")) for p in tmp_path.iterdir())
    with pytest.raises(UsageError, match="ridge"):
        repair(str(tmp_path / "pruned"), tmp_path / "o4", LinearConfig(ridge=-1))
