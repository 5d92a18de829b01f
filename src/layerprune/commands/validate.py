"""layerprune validate CONFIG"""

import sys

from layerprune.evaluation.tasks.instruct import chat_task_warnings
from layerprune.study.config import load_study_config
from layerprune.study.plan import make_plan

NAME = "validate"
HELP = "check a study config (schema, criteria, tasks, ratios) and print its plan size"


def add_arguments(p):
    p.add_argument("config", help="study YAML")


def run(args) -> int:
    cfg = load_study_config(args.config)
    plan = make_plan(cfg)
    counts = ", ".join(f"{n} {k}" for k, n in plan.counts().items())
    print(f"{args.config}: valid — {len(plan.steps)} steps ({counts}), {len(plan.variants)} evaluated models")
    for line in chat_task_warnings(cfg.models, cfg.eval.tasks):
        print(line, file=sys.stderr)
    return 0
