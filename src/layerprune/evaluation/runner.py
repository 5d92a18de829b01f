"""Run tasks against a model: tasks → requests → backend → per-doc metrics → aggregates → files.

    result = evaluate("path/to/model", ["arc_easy", "mmlu"], TaskOptions(limit=100), out_dir="runs/x")

`result` (also `out_dir/results.json`) is
    {"results": {task: {metric: v, metric+"_stderr": v, "n": docs}}, "config": {...}, "model": {path,
     fingerprint}, "versions": {...}, "timings": {...}, "backend": {adds_bos, max_length, ...}}
and `out_dir/samples_<task>.jsonl` holds one line per doc (doc_id = position in the evaluated split).
A group (`mmlu`) reports each member and the size-weighted mean, with lm-eval's pooled stderr.

Model fingerprint: for a model directory, `provenance.fingerprint_dir` (config.json bytes, each weight
file's name, size, safetensors header and 16 sampled 64 KiB chunks); for an in-memory model, the sha256
of its config JSON and every tensor's name, shape, dtype and first 1024 values. Both are cheap and stable.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from layerprune import provenance
from layerprune.errors import UsageError
from layerprune.evaluation.data import resolve_data_dir
from layerprune.evaluation.hf_backend import HFBackend
from layerprune.evaluation.requests import GenerationRequest, LoglikelihoodRequest
from layerprune.evaluation.tasks import get_task
from layerprune.evaluation.tasks.base import TaskGroup, TaskOptions
from layerprune.execution import describe_sandbox

LM_EVAL_REFERENCE = "0.4.13"  # the harness whose prompts, tokenization and metrics these tasks reproduce


def evaluate(model_or_path, tasks: str | Sequence[str], opts: TaskOptions | None = None, out_dir=None,
             batch_size: int = 16, dtype: str | None = None, device: str | None = "cpu", tokenizer=None,
             add_bos_token: bool | None = None, progress: bool = True, engine: str = "hf",
             engine_settings=None) -> dict[str, Any]:
    """Evaluate a model (a path/hub id, or a loaded model with `tokenizer`) on `tasks`; see module doc.
    `engine="vllm"` generates with vLLM (`engine_settings`: a `VLLMSettings`; needs a path or hub id);
    log-likelihood requests then go to the HF engine, loaded only if a task needs them."""
    opts = opts or TaskOptions()
    names = _task_names(tasks)
    _check_options(opts, batch_size)
    resolved = [get_task(name) for name in names]  # unknown names fail before the model loads
    start = time.perf_counter()
    if engine == "hf":
        model, tokenizer, source = _load(model_or_path, tokenizer, dtype, device)
        backend = HFBackend(model, tokenizer, batch_size=batch_size, add_bos_token=add_bos_token, progress=progress)
    else:  # vLLM generates; the HF engine scores log-likelihoods if asked (see vllm_backend)
        from layerprune.evaluation.vllm_backend import open_for_evaluation

        backend, model, tokenizer, source = open_for_evaluation(
            engine, model_or_path, tokenizer, engine_settings, dtype=dtype, device=device, batch_size=batch_size,
            add_bos_token=add_bos_token, progress=progress, load=_load)
    load_s = time.perf_counter() - start
    run_opts = replace(opts, chat_renderer=_chat_renderer(tokenizer)) if opts.chat_template else opts
    results, samples, timings = {}, {}, {"load_model_s": round(load_s, 3)}
    for task in resolved:
        members = task.tasks if isinstance(task, TaskGroup) else [task]
        for member in members:
            t0 = time.perf_counter()
            results[member.name], samples[member.name] = run_task(member, backend, run_opts)
            timings[f"{member.name}_s"] = round(time.perf_counter() - t0, 3)
            if progress:
                tqdm.write(f"{member.name}: {_brief(results[member.name])}")
        if isinstance(task, TaskGroup):
            results[task.name] = aggregate_group(task, results)
    timings["total_s"] = round(time.perf_counter() - start, 3)
    if hasattr(backend, "close"):
        backend.close()
    output = {"results": results, "config": {**_config(names, opts, batch_size, dtype, device), "engine": engine},
              "model": {"path": source, "fingerprint": _fingerprint(source, model)},
              "versions": {**provenance.versions(), "lm_eval_reference": LM_EVAL_REFERENCE,
                           "tasks": {m.name: getattr(m, "version", None) for m in _members(resolved)}},
              "backend": backend.info(), "timings": timings}
    if out_dir is not None:
        write_outputs(Path(out_dir), output, samples)
    return output


def run_task(task, backend, opts: TaskOptions) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score one task: (aggregate metrics, one sample record per doc)."""
    docs = task.load_docs(opts)
    if opts.limit is not None:
        docs = docs[: opts.limit]
    per_doc = [task.requests(i, doc, opts) for i, doc in enumerate(docs)]
    answers = _answer(backend, per_doc)
    rows, metrics = [], []
    for i, (doc, reqs, res) in enumerate(zip(docs, per_doc, answers)):
        scores = task.score(doc, reqs, res, opts)
        metrics.append(scores)
        rows.append({"doc_id": i, **task.record(doc, reqs, res, opts), **scores, "doc": doc})
    return aggregate(metrics), rows


