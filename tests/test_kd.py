"""`heal --mode kd` (logit distillation on TRL's GKDTrainer): the same exact loss mask as SFT, ~0 loss and
unmoved weights when the teacher is the student, falling held-out KL with the real teacher, QLoRA on CPU,
healing.json, bad input. Tiny random Llamas with a byte-level tokenizer."""

import json

import pytest
import torch
from safetensors.torch import load_file

from layerprune.cli import main
from layerprune.errors import UsageError
from layerprune.healing.chat import fit_to_length, read_rows, render_prompt
from layerprune.healing.kd import KDConfig, build_kd_trainer, distill, with_completion_mask
from layerprune.healing.sft import HealConfig
from layerprune.loading import load_model
from layerprune.pruning import prune
from layerprune.tiny import save_tiny, tiny_model, tiny_tokenizer

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
FAST = dict(warmup_steps=0, batch_size=2, grad_accum=1, lora_r=8, logging_steps=1, save_steps=1000,
            gradient_checkpointing=False)

pytestmark = pytest.mark.usefixtures("one_thread")


def sgr_rows(n=4, start=0):
    return [{"id": str(i), "messages": [SYSTEM, {"role": "user", "content": f"Add {i} and {i + 3}."}],
             "response": f"{i} plus {i + 3} is {2 * i + 3}.", "original": f"{2 * i + 3}"}
            for i in range(start, start + n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    save_tiny("llama", root / "base", seed=1, num_layers=6)
    prune(str(root / "base"), "2-3", root / "pruned")
    return root


@pytest.mark.parametrize("templated", [False, True])
def test_loss_mask_is_exact(tmp_path, templated):
    """The collated batch trains exactly the response tokens (and end of turn), as SFT's mask does."""
    tok = tiny_tokenizer()
    if templated:
        tok.chat_template = TEMPLATE
    rows = read_rows(write_jsonl(tmp_path / "d.jsonl", sgr_rows(3)), "response")
    c = HealConfig(mode="lora", **FAST)
    trainer = build_kd_trainer(tiny_model("llama"), tiny_model("llama", seed=1), tok, rows, c, KDConfig(),
                               tmp_path / "work")
    fit_to_length(trainer, c.max_length, verbose=False)
    ds = with_completion_mask(trainer.train_dataset)
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])  # left-padded
    eot = tok.convert_tokens_to_ids("</s>")
    for i, row in enumerate(rows):
        keep = batch["attention_mask"][i].bool()
        ids, labels = batch["input_ids"][i][keep].tolist(), batch["labels"][i][keep].tolist()
        prompt = tok(render_prompt(tok, row["messages"]), add_special_tokens=False)["input_ids"]
        n = len(prompt)
        assert ids[:n] == prompt and labels[:n] == [-100] * n
        assert labels[n:] == ids[n:] and ids[-1] == eot
        assert tok.decode(ids[n:-1]) == row["response"]
        assert (batch["labels"][i][~keep] == -100).all()  # padding never trained
        assert batch["prompts"][i][batch["prompt_attention_mask"][i].bool()].tolist() == prompt  # for on-policy


def test_teacher_equal_to_student_gives_zero_loss_and_unmoved_weights(tmp_path, models):
    """The first gradient is ~0 with the student as its own teacher (not with another teacher); Adam still
    turns float noise into steps of up to lr, so the weights move by at most steps · lr."""
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(4))
    base = models / "base"
    save_tiny("llama", tmp_path / "teacher7", seed=7, num_layers=6)
    grads = {}
    for name, teacher in (("self", base), ("other", tmp_path / "teacher7")):
        rec = distill(str(base), data, tmp_path / name, HealConfig(max_steps=3, **FAST),
                      KDConfig(teacher=str(teacher), student="full"))
        log = [json.loads(line) for line in (tmp_path / name / "loss.jsonl").read_text().splitlines()]
        grads[name] = log[0]["grad_norm"]
        if name == "self":
            assert rec["arm"] == "kd" and rec["steps"] == 3 and rec["mean_train_loss"] < 1e-5
    assert grads["self"] < 1e-4 * grads["other"], grads
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "self" / "model.safetensors")
    assert max(float((before[k] - after[k]).abs().max()) for k in before) <= 3 * 2e-5 * 1.01  # ≤ steps · lr


