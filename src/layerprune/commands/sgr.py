"""layerprune sgr TEACHER --prompts SPEC --out FILE.jsonl"""

from layerprune.commands._args import add_engine_arguments, engine_settings
from layerprune.healing.chat import SYSTEM_PROMPT
from layerprune.healing.sgr import generate_sgr

NAME = "sgr"
HELP = "sample self-generated responses (SGR) from the unpruned teacher for a prompt pool (resumable, shardable)"


def add_arguments(p):
    p.add_argument("teacher", help="the unpruned model: local directory or hub id")
    p.add_argument("--prompts", required=True,
                   help="JSONL file (Alpaca instruction/input/output, messages, conversations or prompt rows) "
                        "or a hub dataset id org/name[:split]")
    p.add_argument("--out", required=True, help="output JSONL file; a rerun skips prompts already answered")
    p.add_argument("--num", type=int, default=None, help="number of prompts (default: all)")
    p.add_argument("--allow-fewer", action="store_true",
                   help="take every usable prompt when the pool has fewer than --num (default: an error)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; each prompt's seed derives from it and its id")
    p.add_argument("--shuffle-seed", type=int, default=42, help="seed of the prompt-pool shuffle (paper: 42)")
    p.add_argument("--max-new-tokens", type=int, default=8192, help="response length limit (paper: 8192)")
    p.add_argument("--temperature", type=float, default=0.9, help="sampling temperature (paper: 0.9)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (paper: 0.95)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling, 0 = off (paper: off)")
    p.add_argument("--batch-size", type=int, default=8, help="generation batch size per process")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="skip prompts whose templated length exceeds this many tokens")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto (accelerate's device per process) | cpu")
    p.add_argument("--system-prompt", default=SYSTEM_PROMPT,
                   help=f"system turn of every prompt without one (default, the paper's: {SYSTEM_PROMPT!r}); use "
                        "the one the model is evaluated with")
    p.add_argument("--overwrite", action="store_true", help="discard existing rows in --out and start over")
    add_engine_arguments(p)


def run(args) -> int:
    s = generate_sgr(args.teacher, args.prompts, args.out, num=args.num, seed=args.seed,
                     shuffle_seed=args.shuffle_seed, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, batch_size=args.batch_size,
                     max_prompt_tokens=args.max_prompt_tokens, dtype=args.dtype, device=args.device,
                     overwrite=args.overwrite, allow_fewer=args.allow_fewer, engine=args.engine,
                     engine_settings=engine_settings(args), system_prompt=args.system_prompt)
    if s["is_main"]:
        print(f"{s['selected']} prompts: {s['already_done']} already done, {s['generated']} generated → {s['out']}")
    return 0
