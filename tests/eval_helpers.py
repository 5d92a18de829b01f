"""Builders for evaluation tests: a real (trained, byte-level BPE) tokenizer and a tiny random Llama.

    tok = build_tokenizer()                      # Llama-style: adds <s>, has </s>, byte-level so any text encodes
    model = build_model(tok, layers=4, hidden=64)
    path = save_model(model, tok, tmp_path / "m") # a directory `layerprune eval` and lm-eval's `hf` can load

Nothing here touches the network. The tokenizer is trained on the local benchmark files when they exist
(so words tokenize like a real vocabulary would), else on a small built-in text.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

DATA_DIR = Path(os.environ.get("LAYERPRUNE_DATA") or Path(__file__).resolve().parents[1] / "../shared/data")

_FALLBACK_TEXT = [
    "Question: Which gas do plants take in from the air?\nAnswer: carbon dioxide",
    "The following are multiple choice questions (with answers) about anatomy.",
    "A. bone B. muscle C. nerve D. skin. Answer: A",
    "She poured the water into the glass because the glass was empty.",
] * 8


def corpus_lines(limit: int = 3000) -> list[str]:
    """Training text for the tokenizer: benchmark text when the data dir exists."""
    lines: list[str] = []
    for rel in ("arc/arc_easy.jsonl", "piqa/valid.jsonl", "winogrande/winogrande.jsonl", "boolq/boolq.jsonl"):
        path = DATA_DIR / rel
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                lines += [json.dumps(json.loads(line), ensure_ascii=False) for _, line in zip(range(600), f)]
    mmlu = DATA_DIR / "mmlu" / "test"
    if mmlu.is_dir():
        for csv in sorted(mmlu.glob("*.csv"))[:10]:
            lines += csv.read_text(encoding="utf-8").splitlines()[:60]
    return (lines or _FALLBACK_TEXT)[:limit]


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return tok.to_str()


def build_tokenizer(vocab_size: int = 1024, add_bos: bool = True):
    """A PreTrainedTokenizerFast that adds <s> like Llama's (or not, with add_bos=False)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_str(_trained_tokenizer_json(vocab_size))
    if not add_bos:
        raw.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=4096)


