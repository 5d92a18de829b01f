"""layerprune info MODEL [--json]"""

import json

from layerprune.info import format_info, model_info

NAME = "info"
HELP = "show a model's family, layers, per-layer types, parameter counts and pruning provenance"


def add_arguments(p):
    p.add_argument("model", help="local model directory or hub id")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")


def run(args) -> int:
    info = model_info(args.model, trust_remote_code=args.trust_remote_code)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
