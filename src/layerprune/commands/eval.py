"""layerprune eval MODEL --tasks arc_easy,mmlu --out DIR [options]"""

from __future__ import annotations

from pathlib import Path

from layerprune.commands._args import add_engine_arguments, add_load_arguments, engine_settings
from layerprune.errors import UsageError
from layerprune.evaluation.runner import evaluate
from layerprune.evaluation.tasks.base import TaskOptions

NAME = "eval"
HELP = "evaluate a model on lm-eval-identical classification and generative tasks; writes results.json"


def add_arguments(p):
    p.add_argument("model", help="local model directory or hub id")
    p.add_argument("--tasks", required=True, help="comma-separated task names, e.g. arc_easy,piqa,mmlu")
    p.add_argument("--out", type=Path, help="directory for results.json and samples_<task>.jsonl")
    p.add_argument("--num-fewshot", type=int, help="shots per question (default: the task's, as lm-eval)")
    p.add_argument("--limit", type=int, help="evaluate only the first N docs of each task, in dataset order")
    p.add_argument("--seed", type=int, default=1234, help="few-shot sampling and generation seed (default 1234)")
    p.add_argument("--data-dir", help="local benchmark data (default $LAYERPRUNE_DATA or ../shared/data); "
                                      "'hub' loads lm-eval's datasets from the Hugging Face hub")
    p.add_argument("--chat-template", action="store_true",
                   help="render prompts with the tokenizer's chat template, as lm_eval --apply_chat_template")
    p.add_argument("--fewshot-as-multiturn", nargs="?", const="true", default=None, metavar="true|false",
                   help="few-shot examples as user/assistant turns (default under --chat-template, as lm-eval's "
                        "CLI); 'false' puts them in one user message")
    p.add_argument("--system-prompt", help="system prompt (chat; lm-eval's --system_instruction) or text "
                                           "prepended to every prompt")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation length limit (default: the task's own, as lm-eval: 256, humaneval 1024)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0 = off)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (default 0 = off)")
    p.add_argument("--num-samples", type=int, default=1, help="generations per prompt (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--allow-weaker-sandbox", action="store_true",
                   help="code tasks: run generated code even where Landlock or seccomp is unavailable")
    add_load_arguments(p, trust_remote_code=False)
    add_engine_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args) -> int:
    opts = TaskOptions(
        data_dir=args.data_dir, num_fewshot=args.num_fewshot, limit=args.limit, seed=args.seed,
        chat_template=args.chat_template, system_prompt=args.system_prompt, max_new_tokens=args.max_new_tokens,
        fewshot_as_multiturn=parse_bool_flag("--fewshot-as-multiturn", args.fewshot_as_multiturn),
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, num_samples=args.num_samples,
        allow_weaker_sandbox=args.allow_weaker_sandbox)
    result = evaluate(args.model, args.tasks, opts, out_dir=args.out, batch_size=args.batch_size,
                      dtype=args.dtype, device=args.device, progress=not args.no_progress, engine=args.engine,
                      engine_settings=engine_settings(args))
    for task, metrics in result["results"].items():
        shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                          if k != "n" and not k.endswith("_stderr") and isinstance(v, float))
        print(f"{task:40s} n={metrics['n']:<6d} {shown}")
    if args.out:
        print(f"wrote {args.out / 'results.json'}")
    return 0


def parse_bool_flag(flag: str, value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise UsageError(f"{flag} takes true or false, got {value!r}")
