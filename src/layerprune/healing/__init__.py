"""Recovery after pruning: self-generated responses (`sgr`) and SFT healing on TRL + PEFT (`sft`).

Heavy imports (torch, trl, peft) happen inside the functions, so `import layerprune.healing` is cheap.
"""


def process_state():
    """accelerate's view of this process (rank, world size, device), initializing the process group under
    `accelerate launch`/`torchrun`. Without a GPU it asks for CPU processes, the only way accelerate runs
    several CPU processes (gloo) instead of treating each as a lone run."""
    import os

    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    return PartialState(cpu=cpu)
