"""Load a causal LM and its tokenizer from a local directory or a hub id.

    model, tokenizer = load_model("path/or/org-name", dtype="bfloat16", device="auto")

`dtype=None` keeps the checkpoint's dtype; `device` is "cpu", "cuda", "cuda:N", "auto" (GPU if one is
visible, else CPU) or "split" (accelerate's device_map="auto" over every visible GPU). A model that fits one GPU
is placed whole on the current one (a Ray task's assigned GPU); it is split only when asked or when it does not
fit (`placement`). Remote code is never trusted unless asked. Every failure a user can cause becomes a
`UsageError` that says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from layerprune.errors import UsageError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
DEVICES = ("cpu", "cuda", "auto", "split")
FIT_HEADROOM = 1.2  # weights × this must fit a GPU's free memory: activations and KV cache need the rest


def resolve_dtype(dtype: str | torch.dtype | None):
    """None/"auto" → "auto" (the checkpoint's dtype); a name → torch dtype; unknown → UsageError."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | None) -> str:
    """"auto" → "cuda" when a GPU is visible, else "cpu"; validates the name."""
    device = device or "cpu"
    if device == "split":
        if not torch.cuda.is_available():
            raise UsageError("device 'split' spreads a model over GPUs but no CUDA GPU is visible; use --device cpu")
        return device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {device!r}; use cpu, cuda, cuda:N, auto or split")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for but no CUDA GPU is visible; use --device cpu")
    return device


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (./x, /x, ~/x, a/b/c, x\\y) is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_model_source(name_or_path: str) -> None:
    """Fail early, in one line, on a path that does not exist or a directory that is not a model."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{name_or_path} is a file; pass the model directory (with config.json)")
        if not (path / "config.json").is_file():
            raise UsageError(
                f"{name_or_path} is not a model directory (no config.json); pass a directory written by "
                "save_pretrained or a hub id"
            )
    elif looks_like_path(name_or_path):
        raise UsageError(f"model path {name_or_path} does not exist; check the path or pass a hub id")


def load_config(name_or_path: str, trust_remote_code: bool = False):
    """The model's transformers config (with per-layer fields materialized by transformers)."""
    from transformers import AutoConfig

    check_model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UsageError(_load_hint(name_or_path, err)) from None


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = None,
    device: str | None = "cpu",
    trust_remote_code: bool = False,
    tokenizer: bool = True,
):
    """Load (model, tokenizer) in eval mode. The tokenizer is None when the checkpoint has none."""
    from transformers import AutoModelForCausalLM

    from layerprune.families import spec_for

    config = load_config(name_or_path, trust_remote_code)
    spec_for(config)  # unsupported family → UsageError before any weights are read
    device = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if device == "split" or device == "cuda" and torch.cuda.device_count() > 1:
        free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
        device = placement(device, free, weight_bytes(config, kwargs["dtype"]), torch.cuda.current_device())
        if device == "auto":
            kwargs["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise UsageError(_load_hint(name_or_path, err)) from None
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    tok = load_tokenizer(name_or_path, trust_remote_code) if tokenizer else None
    return model, tok


def placement(device: str, gpu_free: list[int], model_bytes: int, current: int = 0) -> str:
    """Where a model goes: `device` itself unless it is "cuda" with several GPUs visible; then the current GPU
    when the weights (with FIT_HEADROOM) fit its free memory, else "auto" (split by accelerate). "split" → "auto".
    gpu_free: free bytes per visible GPU; model_bytes: the weights' size in the dtype they load in."""
    if device == "split":
        return "auto"
    if device != "cuda" or len(gpu_free) < 2:
        return device
    return f"cuda:{current}" if model_bytes * FIT_HEADROOM <= gpu_free[current] else "auto"


def weight_bytes(config, dtype) -> int:
    """Bytes of the model's parameters in `dtype` ("auto": the config's dtype), from an empty (meta) model."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in meta.parameters()) * torch.empty((), dtype=dtype).element_size()


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The checkpoint's tokenizer, or None when it ships none (tiny test models often do not)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):
        return None


def _load_hint(name: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(name).exists():
        return f"cannot load {name!r}: offline (HF_HUB_OFFLINE=1) and not a local directory; pass a local path"
    return f"cannot load {name!r}: {first}"
