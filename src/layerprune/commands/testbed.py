"""layerprune testbed train [--out DIR] [--max-steps N] [--seed S] | testbed prompts --out FILE.jsonl [--num N]"""

from layerprune.errors import UsageError

NAME = "testbed"
HELP = "train the small from-scratch testbed model, or write its chat-style SGR prompt pool"


def add_arguments(p):
    sub = p.add_subparsers(dest="testbed_action", metavar="ACTION")
    t = sub.add_parser("train", help="train the testbed model from scratch on CPU (the shipped one: 1368 steps, 30 min on 2 shared cores)")
    t.add_argument("--out", default="testbed-model", help="output directory (default: testbed-model)")
    t.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    t.add_argument("--seed", type=int, default=0, help="seed of the tokenizer, weights and data (default 0)")
    t.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="fit the step count to this many seconds, timed on the first steps")
    t.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    q = sub.add_parser("prompts", help="write the chat-style prompt pool (instruction/input/output JSONL) for SGR")
    q.add_argument("--out", required=True, help="output JSONL file")
    q.add_argument("--num", type=int, default=1000, help="number of rows (default 1000)")
    q.add_argument("--seed", type=int, default=0, help="seed of the generated items (default 0)")


def run(args) -> int:
    if args.testbed_action == "train":
        from layerprune.testbed.train import train_testbed

        s = train_testbed(args.out, max_steps=args.max_steps, seed=args.seed, overwrite=args.overwrite,
                          time_budget_s=args.time_budget)
        print(f"trained {s['steps']} steps in {s['train_seconds']:.0f}s (final loss {s['final_loss']}); saved to {args.out}")
        return 0
    if args.testbed_action == "prompts":
        from layerprune.testbed.corpus import write_prompt_pool

        n = write_prompt_pool(args.out, args.num, args.seed)
        print(f"wrote {n} prompts to {args.out}")
        return 0
    raise UsageError("choose an action: layerprune testbed train ... or layerprune testbed prompts --out FILE.jsonl")
