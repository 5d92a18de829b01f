"""Tiny random models that carry a real instruct tokenizer and chat template, and lm-eval 0.4.13 task YAMLs of
the instruct tasks over the local data files.

    tok, model = tiny_chat_model("qwen2.5-7b-instruct")   # real vocabulary, hidden 16, 2 layers, fp32
    names = write_lmeval_instruct_tasks(tmp, docs, max_gen_toks=16)

The tokenizer files are read from `../shared/models/<name>` (never copied; tests skip when absent). The model
config is the checkpoint's own config.json with tiny sizes; its generation config is the plain one
`from_config` derives (EOS from config.json), so sampling settings of generation_config.json stay out of these
comparisons. lm-eval's own filter functions (`build_predictions_instruct`, `extract_code_blocks`,
`build_predictions`, `list_fewshot_samples`) are taken from its installed `utils.py` files by name, without
importing those modules (they load the hub's code_eval metric at import); the metric in these YAMLs is a no-op:
the programs lm-eval builds are run in our sandbox by the tests instead.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

from eval_helpers import DATA_DIR

MODELS_DIR = Path(os.environ.get("LAYERPRUNE_MODELS") or Path(__file__).resolve().parents[1] / "../shared/models")


def tiny_chat_model(name: str, hidden: int = 16, layers: int = 2, seed: int = 0, dtype=None):
    """(tokenizer, model): the real tokenizer of ../shared/models/<name> and a random tiny model of its family."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(name) if Path(name).is_dir() else MODELS_DIR / name
    tok = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    config.update({"hidden_size": hidden, "intermediate_size": hidden * 2, "num_hidden_layers": layers,
                   "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": hidden // 2})
    if hasattr(config, "max_window_layers"):
        config.max_window_layers = layers
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    with torch.no_grad():  # sharper random predictions than the default init
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return tok, model.eval()


def lm_eval_functions(task_dir: str, names: list[str]) -> str:
    """Source of the named top-level functions of lm-eval's installed tasks/<task_dir>/utils.py."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / task_dir / "utils.py"
    source = path.read_text()
    tree = ast.parse(source)
    return "\n\n".join(ast.get_source_segment(source, node) for node in tree.body
                       if isinstance(node, ast.FunctionDef) and node.name in names)


_UTILS_HEADER = "import re\nfrom typing import Union\n\n\ndef noop(references, predictions, **kwargs):\n    return 0.0\n\n\n"


def _source(path: Path, cache: Path, split: str = "test") -> dict:
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": {split: str(path)}, "cache_dir": str(cache)},
            "test_split": "test"}


def write_lmeval_instruct_tasks(tmp: Path, mbpp_docs: list[dict], max_gen_toks: int) -> dict[str, str]:
    """lm-eval's humaneval_instruct, mbpp_instruct and gsm8k_cot_llama (their YAMLs with local data, a
    smaller max_gen_toks and a no-op metric); returns {our task name: lm-eval task name}."""
    import lm_eval
    import yaml

    cache = tmp / "hf_cache"
    (tmp / "utils.py").write_text(_UTILS_HEADER + lm_eval_functions("humaneval", ["build_predictions_instruct"])
                                  + "\n\n" + lm_eval_functions("mbpp", ["extract_code_blocks", "list_fewshot_samples"])
                                  + "\n\n" + lm_eval_functions("mbpp", ["build_predictions"]).replace(
                                      "def build_predictions", "def mbpp_build_predictions"))
    noop = "metric_list:\n  - metric: !function utils.noop\n    aggregation: mean\n    higher_is_better: true\n"
    he = yaml.safe_dump({"task": "ref_humaneval_instruct", **_source(DATA_DIR / "humaneval/HumanEval.jsonl.gz", cache),
                         "output_type": "generate_until", "num_fewshot": 0,
                         "doc_to_text": "Write a solution to the following problem and make sure that it passes the "
                                        "tests:\n```python\n{{ prompt }}\n```\n",
                         "doc_to_target": "{{test}}\ncheck({{entry_point}})",
                         "gen_prefix": "Here is the completed function:\n```python\n{{ prompt }}\n",
                         "generation_kwargs": {"until": ["\nclass", "\ndef", "\n#", "\nif", "\nprint"],
                                               "max_gen_toks": max_gen_toks, "do_sample": False}})
    (tmp / "ref_humaneval_instruct.yaml").write_text(
        he + noop + "filter_list:\n  - name: create_test\n    filter:\n      - function: custom\n"
        "        filter_fn: !function utils.build_predictions_instruct\n")
    rows = tmp / "mbpp_test.jsonl"
    rows.write_text("".join(json.dumps(d) + "\n" for d in mbpp_docs))
    mb = yaml.safe_dump({"task": "ref_mbpp_instruct", **_source(rows, cache), "output_type": "generate_until",
                         "doc_to_text": "You are an expert Python programmer, and here is your task:\n{{text}}\nYour code "
                                        "should pass these tests:\n{{test_list[0]}}\n{{test_list[1]}}\n{{test_list[2]}}",
                         "doc_to_target": "{% if is_fewshot is defined %}{{code}}\n```{% else %}{{test_list[0]}}\n"
                                          "{{test_list[1]}}\n{{test_list[2]}}{% endif %}",
                         "gen_prefix": "\n```python\n", "target_delimiter": "", "num_fewshot": 3,
                         "generation_kwargs": {"max_gen_toks": max_gen_toks, "until": [], "do_sample": False}})
    (tmp / "ref_mbpp_instruct.yaml").write_text(
        mb + noop + "fewshot_config:\n  sampler: first_n\n  samples: !function utils.list_fewshot_samples\n"
        "filter_list:\n  - name: extract_code\n    filter:\n      - function: custom\n"
        "        filter_fn: !function utils.mbpp_build_predictions\n")
    llama = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k-cot-llama.yaml").read_text())
    llama.pop("dataset_name")
    llama.update({"task": "ref_gsm8k_cot_llama", **_source(DATA_DIR / "gsm8k/test.jsonl", cache)})
    llama["generation_kwargs"]["max_gen_toks"] = max_gen_toks
    (tmp / "ref_gsm8k_cot_llama.yaml").write_text(yaml.safe_dump(llama))
    return {"humaneval_instruct": "ref_humaneval_instruct", "mbpp_instruct": "ref_mbpp_instruct",
            "gsm8k_cot_llama": "ref_gsm8k_cot_llama"}
