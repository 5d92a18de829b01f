"""Run a plan on a Ray cluster: every step whose dependencies are done is a Ray task, so independent steps run at
the same time across the cluster's GPUs and machines.

    run_study(cfg, root, executor="ray", ray_address="auto")     # or executor: {kind: ray} in the config

The driver alone holds ROOT's lock and writes its index; a worker runs the same `produce` + runner as the local
executor, so a step's outputs appear atomically under ROOT/steps/<id>/ exactly as they do locally. Hence ROOT must
be storage every node sees at the same path: checked at start by a probe task on each node. A task whose node or
worker dies is retried `executor.max_retries` times by Ray, then marked failed; a rerun resumes. Each kind's
task asks for `executor.resources[kind]`, by default 1 GPU for model steps when the cluster has GPUs, else 1 CPU;
what no node can ever satisfy is refused before any step runs.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from layerprune.errors import UsageError
from layerprune.provenance import write_text
from layerprune.study.config import StudyConfig
from layerprune.study.plan import Plan, Step
from layerprune.study.store import Store

LIGHT_KINDS = ("model", "prompts")  # steps that load no model: a CPU is enough wherever the cluster has GPUs
_RAY_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}  # option → node resource name


def run_study_ray(cfg: StudyConfig, plan: Plan, root: str | Path, base_dir: Path, address: str | None,
                  log: Callable[[str], None] = tqdm.write) -> Plan:
    from layerprune.study.execute import StudyFailed, prepare_root

    ray, ours = _connect(address)
    try:
        requests = {kind: task_resources(kind, cfg.executor.resources, _cluster_has_gpus(ray))
                    for kind in {s.kind for s in plan.steps}}
        check_feasible(requests, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        store = Store(Path(root).resolve())
        fresh = not store.root.exists()
        try:
            with store.lock():
                check_shared_root(ray, store.root)
                todo = prepare_root(store, cfg, plan, log)
                failed = _schedule(ray, cfg, todo, store, base_dir.resolve(), requests, log)
        except UsageError:
            if fresh:  # refused before any step ran: leave nothing behind
                shutil.rmtree(store.root, ignore_errors=True)
            raise
    finally:
        if ours:  # disconnect (and stop the Ray this call started); a caller's own connection stays
            ray.shutdown()
    if failed:
        raise StudyFailed(f"{len(failed)} step(s) failed ({', '.join(s.label for s in failed)}); "
                          f"see `layerprune status {root}`, fix the cause and rerun to resume")
    return plan


def _connect(address: str | None):
    """(ray, whether this call connected) attached to the cluster at `address`, or to a Ray of this machine only
    (loopback) started now when None; an existing connection (ray.init by the caller) is reused."""
    if address is None:  # a local Ray listens on 127.0.0.1 only; read by Ray when it is first imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'layerprune[ray]'") from None
    if ray.is_initialized():
        return ray, False
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    try:
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot reach the Ray cluster at {address!r} ({first}); start it with `ray start "
                         "--head` or fix --ray-address") from None
    return ray, True


def _check_reachable(address: str) -> None:
    """Ray keeps retrying an address nobody listens on for minutes; a TCP connect says so in seconds."""
    import socket

    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot reach the Ray cluster at {address!r} ({err.__class__.__name__}: {err}); start it "
                         "with `ray start --head` or fix --ray-address (HOST:PORT or auto)") from None


def _cluster_has_gpus(ray) -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def task_resources(kind: str, overrides: dict[str, dict[str, float]], gpus: bool) -> dict[str, float]:
    """What one step of `kind` asks Ray for: the config's `executor.resources[kind]`, else the default."""
    if kind in overrides:
        return dict(overrides[kind])
    return {"num_gpus": 1} if gpus and kind not in LIGHT_KINDS else {"num_cpus": 1}


def _as_node_resources(request: dict[str, float]) -> dict[str, float]:
    out = {_RAY_NAMES.get(k, k): v for k, v in request.items()}
    if "num_cpus" not in request:  # a Ray task takes 1 CPU unless told otherwise
        out["CPU"] = 1
    return {k: v for k, v in out.items() if v > 0}


def check_feasible(requests: dict[str, dict[str, float]], nodes: list[dict[str, float]]) -> None:
    """Refuse, before any step runs, a request that no single node can ever satisfy (it would wait forever)."""
    for kind, request in sorted(requests.items()):
        need = _as_node_resources(request)
        if not any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
            have = "; ".join(", ".join(f"{k}={v:g}" for k, v in sorted(n.items()) if not k.startswith("node:")
                                       and k not in ("memory", "object_store_memory")) for n in nodes)
            raise UsageError(f"executor.resources.{kind}: {kind} steps ask for {request}, which no node of the "
                             f"cluster has (nodes: {have}); lower the request or add such a node")


