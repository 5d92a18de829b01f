"""Hub ids → local files, downloaded before anything reads or fingerprints them, recorded by repo + commit.

    src = fetch_model("Qwen/Qwen2.5-7B-Instruct")   # {"path": <snapshot dir>, "repo": ..., "revision": <sha>}
    sha = dataset_revision("tatsu-lab/alpaca")       # the commit `load_dataset(..., revision=sha)` then reads

A local directory passes through (`repo`/`revision` None). Downloads go through `huggingface_hub` exactly as
`from_pretrained` would (same cache, token and HF_ENDPOINT); only what loading needs is fetched: configs,
tokenizer files and safetensors weights (`.bin` weights only when the repo has no safetensors), never the
`original/` consolidated checkpoints some repos also ship.
"""

from __future__ import annotations

from pathlib import Path

from layerprune.errors import UsageError
from layerprune.loading import looks_like_path

MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
SKIP = ["original/*", "*/original/*"]


def is_hub_id(name: str) -> bool:
    return not Path(name).expanduser().exists() and not looks_like_path(name)


def fetch_model(name_or_path: str, revision: str | None = None) -> dict:
    """A model as local files: {"path", "repo", "revision"}; hub ids are downloaded (or found in the cache
    when offline) and pinned to the resolved commit."""
    if not is_hub_id(name_or_path):
        from layerprune.loading import check_model_source

        check_model_source(name_or_path)
        return {"path": str(Path(name_or_path).expanduser()), "repo": None, "revision": None}
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = [s.rfilename for s in HfApi().model_info(name_or_path, revision=revision).siblings or []]
        patterns = list(MODEL_FILES)
        if not any(f.endswith(".safetensors") for f in files):
            patterns.append("*.bin")  # an old checkpoint: PyTorch weights are its only weights
    except Exception:  # offline: the cache decides what there is
        patterns = MODEL_FILES + ["*.bin"]
    try:
        path = Path(snapshot_download(name_or_path, revision=revision, allow_patterns=patterns,
                                      ignore_patterns=SKIP))
    except Exception as err:
        raise UsageError(f"cannot download model {name_or_path!r}: {_first_line(err)}; check the id, your token "
                         "(huggingface-cli login) and network, or pass a local directory") from None
    if not (path / "config.json").is_file():
        raise UsageError(f"hub repo {name_or_path!r} has no config.json; it is not a transformers model")
    return {"path": str(path), "repo": name_or_path, "revision": path.name}  # snapshot folders are named by sha


def dataset_revision(name: str, revision: str | None = None) -> str | None:
    """The commit sha a hub dataset id resolves to now (None when offline: the cached copy is used)."""
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(name, revision=revision).sha
    except Exception:
        return None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
