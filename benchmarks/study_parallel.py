"""A study with the local executor vs. the Ray executor on a local cluster of two one-CPU nodes, in one run:
wall time of each, their ratio, whether every step's results are identical, and the plan's critical path (the
longest dependency chain, with the local run's step times) as the lower bound of any executor.

    python benchmarks/study_parallel.py [--config configs/ci/tiny.yaml] [--out DIR]

Every Ray process stays on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported); the cluster
is shut down at the end, also on failure. Both runs use one torch thread per step (Ray gives each one-CPU task
OMP_NUM_THREADS=1; the local run is set to match), so the ratio measures running independent steps at once.
Identical means: every results.json and scores.json equal but for timings and the model's path (which names its
study root), every SGR row equal but for the teacher's path, every samples_*.jsonl and prompts.jsonl byte-equal.

Measured, configs/ci/tiny.yaml (35 steps), identical outputs every time:
  quiet 2-core machine: 36.0 s vs 24.7 s = 1.46x (steps of ~1 s: each Ray worker's start-up and imports, which
  the local run paid before its clock started, weigh); --eval-limit 32 --train-steps 16: 52.8 s vs 33.5 s = 1.58x;
  --eval-limit 64 --train-steps 32: 63.3 s vs 37.6 s = 1.69x (critical path 11.4 s).
  2 cores shared with other jobs: 276.7 s vs 147.4 s = 1.88x.
`.ci/run` runs the default for its identical-outputs check.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only; Ray reads it when first imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def comparable(root: Path) -> dict[str, object]:
    """Per step, what must not depend on the executor."""
    out: dict[str, object] = {}
    for d in sorted((root / "steps").iterdir()):
        if d.name.startswith("."):
            continue
        for f in sorted(d.iterdir()):
            if f.name in ("results.json", "scores.json"):
                r = json.loads(f.read_text())
                r.pop("timings", None)
                r.get("model", {}).pop("path", None)
                out[f"{d.name}/{f.name}"] = r
            elif f.name == "sgr.jsonl":  # each row's provenance names the teacher's path, under its study root
                rows = [json.loads(line) for line in f.read_text().splitlines()]
                out[f"{d.name}/{f.name}"] = [{**r, "provenance": {**r["provenance"], "teacher": None}} for r in rows]
            elif f.name.startswith("samples_") or f.name == "prompts.jsonl":
                out[f"{d.name}/{f.name}"] = f.read_text()
    return out


def critical_path(root: Path) -> tuple[float, list[str]]:
    """Longest chain of dependent steps, weighted by the seconds each took in the run at `root`."""
    plan = json.loads((root / "plan.json").read_text())["steps"]
    with sqlite3.connect(root / "index.sqlite") as con:
        seconds = dict(con.execute("SELECT id, seconds FROM steps"))
    best: dict[str, tuple[float, list[str]]] = {}
    for s in plan:  # dependency order
        before = max((best[d] for d in s["deps"]), key=lambda x: x[0], default=(0.0, []))
        best[s["id"]] = (before[0] + (seconds.get(s["id"]) or 0.0), before[1] + [s["label"]])
    return max(best.values(), key=lambda x: x[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "ci" / "tiny.yaml"))
    p.add_argument("--out", default=None, help="folder for both study roots (default: a temp folder)")
    p.add_argument("--compare-only", action="store_true", help="only compare the two roots already under --out")
    p.add_argument("--eval-limit", type=int, default=None, help="override eval.limit (heavier steps)")
    p.add_argument("--train-steps", type=int, default=None, help="override healing.train.max_steps (heavier steps)")
    args = p.parse_args()

    import ray
    import torch
    from ray.cluster_utils import Cluster

    from layerprune.study.config import load_study_config
    from layerprune.study.execute import run_study

    cfg = load_study_config(args.config)
    if args.eval_limit is not None:  # steps of a few seconds, not ~1 s: Ray's per-worker start-up (imports) weighs less
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"limit": args.eval_limit})})
    if args.train_steps is not None:
        train = cfg.healing.train.model_copy(update={"max_steps": args.train_steps})
        cfg = cfg.model_copy(update={"healing": cfg.healing.model_copy(update={"train": train})})
    base = Path(args.config).resolve().parent
    out = Path(args.out or tempfile.mkdtemp(prefix="study-parallel-"))
    quiet = lambda _: None  # noqa: E731

    if args.compare_only:
        return report(args, out, None, None, [])
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run_study(cfg, out / "local", base_dir=base, log=quiet)
    local_s = time.perf_counter() - t0

    node = {"num_cpus": 1, "object_store_memory": 150 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        addresses = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]})
        assert addresses == ["127.0.0.1"], f"Ray left the loopback address: {addresses}"
        t0 = time.perf_counter()
        run_study(cfg, out / "ray", base_dir=base, executor="ray", ray_address=cluster.address, log=quiet)
        ray_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()

    return report(args, out, local_s, ray_s, addresses)


def report(args, out: Path, local_s: float | None, ray_s: float | None, addresses: list[str]) -> int:
    local, remote = comparable(out / "local"), comparable(out / "ray")
    differ = sorted(k for k in local.keys() | remote.keys() if local.get(k) != remote.get(k))
    path_s, chain = critical_path(out / "local")
    steps = len(json.loads((out / "local" / "plan.json").read_text())["steps"])
    print(f"config: {args.config} ({steps} steps); roots under {out}")
    if local_s is not None and ray_s is not None:
        print(f"local executor (1 process):        {local_s:8.1f} s")
        print(f"ray executor (2 one-CPU nodes):    {ray_s:8.1f} s   (nodes on {', '.join(addresses)})")
        print(f"speedup local/ray:                 {local_s / ray_s:8.2f}x   (target >= 1.6x)")
        print(f"critical path (lower bound):       {path_s:8.1f} s   = {local_s / path_s:.2f}x at most over the local run")
    else:
        print(f"critical path (lower bound):       {path_s:8.1f} s")
    print(f"  {' → '.join(chain)}")
    print(f"identical outputs:                 {'yes' if not differ else 'NO'} ({len(local)} files compared)")
    for k in differ[:10]:
        print(f"  differs: {k}")
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
