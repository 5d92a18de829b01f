"""Run a plan: steps in dependency order, finished ones skipped, each written atomically, one executor per root.

    run_study(cfg, root)            # resumable: after a crash, run it again
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml
from tqdm import tqdm

from layerprune.provenance import now, versions, write_json, write_text
from layerprune.study.config import StudyConfig
from layerprune.study.plan import Plan, Step, make_plan
from layerprune.study.store import Store


@dataclass(frozen=True)
class StepContext:
    cfg: StudyConfig
    step: Step
    store: Store
    base_dir: Path  # relative paths in the config resolve against this (the config file's folder)

    def input(self, i: int = 0) -> Path:
        """Output folder of the step's i-th dependency."""
        return self.store.step_dir(self.step.deps[i])

    @property
    def work(self) -> Path:
        work = self.store.work_dir(self.step.id)
        work.mkdir(parents=True, exist_ok=True)
        return work


def format_plan(plan: Plan) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in plan.counts().items())
    lines = [f"{len(plan.steps)} steps ({counts}); {len(plan.variants)} evaluated models"]
    lines += [f"  {s.kind:<7} {s.label:<40} {s.id}" for s in plan.steps]
    return "\n".join(lines)


def run_study(cfg: StudyConfig, root: str | Path, base_dir: str | Path = ".", dry_run: bool = False,
              log: Callable[[str], None] = tqdm.write, executor: str | None = None,
              ray_address: str | None = None) -> Plan:
    """`executor`/`ray_address` override the config's `executor.kind`/`executor.address` (the CLI flags)."""
    from transformers.utils import logging as hf_logging

    from layerprune.study.steps import RUNNERS

    hf_logging.disable_progress_bar()  # one progress bar for the study; per-step lines say what finished

    plan = make_plan(cfg)
    if dry_run:
        from layerprune.study.estimate import format_estimate

        log(format_plan(plan))
        log(format_estimate(cfg, plan))
        return plan
    if (executor or cfg.executor.kind) == "ray" or ray_address:
        from layerprune.study.ray_executor import run_study_ray  # Ray is imported only on this path

        return run_study_ray(cfg, plan, root, Path(base_dir), ray_address or cfg.executor.address, log)
    store = Store(root)
    with store.lock():
        todo = prepare_root(store, cfg, plan, log)
        failed: list[Step] = []
        for step in tqdm(todo, desc="study", unit="step", dynamic_ncols=True):
            if not all(store.is_done(d) for d in step.deps):  # a dependency failed in this run
                store.mark(step.id, "blocked", error="a step it depends on failed")
                continue
            try:
                _run_step(step, StepContext(cfg, step, store, Path(base_dir)), RUNNERS[step.kind], log)
            except Exception as err:  # keep going with independent steps; the rerun retries this one
                failed.append(step)
                write_text(store.work_dir(step.id) / "error.log", traceback.format_exc())
                log(f"FAILED {step.kind} {step.label}: {type(err).__name__}: {err} "
                    f"(traceback: {store.work_dir(step.id) / 'error.log'})")
    if failed:
        raise StudyFailed(f"{len(failed)} step(s) failed ({', '.join(s.label for s in failed)}); "
                          f"see `layerprune status {root}`, fix the cause and rerun to resume")
    return plan


def prepare_root(store: Store, cfg: StudyConfig, plan: Plan, log) -> list[Step]:
    """Under the root's lock: clear dead temp dirs, record config and plan, register steps; the steps to run."""
    store.clean_partial()
    write_text(store.root / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    write_json(store.root / "plan.json", {"steps": [s.__dict__ for s in plan.steps], "variants": plan.variants,
                                             "scaling": plan.scaling})
    store.register(plan.steps)
    todo = [s for s in plan.steps if not store.is_done(s.id)]
    log(f"{len(plan.steps)} steps, {len(plan.steps) - len(todo)} already done, {len(todo)} to run in {store.root}")
    return todo


class StudyFailed(Exception):
    """Some steps failed; everything that could run did, and a rerun resumes from there."""


def _run_step(step: Step, ctx: StepContext, runner, log) -> None:
    store = ctx.store
    store.mark(step.id, "running")
    t0 = time.time()
    try:
        produce(ctx, runner)
    except BaseException as err:
        store.mark(step.id, "failed", error=f"{type(err).__name__}: {err}")
        raise
    store.mark(step.id, "done")
    log(f"done {step.kind} {step.label} ({time.time() - t0:.1f}s)")


def produce(ctx: StepContext, runner) -> None:
    """Run one step's runner into a temp dir that becomes `steps/<id>/` on success (no index writes: the local
    executor and a Ray worker both call this), then free what the step loaded before the next one."""
    step, t0 = ctx.step, time.time()
    meta = {"id": step.id, "kind": step.kind, "label": step.label, "params": step.params, "deps": list(step.deps),
            "seed": ctx.cfg.seed, "versions": versions(), "started": now()}
    try:
        with ctx.store.producing(step.id, meta) as out:
            runner(ctx, out)
            meta.update(finished=now(), seconds=round(time.time() - t0, 3))
    finally:
        free_memory()


def free_memory() -> None:
    """Drop the previous step's model: collect reference cycles (HF modules hold some) and return cached GPU
    memory, so the next step in this process (or Ray worker) starts from an empty device."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def read_step(store: Store, step_id: str, name: str) -> dict:
    return json.loads((store.step_dir(step_id) / name).read_text())
