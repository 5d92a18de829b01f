"""`sgr`: prompt pools, deterministic seeded sampling, resume, sharding under `accelerate launch`, bad input.
Also the 2-process `heal` run. Tiny random Llama teacher, byte-level tokenizer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerprune.cli import main
from layerprune.errors import UsageError
from layerprune.healing.chat import SYSTEM_PROMPT, render_prompt
from layerprune.healing.prompts import load_prompts, select
from layerprune.healing.sgr import generate_sgr, sample_seed
from layerprune.tiny import save_tiny, tiny_tokenizer

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
GEN = dict(max_new_tokens=12, seed=7)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]




@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("sgr") / "teacher", seed=3, num_layers=4)


@pytest.fixture()
def alpaca(tmp_path):
    rows = [{"instruction": f"Name the number {i}.", "input": "Be brief." if i % 2 else "", "output": str(i)}
            for i in range(7)]
    return write_jsonl(tmp_path / "alpaca.jsonl", rows)


def test_prompt_formats_are_normalized(tmp_path):
    rows = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."}]},
        {"prompt": "Plain", "response": "answer"},
        {"prompt": "Plain"},  # duplicate prompt text: kept once
    ]
    pool = load_prompts(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert [(list(p.messages), p.original) for p in pool] == [
        ([{"role": "user", "content": "Add.\n\n2 and 3"}], "5"),
        ([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}], "Hello"),
        ([{"role": "user", "content": "Why?"}], "Because."),
        ([{"role": "user", "content": "Plain"}], "answer"),
    ]
    first = select(pool, 2, seed=42)
    assert first == select(pool, 2, seed=42) and len(first) == 2
    assert {p.id for p in select(pool, None, seed=1)} == {p.id for p in pool}
    short = select(pool, None, seed=42, keep=lambda p: len(p.messages[-1]["content"]) < 6)
    assert {p.messages[-1]["content"] for p in short} == {"Hi", "Why?", "Plain"}


def test_rows_are_deterministic_whatever_the_batch_size_and_resume(tmp_path, teacher, alpaca):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    generate_sgr(str(teacher), str(alpaca), a, num=5, batch_size=1, **GEN)
    generate_sgr(str(teacher), str(alpaca), b, num=5, batch_size=4, **GEN)
    assert a.read_text() == b.read_text()
    first = generate_sgr(str(teacher), str(alpaca), c, num=3, batch_size=2, **GEN)
    again = generate_sgr(str(teacher), str(alpaca), c, num=5, batch_size=2, **GEN)  # resume: only 2 new
    assert (first["generated"], again["already_done"], again["generated"]) == (3, 3, 2)
    assert c.read_text() == a.read_text()
    assert not list(tmp_path.glob("*.part-*"))
    rows = read_jsonl(a)
    assert len({r["id"] for r in rows}) == 5 and all(r["response"] for r in rows)
    for r in rows:
        assert r["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert r["original"] == r["messages"][1]["content"].split()[3].rstrip(".")  # "Name the number i."
        assert r["format"] == "fallback"
        prov = r["provenance"]
        assert prov["seed"] == 7 and prov["temperature"] == 0.9 and prov["top_p"] == 0.95
        assert prov["sample_seed"] == sample_seed(7, r["id"]) and prov["teacher_fingerprint"].startswith("sha256:")
    other = tmp_path / "d.jsonl"
    generate_sgr(str(teacher), str(alpaca), other, num=5, batch_size=4, max_new_tokens=12, seed=8)
    assert [r["response"] for r in read_jsonl(other)] != [r["response"] for r in rows]  # the seed matters


def test_chat_template_teacher(tmp_path, alpaca):
    path = save_tiny("llama", tmp_path / "chat", seed=3, num_layers=2)
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    out = tmp_path / "sgr.jsonl"
    generate_sgr(str(path), str(alpaca), out, num=2, max_prompt_tokens=80, **GEN)
    rows = read_jsonl(out)
    assert [r["format"] for r in rows] == ["chat_template"] * 2
    assert all(len(tok(render_prompt(tok, r["messages"]))["input_ids"]) <= 80 for r in rows)
    with pytest.raises(UsageError, match="length filter"):
        generate_sgr(str(path), str(alpaca), tmp_path / "none.jsonl", num=2, max_prompt_tokens=5, **GEN)
    assert all(r["messages"][0] == {"role": "system", "content": "You are a helpful assistant."} for r in rows)
    # the system prompt the model is evaluated with opens every conversation; rows keep it for healing
    own = tmp_path / "own.jsonl"
    generate_sgr(str(path), str(alpaca), own, num=2, system_prompt="You are a careful tutor.", **GEN)
    assert [r["messages"][0]["content"] for r in read_jsonl(own)] == ["You are a careful tutor."] * 2
    assert read_jsonl(own)[0]["provenance"]["system_prompt"] == "You are a careful tutor."
    with pytest.raises(UsageError, match="different system_prompt"):  # a resume must not mix prompts
        generate_sgr(str(path), str(alpaca), own, num=3, **GEN)


def test_bad_input(tmp_path, teacher, alpaca, capsys):
    def sgr(*argv):
        code = main(["sgr", str(teacher), *map(str, argv)])
        return code, capsys.readouterr().err.strip()

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "ok"}, {"question": "no known field"}])
    code, err = sgr("--prompts", bad, "--out", tmp_path / "o.jsonl")
    assert code == 2 and f"{bad}:2" in err and "\n" not in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert sgr("--prompts", empty, "--out", tmp_path / "o.jsonl")[0] == 2
    code, err = sgr("--prompts", alpaca, "--out", tmp_path / "o.jsonl", "--temperature", "0")
    assert code == 2 and "temperature" in err
    code, err = sgr("--prompts", tmp_path / "missing.jsonl", "--out", tmp_path / "o.jsonl")
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "o.jsonl").exists()
    out = tmp_path / "s.jsonl"
    assert sgr("--prompts", alpaca, "--out", out, "--num", 2, "--max-new-tokens", 8, "--seed", 1)[0] == 0
    code, err = sgr("--prompts", alpaca, "--out", out, "--num", 2, "--max-new-tokens", 8, "--seed", 2)
    assert code == 2 and "different seed" in err and len(read_jsonl(out)) == 2
    assert sgr("--prompts", alpaca, "--out", out, "--num", 2, "--max-new-tokens", 8, "--seed", 2,
               "--overwrite")[0] == 0


def launch(*argv, nproc=2):
    """Run `python -m layerprune ...` under `accelerate launch` with 2 CPU processes (DDP on gloo).
    accelerate's `--cpu` runs several processes only through mpirun; its torchrun-based launcher
    (`--multi_gpu`) starts them on a machine without GPUs too, and layerprune then asks for CPU processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29533", "-m", "layerprune", *map(str, argv)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, teacher, alpaca):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    generate_sgr(str(teacher), str(alpaca), one, num=6, batch_size=2, **GEN)
    proc = launch("sgr", teacher, "--prompts", alpaca, "--out", two, "--num", 6, "--batch-size", 2,
                  "--max-new-tokens", 12, "--seed", 7)
    assert "two.jsonl.part-1.jsonl" in proc.stderr  # the second process did answer its share
    assert two.read_text() == one.read_text()  # same rows, merged in prompt order
    assert not list(tmp_path.glob("*.part-*"))

    launch("heal", teacher, "--data", two, "--out", tmp_path / "healed", "--max-steps", 2, "--lora-r", 4,
           "--keep-truncated", "--batch-size", 1, "--grad-accum", 1, "--logging-steps", 1, "--warmup-steps", 0)
    rec = json.loads((tmp_path / "healed" / "healing.json").read_text())
    assert rec["world_size"] == 2 and rec["steps"] == 2 and rec["hyperparameters"]["effective_batch"] == 2
    assert (tmp_path / "healed" / "model.safetensors").is_file() and not (tmp_path / "healed.work").exists()
