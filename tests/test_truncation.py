"""SGR honesty: every row records finish_reason and token counts; `heal` skips responses cut at max_new_tokens
unless asked to keep them, and records how many it dropped."""

import json

import pytest
from transformers import GenerationConfig

from layerprune.errors import UsageError
from layerprune.healing.chat import read_rows, render_prompt
from layerprune.healing.sgr import generate_sgr
from layerprune.tiny import save_tiny, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
MAX_NEW = 10


@pytest.fixture(scope="module")
def sgr_file(tmp_path_factory):
    """SGR rows from a tiny random teacher whose generation config ends on a quarter of the byte tokens, so
    with 10 new tokens some rows stop (EOS) and some are cut."""
    tmp = tmp_path_factory.mktemp("trunc")
    teacher = save_tiny("llama", tmp / "teacher", seed=5, num_layers=2)
    tok = tiny_tokenizer()
    GenerationConfig(eos_token_id=list(range(4, 260, 4)), pad_token_id=0).save_pretrained(teacher)
    prompts = tmp / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Count to {i}.", "output": str(i)}) + "\n"
                               for i in range(16)))
    out = tmp / "sgr.jsonl"
    generate_sgr(str(teacher), str(prompts), out, seed=1, max_new_tokens=MAX_NEW, batch_size=4, device="cpu")
    return out, tok


def test_sgr_rows_record_finish_reason_and_token_counts(sgr_file):
    out, tok = sgr_file
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    reasons = [r["finish_reason"] for r in rows]
    assert set(reasons) == {"stop", "length"}  # both happen with this teacher (seeded, so always)
    for r in rows:
        assert 0 <= r["response_tokens"] <= MAX_NEW
        assert (r["finish_reason"] == "length") == (r["response_tokens"] == MAX_NEW)
        assert r["prompt_tokens"] == len(tok(render_prompt(tok, r["messages"]))["input_ids"])


def test_heal_rows_skip_truncated_unless_kept(sgr_file):
    out, _ = sgr_file
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    cut = sum(r["finish_reason"] == "length" for r in rows)
    stats = {}
    kept = read_rows(out, "response", stats=stats)
    assert len(kept) == len(rows) - cut and stats == {"responses_cut": cut, "responses_cut_dropped": cut}
    assert len(read_rows(out, "response", keep_truncated=True, stats=stats)) == len(rows)
    assert stats["responses_cut_dropped"] == 0
    assert len(read_rows(out, "original")) == len(rows)  # the dataset's own answers are never cut


def test_all_truncated_is_a_usage_error(tmp_path):
    f = tmp_path / "cut.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "response": "abc",
                             "finish_reason": "length"}) + "\n")
    with pytest.raises(UsageError, match="--keep-truncated"):
        read_rows(f, "response")


def test_sgr_num_beyond_the_pool_is_refused_or_allowed(tmp_path, sgr_file, capsys):
    from layerprune.cli import main

    teacher = sgr_file[0].parent / "teacher"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Say {i}."}) + "\n" for i in range(3)))
    args = ["sgr", str(teacher), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"), "--num", "5",
            "--max-new-tokens", "2", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "only 3 usable of 3" in err and "--allow-fewer" in err and "Loading weights" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()
    assert main(args + ["--allow-fewer"]) == 0
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3


def test_heal_records_dropped_truncated_rows(tmp_path, sgr_file):
    from layerprune.healing.sft import HealConfig, heal

    out, _ = sgr_file
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    cut = sum(r["finish_reason"] == "length" for r in rows)
    config = HealConfig(max_steps=1, warmup_steps=0, batch_size=2, grad_accum=1, lora_r=4, save_steps=1000,
                        gradient_checkpointing=False)
    rec = heal(str(out.parent / "teacher"), out, tmp_path / "healed", config)
    d = rec["data"]
    assert (d["rows"], d["responses_cut"], d["responses_cut_dropped"]) == (len(rows) - cut, cut, cut)
    saved = json.loads((tmp_path / "healed" / "healing.json").read_text())
    assert saved["data"]["responses_cut_dropped"] == cut and not saved["hyperparameters"]["keep_truncated"]
