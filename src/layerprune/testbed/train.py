"""Train the testbed model from scratch on CPU: tokenizer, Llama config, AdamW + cosine, packed text.

    summary = train_testbed("out/testbed", max_steps=None, seed=0)

Writes, atomically, a plain Hugging Face checkpoint (config.json, model.safetensors, tokenizer files with
the chat template, generation_config.json) plus `train_log.jsonl` (one line per logged step: step, loss,
lr, elapsed seconds) and `training.json` (the recipe and the final loss). Everything is seeded: the
tokenizer, the initial weights and the data stream depend only on `seed`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

from layerprune import provenance
from layerprune.errors import UsageError
from layerprune.testbed.corpus import training_documents
from layerprune.testbed.tokenizer import MAX_LENGTH, build_tokenizer


PROBE_STEPS = 10  # a time budget refits the step count every this many steps


@dataclass(frozen=True)
class Recipe:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    seq_len: int = MAX_LENGTH
    batch_size: int = 16
    max_steps: int = 1368  # the shipped model's count (its time-budgeted run ended there)
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 40
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    log_every: int = 10
    dtype: str = "float32"  # of the saved weights


def model_config(tokenizer, recipe: Recipe) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers, num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads, max_position_embeddings=recipe.seq_len,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)


def batches(tokenizer, seed: int, batch_size: int, seq_len: int) -> Iterator[torch.Tensor]:
    """Packed [batch_size, seq_len + 1] token windows cut from the endless document stream."""
    docs, buffer = training_documents(seed), []
    need = batch_size * (seq_len + 1)
    while True:
        while len(buffer) < need:
            buffer += tokenizer.encode(next(docs))
        yield torch.tensor(buffer[:need]).view(batch_size, seq_len + 1)
        buffer = buffer[need:]


def lr_at(step: int, recipe: Recipe, total: int) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr at `total` steps."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = min(1.0, (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_testbed(out: str | Path, max_steps: int | None = None, seed: int = 0, overwrite: bool = False,
                  recipe: Recipe | None = None, threads: int | None = None, progress: bool = True,
                  time_budget_s: float | None = None) -> dict[str, Any]:
    """Train from scratch and save the checkpoint to `out`; returns the training summary.

    `time_budget_s` caps the run on a slow or shared machine: every PROBE_STEPS steps the step count is
    refitted to the time left at the mean pace so far, and the cosine schedule follows it. training.json
    records the final step count; the data, initialization and step count are then reproducible, the lr
    schedule of a time-budgeted run only approximately (it depended on the machine's load)."""
    recipe = recipe or Recipe()
    cap = recipe.max_steps if max_steps is None else max_steps
    if cap < 1:
        raise UsageError(f"--max-steps must be at least 1, got {cap}")
    total = cap
    provenance.check_out_dir(out, overwrite)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(seed)
    model = AutoModelForCausalLM.from_config(model_config(tokenizer, recipe)).train()
    optim = _optimizer(model, recipe)
    log, start = [], time.perf_counter()
    data = batches(tokenizer, seed, recipe.batch_size, recipe.seq_len)
    step = 0
    while step < total:
        if time_budget_s and step >= PROBE_STEPS and step % PROBE_STEPS == 0:
            total = _fit_steps(step, time.perf_counter() - start, time_budget_s, cap)
        loss = _step(model, optim, next(data), lr_at(step, recipe, total), recipe.grad_clip)
        if step % recipe.log_every == 0 or step == total - 1:
            log.append({"step": step + 1, "loss": round(loss, 4), "lr": lr_at(step, recipe, total),
                        "elapsed_s": round(time.perf_counter() - start, 1)})
            if progress:
                print(json.dumps(log[-1]), flush=True)
        step += 1
    summary = {"seed": seed, "steps": total, "time_budget_s": time_budget_s, "train_seconds": round(time.perf_counter() - start, 1),
               "final_loss": log[-1]["loss"], "tokens_seen": total * recipe.batch_size * recipe.seq_len,
               "parameters": sum(p.numel() for p in model.parameters()), "recipe": asdict(recipe),
               "versions": provenance.versions()}
    _save(out, overwrite, model.eval(), tokenizer, recipe, log, summary)
    return summary


def _fit_steps(step: int, elapsed: float, budget: float, cap: int) -> int:
    """Steps that fit the time budget at the mean pace so far (the machine's load may change)."""
    return max(step + 1, min(cap, step + int((budget - elapsed) / (elapsed / step))))


def _optimizer(model, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; norms and embeddings get no weight decay."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))


def _step(model, optim, window: torch.Tensor, lr: float, clip: float) -> float:
    """One update on a [B, T + 1] window: inputs are the first T tokens, targets the next ones."""
    for group in optim.param_groups:
        group["lr"] = lr
    logits = model(input_ids=window[:, :-1]).logits  # [B, T, V]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optim.step()
    return loss.item()


def _save(out, overwrite: bool, model, tokenizer, recipe: Recipe, log: list[dict], summary: dict) -> None:
    model = model.to(getattr(torch, recipe.dtype))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    with provenance.atomic_dir(out, overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        provenance.write_json(Path(tmp) / "training.json", summary)


def write_model_card(model_dir: str | Path, scores: dict[str, dict], limit: int | None, extra: str = "") -> Path:
    """MODEL_CARD.md from the directory's training.json / train_log.jsonl and measured `scores`."""
    model_dir = Path(model_dir)
    summary = json.loads((model_dir / "training.json").read_text())
    log = [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines()]
    r = summary["recipe"]
    curve = ", ".join(f"{row['step']}: {row['loss']}" for row in log[:: max(1, len(log) // 12)] + log[-1:])
    rows = "\n".join(f"| {task} | {metric} | {value:.3f} | {res['n']} |" for task, res in scores.items()
                     for metric, value in res.items() if not metric.endswith("_stderr") and metric != "n")
    size_mb = (model_dir / "model.safetensors").stat().st_size / 2**20
    budget = (f" (`--time-budget {summary['time_budget_s']:g}`: the step count and cosine schedule were refitted to "
              "the time left every 10 steps; `--max-steps` with this count reproduces data, initialization and step "
              "count, the schedule approximately)") if summary.get("time_budget_s") else ""
    text = f"""# layerprune testbed model

A {r['num_hidden_layers']}-layer Llama ({summary['parameters']:,} parameters, hidden {r['hidden_size']},
MLP {r['intermediate_size']}, {r['num_attention_heads']} heads, context {r['seq_len']}, tied embeddings,
{r['dtype']} weights, {size_mb:.1f} MB) trained from scratch with `layerprune testbed train` on generated
text only. Its byte-level BPE tokenizer (vocab ≤ 512, single-digit tokens, `<|end|>` = EOS) carries a chat
template (`<|system|>/<|user|>/<|assistant|>` turns). It exists to show the paper's effect offline; it
knows nothing beyond its tasks.

## Data
An endless seeded stream (`layerprune.testbed.corpus.training_documents(seed={summary['seed']})`) of items in
the evaluated formats: fictional country facts (24 countries × capital/language), number comparisons
(1-99), category membership (5 × 8 words), two-step arithmetic with worked steps, one-line Python
functions returning nested lists/tuples/dicts described in words, and bracket closing in the `brackets`
probe's format; 15% of items are chat-formatted (half with the SGR system prompt).

## Training
AdamW (β 0.9/0.95, weight decay {r['weight_decay']}), lr {r['lr']} with {r['warmup_steps']} warmup steps and
cosine decay to {r['min_lr_ratio']}×, batch {r['batch_size']} × {r['seq_len']} packed tokens, grad clip
{r['grad_clip']}; {summary['steps']} steps ({summary['tokens_seen']:,} tokens) in {summary['train_seconds'] / 60:.1f}
minutes on 2 shared CPU cores{budget}. Loss (step: loss): {curve}. Full curve: `train_log.jsonl`.

## Measured scores (unpruned; evaluation engine, zero-shot, limit {limit or 'all'} items per task)
| task | metric | value | n |
|---|---|---|---|
{rows}
{extra}"""
    provenance.write_text(model_dir / "MODEL_CARD.md", text)
    return model_dir / "MODEL_CARD.md"
