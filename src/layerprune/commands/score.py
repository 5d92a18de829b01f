"""layerprune score MODEL --method M (--num-drop N[,N...] | --ratio R[,R...]) [--calibration SRC] ...
--out scores.json"""

import argparse

from layerprune.commands._args import add_engine_arguments, add_load_arguments, engine_settings
from layerprune.scoring.files import score_model
from layerprune.scoring.stability import DEFAULT_THRESHOLD

NAME = "score"
HELP = "score decoder layers with a published criterion and choose which to drop (writes scores.json)"
METHODS = "reverse, random, bi, angular, cosine_block, ppl, taylor, sleb, task_iterative"


def add_scoring_arguments(p, required: bool = True):
    """Options shared by `score` and `prune --method`."""
    p.add_argument("--method", required=required, help=f"criterion: {METHODS}")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--num-drop", type=_list_of(int), default=None,
                      help="number of layers to drop; `score` takes several, e.g. 2,4,6 (one run serves all)")
    size.add_argument("--ratio", type=_list_of(float), default=None,
                      help="fraction of layers to drop (rounded down, >= 1); `score` takes several, e.g. 0.125,0.25")
    p.add_argument("--calibration", default=None,
                   help="calibration text: FILE.txt, FILE.jsonl (see --text-field) or hub dataset name[:config] "
                        "(default: the method's source-paper dataset, needs a hub)")
    p.add_argument("--text-field", default=None, help="JSONL field / dataset column holding the text (default text)")
    p.add_argument("--split", default=None, help="hub dataset split (default: the method's anchor split)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per calibration window (default: per method)")
    p.add_argument("--num-samples", type=int, default=None, help="number of windows (default: per method)")
    p.add_argument("--seed", type=int, default=None, help="seed for document order and `random` (default: per method)")
    bos = p.add_mutually_exclusive_group()
    bos.add_argument("--bos", dest="bos", action="store_true", default=None, help="prepend BOS to every window")
    bos.add_argument("--no-bos", dest="bos", action="store_false", help="never prepend BOS")
    p.add_argument("--protect", default=None,
                   help="layers never dropped, e.g. 0,-1 or 0-3,-2,-1 or none (default: per method)")
    p.add_argument("--post-norm", action="store_true",
                   help="compare against the last layer's output after the final norm, as the anchors do")
    p.add_argument("--batch-size", type=int, default=4, help="calibration windows per forward pass (default 4)")
    p.add_argument("--tasks", default=None, help="task_iterative only: comma-separated evaluation tasks")
    p.add_argument("--task-samples", type=int, default=None, help="task_iterative only: documents per task")
    p.add_argument("--chat-template", action="store_true", default=None,
                   help="task_iterative only: score on chat-template prompts, exactly as `eval --chat-template`")
    p.add_argument("--system-prompt", default=None, help="task_iterative only: the system prompt, as in `eval`")


def _list_of(kind):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None

    return parse


def scoring_kwargs(args) -> dict:
    options = {k: v for k, v in (("tasks", args.tasks), ("samples", args.task_samples),
                                 ("chat_template", getattr(args, "chat_template", None)),
                                 ("system_prompt", getattr(args, "system_prompt", None))) if v is not None}
    return dict(num_drop=args.num_drop, ratio=args.ratio, calibration=args.calibration, protected=args.protect,
                seed=args.seed, seq_len=args.seq_len, num_samples=args.num_samples, text_field=args.text_field,
                split=args.split, bos=args.bos, post_norm=args.post_norm, batch_size=args.batch_size,
                options=options or None, progress=True)


def add_arguments(p):
    p.add_argument("model", help="local model directory or hub id")
    add_scoring_arguments(p)
    p.add_argument("--out", required=True, help="scores file to write (JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing scores file")
    p.add_argument("--calibration-seeds", type=_list_of(int), default=None,
                   help="repeat the criterion over independent calibration draws, e.g. 0,1,2,3,4: writes per-layer "
                        "score spread, how often each layer is chosen and the Jaccard overlap of chosen sets")
    p.add_argument("--stability-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"mean overlap below which a size is flagged unstable (default {DEFAULT_THRESHOLD})")
    add_load_arguments(p)
    add_engine_arguments(p)  # task_iterative only: the engine its generative tasks run on


def run(args) -> int:
    kwargs = scoring_kwargs(args)
    if args.calibration_seeds is not None:
        kwargs.update(calibration_seeds=args.calibration_seeds, stability_threshold=args.stability_threshold)
    settings = engine_settings(args)
    if settings is not None and args.method != "task_iterative":
        from layerprune.errors import UsageError

        raise UsageError(f"--engine {args.engine} concerns task_iterative's generative tasks; drop it for {args.method}")
    if settings is not None:  # task_iterative's candidates then generate on vLLM (see scoring/task.py)
        from dataclasses import asdict

        kwargs["options"] = {**(kwargs["options"] or {}), "engine": args.engine, "engine_settings": asdict(settings),
                             "model_path": args.model}
    rec = score_model(args.model, args.out, args.method, overwrite=args.overwrite, dtype=args.dtype,
                      device=args.device, trust_remote_code=args.trust_remote_code, **kwargs)
    for n, drop in rec["drops"].items():
        print(f"{args.method}: drop {drop} of {rec['model']['num_layers']} layers")
    if "stability" in rec:
        st = rec["stability"]
        for n, ov in st["overlap"].items():
            flag = "  UNSTABLE" if n in st["unstable"] else ""
            print(f"  {n} layers over {len(st['seeds'])} draws: mean overlap {ov['mean']:.2f} (min {ov['min']:.2f}){flag}")
    print(f"wrote {args.out}")
    return 0
