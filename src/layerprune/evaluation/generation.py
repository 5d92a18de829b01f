"""Batched generation with a KV cache: the engine behind `HFBackend.generate`.

    results = generate_batch(model, tokenizer, requests, batch_size=16)   # one GenerationResult per request

What it does, and how it lines up with lm-eval's `HFLM.generate_until` (0.4.13):

* Each request becomes `num_samples` rows, queued by prompt length, longest first (lm-eval's `Collator` key
  `(-len(tokens), context)`). **Continuous batching**: up to `batch_size` rows decode together in the slots
  of a preallocated cache (`slot_cache.py`: nothing is re-concatenated per step); a finished row leaves at
  once and the next waiting prompt is prefilled into its slot, so a batch lasts as long as there is work,
  not as long as its longest row. Joining prompts are prefilled together, right-padded; the header that
  every prompt of the call begins with (GSM8K's five shots) is prefilled once and its cache copied into each
  joining row's. Results come back in request order.
* Prompts are encoded like `HFLM.tok_batch_encode`: the tokenizer's default special tokens (BOS for
  Llama-style tokenizers) unless the context already starts with the BOS string; left-truncated to
  `max_length - max_new_tokens`.
* The next token is chosen on the model's device for all rows at once (`decoding.py`): the checkpoint's
  generation settings that `model.generate` would apply under lm-eval's call (repetition penalty, ...)
  through transformers' own processors, then fp32 argmax for greedy rows, as `generate(do_sample=False)`;
  sampled rows (`temperature > 0`) get temperature, top-k, top-p (the request's) and the checkpoint's other
  warpers, and an inverse-CDF draw from one uniform per step of the row's own CPU generator, seeded by
  `(request.seed, sample index)`: samples do not depend on batching.
* A row finishes on an EOS id (the generation config's and the tokenizer's), on its own stop strings
  (`until` plus the tokenizer's EOS string, as lm-eval's `handle_stop_sequences`), or after
  `max_new_tokens`; its result records why ("stop"/"length") and how many tokens it generated.
* The text is `decode(new tokens, skip_special_tokens=True)` cut before the first stop string
  (lm-eval's `postprocess_generated_text`).
* Models whose cache is not plain full attention (sliding windows, linear attention) or whose attention is
  neither sdpa nor eager decode in static batches on transformers' `DynamicCache` (`_decode`), same choices.

Equal to lm-eval at its default batch size 1. With a larger batch lm-eval keeps decoding rows whose stop
string already appeared until the whole batch is done; the cut text is the same, except the rare row that
emits the tokenizer's EOS token when it is not a generation-config EOS (lm-eval then keeps the text after it).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from layerprune.errors import UsageError
from layerprune.evaluation.decoding import CheckpointSettings, Chooser, Plan
from layerprune.evaluation.cache_rows import select_cache_rows
from layerprune.evaluation.hf_backend import MIN_SHARED, resolve_max_length
from layerprune.evaluation.requests import GenerationRequest, GenerationResult
from layerprune.evaluation.slot_cache import SlotState, slot_cache

STOP_LOOKBACK_EXTRA = 4  # tokens decoded beyond the longest stop string's own length (lm-eval uses 2)


@dataclass
class _Row:
    """One sample of one request while it is being decoded."""

    request_index: int
    prompt: list[int]
    stops: tuple[str, ...]
    lookback: int  # how many trailing tokens to decode when looking for a stop string
    max_new_tokens: int
    plan: Plan
    uniforms: list[float] | None  # sampled rows: one draw per step from the row's own seeded generator
    out: list[int] = field(default_factory=list)
    finish: str = "length"  # "stop": EOS id or stop string; "length": max_new_tokens
    generated: int = 0  # tokens the model produced, an ending EOS included


def generate_batch(
    model, tokenizer, requests: Sequence[GenerationRequest], batch_size: int = 8,
    add_bos_token: bool | None = None, max_length: int | None = None, progress: bool = False,
) -> list[GenerationResult]:
    """Answer generation requests in order; see the module docstring for the exact semantics.

    `add_bos_token` None follows the tokenizer's default (lm-eval >= 0.4.9.2); `max_length` None is
    looked up as HFLM does (`resolve_max_length`)."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}; pass --batch-size 1 or more")
    max_length = max_length or resolve_max_length(model.config, tokenizer)
    settings = CheckpointSettings.of(model, tokenizer)
    chooser = Chooser(settings)
    rows = _make_rows(tokenizer, requests, max_length, add_bos_token, chooser)
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].prompt), requests[rows[i].request_index].context))
    queue = [rows[i] for i in order]
    eos_ids = set(settings.eos_ids)
    header = _Header.shared_by(rows, model)
    bar = tqdm(total=len(rows), desc="generate", disable=not progress, leave=False)
    with torch.inference_mode():
        if _continuous_ok(model):
            _Continuous(model, tokenizer, eos_ids, header, chooser, batch_size, bar).run(queue)
        else:  # sliding-window / hybrid caches: static batches on transformers' own cache
            for start in range(0, len(queue), batch_size):
                _decode(queue[start : start + batch_size], model, tokenizer, eos_ids, chooser, header)
                bar.update(len(queue[start : start + batch_size]))
    bar.close()
    per_request: list[list[_Row]] = [[] for _ in requests]
    for row in rows:  # rows are in request order, samples in index order
        per_request[row.request_index].append(row)
    return [GenerationResult(texts=tuple(_finish_text(tokenizer, r) for r in rs),
                             finish_reasons=tuple(r.finish for r in rs),
                             generated_tokens=tuple(r.generated for r in rs)) for rs in per_request]


