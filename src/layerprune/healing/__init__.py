"""Recovery after pruning: self-generated responses (`sgr`) and SFT healing on TRL + PEFT (`sft`).

Heavy imports (torch, trl, peft) happen inside the functions, so `import layerprune.healing` is cheap.
"""


PROCESS_GROUP_TIMEOUT_S = 7200  # rank 0 merging and saving a 7B model, or ranks finishing SGR minutes apart


def process_state(timeout_s: int = PROCESS_GROUP_TIMEOUT_S):
    """accelerate's view of this process (rank, world size, device), initializing the process group under
    `accelerate launch`/`torchrun` with an explicit collective timeout (torch's default, 10 minutes, is shorter
    than saving a merged 7B model). Without a GPU it asks for CPU processes, the only way accelerate runs
    several CPU processes (gloo) instead of treating each as a lone run."""
    import os
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    return PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_s))
