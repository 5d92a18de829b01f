"""layerprune prune MODEL --out DIR with one of
--drop SPEC | --method M (--num-drop N | --ratio R) [calibration] | --scores FILE [--num-drop N | --ratio R]"""

from layerprune.commands._args import add_load_arguments
from layerprune.commands.score import add_scoring_arguments, scoring_kwargs
from layerprune.errors import UsageError
from layerprune.pruning import prune, prune_scored

NAME = "prune"
HELP = "remove decoder layers and save a plain Hugging Face checkpoint with pruning.json"


def add_arguments(p):
    p.add_argument("model", help="local model directory or hub id")
    p.add_argument("--drop", default=None, help="0-based original layer indices, inclusive ranges: e.g. 3,5-7")
    p.add_argument("--scores", default=None, help="reuse the drop list of a scores.json from `layerprune score` "
                                                   "(--num-drop/--ratio picks a size if it holds several)")
    add_scoring_arguments(p, required=False)
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    add_load_arguments(p)


def run(args) -> int:
    chosen = [flag for flag, value in (("--drop", args.drop), ("--method", args.method), ("--scores", args.scores))
              if value is not None]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --drop SPEC, --method M or --scores scores.json"
                         + (f" (got {' and '.join(chosen)})" if chosen else ""))
    common = dict(overwrite=args.overwrite, dtype=args.dtype, device=args.device,
                  trust_remote_code=args.trust_remote_code)
    if args.drop is not None:
        rec = prune(args.model, args.drop, args.out, **common)
    elif args.scores is not None:
        rec = prune_scored(args.model, args.out, scores=args.scores, num_drop=args.num_drop, ratio=args.ratio,
                           **common)
    else:
        rec = prune_scored(args.model, args.out, method=args.method, **common, **scoring_kwargs(args))
    print(f"removed {rec['removed']} → {rec['num_layers']} layers kept; saved to {args.out}")
    return 0
