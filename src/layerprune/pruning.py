"""`prune`: load a model, remove layers, save a plain HF checkpoint plus `pruning.json` (provenance).

    from layerprune import prune
    record = prune("path/to/model", drop="1,4-5", out="pruned/")
    record = prune_scored("path/to/model", "pruned/", method="bi", num_drop=8, calibration="notes.txt")
    record = prune_scored("path/to/model", "pruned/", scores="scores.json")   # reuse a saved score file

`pruning.json` holds the source (path or id, fingerprint, layer count), `removed` and `kept` in the *original*
model's numbering (composed through an earlier `pruning.json` when pruning a pruned model), the method that
chose them, versions and time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from layerprune.errors import UsageError
from layerprune.families import num_layers
from layerprune.loading import load_config, load_model
from layerprune.provenance import atomic_dir, check_out_dir, fingerprint_source, now, read_json, versions, write_json
from layerprune.surgery import parse_drop_spec, remove_layers, validate_drop

PRUNING_FILE = "pruning.json"


def prune(
    model: str,
    drop: str | Iterable[int],
    out: str | Path,
    overwrite: bool = False,
    dtype: str | None = None,
    device: str = "cpu",
    method: str = "manual",
    scores: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Remove `drop` (spec string like "3,5-7" or indices) from `model` and save it to `out`; return the record."""
    check_out_dir(out, overwrite)  # fail before loading weights
    n = num_layers(load_config(model, trust_remote_code))
    drop = parse_drop_spec(drop, n) if isinstance(drop, str) else validate_drop(drop, n)
    net, tokenizer = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    return _remove_and_save(model, net, tokenizer, drop, n, out, overwrite, method, scores)


def prune_scored(
    model: str,
    out: str | Path,
    method: str | None = None,
    scores: str | Path | None = None,
    overwrite: bool = False,
    dtype: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    **score_kwargs: Any,
) -> dict[str, Any]:
    """Score `model` with `method` (kwargs as for `layerprune.scoring.score`), or reuse the scores file
    `scores` (`num_drop`/`ratio` pick one of its sizes), then remove the chosen layers and save; the scores
    record is copied into pruning.json."""
    from layerprune.scoring import score
    from layerprune.scoring.files import drop_for, preflight, read_scores, with_source
    from layerprune.scoring.selection import one_size

    if (method is None) == (scores is None):
        raise UsageError("give exactly one of --method M or --scores scores.json")
    check_out_dir(out, overwrite)
    n = num_layers(load_config(model, trust_remote_code))
    if scores is not None:
        record = read_scores(scores)
        _check_scored_model(record, scores, n)
        drop = drop_for(record, scores, score_kwargs.get("num_drop"), score_kwargs.get("ratio"))
    else:
        one_size(n, score_kwargs.get("num_drop"), score_kwargs.get("ratio"))
        score_kwargs = preflight(model, method, trust_remote_code, **score_kwargs)
    net, tokenizer = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if scores is None:
        record = with_source(score(net, tokenizer, method, **score_kwargs), model, net)
        drop = record["drop"]
    elif record["model"].get("fingerprint") not in (None, fingerprint_source(model, net)):
        raise UsageError(f"{scores} was computed for a different model ({record['model'].get('source')}); "
                         f"rescore {model} with `layerprune score`")
    drop = validate_drop(drop, n)
    return _remove_and_save(model, net, tokenizer, drop, n, out, overwrite, record["method"], record)


def _check_scored_model(record: dict[str, Any], path, n: int) -> None:
    scored_n = record.get("model", {}).get("num_layers")
    if scored_n != n:
        raise UsageError(f"{path} scores a {scored_n}-layer model but this one has {n} layers; rescore it")


def _remove_and_save(model: str, net, tokenizer, drop, n: int, out, overwrite: bool, method: str, scores):
    kept = remove_layers(net, drop)
    record = _record(model, net, drop, kept, n, method, scores)
    with atomic_dir(out, overwrite) as tmp:
        net.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / PRUNING_FILE, record)
    return record


def _record(model: str, net, drop: list[int], kept: list[int], n: int, method: str, scores) -> dict[str, Any]:
    parent = _parent_record(model)
    removed, kept_orig = drop, kept
    if parent:  # express indices in the numbering of the model that was pruned first
        prev = parent["kept"]
        removed = sorted(parent["removed"] + [prev[i] for i in drop])
        kept_orig = [prev[i] for i in kept]
    record = {
        "format": "layerprune.pruning/1",
        "source": {"model": model, "fingerprint": fingerprint_source(model, net), "num_layers": n},
        "original_num_layers": parent["original_num_layers"] if parent else n,
        "removed": removed,
        "kept": kept_orig,
        "num_layers": len(kept),
        "method": method,
        "versions": versions(),
        "created": now(),
    }
    if scores is not None:
        record["scores"] = scores
    if parent:
        record["parent"] = parent
    return record


def _parent_record(model: str) -> dict[str, Any] | None:
    path = Path(model).expanduser() / PRUNING_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError as err:
        raise UsageError(f"{path} is not valid JSON ({err}); remove or fix it") from None
