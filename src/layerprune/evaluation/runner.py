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
from layerprune.evaluation.chat import chat_renderer, check_chat_options
from layerprune.evaluation.data import resolve_data_dir
from layerprune.evaluation.hf_backend import HFBackend
from layerprune.evaluation.requests import Backend, GenerationRequest, GenerationResult, LoglikelihoodRequest
from layerprune.evaluation.tasks import get_task
from layerprune.evaluation.tasks.base import TaskGroup, TaskOptions
from layerprune.execution import check_sandbox, describe_sandbox

LM_EVAL_REFERENCE = "0.4.13"  # the harness whose prompts, tokenization and metrics these tasks reproduce


def evaluate(model_or_path, tasks: str | Sequence[str], opts: TaskOptions | None = None, out_dir=None,
             batch_size: int = 16, dtype: str | None = None, device: str | None = "cpu", tokenizer=None,
             add_bos_token: bool | None = None, progress: bool = True, backend: Backend | None = None,
             resume_dir=None, engine: str = "hf", engine_settings=None) -> dict[str, Any]:
    """Evaluate a model (a path/hub id, or a loaded model with `tokenizer`) on `tasks`; see module doc.

    `backend`: any object with `loglikelihood(requests)` / `generate(requests)` (`requests.Backend`) answers
    the requests instead of an `HFBackend` over the model; `model_or_path` may then be None (the tokenizer
    is still needed for a chat template).
    `engine="vllm"` generates with vLLM (`engine_settings`: a `VLLMSettings`; needs a path or hub id);
    log-likelihood requests then go to the HF engine, loaded only if a task needs them.
    `resume_dir`: each finished task is kept there, and a rerun after a crash runs only the unfinished ones."""
    opts = opts or TaskOptions()
    names = _task_names(tasks)
    _check_options(opts, batch_size)
    resolved = [get_task(name) for name in names]  # unknown names fail before the model loads
    if any(getattr(m, "runs_code", False) for m in _members(resolved)):  # so does an incomplete sandbox
        check_sandbox(opts.allow_weaker_sandbox)
    start = time.perf_counter()
    if opts.chat_template and tokenizer is None and isinstance(model_or_path, (str, Path)):
        from layerprune.loading import check_model_source, load_tokenizer

        check_model_source(str(model_or_path))
        tokenizer = load_tokenizer(str(model_or_path))  # a missing chat template fails before the weights load
        chat_renderer(tokenizer, str(model_or_path), opts.system_prompt)
    if backend is None and engine != "hf":  # vLLM generates; the HF engine scores log-likelihoods if asked
        from layerprune.evaluation.vllm_backend import open_for_evaluation

        backend, model, tokenizer, source = open_for_evaluation(
            engine, model_or_path, tokenizer, engine_settings, dtype=dtype, device=device, batch_size=batch_size,
            add_bos_token=add_bos_token, progress=progress, load=_load)
    elif backend is None or model_or_path is not None:
        model, tokenizer, source = _load(model_or_path, tokenizer, dtype, device)
    else:
        model, source = None, None
    load_s = time.perf_counter() - start
    if backend is None:
        backend = HFBackend(model, tokenizer, batch_size=batch_size, add_bos_token=add_bos_token, progress=progress)
    run_opts = opts
    if opts.chat_template:
        if tokenizer is None:
            raise UsageError("--chat-template needs the model's tokenizer; pass tokenizer= with its chat template")
        run_opts = replace(opts, chat_renderer=chat_renderer(tokenizer, source, opts.system_prompt))
    results, samples, timings = {}, {}, {"load_model_s": round(load_s, 3)}
    keep = _TaskKeeper(resume_dir, source, model, _config(names, opts, batch_size, dtype, device)) \
        if resume_dir is not None else None
    for task in resolved:
        members = task.tasks if isinstance(task, TaskGroup) else [task]
        for member in members:
            kept = keep.load(member.name) if keep else None
            if kept:
                results[member.name], samples[member.name], timings[f"{member.name}_s"] = kept
                if progress:
                    tqdm.write(f"{member.name}: kept from an earlier run ({keep.folder})")
                continue
            t0 = time.perf_counter()
            results[member.name], samples[member.name] = run_task(member, backend,
                                                                  _task_options(run_opts, member.name, task.name))
            timings[f"{member.name}_s"] = round(time.perf_counter() - t0, 3)
            if keep:
                keep.save(member.name, results[member.name], samples[member.name], timings[f"{member.name}_s"])
            if progress:
                tqdm.write(f"{member.name}: {_brief(results[member.name])}")
        if isinstance(task, TaskGroup):
            results[task.name] = aggregate_group(task, results)
    timings["total_s"] = round(time.perf_counter() - start, 3)
    if hasattr(backend, "close"):
        backend.close()
    output = {"results": results, "config": {**_config(names, opts, batch_size, dtype, device), "engine": engine},
              "model": {"path": source, "fingerprint": _fingerprint(source, model)
                        if model is not None or (source and Path(source).expanduser().is_dir()) else None},
              "versions": {**provenance.versions(), "lm_eval_reference": LM_EVAL_REFERENCE,
                           "tasks": {m.name: getattr(m, "version", None) for m in _members(resolved)}},
              "backend": backend.info() if hasattr(backend, "info") else {"class": type(backend).__name__},
              "timings": timings}
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
        prompt = {"context": reqs[0].context} if isinstance(reqs[0], GenerationRequest) else {}
        rows.append({"doc_id": i, **prompt, **task.record(doc, reqs, res, opts), **scores, **_lengths(res),
                     "doc": doc})
    return aggregate(metrics), rows


