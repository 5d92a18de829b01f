"""Our evaluation engine against lm-eval 0.4.13 on the same random Llama, docs and batch size.

    python benchmarks/eval_vs_lmeval.py --limit 50 --layers 8 --hidden 256 --vocab 32000 --batch-size 16
    python benchmarks/eval_vs_lmeval.py --tasks arc_easy,piqa,gsm8k --limit 20 --max-new-tokens 64

Multiple-choice tasks print both accuracies, the largest per-choice log-likelihood difference (absolute, and
relative to |LL|) and each engine's time. The head's rows for ids beyond the tokenizer's are zeroed (see
`_mute_ids_beyond`), so generations are real text. `gsm8k` (greedy, 5-shot, lm-eval's YAML over the local files)
prints both engines' strict and flexible exact_match, how many docs' generations differ, and the times; a
random model rarely writes a stop string, so nearly every doc decodes all `--max-new-tokens`. Times are end
to end (task building, data, scoring); the last line is the overall throughput ratio. On CPU the time is
this process's CPU time with `--threads` torch threads (default 1), which stays stable on a shared machine
where wall-clock does not; on CUDA it is wall-clock after synchronizing. `mmlu` in `--tasks` stands for the
5-shot `--mmlu` subjects. Each engine first runs one doc per task, so caches and kernels are warm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CHOICE_TASKS = ("arc_easy", "arc_challenge", "openbookqa", "piqa", "winogrande", "boolq", "hellaswag")
TASKS = ",".join(CHOICE_TASKS + ("mmlu", "gsm8k"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=32000, help="model vocabulary (>= the tokenizer's 1024)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--tasks", default=TASKS, help=f"comma-separated subset of {TASKS}")
    p.add_argument("--mmlu", default="anatomy,astronomy,high_school_geography", help="5-shot MMLU subjects")
    p.add_argument("--max-new-tokens", type=int, default=64, help="gsm8k: max_gen_toks of both engines")
    args = p.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS.split(",")))
    if unknown or not tasks:
        p.error(f"--tasks: unknown {', '.join(unknown) or '(none given)'}; choose from {TASKS}")

    import lm_eval
    import torch
    from eval_helpers import DATA_DIR, build_model, build_tokenizer, write_lmeval_gsm8k, write_lmeval_tasks
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
    _mute_ids_beyond(model, len(tok))
    subjects = [s for s in args.mmlu.split(",") if s] if "mmlu" in tasks else []
    tmp = Path(tempfile.mkdtemp(prefix="lp_bench_"))
    names = write_lmeval_tasks(tmp, args.limit, subjects, extra=True)
    names["gsm8k"] = write_lmeval_gsm8k(tmp, args.max_new_tokens)
    wanted = [t for t in tasks if t != "mmlu"]
    wanted = [t for t in wanted if t in CHOICE_TASKS] + [f"mmlu_{s}" for s in subjects] + \
        [t for t in wanted if t == "gsm8k"]
    manager = TaskManager(include_path=str(tmp), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)

    def run_ref(task: str, limit: int):
        return lm_eval.simple_evaluate(model=lm, tasks=[names[task]], task_manager=manager, limit=limit,
                                       log_samples=True, verbosity="ERROR")

    def run_ours(task: str, limit: int):
        opts = TaskOptions(limit=limit, data_dir=DATA_DIR, max_new_tokens=args.max_new_tokens)
        return evaluate(model, [task], opts, out_dir=tmp / "ours" / task, tokenizer=tok,
                        batch_size=args.batch_size, progress=False)

    def timed(task: str):
        run_ref(task, 1), run_ours(task, 1)  # warm-up: dataset caches, kernels
        sync(); t0 = clock(); ref = run_ref(task, args.limit); sync(); t_ref = clock() - t0
        t0 = clock(); ours = run_ours(task, args.limit); sync(); t_ours = clock() - t0
        rows = [json.loads(line) for line in (tmp / "ours" / task / f"samples_{task}.jsonl").read_text().splitlines()]
        return ref["results"][names[task]], ref["samples"][names[task]], ours["results"][task], rows, t_ref, t_ours

    print(f"model: llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}; "
          f"{args.limit} docs/task, batch {args.batch_size}, {args.device}")
    total_ref = total_ours = 0.0
    choice = [t for t in wanted if t != "gsm8k"]
    if choice:
        print(f"{'task':28s} {'acc lm-eval':>11s} {'acc ours':>9s} {'max |dLL|':>10s} {'rel':>8s} {'lm-eval s':>10s} "
              f"{'ours s':>8s} {'speedup':>8s}")
    for task in choice:
        ref, ref_samples, ours, rows, t_ref, t_ours = timed(task)
        total_ref, total_ours = total_ref + t_ref, total_ours + t_ours
        diff, rel = _max_ll_diff(ref_samples, rows)
        print(f"{task:28s} {ref['acc,none']:11.4f} {ours['acc']:9.4f} {diff:10.2e} {rel:8.1e} {t_ref:10.2f} "
              f"{t_ours:8.2f} {t_ref / t_ours:7.2f}x")
    if "gsm8k" in wanted:
        ref, ref_samples, ours, rows, t_ref, t_ours = timed("gsm8k")
        total_ref, total_ours = total_ref + t_ref, total_ours + t_ours
        _print_gsm8k(ref, ref_samples, ours, rows, t_ref, t_ours, args.max_new_tokens)
    print(f"{'all':28s} lm-eval {total_ref:.2f} s, ours {total_ours:.2f} s, speedup {total_ref / total_ours:.2f}x")


def _mute_ids_beyond(model, n: int) -> None:
    """Zero the output rows of ids >= n (ids the tokenizer lacks): their logit is 0, below the in-vocabulary
    maximum, so greedy text is made of real tokens. Otherwise a random head over a 32000 vocabulary mostly picks
    ids that decode to "", and comparing generated texts would compare empty strings. The head keeps its cost."""
    import torch

    with torch.no_grad():
        model.get_output_embeddings().weight[n:] = 0.0


def _max_ll_diff(ref_samples: list[dict], rows: list[dict]) -> tuple[float, float]:
    ours = {row["doc_id"]: row["loglikelihoods"] for row in rows}
    pairs = [(a, r[0]) for s in ref_samples for a, r in zip(ours[s["doc_id"]], s["filtered_resps"])]
    return max(abs(a - r) for a, r in pairs), max(abs(a - r) / max(1.0, abs(r)) for a, r in pairs)


def _print_gsm8k(ref: dict, ref_samples: list[dict], ours: dict, rows: list[dict], t_ref: float, t_ours: float,
                 max_new: int) -> None:
    """Exact match per filter for both engines, the docs whose generated text differs, and the times."""
    ref_text = {s["doc_id"]: s["resps"][0][0] for s in ref_samples if s["filter"] == "strict-match"}
    differing = [r["doc_id"] for r in rows if r["resps"][0] != ref_text[r["doc_id"]]]
    print(f"{'task':28s} {'filter':17s} {'EM lm-eval':>10s} {'EM ours':>8s}   (greedy, {max_new} new tokens max)")
    for f in ("strict-match", "flexible-extract"):
        print(f"{'gsm8k':28s} {f:17s} {ref[f'exact_match,{f}']:10.4f} {ours[f'exact_match,{f}']:8.4f}")
    chars = sum(len(r["resps"][0]) for r in rows) / len(rows)  # shows the comparison is not of empty texts
    print(f"{'gsm8k':28s} generations differing: {len(differing)}/{len(rows)} docs {differing[:10]} "
          f"(ours {chars:.0f} chars/doc); "
          f"lm-eval {t_ref:.2f} s, ours {t_ours:.2f} s, speedup {t_ref / t_ours:.2f}x")
    for doc_id in differing[:3]:  # where the two texts part, for investigation
        a, b = ref_text[doc_id], next(r["resps"][0] for r in rows if r["doc_id"] == doc_id)
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"  doc {doc_id}: same first {k} chars; lm-eval {a[k:k + 40]!r} vs ours {b[k:k + 40]!r}")


if __name__ == "__main__":
    main()
