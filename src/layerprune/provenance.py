"""What produced an output: versions, times, fingerprints; and atomic writes so nothing is half-written."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

from layerprune.errors import UsageError


def versions() -> dict[str, str]:
    import torch
    import transformers

    from layerprune import __version__

    return {"layerprune": __version__, "transformers": transformers.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically: temp file in the same directory, fsync, rename."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """An output directory may be new or empty; an existing non-empty one needs `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is a file; choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output directory {out} exists and is not empty; pass --overwrite or choose another --out")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `out`, on failure it is removed."""
    out = check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        make_publishable(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_publishable(root: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) paths; give a finished output the usual permissions."""
    mask = _umask()
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def fingerprint_dir(path: str | Path) -> str:
    """A fast fingerprint of a checkpoint directory: config.json bytes, plus for every weight file its name,
    size, safetensors header (names, dtypes, shapes, offsets) and 16 sampled 64 KiB chunks of content.
    Identical checkpoints give identical fingerprints; any retrained or edited tensor changes it."""
    path = Path(path)
    h = hashlib.sha256()
    cfg = path / "config.json"
    h.update(cfg.read_bytes() if cfg.exists() else b"")
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            if f.suffix == ".safetensors":
                (n,) = struct.unpack("<Q", fh.read(8))
                h.update(fh.read(n))
            for k in range(16):
                fh.seek(size * k // 16)
                h.update(fh.read(65536))
    return "sha256:" + h.hexdigest()[:32]


def fingerprint_model(model) -> str:
    """Fingerprint of an in-memory model: config JSON + every tensor's name, shape, dtype and bytes."""
    import torch

    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def fingerprint_source(name_or_path: str, model=None) -> str:
    """Fingerprint a model by its files when they are local (or in the hub cache), else by its tensors."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        with contextlib.suppress(Exception):
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name_or_path, local_files_only=True))
    # a cache holding only config.json (a config lookup, not a download) must not stand for the weights
    has_weights = path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))
    if path.is_dir() and (path / "config.json").exists() and has_weights:
        return fingerprint_dir(path)
    if model is None:
        raise UsageError(f"cannot fingerprint {name_or_path}: not a local model directory")
    return fingerprint_model(model)


def read_json(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)