def _lengths(results: Sequence) -> dict[str, list]:
    """Tokens generated and why each sample stopped ("stop" | "length"), when the backend reports them."""
    gens = [r for r in results if isinstance(r, GenerationResult) and getattr(r, "generated_tokens", ())]
    if not gens:
        return {}
    return {"generated_tokens": [n for r in gens for n in r.generated_tokens],
            "finish_reasons": [f for r in gens for f in getattr(r, "finish_reasons", ())]}


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


class _TaskKeeper:
    """Finished tasks of one evaluation, one JSON file each in `folder`, valid only for the same model
    (fingerprint) and settings: what lets a crashed evaluation rerun only its unfinished tasks."""

    def __init__(self, folder, source, model, config: dict):
        self.folder = Path(folder)
        blob = json.dumps({"model": _fingerprint(source, model), "config": config}, sort_keys=True, default=str)
        self.key = hashlib.sha256(blob.encode()).hexdigest()

    def load(self, name: str):
        path = self.folder / f"{name}.json"
        if not path.is_file():
            return None
        kept = json.loads(path.read_text())
        return (kept["results"], kept["samples"], kept["seconds"]) if kept.get("key") == self.key else None

    def save(self, name: str, results: dict, samples: list[dict], seconds: float) -> None:
        kept = {"key": self.key, "results": results, "samples": samples, "seconds": seconds}
        provenance.write_text(self.folder / f"{name}.json", json.dumps(kept, ensure_ascii=False, default=str))


# ---- helpers ----

def _task_names(tasks: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise UsageError("no tasks given; pass --tasks NAME[,NAME...] (e.g. arc_easy,mmlu)")
    return list(dict.fromkeys(names))


def _task_options(opts: TaskOptions, name: str, group: str) -> TaskOptions:
    """The run's options with this task's explicit generation limit, if it has one (its own name first)."""
    by_task = dict(opts.max_new_tokens_by_task)
    limit = by_task.get(name, by_task.get(group))
    return opts if limit is None else replace(opts, max_new_tokens=limit, max_new_tokens_cap=None)


def _check_options(opts: TaskOptions, batch_size: int) -> None:
    if opts.limit is not None and opts.limit <= 0:
        raise UsageError(f"--limit must be a positive number of docs, got {opts.limit}; omit it to run all")
    if opts.num_fewshot is not None and opts.num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be 0 or more, got {opts.num_fewshot}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if opts.num_samples < 1 or (opts.max_new_tokens is not None and opts.max_new_tokens < 1):
        raise UsageError("--num-samples and --max-new-tokens must be at least 1")
    check_chat_options(opts)


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
