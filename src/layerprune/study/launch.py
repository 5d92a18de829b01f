"""A heal step as DDP inside one study step: the same healing function, under `accelerate launch` with N processes.

    train_in_processes("heal", {"model": ..., "data": ..., "out": ..., "config": HealConfig(...)}, 4, log)

`healing.train.processes: N` (or an arm's `train.processes`) makes the study's heal runner call this instead of
`heal`/`distill` directly. Each launched process runs this module's `__main__` on a JSON spec and calls the
same function; the ranks split the batches (DDP) and rank 0 writes the checkpoint, exactly as a user's own
`accelerate launch -m layerprune heal ...` (docs/scale-out.md). Under Ray the step's task holds the GPUs its
kind asks for (`executor.resources.heal: {num_gpus: N}`) and CUDA_VISIBLE_DEVICES names them; the processes
inherit it, one GPU each. Without a GPU the processes are CPU (gloo) processes, as in the tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

FUNCTIONS = ("heal", "distill")


def train_in_processes(fn: str, kwargs: dict, processes: int, log: Path) -> None:
    """Run `fn(**kwargs)` (healing.sft.heal or healing.kd.distill) under `accelerate launch` with `processes`
    processes; the launcher's output goes to `log`. Raises RuntimeError with the log's tail on failure."""
    if fn not in FUNCTIONS:
        raise ValueError(f"{fn!r}: one of {FUNCTIONS}")
    spec = log.with_suffix(".json")
    spec.write_text(json.dumps({"fn": fn, **{k: _plain(v) for k, v in kwargs.items()}}))
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes (gloo): layerprune's process_state asks for them
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "layerprune.study.launch", str(spec)]
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{fn} under {processes} processes failed (exit {rc}); {log}:\n" + "\n".join(tail))


def _plain(value):
    """JSON for a call's arguments: dataclasses (HealConfig, KDConfig) as their fields, paths as strings."""
    if dataclasses.is_dataclass(value):
        return {"__dataclass__": type(value).__name__, **dataclasses.asdict(value)}
    return str(value) if isinstance(value, Path) else value


def _free_port() -> int:
    """A free loopback port for this launch's rendezvous (two DDP steps on one node must not share one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _main(spec_file: str) -> None:
    from layerprune.healing.kd import KDConfig, distill
    from layerprune.healing.sft import HealConfig, heal

    classes = {"HealConfig": HealConfig, "KDConfig": KDConfig}
    spec = json.loads(Path(spec_file).read_text())
    fn = {"heal": heal, "distill": distill}[spec.pop("fn")]
    kwargs = {}
    for name, value in spec.items():
        if isinstance(value, dict) and "__dataclass__" in value:
            cls = classes[value.pop("__dataclass__")]
            value = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        kwargs[name] = value
    fn(**kwargs)


if __name__ == "__main__":
    _main(sys.argv[1])
