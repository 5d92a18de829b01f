"""layerprune report ROOT"""

from layerprune.study.report import make_report

NAME = "report"
HELP = "write ROOT/report.md, report.html and figures from a study's finished steps"


def add_arguments(p):
    p.add_argument("root", help="study output folder")
    p.add_argument("--threshold", type=float, default=None, help="safe-depth retention threshold (default: config's)")


def run(args) -> int:
    path = make_report(args.root, args.threshold)
    print(f"wrote {path}, {path.with_suffix('.html')} and figures in {path.parent / 'figures'}")
    return 0
