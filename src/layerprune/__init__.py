"""layerprune: make an LLM shallower and know what it costs.

Public API (importable verbs; the CLI is a thin layer over these):

    from layerprune import load_model, remove_layers, prune, model_info
"""

__version__ = "0.1.0"

from layerprune.errors import UsageError
from layerprune.loading import load_model
from layerprune.surgery import parse_drop_spec, remove_layers
from layerprune.pruning import prune
from layerprune.info import model_info

__all__ = [
    "UsageError",
    "load_model",
    "remove_layers",
    "parse_drop_spec",
    "prune",
    "model_info",
    "__version__",
]
