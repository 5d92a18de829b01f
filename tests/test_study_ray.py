"""The Ray executor on a real two-node Ray cluster on this machine (loopback only): steps land on both nodes and
give the local executor's results; a lost node means a retry, or a failed step that a rerun completes; a ROOT a
node cannot see, an unreachable address and resources no node has are refused before any step runs."""

import os

# Ray binds every process to 127.0.0.1 only with this set before it is imported (network rule for tests).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from layerprune.errors import UsageError  # noqa: E402
from layerprune.study.config import StudyConfig  # noqa: E402
from layerprune.study.execute import StudyFailed, run_study  # noqa: E402

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'layerprune[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow
NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}  # small: the machine is shared


@pytest.fixture(scope="module")
def cluster():
    """A head (custom resource `head`) and a worker (`worker`) node; always shut down, also when a test fails."""
    c = Cluster(initialize_head=True, head_node_args={**NODE, "resources": {"head": 4}, "include_dashboard": False})
    try:
        worker = c.add_node(**NODE, resources={"worker": 4})
        ray.init(address=c.address, log_to_driver=False)
        c.wait_for_nodes()
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()


def _cfg(data_dir: Path, **executor) -> StudyConfig:
    return StudyConfig.model_validate({
        "name": "r", "seed": 3,
        "models": [{"name": "m", "tiny": {"family": "llama", "layers": 4}}],
        "pruning": {"criteria": ["reverse", "bi"], "num_drop": [1],
                    "calibration": {"source": str(data_dir / "gsm8k" / "train.jsonl"), "text_field": "question",
                                    "seq_len": 32, "num_samples": 4}},
        "eval": {"tasks": ["arc_easy"], "limit": 4, "data_dir": str(data_dir), "batch_size": 4},
        "speed": {"prompt_tokens": 8, "new_tokens": 4, "repeats": 3, "max_seconds": 5},
        "executor": {"kind": "ray", **executor},
    })


def _results(root: Path) -> dict:
    """Every step's computed numbers (results minus timings, scores), by step id."""
    out = {}
    for d in sorted((root / "steps").iterdir()):
        if (d / "results.json").exists():
            out[d.name] = json.loads((d / "results.json").read_text())["results"]
        if (d / "scores.json").exists():
            out[d.name] = json.loads((d / "scores.json").read_text())["scores"]
    return out


def _status(root: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(root / "index.sqlite") as con:
        return {i: (s, r) for i, s, r in con.execute("SELECT id, status, runs FROM steps")}


def test_nodes_listen_on_loopback_only(cluster):
    addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    assert addresses == {"127.0.0.1"}
    c, _ = cluster
    assert c.address.startswith("127.0.0.1:")


def test_study_runs_on_both_nodes_and_equals_local(cluster, data_dir, tmp_path):
    c, worker = cluster
    # evaluations must go to the worker, everything else to the head: both nodes are used
    cfg = _cfg(data_dir, address=c.address, resources={k: {"head": 1} for k in ("model", "score", "prune", "speed")}
               | {"eval": {"worker": 1}})
    lines: list[str] = []
    run_study(cfg, tmp_path / "ray", log=lines.append)
    done = [x for x in lines if x.startswith("done ")]
    assert len(done) == 11  # model, 2 scores, 2 prunes, 3 evals, 3 speeds
    nodes = {x.rsplit(" ", 1)[-1].rstrip(")") for x in done}
    assert worker.node_id[:8] in nodes and len(nodes) == 2
    assert all(x.startswith("done eval") for x in done if worker.node_id[:8] in x)
    run_study(cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"kind": "local"})}),
              tmp_path / "local", log=lambda _: None)
    assert _results(tmp_path / "ray") == _results(tmp_path / "local") != {}
    assert all(s == "done" for s, _ in _status(tmp_path / "ray").values())
    assert not (tmp_path / "ray" / ".probe").exists() or not any((tmp_path / "ray" / ".probe").iterdir())


def _run_and_lose_worker(c, node, cfg, root: Path, kind: str) -> BaseException | None:
    """Run the study in a thread; once a `kind` step's temp output dir appears (the step is mid-way) remove
    `node`, then add a node with the same resources (Ray wants nodes added from the main thread). The study's
    exception, if any."""
    (root / "steps").mkdir(parents=True, exist_ok=True)
    outcome: list[BaseException | None] = []

    def study():
        try:
            run_study(cfg, root, log=lambda _: None)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)

    t = threading.Thread(target=study, daemon=True)
    t.start()
    deadline = time.time() + 180
    while not any(p.name.startswith(f".{kind}-") for p in (root / "steps").glob(".*")):
        assert time.time() < deadline and t.is_alive(), f"no {kind} step started"
        time.sleep(0.05)
    c.remove_node(node, allow_graceful=False)
    c.add_node(**NODE, resources={"worker": 4})
    t.join(timeout=300)
    assert not t.is_alive(), "the study did not finish after the node was replaced"
    return outcome[0]