def _held_out_kl(student_dir, teacher, tok, rows) -> float:
    """Mean forward KL(teacher || student) per response token on `rows` (prompt tokens excluded)."""
    student, _ = load_model(str(student_dir), tokenizer=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tok(render_prompt(tok, row["messages"]), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + tok(row["response"] + tok.eos_token, add_special_tokens=False)["input_ids"]])
            s = torch.log_softmax(student(ids).logits[0, len(prompt) - 1 : -1], -1)
            t = torch.log_softmax(teacher(ids).logits[0, len(prompt) - 1 : -1], -1)
            total += float((t.exp() * (t - s)).sum())
            count += len(s)
    return total / count


def test_real_teacher_lowers_held_out_kl_and_records_everything(tmp_path, models):
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(16))
    held_out = sgr_rows(4, start=40)
    teacher, tok = load_model(str(models / "base"))
    rec = distill(str(models / "pruned"), data, tmp_path / "out", HealConfig(max_steps=24, lr=3e-3, **FAST))
    before = _held_out_kl(models / "pruned", teacher, tok, held_out)
    after = _held_out_kl(tmp_path / "out", teacher, tok, held_out)
    assert after < 0.8 * before, (before, after)
    saved = json.loads((tmp_path / "out" / "healing.json").read_text())
    assert saved == json.loads(json.dumps(rec))
    assert saved["arm"] == "kd" and saved["student"] == "lora"
    assert saved["teacher"]["path"] == str(models / "base") and saved["teacher"]["from"] == "pruning.json"
    assert saved["teacher"]["fingerprint"].startswith("sha256:")
    assert {"lmbda": 0.0, "beta": 0.0, "temperature": 1.0}.items() <= saved["kd"].items()
    assert saved["data"]["rows"] == 16 and saved["steps"] == 24 and saved["hyperparameters"]["lora_r"] == 8
    assert (tmp_path / "out" / "pruning.json").is_file() and (tmp_path / "out" / "adapter").is_dir()
    assert (tmp_path / "out" / "loss.jsonl").read_text().count("\n") == 24


def test_qlora_student_runs_on_cpu_or_fails_clearly(tmp_path, models):
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(2))
    try:
        rec = distill(str(models / "pruned"), data, tmp_path / "out", HealConfig(max_steps=2, **FAST),
                      KDConfig(student="qlora"))
    except UsageError as err:
        assert str(err).startswith("--mode qlora") and "\n" not in str(err)
        assert not (tmp_path / "out").exists()
        return
    assert rec["student"] == "qlora" and rec["steps"] == 2
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert merged.keys() == load_file(models / "pruned" / "model.safetensors").keys()


def test_bad_input_is_one_line_exit_2(tmp_path, models, capsys):
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(2))

    def run(*args):
        capsys.readouterr()
        code = main(["heal", *map(str, args), "--mode", "kd", "--data", str(data)])
        return code, capsys.readouterr().err.strip()

    code, err = run(models / "base", "--out", tmp_path / "o1")  # unpruned: no pruning.json, no --teacher
    assert code == 2 and "needs a teacher" in err and "--teacher" in err and "\n" not in err
    other = tmp_path / "other"
    save_tiny("llama", other, seed=2, num_layers=2)
    tok = tiny_tokenizer()
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    code, err = run(models / "pruned", "--out", tmp_path / "o2", "--teacher", other)
    assert code == 2 and "do not share a tokenizer" in err and "\n" not in err
    code, err = run(models / "pruned", "--out", tmp_path / "o3", "--teacher", tmp_path / "missing")
    assert code == 2 and "cannot be loaded" in err and "\n" not in err
    code, err = run(models / "pruned", "--out", tmp_path / "o4", "--kd-beta", 2)
    assert code == 2 and "[0, 1]" in err
    capsys.readouterr()
    assert main(["heal", str(models / "pruned"), "--out", str(tmp_path / "o5"), "--mode", "kd"]) == 2
    assert "trains on --data" in capsys.readouterr().err
    assert not any(p.name.startswith(("o1", "o2", "o3", "o4", "o5", ".o")) for p in tmp_path.iterdir())


def test_on_policy_batches_run(tmp_path, models):
    """lmbda = 1: every batch is answered by the student from the collator's prompts, then scored by the teacher."""
    data = write_jsonl(tmp_path / "sgr.jsonl", sgr_rows(2))
    rec = distill(str(models / "pruned"), data, tmp_path / "out", HealConfig(max_steps=2, **FAST),
                  KDConfig(lmbda=1.0, beta=0.5, temperature=0.7, max_new_tokens=4))
    assert rec["steps"] == 2 and rec["final_loss"] == rec["final_loss"] and rec["final_loss"] >= 0
    assert rec["kd"]["lmbda"] == 1.0 and rec["kd"]["beta"] == 0.5 and rec["kd"]["temperature"] == 0.7