def _make_rows(tokenizer, requests: Sequence[GenerationRequest], max_length: int,
               add_bos_token: bool | None, chooser: Chooser) -> list[_Row]:
    eos_text = tokenizer.eos_token
    rows = []
    for index, req in enumerate(requests):
        if req.max_new_tokens < 1 or req.num_samples < 1:
            raise UsageError(f"request {index}: max_new_tokens and num_samples must be >= 1; fix the task options")
        if req.temperature == 0 and req.num_samples > 1:
            raise UsageError(f"request {index}: {req.num_samples} greedy samples would be identical; set a temperature > 0")
        if req.max_new_tokens >= max_length:
            raise UsageError(f"max_new_tokens {req.max_new_tokens} must be below the model's length {max_length}; lower it")
        prompt = _encode(tokenizer, req.context, add_bos_token)[-(max_length - req.max_new_tokens) :]
        stops = tuple(dict.fromkeys([s for s in req.until if s] + ([eos_text] if eos_text else [])))
        lookback = max((len(tokenizer.encode(s, add_special_tokens=False)) for s in stops), default=0)
        plan = chooser.plan(req.temperature, req.top_p, req.top_k, len(prompt))
        for sample in range(req.num_samples):
            uniforms = None
            if req.temperature > 0:  # seed from (request seed, sample index): independent of batching
                state = np.random.SeedSequence([req.seed, sample]).generate_state(1)[0]
                generator = torch.Generator().manual_seed(int(state))
                uniforms = torch.rand(req.max_new_tokens, generator=generator, dtype=torch.float64).tolist()
            rows.append(_Row(index, prompt, stops, lookback + STOP_LOOKBACK_EXTRA, req.max_new_tokens, plan, uniforms))
    return rows


def _continuous_ok(model) -> bool:
    """The slot cache serves plain full-attention layers under sdpa or eager attention."""
    plain = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
    return plain and getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")