def _slow_speed(cfg: StudyConfig) -> StudyConfig:
    """One criterion, and speed steps long enough (~4 s) to lose a node in the middle of one."""
    return cfg.model_copy(update={"pruning": cfg.pruning.model_copy(update={"criteria": ["reverse"]}),
                                  "speed": cfg.speed.model_copy(update={"repeats": 500, "max_seconds": 4})})


def _worker(c):
    return [n for n in c.worker_nodes if n.node_id in {x["NodeID"] for x in ray.nodes() if x["Alive"]}][0]


def test_lost_node_is_retried(cluster, data_dir, tmp_path):
    c, _ = cluster
    cfg = _slow_speed(_cfg(data_dir, address=c.address, max_retries=2, resources={"speed": {"worker": 1}}))
    assert _run_and_lose_worker(c, _worker(c), cfg, tmp_path / "root", "speed") is None
    status = _status(tmp_path / "root")
    assert all(s == "done" for s, _ in status.values())
    speeds = [runs for i, (_, runs) in status.items() if i.startswith("speed-")]
    assert len(speeds) == 2 and all(r == 1 for r in speeds)  # submitted once each; Ray retried on the new node


def test_lost_node_without_retries_fails_then_rerun_completes(cluster, data_dir, tmp_path):
    c, _ = cluster
    cfg = _slow_speed(_cfg(data_dir, address=c.address, max_retries=0, resources={"speed": {"worker": 1}}))
    err = _run_and_lose_worker(c, _worker(c), cfg, tmp_path / "root", "speed")
    assert isinstance(err, StudyFailed) and "speed" in str(err)
    assert any(s == "failed" for s, _ in _status(tmp_path / "root").values())
    run_study(cfg, tmp_path / "root", log=lambda _: None)  # the rerun resumes: only the failed steps run again
    assert all(s == "done" for s, _ in _status(tmp_path / "root").values())


def test_infeasible_resources_refused_before_any_step(cluster, data_dir, tmp_path):
    c, _ = cluster
    cfg = _cfg(data_dir, address=c.address, resources={"heal": {"num_gpus": 1}, "eval": {"num_gpus": 2}})
    with pytest.raises(UsageError, match=r"executor.resources.eval: eval steps ask for \{'num_gpus': 2"):
        run_study(cfg, tmp_path / "root", log=lambda _: None)
    assert not (tmp_path / "root").exists()


ISLAND = """
import os, sys, time
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray._private.node, ray._private.parameter
params = ray._private.parameter.RayParams(
    gcs_address=sys.argv[1], node_ip_address="127.0.0.1", num_cpus=1, num_gpus=0, resources={"island": 1},
    object_store_memory=100 * 2**20, include_log_monitor=False, node_manager_port=0, min_worker_port=0,
    max_worker_port=0)
params.dashboard_agent_listen_port = None
node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)  # stops on SIGTERM
while True:
    time.sleep(1)
"""


def test_root_not_visible_to_a_node_is_refused(cluster, data_dir, tmp_path):
    """A third node whose processes see an empty tmpfs where ROOT's parent is (its own mount namespace), as a
    machine that does not mount the shared storage would."""
    c, _ = cluster
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -m` (mount namespaces) to give one node a different view of the filesystem")
    hidden = tmp_path / "shared"
    hidden.mkdir()
    (tmp_path / "island.py").write_text(ISLAND)
    cmd = f"mount -t tmpfs -o size=1m tmpfs {hidden} && exec {sys.executable} {tmp_path / 'island.py'} {c.address}"
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", cmd], start_new_session=True,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    try:
        deadline = time.time() + 90
        while not any(n["Alive"] and n["Resources"].get("island") for n in ray.nodes()):
            assert time.time() < deadline and proc.poll() is None, "the third node did not start"
            time.sleep(0.5)
        assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
        with pytest.raises(UsageError, match="is not shared"):
            run_study(_cfg(data_dir, address=c.address), hidden / "root", log=lambda _: None)
        assert not (hidden / "root").exists()
    finally:
        if proc.poll() is None:
            proc.terminate()  # the node stops its raylet and workers
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        deadline = time.time() + 60
        while any(n["Alive"] and n["Resources"].get("island") for n in ray.nodes()) and time.time() < deadline:
            time.sleep(0.5)


def test_unreachable_address_is_one_line_exit_2(data_dir, tmp_path):
    from layerprune.cli import main

    cfg = tmp_path / "s.yaml"
    cfg.write_text(json.dumps(_cfg(data_dir).model_dump(mode="json")))
    proc = subprocess.run([sys.executable, "-m", "layerprune", "study", str(cfg), "--root", str(tmp_path / "root"),
                           "--ray-address", "127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot reach the Ray cluster at '127.0.0.1:9'" in proc.stderr
    assert not (tmp_path / "root").exists()
    assert main  # the CLI module imports without Ray


def test_missing_ray_names_the_extra(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UsageError, match=r"pip install 'layerprune\[ray\]'"):
        run_study(_cfg(data_dir), tmp_path / "root", log=lambda _: None)
    assert not (tmp_path / "root").exists()