def _answer(backend, per_doc: list[list]) -> list[list]:
    """Send all requests of each kind in one call (the backend batches and shares prefixes), then split."""
    answers: list[list] = [[None] * len(reqs) for reqs in per_doc]
    for kind, call in ((LoglikelihoodRequest, backend.loglikelihood), (GenerationRequest, backend.generate)):
        where = [(d, k) for d, reqs in enumerate(per_doc) for k, r in enumerate(reqs) if isinstance(r, kind)]
        if where:
            for (d, k), res in zip(where, call([per_doc[d][k] for d, k in where])):
                answers[d][k] = res
    return answers


def aggregate(per_doc: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and stderr (sample stddev / sqrt(n), lm-eval's mean_stderr; None when n < 2) per metric."""
    out: dict[str, Any] = {}
    for metric in per_doc[0] if per_doc else []:
        values = [m[metric] for m in per_doc]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else None
        out[metric] = mean
        out[f"{metric}_stderr"] = math.sqrt(var / len(values)) if var is not None else None
    out["n"] = len(per_doc)
    return out


def aggregate_group(group: TaskGroup, results: dict[str, dict]) -> dict[str, Any]:
    """Weighted mean of member metrics; stderr pooled as lm-eval's pooled_sample_stderr."""
    members = [results[t.name] for t in group.tasks]
    sizes = [m["n"] if group.weight_by_size else 1 for m in members]
    out: dict[str, Any] = {}
    for metric in group.metrics:
        out[metric] = sum(m[metric] * s for m, s in zip(members, sizes)) / sum(sizes)
        errs = [m[f"{metric}_stderr"] for m in members]
        if group.weight_by_size and None not in errs and sum(sizes) > len(sizes):
            pooled = sum((s - 1) * e**2 * s for s, e in zip(sizes, errs)) / (sum(sizes) - len(sizes))
            out[f"{metric}_stderr"] = math.sqrt(pooled / sum(sizes))
        else:
            out[f"{metric}_stderr"] = None
    out["n"] = sum(m["n"] for m in members)
    return out


def write_outputs(out_dir: Path, output: dict, samples: dict[str, list[dict]]) -> None:
    """samples_<task>.jsonl then results.json, each written atomically (temp file + rename)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is a file; choose a directory path for --out")
    for name, rows in samples.items():
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
        provenance.write_text(out_dir / f"samples_{name}.jsonl", text)
    provenance.write_json(out_dir / "results.json", output)


# ---- helpers ----

def _task_names(tasks: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise UsageError("no tasks given; pass --tasks NAME[,NAME...] (e.g. arc_easy,mmlu)")
    return list(dict.fromkeys(names))


def _check_options(opts: TaskOptions, batch_size: int) -> None:
    if opts.limit is not None and opts.limit <= 0:
        raise UsageError(f"--limit must be a positive number of docs, got {opts.limit}; omit it to run all")
    if opts.num_fewshot is not None and opts.num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be 0 or more, got {opts.num_fewshot}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if opts.num_samples < 1 or (opts.max_new_tokens is not None and opts.max_new_tokens < 1):
        raise UsageError("--num-samples and --max-new-tokens must be at least 1")


def _load(model_or_path, tokenizer, dtype, device):
    if isinstance(model_or_path, (str, Path)):
        from layerprune.loading import load_model

        model, loaded_tok = load_model(str(model_or_path), dtype=dtype, device=device)
        tokenizer = tokenizer or loaded_tok
        source = str(model_or_path)
    else:
        model, source = model_or_path, None
    if tokenizer is None:
        raise UsageError(f"{source or 'the model'} has no tokenizer; save one with the model or pass tokenizer=")
    return model.eval(), tokenizer, source


def _chat_renderer(tokenizer):
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("--chat-template: the tokenizer has no chat template; drop the flag for base models")
    import jinja2

    def render(messages: list[dict[str, str]]) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except jinja2.exceptions.TemplateError:  # lm-eval retries without the system turn
            rest = [m for m in messages if m["role"] != "system"]
            return tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)
    return render


def _config(names, opts: TaskOptions, batch_size, dtype, device) -> dict[str, Any]:
    cfg = {k: v for k, v in asdict(replace(opts, chat_renderer=None)).items() if k != "chat_renderer"}
    root = resolve_data_dir(opts.data_dir)
    cfg["data_dir"] = str(root) if root is not None else "hub"
    return {"tasks": names, **cfg, "batch_size": batch_size, "dtype": str(dtype) if dtype else "auto",
            "device": device, "code_sandbox": describe_sandbox()}


def _fingerprint(source: str | None, model) -> str:
    if model is None:  # vLLM holds the weights: fingerprint the files
        return provenance.fingerprint_source(source)
    if source is not None and Path(source).expanduser().is_dir():
        return provenance.fingerprint_dir(Path(source).expanduser())
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, t in sorted(model.state_dict().items()):
        head = t.detach().reshape(-1)[:1024].to("cpu", torch.float32)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode() + head.numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def _members(tasks) -> list:
    return [m for t in tasks for m in (t.tasks if isinstance(t, TaskGroup) else [t])]


def _brief(res: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in res.items() if not k.endswith("_stderr") and k != "n") + \
        f" (n={res['n']})"
