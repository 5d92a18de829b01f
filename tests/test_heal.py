"""`heal`: exact loss masks, training that learns, merge = base + adapter, partial freezing, qlora, resume,
bad input. Everything runs on a tiny random Llama (6 layers) and a byte-level tokenizer."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from layerprune.cli import main
from layerprune.errors import UsageError
from layerprune.healing.chat import read_rows, render_prompt
from layerprune.healing.sft import HealConfig, build_trainer, heal
from layerprune.pruning import prune
from layerprune.tiny import save_tiny, tiny_model, tiny_tokenizer

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
FAST = dict(warmup_steps=0, batch_size=2, grad_accum=1, lora_r=8, logging_steps=1, save_steps=1000,
            gradient_checkpointing=False)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def sgr_rows(n=4):
    return [{"id": str(i), "messages": [SYSTEM, {"role": "user", "content": f"Add {i} and {i}."}],
             "response": f"{i} plus {i} is {2 * i}.", "original": f"{2 * i}", "format": "fallback"}
            for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path




@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny 6-layer model pruned to 5 layers, so pruning.json exists to be carried forward."""
    root = tmp_path_factory.mktemp("heal")
    save_tiny("llama", root / "base", seed=1, num_layers=6)
    prune(str(root / "base"), "2", root / "pruned")
    return root / "pruned"


@pytest.mark.parametrize("templated", [False, True])
def test_loss_mask_is_exact(tmp_path, templated):
    tok = tiny_tokenizer()
    if templated:
        tok.chat_template = TEMPLATE
    rows = read_rows(write_jsonl(tmp_path / "d.jsonl", sgr_rows(3)), "response")
    trainer = build_trainer(tiny_model("llama"), tok, rows, HealConfig(**FAST), tmp_path / "work")
    eot = tok.convert_tokens_to_ids("</s>")  # the template's end of turn, and the EOS TRL appends otherwise
    assert len(trainer.train_dataset) == 3
    for row, ex in zip(rows, trainer.train_dataset):
        ids, labels = ex["input_ids"], ex["labels"]
        prompt = tok(render_prompt(tok, row["messages"]), add_special_tokens=False)["input_ids"]
        n = len(prompt)
        assert ids[:n] == prompt
        assert labels[:n] == [-100] * n  # every prompt token ignored
        assert labels[n:] == ids[n:]  # every response token counted ...
        assert ids[-1] == eot and labels[-1] == eot  # ... and the end-of-turn token
        assert tok.decode(ids[n:-1]) == row["response"]


def test_full_finetune_overfits_a_tiny_sgr_file(tmp_path, pruned):
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(2))
    rec = heal(str(pruned), data, tmp_path / "out", HealConfig(mode="full", max_steps=40, lr=1e-2, **FAST))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and losses[-1] < 0.2 * losses[0]
    assert rec["steps"] == 40 and rec["final_loss"] == losses[-1]
    assert rec["arm"] == "full" and rec["data"]["rows"] == 2


def test_lora_learns_and_merge_equals_base_plus_adapter(tmp_path, pruned):
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(2))
    rec = heal(str(pruned), data, tmp_path / "out", HealConfig(max_steps=20, lr=1e-2, **FAST))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "loss.jsonl").read_text().splitlines()]
    # LoRA alone cannot drive a random tiny model's loss far (frozen random head), but it must fall
    assert losses[-1] < losses[0] - 0.3
    carried = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert carried == json.loads((pruned / "pruning.json").read_text())
    healing = json.loads((tmp_path / "out" / "healing.json").read_text())
    assert healing == rec and healing["arm"] == "lora" and healing["data"]["sha256"].startswith("sha256:")
    assert healing["hyperparameters"]["lora_r"] == 8 and healing["hyperparameters"]["learning_rate"] == 1e-2
    assert not (tmp_path / "out.work").exists()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    x = torch.randint(4, 260, (2, 12))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    base = AutoModelForCausalLM.from_pretrained(pruned)
    adapted = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
    with torch.no_grad():
        a, b = merged(x).logits, adapted(x).logits
        plain = AutoModelForCausalLM.from_pretrained(pruned).eval()(x).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (a - plain).abs().max() > 1e-3  # the adapter did change the model


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_lora_adapts_fused_moe_experts(tmp_path, family):
    # Fused experts are 3-D parameters, not Linear modules: they are adapted through PEFT target_parameters.
    save_tiny(family, tmp_path / "base", seed=1, num_layers=4)
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(2))
    heal(str(tmp_path / "base"), data, tmp_path / "out", HealConfig(max_steps=6, lr=1e-2, **FAST))
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert {"mlp.experts.down_proj", "mlp.experts.gate_up_proj"} <= set(config["target_parameters"])
    base, healed = load_file(tmp_path / "base" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    # merged into the experts; checkpoints keep one tensor per expert (qwen: gate/up/down_proj, mixtral: w1/w2/w3)
    kinds = {k.rsplit(".", 2)[-2] for k in base if ".experts." in k}
    changed = {k.rsplit(".", 2)[-2] for k in base if ".experts." in k and not torch.equal(healed[k], base[k])}
    assert len(kinds) == 3 and changed == kinds
    assert all(torch.equal(healed[k], base[k]) for k in base if k.endswith("router.weight") or ".mlp.gate." in k)
    hp = json.loads((tmp_path / "out" / "healing.json").read_text())["hyperparameters"]
    assert hp["lora_dropout"] == 0.05 and hp["lora_target_parameters"] == ["mlp.experts.down_proj",
                                                                           "mlp.experts.gate_up_proj"]


def test_partial_trains_only_head_norm_and_last_layers(tmp_path, pruned):
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(2))
    config = HealConfig(mode="partial", partial_layers=2, max_steps=3, lr=1e-2, **FAST)
    heal(str(pruned), data, tmp_path / "out", config)
    before = load_file(pruned / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    trained = ("lm_head.", "model.norm.", "model.layers.3.", "model.layers.4.")  # 5 layers left, last 2 train
    for name in before:
        if name.startswith(trained):
            assert not torch.equal(before[name], after[name]), name
        else:
            assert torch.equal(before[name], after[name]), name  # bitwise unchanged


def test_qlora_runs_on_cpu_or_fails_clearly(tmp_path, pruned):
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(2))
    try:
        rec = heal(str(pruned), data, tmp_path / "out", HealConfig(mode="qlora", max_steps=2, **FAST))
    except UsageError as err:
        assert str(err).startswith("--mode qlora") and "\n" not in str(err)
        assert not (tmp_path / "out").exists()
        return
    assert rec["arm"] == "qlora" and rec["steps"] == 2
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    merged = load_file(tmp_path / "out" / "model.safetensors")  # unquantized: same tensors as the input
    assert merged.keys() == load_file(pruned / "model.safetensors").keys()


