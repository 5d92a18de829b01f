"""layerprune study CONFIG --root DIR [--dry-run] [--executor local|ray] [--ray-address ADDR]"""

import sys
from pathlib import Path

from layerprune.evaluation.tasks.instruct import chat_task_warnings
from layerprune.study.config import load_study_config
from layerprune.study.execute import StudyFailed, run_study
from layerprune.study.report import make_report

NAME = "study"
HELP = "run a whole study from one YAML (resumable: rerun after a crash), then write its report"


def add_arguments(p):
    p.add_argument("config", help="study YAML")
    p.add_argument("--root", required=True, help="study output folder (steps, index, report)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="run steps in this process (local, the default) or as Ray tasks across a cluster (ray); "
                        "overrides the config's executor.kind")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to use (auto, HOST:PORT); implies --executor ray; default: the config's "
                        "executor.address, else a Ray started on this machine")
    p.add_argument("--no-report", action="store_true", help="skip writing the report at the end")


def run(args) -> int:
    cfg = load_study_config(args.config)
    for line in chat_task_warnings(cfg.models, cfg.eval.tasks):
        print(line, file=sys.stderr)
    failure = None
    try:
        run_study(cfg, args.root, base_dir=Path(args.config).resolve().parent, dry_run=args.dry_run,
                  executor=args.executor, ray_address=args.ray_address)
    except StudyFailed as err:
        failure = err
    if not args.dry_run and not args.no_report:
        print(f"report: {make_report(args.root)} (and report.html, figures/)")
    if failure:
        print(f"layerprune study: {failure}", file=sys.stderr)
        return 1
    return 0
