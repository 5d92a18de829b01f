"""layerprune demo [--out DIR] [--quick]"""

import time

from layerprune.study.demo import run_demo

NAME = "demo"
HELP = "run the whole study offline on the packaged testbed model and write its report (~13 min on 2 CPU cores; --quick: ~1 min)"


def add_arguments(p):
    p.add_argument("--out", default="layerprune-demo", help="study folder (default ./layerprune-demo); rerun to resume")
    p.add_argument("--quick", action="store_true", help="a smaller study (a few minutes), as CI runs it")
    p.add_argument("--engine", default="hf", help="generation engine: hf (default) | vllm (needs the 'vllm' extra)")


def run(args) -> int:
    t0 = time.time()
    report = run_demo(args.out, quick=args.quick, engine=args.engine)
    print(f"demo finished in {(time.time() - t0) / 60:.1f} min")
    print(f"report: {report}\n        {report.with_suffix('.html')}\n        {report.parent / 'figures'}/")
    return 0
