"""SGR and healing initialize accelerate's process group with an explicit, configurable timeout (torch's default
is 10 minutes), and the study passes its configured value through."""

import os
import socket
import subprocess
import sys

from layerprune.healing.sft import HealConfig
from layerprune.study.config import SGRConfig, TrainConfig

CHILD = """
import torch.distributed as dist
seen = {}
real = dist.init_process_group
def record(*args, **kwargs):
    seen.update(kwargs)
    return real(*args, **kwargs)
dist.init_process_group = record
from layerprune.healing import process_state
state = process_state(4321)
print(int(seen["timeout"].total_seconds()), state.num_processes)
dist.destroy_process_group()
"""


def test_process_group_gets_the_timeout_under_a_launcher():
    with socket.socket() as s:  # a free loopback port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4321", "1"]


def test_study_configures_and_records_the_timeout():
    assert HealConfig().process_group_timeout_s == TrainConfig().process_group_timeout_s == 7200
    assert TrainConfig(process_group_timeout_s=9000).heal_config("response", 1).process_group_timeout_s == 9000
    assert SGRConfig().process_group_timeout_s == 7200
