"""Self-generated responses (SGR): the unpruned teacher answers a prompt pool (methods.md §1.5).

    summary = generate_sgr("Qwen/Qwen2.5-7B-Instruct", "alpaca.jsonl", "sgr.jsonl", num=100_000)

Each output row: ``id`` (hash of the prompt), ``messages`` (the prompt exactly as the teacher got it, system
turn included), ``response`` (the sample), ``original`` (the source's answer or null), ``format``
("chat_template" or "fallback"), ``finish_reason`` ("stop": EOS or end of turn; "length": cut at
max_new_tokens), ``prompt_tokens`` and ``response_tokens`` (generated tokens) and ``provenance`` (teacher
and its fingerprint, sampling parameters, the run
seed and this prompt's sampling seed).

Determinism: the prompt's sampling seed is ``sha256(f"{seed}:{id}")`` (63 bits); `generate_batch` seeds one CPU
`torch.Generator` per sample from it, and draws every token of that sample from that generator alone. So a
row depends only on (teacher, seed, prompt), not on batch size, order or the number of processes.

Resuming and sharding: rows are appended, a chunk at a time, to ``OUT.part-<rank>.jsonl``; a rerun skips
every id already in OUT or any part file. Under ``accelerate launch`` process r answers every world-th
remaining prompt; at the end the main process merges OUT and all parts in prompt order, writes OUT
atomically and removes the parts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from layerprune.errors import UsageError
from layerprune.healing import process_state
from layerprune.healing.chat import SYSTEM_PROMPT, has_template, render_prompt, stop_strings, with_system
from layerprune.healing.prompts import Prompt, load_prompts, select
from layerprune.provenance import fingerprint_source, write_text

CHUNKS_PER_WRITE = 4  # batches answered between two appends to the part file (the resume granularity)
_MATCH_KEYS = ("teacher_fingerprint", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "engine",
               "system_prompt")
_OLD_ROWS = {"engine": "hf", "system_prompt": SYSTEM_PROMPT}  # rows written before a key existed


def sample_seed(seed: int, pid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:8], "big") >> 1


def generate_sgr(teacher: str, prompts: str, out: str | Path, num: int | None = None, seed: int = 0,
                 shuffle_seed: int = 42, max_new_tokens: int = 8192, temperature: float = 0.9, top_p: float = 0.95,
                 top_k: int = 0, batch_size: int = 8, max_prompt_tokens: int | None = None, dtype: str | None = None,
                 device: str = "auto", overwrite: bool = False, process_group_timeout_s: int = 7200,
                 allow_fewer: bool = False, engine: str = "hf", engine_settings=None,
                 system_prompt: str = SYSTEM_PROMPT) -> dict:
    """Answer `num` prompts of `prompts` with `teacher`, append to `out` (JSONL); return a summary.
    `engine="vllm"` samples with vLLM (`engine_settings`: a `VLLMSettings`); rows record the engine.
    `system_prompt` opens every conversation that has no system turn of its own (default: the paper's); the
    rows keep it in their messages, so healing trains on the prompt the teacher saw."""
    from layerprune.evaluation.vllm_backend import check_engine
    from layerprune.loading import load_model

    _check_args(out, temperature, top_p, max_new_tokens, batch_size)
    check_engine(engine)
    state = process_state(process_group_timeout_s)  # ranks may finish their shards minutes apart
    out = Path(out)
    if overwrite and state.is_main_process:
        for f in [out, *_parts(out)]:
            f.unlink(missing_ok=True)
    state.wait_for_everyone()
    pool = load_prompts(prompts)
    if max_prompt_tokens is None:  # a pool smaller than --num fails before the teacher is loaded
        select(pool, num, shuffle_seed, allow_fewer=allow_fewer)
    if engine == "hf":
        model, tok = load_model(teacher, dtype=dtype, device=_device(device, state))
        if tok is None:
            raise UsageError(f"teacher {teacher} has no tokenizer; save one next to the model")
        backend, engine_info = None, {"engine": "hf"}
    else:
        backend, model = _vllm_teacher(teacher, dtype, engine_settings), None
        tok, engine_info = backend.tokenizer, backend.info()
    params = {"teacher": teacher, "teacher_fingerprint": fingerprint_source(teacher, model),
              "temperature": temperature, "top_p": top_p, "top_k": top_k, "max_new_tokens": max_new_tokens,
              "process_group_timeout_s": process_group_timeout_s,
              "seed": seed, "shuffle_seed": shuffle_seed, "engine": engine, "engine_settings": engine_info,
              "system_prompt": system_prompt}
    keep = None
    if max_prompt_tokens is not None:
        def keep(p: Prompt) -> bool:
            text = render_prompt(tok, with_system(list(p.messages), system_prompt))
            return len(tok(text)["input_ids"]) <= max_prompt_tokens
    chosen = select(pool, num, shuffle_seed, keep, allow_fewer=allow_fewer)
    done = _existing(out, params)
    state.wait_for_everyone()  # every process reads what is done before any process appends more
    todo = [p for p in chosen if p.id not in done]
    mine = todo[state.process_index :: state.num_processes]
    _answer(model, tok, mine, params, batch_size, _part(out, state.process_index), backend)
    if backend is not None:
        backend.close()
    state.wait_for_everyone()
    if state.is_main_process:
        _merge(out, [p.id for p in chosen])
    state.wait_for_everyone()
    return {"selected": len(chosen), "already_done": len(chosen) - len(todo), "generated": len(todo),
            "out": str(out), "is_main": state.is_main_process}


def _check_args(out, temperature, top_p, max_new_tokens, batch_size) -> None:
    if Path(out).is_dir():
        raise UsageError(f"--out {out} is a directory; pass a .jsonl file path")
    if temperature <= 0:
        raise UsageError(f"--temperature {temperature}: SGR samples; use a temperature > 0 (paper: 0.9)")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p {top_p} must be in (0, 1]")
    if max_new_tokens < 1 or batch_size < 1:
        raise UsageError("--max-new-tokens and --batch-size must be at least 1")


def _device(device: str, state) -> str:
    """One device per process: accelerate's choice (cuda:<local rank> or cpu) unless the user forces cpu."""
    return "cpu" if device == "cpu" else str(state.device)


def _vllm_teacher(teacher: str, dtype: str | None, settings):
    from dataclasses import asdict

    from layerprune.evaluation.vllm_backend import VLLMBackend, VLLMSettings

    settings = settings or VLLMSettings()
    if dtype and not settings.dtype:
        settings = VLLMSettings(**{**asdict(settings), "dtype": dtype})
    _own_gpus(settings.tensor_parallel_size)
    return VLLMBackend(teacher, settings, progress=False)


def _own_gpus(tp: int) -> None:
    """Under several processes each vLLM engine gets its own `tp` GPUs (local rank r: GPUs r·tp … r·tp+tp-1)
    through CUDA_VISIBLE_DEVICES, which vLLM's engine process inherits."""
    import torch

    state = process_state()
    if state.num_processes == 1 or not torch.cuda.is_available():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    mine = ids[state.local_process_index * tp:(state.local_process_index + 1) * tp]
    if len(mine) < tp:
        raise UsageError(f"{state.num_processes} processes × --tensor-parallel-size {tp} need "
                         f"{state.num_processes * tp} GPUs, {len(ids)} visible; use fewer processes")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)