def _cache_kw(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _choose(chooser: Chooser, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
    """Next token of every row (see `Chooser.choose`); logits (b, V) fp32."""
    uniforms = None
    if any(r.uniforms is not None for r in rows):
        uniforms = torch.tensor([r.uniforms[len(r.out)] if r.uniforms is not None else 0.0 for r in rows],
                                dtype=logits.dtype, device=logits.device)

    def history(index: list[int], exact: bool) -> torch.Tensor:
        ids = [rows[j].prompt + rows[j].out for j in index]
        width = max(len(x) for x in ids)
        if not exact:  # padded with the row's own first id: order-free processors see the same id set
            ids = [x + [x[0]] * (width - len(x)) for x in ids]
        return torch.tensor(ids, device=logits.device)

    return chooser.choose(logits, [r.plan for r in rows], uniforms, history).tolist()


class _Continuous:
    """Continuous batching over a `SlotState` cache: up to `batch_size` rows decode together; a finished row
    leaves at once and the next waiting prompt (longest first) is prefilled into its slot."""

    def __init__(self, model, tokenizer, eos_ids: set[int], header, chooser: Chooser, batch_size: int, bar):
        self.model, self.tokenizer, self.eos_ids, self.header = model, tokenizer, eos_ids, header
        self.chooser, self.batch_size, self.bar = chooser, batch_size, bar
        self.cache_kw = _cache_kw(model)
        self.additive = model.config._attn_implementation == "eager"

    def run(self, queue: list[_Row]) -> None:
        if not queue:
            return
        device = self.model.device
        capacity = max(len(r.prompt) + r.max_new_tokens for r in queue)
        state = SlotState(min(self.batch_size, len(queue)), capacity)
        cache = slot_cache(self.model.config.get_text_config().num_hidden_layers, state)
        active: list[_Row] = []  # active[i] lives in slot i
        lengths: list[int] = []  # cached tokens per active row
        pending = iter(queue)
        waiting = len(queue)
        logits = None  # (len(active), V) fp32: next-token logits of the active rows
        while True:
            fresh = []
            while len(active) + len(fresh) < state.slots and waiting:
                fresh.append(next(pending))
                waiting -= 1
            if fresh:
                new_logits = self._prefill(fresh, cache, len(active))
                active += fresh
                lengths += [len(r.prompt) for r in fresh]
                logits = new_logits if logits is None else torch.cat([logits, new_logits])
            if not active:
                return
            tokens = _choose(self.chooser, logits, active)
            done = [i for i, (row, tok) in enumerate(zip(active, tokens)) if _step(row, tok, self.tokenizer,
                                                                                   self.eos_ids)]
            for i in reversed(done):  # the last row moves into the freed slot: slots stay 0..n-1
                last = len(active) - 1
                if i != last:
                    for layer in cache.layers:
                        layer.move(last, i, lengths[last])
                    active[i], lengths[i], tokens[i] = active[last], lengths[last], tokens[last]
                active.pop(), lengths.pop(), tokens.pop()
            self.bar.update(len(done))
            if not active:
                logits = None
                if not waiting:
                    return
                continue
            state.begin_step(lengths, device)
            mask = state.mask(self.model.dtype, self.additive)
            out = self.model(input_ids=torch.tensor(tokens, device=device)[:, None], attention_mask=mask,
                             position_ids=state.write[:, None], use_cache=True, logits_to_keep=1,
                             **{self.cache_kw: cache})
            logits = out.logits[:, -1, :].float()  # (n, V) fp32, as HF generate
            lengths = [n + 1 for n in lengths]

    def _prefill(self, rows: list[_Row], cache, first_slot: int) -> torch.Tensor:
        """The joining prompts in one batch, right-padded: causal attention keeps every real position exact
        (a real token never sees the pads after it), so no pad enters a kept key or logit. With a header, the
        batch starts from copies of its cache and runs only each prompt's own tokens. Each row's keys/values
        go to its slot. Returns the last prompt position's logits, (len(rows), V) fp32."""
        device, skip = self.model.device, len(self.header.tokens) if self.header is not None else 0
        own = [r.prompt[skip:] for r in rows]
        width = max(len(x) for x in own)
        ids = torch.tensor([x + [x[-1]] * (width - len(x)) for x in own], device=device)  # (k, width)
        if self.header is not None:
            past = self.header.cache()
            past.batch_repeat_interleave(len(rows))  # (k, kv_heads, header, head_dim) per layer
        else:
            past = DynamicCache(config=self.model.config)
        last = sorted({len(x) - 1 for x in own})
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=torch.tensor(last, device=device),
                         **{self.cache_kw: past})
        column = {pos: c for c, pos in enumerate(last)}
        logits = torch.stack([out.logits[k, column[len(x) - 1]] for k, x in enumerate(own)]).float()  # (k, V)
        for layer, src in zip(cache.layers, past.layers):
            for k, row in enumerate(rows):
                layer.load(first_slot + k, src.keys[k, :, : len(row.prompt)], src.values[k, :, : len(row.prompt)])
        return logits


def _encode(tokenizer, context: str, add_bos_token: bool | None) -> list[int]:
    """Token ids as lm-eval's `tok_batch_encode`: no special tokens when the text starts with BOS, else
    `add_bos_token` when given, else the tokenizer's default."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and context.startswith(bos):
        kwargs = {"add_special_tokens": False}
    else:
        kwargs = {} if add_bos_token is None else {"add_special_tokens": add_bos_token}
    ids = tokenizer(context, **kwargs)["input_ids"]
    if not ids:  # an empty prompt still needs one position to predict from
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [prefix]
    return list(ids)


class _Header:
    """The tokens every prompt of a call begins with and their cache (batch 1), computed on first use."""

    def __init__(self, tokens: list[int], model, cache_kw: str):
        self.tokens, self._model, self._cache_kw, self._cache = tokens, model, cache_kw, None

    @classmethod
    def shared_by(cls, rows: list[_Row], model) -> "_Header | None":
        """A header of at least MIN_SHARED tokens, leaving every prompt one token of its own; else None.
        Only for plain full-attention caches, the layout `_prefill` runs prompts one by one for."""
        if len(rows) < 2 or not all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers):
            return None
        first, n = rows[0].prompt, min(len(r.prompt) for r in rows) - 1
        for row in rows[1:]:
            n = next((k for k in range(n) if row.prompt[k] != first[k]), n)
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        return cls(first[:n], model, cache_kw) if n >= MIN_SHARED else None

    def cache(self) -> DynamicCache:
        """A fresh copy of the header's cache, (1, kv_heads, len(tokens), head_dim) per layer."""
        if self._cache is None:
            self._cache = DynamicCache(config=self._model.config)
            ids = torch.tensor([self.tokens], device=self._model.device)
            self._model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: self._cache})
        return copy.deepcopy(self._cache)


