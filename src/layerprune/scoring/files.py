"""scores.json on disk: score a saved model into a file, and read one back (for `prune --scores`).

    record = score_model("path/to/model", "scores.json", method="bi", num_drop=8, calibration="notes.txt")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from layerprune.calibration import Calibration, load_calibration
from layerprune.errors import UsageError
from layerprune.families import num_layers
from layerprune.loading import load_config, load_model, load_tokenizer
from layerprune.provenance import fingerprint_source, write_json
from layerprune.scoring.stability import DEFAULT_THRESHOLD, check_seeds, selection_stability

FORMAT = "layerprune.scores/1"


def score_model(model: str, out: str | Path, method: str, overwrite: bool = False, dtype: str | None = None,
                device: str = "cpu", trust_remote_code: bool = False, calibration_seeds: list[int] | None = None,
                stability_threshold: float = DEFAULT_THRESHOLD, **kwargs: Any) -> dict[str, Any]:
    """Load `model`, `score` it (kwargs as for `layerprune.scoring.score`) and write `out` atomically.

    With `calibration_seeds` the criterion runs once per independent calibration draw; the file holds the
    first seed's choice plus a `stability` entry (`layerprune.scoring.stability`)."""
    from layerprune.scoring import score

    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file path such as {out / 'scores.json'}")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite or choose another --out")
    if calibration_seeds is None:
        kwargs = preflight(model, method, trust_remote_code, **kwargs)
    else:  # one prepared calibration per draw, all checked before any weights are read
        seeds = check_seeds(calibration_seeds, stability_threshold)
        draws = {s: preflight(model, method, trust_remote_code, **{**kwargs, "seed": s}) for s in seeds}
    net, tokenizer = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if calibration_seeds is None:
        record = score(net, tokenizer, method, **kwargs)
    else:
        record = selection_stability(net, tokenizer, method, seeds, stability_threshold,
                                     score_fn=lambda s: score(net, tokenizer, method, **draws[s]))
    record = with_source(record, model, net)
    write_json(out, record)
    return record


def preflight(model: str, method: str, trust_remote_code: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Check the method, sizes and calibration source before any weights are read (bad input fails fast);
    returns `kwargs` with `calibration` replaced by the prepared windows."""
    from layerprune.scoring import calibration_spec, get_scorer
    from layerprune.scoring.selection import resolve_sizes

    scorer = get_scorer(method)
    resolve_sizes(num_layers(load_config(model, trust_remote_code)), kwargs.get("num_drop"), kwargs.get("ratio"))
    if scorer.anchor is None or isinstance(kwargs.get("calibration"), Calibration):
        return kwargs
    fields = ("seq_len", "num_samples", "seed", "text_field", "split", "bos")
    spec = calibration_spec(method, kwargs.get("calibration"), **{k: kwargs.get(k) for k in fields})
    return {**kwargs, "calibration": load_calibration(load_tokenizer(model, trust_remote_code), spec)}


def with_source(record: dict[str, Any], model: str, net) -> dict[str, Any]:
    """The record with the model's name and fingerprint first in its `model` entry."""
    record["model"] = {"source": model, "fingerprint": fingerprint_source(model, net), **record["model"]}
    return record


def read_scores(path: str | Path) -> dict[str, Any]:
    """A scores.json written by `layerprune score`; a missing or malformed file is a UsageError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"scores file {path} does not exist; write one with `layerprune score`")
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise UsageError(f"{path} is not valid JSON ({err}); rescore with `layerprune score`") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("drop"), list):
        raise UsageError(f"{path} is not a layerprune scores file; write one with `layerprune score`")
    return record


def drop_for(record: dict[str, Any], path: str | Path, num_drop: int | None = None,
             ratio: float | None = None) -> list[int]:
    """The layers `record` drops for one size (`num_drop`, or `ratio` of its model's layers); with neither,
    its only size. A size the record does not hold is a UsageError naming the ones it does."""
    from layerprune.scoring.selection import one_size

    drops = record.get("drops") or {str(len(record["drop"])): record["drop"]}  # files from before "drops"
    held = ", ".join(sorted(drops, key=int))
    if num_drop is None and ratio is None:
        if len(drops) > 1:
            raise UsageError(f"{path} holds drops for {held} layers; choose one with --num-drop N")
        return next(iter(drops.values()))
    n = one_size(record["model"]["num_layers"], num_drop, ratio)
    if str(n) not in drops:
        raise UsageError(f"{path} holds drops for {held} layers, not {n}; rescore with --num-drop {n}")
    return drops[str(n)]