def test_interrupted_heal_resumes_from_checkpoint(tmp_path, pruned):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(4))
    config = HealConfig(max_steps=5, **{**FAST, "save_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        heal(str(pruned), data, tmp_path / "out", config, callbacks=(Interrupt(),))
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "out.work" / "checkpoint-2").is_dir()
    rec = heal(str(pruned), data, tmp_path / "out", config)
    assert rec["resumed_from"] == "checkpoint-2" and rec["steps"] == 5
    steps = [json.loads(line)["step"] for line in (tmp_path / "out" / "loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # the log history came back with the checkpoint
    assert not (tmp_path / "out.work").exists()


def run_cli(capsys, *argv):
    code = main(["heal", *map(str, argv)])
    return code, capsys.readouterr().err.strip()


def test_bad_input_is_one_line_exit_2(tmp_path, pruned, capsys, monkeypatch):
    out = tmp_path / "out"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, err = run_cli(capsys, pruned, "--data", empty, "--out", out)
    assert code == 2 and "no rows" in err

    rows = sgr_rows(3)
    del rows[1]["response"]
    rows[1]["original"] = None
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    code, err = run_cli(capsys, pruned, "--data", bad, "--out", out)
    assert code == 2 and f"{bad}:2" in err

    good = write_jsonl(tmp_path / "good.jsonl", sgr_rows(2))
    code, err = run_cli(capsys, pruned, "--data", good, "--out", out, "--max-length", 8)
    assert code == 2 and "all 2 rows are longer than --max-length 8" in err

    code, err = run_cli(capsys, pruned, "--data", good, "--out", out, "--mode", "partial", "--partial-layers", 9)
    assert code == 2 and "exceeds the model's 5 layers" in err

    assert not any(p.name.startswith(("out", ".out")) for p in tmp_path.iterdir())  # nothing half-written

    out.mkdir()
    (out / "x").write_text("keep")
    code, err = run_cli(capsys, pruned, "--data", good, "--out", out)
    assert code == 2 and "--overwrite" in err and (out / "x").read_text() == "keep"

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    code, err = run_cli(capsys, pruned, "--data", good, "--out", tmp_path / "q", "--mode", "qlora")
    assert code == 2 and "needs bitsandbytes" in err and "\n" not in err


def test_truncation_is_counted(tmp_path, pruned):
    rows = sgr_rows(2)
    rows[0]["response"] = "x" * 200  # longer than max_length; its prompt still fits, so it is cut, not dropped
    data = write_jsonl(tmp_path / "sgr.jsonl", rows)
    rec = heal(str(pruned), data, tmp_path / "out", HealConfig(max_steps=1, max_length=96, **FAST))
    assert rec["data"] == {**rec["data"], "rows": 2, "used": 2, "truncated": 1, "dropped": 0}


@pytest.mark.parametrize("text_rows", [False, True])
def test_lm_mode_trains_on_every_token(tmp_path, pruned, text_rows):
    rows = [{"text": f"Plain text number {i}."} for i in range(2)] if text_rows else sgr_rows(2)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    config = HealConfig(mode="lm", max_steps=2, gradient_checkpointing=True,
                        **{k: v for k, v in FAST.items() if k != "gradient_checkpointing"})
    trainer = build_trainer(tiny_model("llama"), tiny_tokenizer(), read_rows(data, "response", lm=True), config,
                            tmp_path / "work")
    for ex in trainer.train_dataset:
        assert ex["labels"] == ex["input_ids"] and ex["input_ids"][-1] == 2  # all tokens, EOS appended
    rec = heal(str(pruned), data, tmp_path / "out", config)
    assert rec["arm"] == "lm" and rec["steps"] == 2 and (tmp_path / "out" / "adapter").is_dir()
