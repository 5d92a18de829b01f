"""A testbed that shows the paper's effect offline in minutes: small generated tasks that separate
classification (log-likelihood over choices) from generative reasoning (worked arithmetic, code run
against tests), and a 12-layer Llama trained from scratch on them that ships in `testbed/model/`.

    from layerprune.testbed import MODEL_DIR, TASKS, score_model
    scores = score_model(model, tokenizer, limit=100)      # {task: {metric: value, ...}}
"""

from __future__ import annotations

from pathlib import Path

from layerprune.testbed.tasks import CLASSIFICATION, GENERATIVE, TASKS, score_model

MODEL_DIR = Path(__file__).parent / "model"

__all__ = ["CLASSIFICATION", "GENERATIVE", "MODEL_DIR", "TASKS", "score_model"]