def _decode(rows: list[_Row], model, tokenizer, eos_ids: set[int], chooser: Chooser,
            header: _Header | None = None) -> None:
    """The static path (caches the slots do not serve): decode one batch until every row is finished;
    finished rows leave the batch and the cache, and are not replaced."""
    device = model.device
    width = max(len(r.prompt) for r in rows)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T) 1 on real tokens, prompts right-aligned
    for i, row in enumerate(rows):
        mask[i, width - len(row.prompt) :] = 1
    mask = mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) as HF generate: pads get position 0
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    active = list(rows)
    with torch.inference_mode():
        logits, cache = _prefill(rows, model, mask, positions, cache_kw, header)  # (B, V) fp32, last prompt token
        while True:
            next_ids = _choose(chooser, logits, active)
            keep = [j for j, (row, tok) in enumerate(zip(active, next_ids)) if not _step(row, tok, tokenizer, eos_ids)]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)  # indexes mask and positions, which live on `device`
                select_cache_rows(cache, keep)  # each cache layer indexed on its own device (device_map="auto")
                mask, positions = mask[index], positions[index]
                active = [active[j] for j in keep]
                next_ids = [next_ids[j] for j in keep]
            input_ids = torch.tensor(next_ids, device=device).unsqueeze(1)  # (b, 1)
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            positions = positions[:, -1:] + 1
            # HF generate drops an all-ones mask; doing the same keeps greedy outputs bit-identical to it
            out = model(input_ids=input_ids, attention_mask=None if bool(mask.all()) else mask,
                        position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
            logits = out.logits[:, -1, :].float()  # (b, V) fp32, as HF generate


def _prefill(rows: list[_Row], model, mask: torch.Tensor, positions: torch.Tensor, cache_kw: str,
             header: _Header | None = None):
    """Run the prompts; (last-position logits (B, V) fp32, cache laid out left-padded to mask's width).

    With plain full-attention cache layers each prompt runs alone: no pad tokens are computed and attention
    takes the causal fast path instead of a (B, 1, T, T) padding mask (on CPU ~2x faster for 5-shot GSM8K at
    batch 16), and each row's prefill is exactly lm-eval's batch-size-1 one. The keys/values are then copied
    right-aligned into one (B, kv_heads, T, head_dim) tensor per layer; the zeros at pad slots are masked out.
    Sliding-window, linear-attention or other cache layers keep the padded batched prefill. With a `header`,
    each prompt starts from a copy of its cache and runs only its own tokens."""
    device, width = model.device, mask.shape[1]
    if not all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers):
        input_ids = torch.zeros(mask.shape, dtype=torch.long)  # (B, T) left-padded; pad id is masked out
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
        cache = DynamicCache(config=model.config)
        out = model(input_ids=input_ids.to(device), attention_mask=None if bool(mask.all()) else mask,
                    position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        return out.logits[:, -1, :].float(), cache
    logits, merged = [], None
    skip = len(header.tokens) if header is not None else 0
    for i, row in enumerate(rows):
        cache = header.cache() if header is not None else DynamicCache(config=model.config)
        out = model(input_ids=torch.tensor([row.prompt[skip:]], device=device), use_cache=True, logits_to_keep=1,
                    **{cache_kw: cache})
        logits.append(out.logits[0, -1].float())  # (V,)
        if merged is None:  # per layer (keys, values), each (B, kv_heads, T, head_dim)
            merged = [tuple(t.new_zeros((len(rows), t.shape[1], width, t.shape[3])) for t in (lay.keys, lay.values))
                      for lay in cache.layers]
        for (keys, values), layer in zip(merged, cache.layers):
            keys[i, :, width - len(row.prompt) :] = layer.keys[0]
            values[i, :, width - len(row.prompt) :] = layer.values[0]
    return torch.stack(logits), DynamicCache(ddp_cache_data=merged, config=model.config)


def _step(row: _Row, token: int, tokenizer, eos_ids: set[int]) -> bool:
    """Append `token` to the row; True when the row is finished."""
    row.generated += 1
    if token in eos_ids:
        row.finish = "stop"
        return True
    row.out.append(token)
    if len(row.out) >= row.max_new_tokens:
        row.finish = "length"  # unless the text also holds a stop string (below)
        text = tokenizer.decode(row.out, skip_special_tokens=False)
        if any(stop in text for stop in row.stops):
            row.finish = "stop"
        return True
    # cheap check on the last few tokens (as lm-eval's MultiTokenEOSCriteria), confirmed on the whole text
    # so that a tokenizer's odd decoding of a cut-off tail can never end a row early
    tail = tokenizer.decode(row.out[-row.lookback :], skip_special_tokens=False)
    if not any(stop in tail for stop in row.stops):
        return False
    text = tokenizer.decode(row.out, skip_special_tokens=False)
    if any(stop in text for stop in row.stops):
        row.finish = "stop"
        return True
    return False


def _finish_text(tokenizer, row: _Row) -> str:
    text = tokenizer.decode(row.out, skip_special_tokens=True)
    return cut_at_stops(text, row.stops)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """Text before the earliest stop string (lm-eval's `postprocess_generated_text`)."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text
