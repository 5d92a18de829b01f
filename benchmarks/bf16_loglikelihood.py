"""Per-choice log-likelihood error of a bf16 model against an fp32 forward of the same (bf16-rounded) weights:
ours (HFBackend: fp32 output layer on the scored positions) vs lm-eval 0.4.13's HFLM (logits in bf16).

    python benchmarks/bf16_loglikelihood.py [--model ../shared/models/qwen2.5-7b-instruct] [--docs 20]

A tiny random model carries the real tokenizer and vocabulary of `--model` (hidden 64, 2 layers); prompts are
the first `--docs` arc_easy and hellaswag docs of the local data dir under the model's chat template. Prints
mean and max absolute error of both against the fp32 reference and their ratio (lm-eval / ours).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "../shared/models/qwen2.5-7b-instruct"))
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "tests"))
    errors = measure(Path(args.model), args.docs, args.hidden)
    n = len(errors["ours"])
    for who in ("ours", "lm_eval"):
        e = errors[who]
        print(f"{who:8s} bf16 vs fp32: mean |Δ| {sum(e) / n:.2e}  max |Δ| {max(e):.2e}  ({n} choices)")
    ratio = sum(errors["lm_eval"]) / max(sum(errors["ours"]), 1e-30)
    print(f"lm-eval error / our error: {ratio:.1f}x")
    return 0


def measure(model_dir: Path, docs: int, hidden: int = 64) -> dict[str, list[float]]:
    """{"ours": [|Δ| per choice], "lm_eval": [...]} against the fp32 reference; see module doc."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from chat_helpers import tiny_chat_model
    from layerprune.evaluation.chat import chat_renderer
    from layerprune.evaluation.hf_backend import HFBackend
    from layerprune.evaluation.tasks import get_task
    from layerprune.evaluation.tasks.base import TaskOptions

    tok, model = tiny_chat_model(str(model_dir), hidden=hidden)
    bf16 = model.to(torch.bfloat16)
    ref = copy.deepcopy(bf16).to(torch.float32)
    data = Path(os.environ.get("LAYERPRUNE_DATA") or ROOT / "../shared/data")
    opts = TaskOptions(data_dir=data, chat_template=True, chat_renderer=chat_renderer(tok))
    requests = []
    for name in ("arc_easy", "hellaswag"):
        task = get_task(name)
        for i, doc in enumerate(task.load_docs(opts)[:docs]):
            requests += task.requests(i, doc, opts)
    truth = [r.logprob for r in HFBackend(ref, tok, progress=False).loglikelihood(requests)]
    ours = [r.logprob for r in HFBackend(bf16, tok, progress=False).loglikelihood(requests)]
    lm = HFLM(pretrained=bf16, tokenizer=tok, batch_size=8)
    theirs = [ll for ll, _ in lm.loglikelihood(
        [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(requests)],
        disable_tqdm=True)]
    return {"ours": [abs(a - b) for a, b in zip(ours, truth)], "lm_eval": [abs(a - b) for a, b in zip(theirs, truth)]}


if __name__ == "__main__":
    sys.exit(main())