def build_model(tokenizer, layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2, seed: int = 0,
                max_positions: int = 2048, vocab_size: int | None = None):
    """A random LlamaForCausalLM in fp32, eval mode, sized to the tokenizer (or a larger `vocab_size`, to
    give the output layer a real model's cost)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=max(vocab_size or 0, len(tokenizer)),
                         max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger random weights → sharper, more varied predictions than the default init
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
    return model.eval()


def save_model(model, tokenizer, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _yaml(tmp, name: str, body: str) -> None:
    (tmp / f"{name}.yaml").write_text(f"task: {name}\noutput_type: multiple_choice\n{body}")


def _json_source(path, cache) -> str:
    return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\n  cache_dir: {cache}\ntest_split: test\n"


def write_lmeval_tasks(tmp: Path, limit: int, mmlu_subjects=(), extra: bool = False) -> dict[str, str]:
    """lm-eval task YAMLs in `tmp` over the local files (lm-eval's templates over the local fields, §C.3);
    returns {our task name: lm-eval task name}. PIQA's labels are joined into a JSONL of `limit` rows.
    `extra` adds arc_challenge, openbookqa and hellaswag (the last from our own loader's docs: its file
    is not JSON, so only the engine, not the loader, is compared there)."""
    cache, d = tmp / "hf_cache", DATA_DIR
    _yaml(tmp, "ref_arc_easy", _json_source(d / "arc/arc_easy.jsonl", cache) + 'doc_to_text: "{{query}}\\nAnswer:"\n'
          'doc_to_choice: "{{choices}}"\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n')
    with open(d / "piqa/valid.jsonl") as f:
        rows = [json.loads(next(f)) for _ in range(limit)]
    labels = (d / "piqa/valid-labels.lst").read_text().split()
    joined = tmp / "piqa.jsonl"
    joined.write_text("".join(json.dumps({**r, "label": int(lab)}) + "\n" for r, lab in zip(rows, labels)))
    _yaml(tmp, "ref_piqa", _json_source(joined, cache) + 'doc_to_text: "Question: {{goal}}\\nAnswer:"\n'
          'doc_to_choice: "{{[sol1, sol2]}}"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n')
    _yaml(tmp, "ref_winogrande", _json_source(d / "winogrande/winogrande.jsonl", cache) +
          'doc_to_text: gold\ndoc_to_choice: "{{context_options}}"\ndoc_to_target: continuation\n'
          "metric_list:\n  - metric: acc\n")
    _yaml(tmp, "ref_boolq", _json_source(d / "boolq/boolq.jsonl", cache) +
          'doc_to_text: "{{query[9:]}}\\nAnswer:"\ndoc_to_choice: ["no", "yes"]\ndoc_to_target: gold\n'
          "metric_list:\n  - metric: acc\n")
    names = {"arc_easy": "ref_arc_easy", "piqa": "ref_piqa", "winogrande": "ref_winogrande", "boolq": "ref_boolq"}
    for s in mmlu_subjects:
        about = s.replace("_", " ")
        _yaml(tmp, f"ref_mmlu_{s}", (
            f"dataset_path: csv\ndataset_kwargs:\n  data_files:\n    test: {d}/mmlu/test/{s}_test.csv\n"
            f"    dev: {d}/mmlu/dev/{s}_dev.csv\n  cache_dir: {cache}\n  keep_default_na: false\n"
            "test_split: test\nfewshot_split: dev\nfewshot_config:\n  sampler: first_n\nnum_fewshot: 5\n"
            f'description: "The following are multiple choice questions (with answers) about {about}.\\n\\n"\n'
            'doc_to_text: "{{question.strip()}}\\nA. {{choice0}}\\nB. {{choice1}}\\nC. {{choice2}}\\nD. '
            '{{choice3}}\\nAnswer:"\ndoc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: answer\n'
            "metric_list:\n  - metric: acc\n"))
        names[f"mmlu_{s}"] = f"ref_mmlu_{s}"
    if extra:
        names.update(_extra_tasks(tmp, limit, cache))
    return names


def _extra_tasks(tmp: Path, limit: int, cache: Path) -> dict[str, str]:
    from layerprune.evaluation.data import load_docs

    d, both = DATA_DIR, "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    _yaml(tmp, "ref_arc_challenge", _json_source(d / "arc/arc_challenge.jsonl", cache) +
          'doc_to_text: "{{query}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: gold\n' + both)
    _yaml(tmp, "ref_openbookqa", _json_source(d / "openbookqa/openbook_qa.jsonl", cache) +
          'doc_to_text: query\ndoc_to_choice: "{{choices}}"\ndoc_to_target: gold\n' + both)
    docs = load_docs("hellaswag", "eval", d)[:limit]
    (tmp / "hellaswag.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    _yaml(tmp, "ref_hellaswag", _json_source(tmp / "hellaswag.jsonl", cache) +
          'doc_to_text: "{{query}}"\ndoc_to_choice: "choices"\ndoc_to_target: label\n' + both)
    return {"arc_challenge": "ref_arc_challenge", "openbookqa": "ref_openbookqa", "hellaswag": "ref_hellaswag"}


_GSM8K_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {data}/gsm8k/train.jsonl
    test: {data}/gsm8k/test.jsonl
  cache_dir: {cache}
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_gen}
num_fewshot: 5
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
"""


def write_lmeval_gsm8k(tmp: Path, max_gen_toks: int, name: str = "ref_gsm8k") -> str:
    """lm-eval 0.4.13's `gsm8k` task (5-shot, greedy, strict and flexible filters) over the local JSONL files,
    with `max_gen_toks` new tokens at most; returns the lm-eval task name."""
    (tmp / f"{name}.yaml").write_text(_GSM8K_YAML.format(name=name, data=DATA_DIR, cache=tmp / "hf_cache",
                                                         max_gen=max_gen_toks))
    return name
