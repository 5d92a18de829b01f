"""layerprune tiny OUT [--family F] [--layers N]"""

from layerprune.errors import UsageError
from layerprune.families import supported
from layerprune.provenance import atomic_dir
from layerprune.tiny import save_tiny

NAME = "tiny"
HELP = "write a tiny random model of any supported family (for trying layerprune without a model hub)"


def add_arguments(p):
    p.add_argument("out", help="output directory")
    p.add_argument("--family", default="llama", choices=supported(), metavar="FAMILY",
                   help=f"model family (default llama; one of {', '.join(supported())})")
    p.add_argument("--layers", type=int, default=8, help="number of decoder layers (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")


def run(args) -> int:
    if args.layers < 2:
        raise UsageError(f"--layers {args.layers}: a tiny model needs at least 2 layers")
    with atomic_dir(args.out, args.overwrite) as tmp:
        save_tiny(args.family, tmp, seed=args.seed, num_layers=args.layers)
    print(f"wrote a random {args.layers}-layer {args.family} model to {args.out}")
    return 0