def _answer(model, tok, prompts: list[Prompt], params: dict, batch_size: int, part: Path, backend=None) -> None:
    from tqdm.auto import tqdm

    from layerprune.evaluation.generation import generate_batch
    from layerprune.evaluation.requests import GenerationRequest

    stops, fmt = stop_strings(tok), "chat_template" if has_template(tok) else "fallback"
    step = batch_size * CHUNKS_PER_WRITE
    bar = tqdm(total=len(prompts), desc=f"sgr [{part.name}]", unit="prompt", disable=not prompts)
    for start in range(0, len(prompts), step):
        chunk = prompts[start : start + step]
        messages = [with_system(list(p.messages), params["system_prompt"]) for p in chunk]
        requests = [GenerationRequest(context=render_prompt(tok, m), until=stops,
                                      max_new_tokens=params["max_new_tokens"], temperature=params["temperature"],
                                      top_p=params["top_p"], top_k=params["top_k"],
                                      seed=sample_seed(params["seed"], p.id))
                    for p, m in zip(chunk, messages)]
        results = backend.generate(requests) if backend else generate_batch(model, tok, requests, batch_size=batch_size)
        rows = [{"id": p.id, "messages": m, "response": r.texts[0], "original": p.original, "format": fmt,
                 # "length": cut at max_new_tokens, not a complete answer (heal drops these by default)
                 "finish_reason": r.finish_reasons[0], "prompt_tokens": len(tok(q.context)["input_ids"]),
                 "response_tokens": r.generated_tokens[0], "provenance": {**params, "sample_seed": q.seed}}
                for p, m, r, q in zip(chunk, messages, results, requests)]
        _append(part, rows)
        bar.update(len(chunk))
    bar.close()


def _append(path: Path, rows: list[dict]) -> None:
    """Append whole lines and fsync, so an interruption loses at most the chunk in flight."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _part(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank}.jsonl")


def _parts(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.name}.part-*.jsonl"))


def _read_rows(path: Path) -> list[dict]:
    """Rows of an output or part file; a torn last line (killed mid-write) is skipped."""
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n != len(lines):
                raise UsageError(f"{path}:{n}: not valid JSON; remove the file or pass --overwrite") from None
    return rows


def _existing(out: Path, params: dict) -> set[str]:
    """Ids already answered; rows from another teacher or other sampling settings are a UsageError."""
    done = set()
    for path in [out, *_parts(out)]:
        if not path.is_file():
            continue
        for row in _read_rows(path):
            prov = row.get("provenance", {})
            diff = [k for k in _MATCH_KEYS if prov.get(k, _OLD_ROWS.get(k)) != params[k]]
            if diff:
                raise UsageError(f"{path} holds rows made with different {', '.join(diff)}; "
                                 "pass --overwrite or choose another --out")
            done.add(row["id"])
    return done


def _merge(out: Path, order: list[str]) -> None:
    """OUT ∪ parts, one row per id, in prompt order (ids outside this selection keep their old order after)."""
    rows: dict[str, dict] = {}
    for path in [p for p in [out, *_parts(out)] if p.is_file()]:
        for row in _read_rows(path):
            rows.setdefault(row["id"], row)
    rank = {pid: i for i, pid in enumerate(order)}
    ids = sorted(rows, key=lambda pid: rank.get(pid, len(order)))
    write_text(out, "".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in ids))
    for part in _parts(out):
        part.unlink()