def check_shared_root(ray, root: Path) -> None:
    """A task on every alive node reads the driver's probe under ROOT and writes its own, which the driver reads:
    ROOT must be one storage every node mounts at the same path, or steps would write where others cannot read."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probes = root / ".probe"
    probes.mkdir(parents=True, exist_ok=True)
    (probes / f"{token}.driver").write_text(token)
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    try:
        for attempt in range(10):  # a node that just died can still be listed alive for a moment
            nodes = [n for n in ray.nodes() if n["Alive"]]
            refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(probes), token, n["NodeID"]) for n in nodes]
            try:
                seen = ray.get(refs, timeout=300)
                break
            except ray.exceptions.TaskUnschedulableError:
                if attempt == 9:
                    raise
                time.sleep(1.0)
        for node, saw in zip(nodes, seen):
            if not (saw and (probes / f"{token}.{node['NodeID']}").read_text() == token):
                raise UsageError(f"--root {root} is not shared with Ray node {node['NodeManagerAddress']} "
                                 f"({node['NodeID'][:12]}): put ROOT on storage every node mounts at the same path")
    except FileNotFoundError:  # the node wrote its probe where the driver cannot see it
        raise UsageError(f"--root {root} is not shared by every Ray node: put ROOT on storage every node mounts "
                         "at the same path") from None
    finally:
        for p in probes.glob(f"{token}.*"):
            p.unlink(missing_ok=True)


def _probe(probes: str, token: str, node_id: str) -> bool:
    """On one node: does it see the driver's probe? Leave one for the driver to find (when the folder exists)."""
    folder = Path(probes)
    saw = (folder / f"{token}.driver").is_file() and (folder / f"{token}.driver").read_text() == token
    if folder.is_dir():
        (folder / f"{token}.{node_id}").write_text(token)
    return saw


def _run_remote(cfg: StudyConfig, step: Step, root: str, base_dir: str) -> dict:
    """A Ray task: run one step into ROOT exactly as the local executor would; return where and how long."""
    import ray

    from layerprune.study.execute import StepContext, produce
    from layerprune.study.steps import RUNNERS
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.time()
    produce(StepContext(cfg, step, Store(root), Path(base_dir)), RUNNERS[step.kind])
    return {"seconds": time.time() - t0, "node": ray.get_runtime_context().get_node_id()}


def _schedule(ray, cfg: StudyConfig, todo: list[Step], store: Store, base_dir: Path,
              requests: dict[str, dict[str, float]], log) -> list[Step]:
    """Submit every step whose dependencies are done; mark results as they come; block dependents of failures."""
    remote = ray.remote(_run_remote)
    pending = {s.id: s for s in todo}
    running: dict = {}  # ObjectRef → Step
    bad: set[str] = set()  # failed or blocked in this run
    failed: list[Step] = []
    addresses = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    bar = tqdm(total=len(todo), desc="study", unit="step", dynamic_ncols=True)
    while pending or running:
        for step in list(pending.values()):
            if any(d in bad for d in step.deps):
                store.mark(step.id, "blocked", error="a step it depends on failed")
                bad.add(step.id)
                del pending[step.id]
                bar.update()
            elif all(store.is_done(d) for d in step.deps):
                store.mark(step.id, "running")
                ref = remote.options(**_options(requests[step.kind]), max_retries=cfg.executor.max_retries,
                                     retry_exceptions=False, name=step.label).remote(
                    cfg, step, str(store.root), str(base_dir))
                running[ref] = step
                del pending[step.id]
        if not running:
            break
        (ref,), _ = ray.wait(list(running), num_returns=1)
        step = running.pop(ref)
        try:
            info = ray.get(ref)
        except Exception as err:  # the step raised, or its node/worker was lost more often than retried
            cause = getattr(err, "cause", None) or err
            store.mark(step.id, "failed", error=f"{type(cause).__name__}: {str(cause).splitlines()[0][:300]}")
            write_text(store.work_dir(step.id) / "error.log", traceback.format_exc())
            bad.add(step.id)
            failed.append(step)
            log(f"FAILED {step.kind} {step.label}: {type(cause).__name__} "
                f"(traceback: {store.work_dir(step.id) / 'error.log'})")
        else:
            store.mark(step.id, "done")
            where = addresses.get(info["node"]) or info["node"][:12]
            log(f"done {step.kind} {step.label} ({info['seconds']:.1f}s on {where} {info['node'][:8]})")
        bar.update()
    bar.close()
    return failed


def _options(request: dict[str, float]) -> dict:
    """Config resources → Ray task options: num_cpus/num_gpus/memory by name, the rest custom resources."""
    opts = {k: v for k, v in request.items() if k in _RAY_NAMES}
    custom = {k: v for k, v in request.items() if k not in _RAY_NAMES}
    if "memory" in opts:
        opts["memory"] = int(opts["memory"])
    return {**opts, **({"resources": custom} if custom else {})}
