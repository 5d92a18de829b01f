import os
import sys
from pathlib import Path

# No hub: an accidental download must fail fast, in tests and in CI alike.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))  # test helper modules (eval_helpers)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LAYERPRUNE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"benchmark data not found at {DATA_DIR} (set LAYERPRUNE_DATA to the shared/data folder)")
    return DATA_DIR


@pytest.fixture
def one_thread():
    """Tiny models train ~20x faster on one thread than with threads fighting over the shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
