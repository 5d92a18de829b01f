"""Our evaluation engine against lm-eval 0.4.13 on the same random Llama, docs and batch size.

    python benchmarks/eval_vs_lmeval.py --limit 50 --layers 8 --hidden 256 --vocab 32000 --batch-size 16

For each task it prints both accuracies, the largest per-choice log-likelihood difference (absolute, and relative to |LL|) and the
time of each engine (end to end: task building, data, scoring), then the overall throughput ratio. On
CPU the time is this process's CPU time with `--threads` torch threads (default 1), which stays stable on
a shared machine where wall-clock does not; on CUDA it is wall-clock after synchronizing.
lm-eval reads the local data through the task YAMLs of `tests/eval_helpers.write_lmeval_tasks`. Each
engine first runs one doc per task, so dataset caches and kernels are warm before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TASKS = "arc_easy,arc_challenge,openbookqa,piqa,winogrande,boolq,hellaswag"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=32000, help="model vocabulary (>= the tokenizer's 1024)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--tasks", default=TASKS)
    p.add_argument("--mmlu", default="anatomy,astronomy,high_school_geography", help="5-shot MMLU subjects")
    args = p.parse_args()

    import lm_eval
    import torch
    from eval_helpers import DATA_DIR, build_model, build_tokenizer, write_lmeval_tasks
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from layerprune.evaluation.runner import evaluate
    from layerprune.evaluation.tasks.base import TaskOptions

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tok = build_tokenizer()
    model = build_model(tok, layers=args.layers, hidden=args.hidden, heads=max(4, args.hidden // 64),
                        kv_heads=max(2, args.hidden // 128), vocab_size=args.vocab).to(args.device)
    subjects = [s for s in args.mmlu.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="lp_bench_"))
    names = write_lmeval_tasks(tmp, args.limit, subjects, extra=True)
    wanted = [t for t in args.tasks.split(",") if t] + [f"mmlu_{s}" for s in subjects]
    manager = TaskManager(include_path=str(tmp), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)

    def run_ref(task: str, limit: int):
        return lm_eval.simple_evaluate(model=lm, tasks=[names[task]], task_manager=manager, limit=limit,
                                       log_samples=True, verbosity="ERROR")

    def run_ours(task: str, limit: int):
        return evaluate(model, [task], TaskOptions(limit=limit, data_dir=DATA_DIR), out_dir=tmp / "ours" / task,
                        tokenizer=tok, batch_size=args.batch_size, progress=False)

    print(f"model: llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}; "
          f"{args.limit} docs/task, batch {args.batch_size}, {args.device}")
    print(f"{'task':28s} {'acc lm-eval':>11s} {'acc ours':>9s} {'max |dLL|':>10s} {'rel':>8s} {'lm-eval s':>10s} "
          f"{'ours s':>8s} {'speedup':>8s}")
    total_ref = total_ours = 0.0
    for task in wanted:
        run_ref(task, 1), run_ours(task, 1)  # warm-up: dataset caches, kernels
        sync(); t0 = clock(); ref = run_ref(task, args.limit); sync(); t_ref = clock() - t0
        t0 = clock(); ours = run_ours(task, args.limit); sync(); t_ours = clock() - t0
        total_ref, total_ours = total_ref + t_ref, total_ours + t_ours
        diff, rel = _max_ll_diff(ref["samples"][names[task]], tmp / "ours" / task / f"samples_{task}.jsonl")
        acc_ref = ref["results"][names[task]]["acc,none"]
        print(f"{task:28s} {acc_ref:11.4f} {ours['results'][task]['acc']:9.4f} {diff:10.2e} {rel:8.1e} {t_ref:10.2f} "
              f"{t_ours:8.2f} {t_ref / t_ours:7.2f}x")
    print(f"{'all':28s} {'':11s} {'':9s} {'':10s} {'':8s} {total_ref:10.2f} {total_ours:8.2f} {total_ref / total_ours:7.2f}x")


def _max_ll_diff(ref_samples: list[dict], ours_path: Path) -> float:
    import json

    ours = {row["doc_id"]: row["loglikelihoods"] for row in map(json.loads, ours_path.read_text().splitlines())}
    pairs = [(a, r[0]) for s in ref_samples for a, r in zip(ours[s["doc_id"]], s["filtered_resps"])]
    return max(abs(a - r) for a, r in pairs), max(abs(a - r) / max(1.0, abs(r)) for a, r in pairs)


if __name__ == "__main__":
    main()
