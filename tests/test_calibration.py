"""Calibration windows from .txt, .jsonl (real GSM8K file) and hub ids; every bad source is a one-line UsageError."""

import json

import pytest
import torch

from layerprune.calibration import CalibrationSpec, load_calibration
from layerprune.errors import UsageError
from layerprune.tiny import tiny_tokenizer

TOK = tiny_tokenizer()


def test_txt_windows_are_the_token_stream_cut_in_order(tmp_path):
    text = "The quick brown fox jumps over the lazy dog. " * 20  # 900 bytes = 900 byte tokens
    (tmp_path / "a.txt").write_text(text)
    cal = load_calibration(TOK, CalibrationSpec(str(tmp_path / "a.txt"), seq_len=50, num_samples=4))
    assert cal.input_ids.shape == (4, 50)
    assert (cal.input_ids[:, 0] == TOK.bos_token_id).all()  # BOS on by default when the tokenizer has one
    stream = TOK(text, add_special_tokens=False).input_ids
    assert cal.input_ids[:, 1:].flatten().tolist() == stream[: 4 * 49]
    d = cal.description
    assert (d["windows"], d["tokens"], d["bos"], d["seq_len"], d["documents"]) == (4, 200, True, 50, 1)

    no_bos = load_calibration(TOK, CalibrationSpec(str(tmp_path / "a.txt"), seq_len=50, num_samples=100, bos=False))
    assert no_bos.input_ids.flatten().tolist() == stream[: len(no_bos.input_ids) * 50]
    assert no_bos.description["windows"] == (900 + 2) // 50 and no_bos.description["requested_windows"] == 100


def test_jsonl_field_shuffle_and_seed(data_dir):
    src = str(data_dir / "gsm8k" / "train.jsonl")
    spec = CalibrationSpec(src, text_field="question", seq_len=64, num_samples=6, seed=5)
    a, b = load_calibration(TOK, spec), load_calibration(TOK, spec)
    assert torch.equal(a.input_ids, b.input_ids) and a.input_ids.shape == (6, 64)
    other = load_calibration(TOK, CalibrationSpec(src, text_field="question", seq_len=64, num_samples=6, seed=6))
    assert not torch.equal(a.input_ids, other.input_ids)
    text = TOK.decode(a.input_ids[:, 1:].flatten())
    questions = [json.loads(line)["question"] for line in open(src)]
    first = text.split("\n\n")[0]
    assert first in questions  # windows start at a whole (shuffled) question
    assert a.description["documents"] == len(questions) and a.description["text_field"] == "question"


def test_bad_sources(tmp_path, data_dir):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "short.txt").write_text("tiny")
    (tmp_path / "rows.jsonl").write_text('{"question": "q"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": \n')
    cases = {
        str(tmp_path / "missing.txt"): "does not exist",
        str(tmp_path / "empty.txt"): "is empty",
        str(tmp_path / "short.txt"): "has only 6 tokens, fewer than one window of 31",
        str(tmp_path / "rows.jsonl"): "no text field 'text' \\(fields: question\\); pass --text-field",
        str(tmp_path / "broken.jsonl"): "not valid JSON",
        "emozilla/pg19": "on the hub but this machine is offline; pass a local file",
        "allenai/c4:en": "offline",
    }
    for source, message in cases.items():
        with pytest.raises(UsageError, match=message) as err:
            load_calibration(TOK, CalibrationSpec(source, seq_len=32, num_samples=2))
        assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="at least 2 tokens"):
        load_calibration(TOK, CalibrationSpec(str(data_dir / "gsm8k" / "train.jsonl"), seq_len=1))
    with pytest.raises(UsageError, match="no tokenizer"):
        load_calibration(None, CalibrationSpec(str(tmp_path / "short.txt")))
