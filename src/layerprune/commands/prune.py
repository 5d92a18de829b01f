"""layerprune prune MODEL --drop SPEC --out DIR"""

from layerprune.pruning import prune

NAME = "prune"
HELP = "remove decoder layers and save a plain Hugging Face checkpoint with pruning.json"


def add_arguments(p):
    p.add_argument("model", help="local model directory or hub id")
    p.add_argument("--drop", required=True, help="0-based original layer indices, inclusive ranges: e.g. 3,5-7")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: cpu)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")


def run(args) -> int:
    rec = prune(args.model, args.drop, args.out, overwrite=args.overwrite, dtype=args.dtype, device=args.device,
                trust_remote_code=args.trust_remote_code)
    print(f"removed {rec['removed']} → {rec['num_layers']} layers kept; saved to {args.out}")
    return 0
