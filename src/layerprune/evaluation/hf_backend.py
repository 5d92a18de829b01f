"""A `Backend` over a Hugging Face causal LM that scores exactly as lm-eval's HFLM (0.4.13), only faster.

Tokenization is HFLM's (`_encode_pair`): trailing whitespace of the context moves to the continuation,
`context + continuation` and `context` are encoded, and the continuation tokens are the difference; an
empty context becomes the prefix token (BOS, else EOS). BOS follows the tokenizer's default unless
`add_bos_token` says otherwise, and is skipped when the text already starts with the BOS string. Inputs
longer than `max_length + 1` are cut from the left, as HFLM does.

Speed comes from **prefix sharing**. The requests of one question (same `group`, else same context)
share their first `p` input tokens: those run once, and only the last prefix position's logits are
computed. The cache is then copied to one row per choice and the remaining tokens of every choice run
in one batch on top of it. Single-token choices (MMLU " A"…" D", BoolQ " no"/" yes") cost one prefix
pass and nothing more. Log-softmax runs in fp32 over the scored positions only; for a bf16/fp16 model the
output layer of those positions runs in fp32 too (lm-eval rounds the logits to the model's dtype first).

A second level shares what *questions* have in common: when every group of a batch starts with the same
`MIN_SHARED`+ tokens (MMLU's subject header and five dev shots, ~85% of each prompt), those run once, their
cache is kept for the following batches while they still start with it, and each batch copies it to one
row per question. Only the rest of every prompt is computed per question.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from layerprune.evaluation.cache_rows import select_cache_rows
from layerprune.evaluation.requests import (
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
)

DEFAULT_MAX_LENGTH = 2048
MIN_SHARED = 32  # tokens every question of a batch must share before the shared run pays for itself
_TOKENIZER_INFINITY = 1_000_000_000_000  # tokenizers report ~1e30 for "no limit"


def resolve_max_length(config, tokenizer, default: int = DEFAULT_MAX_LENGTH) -> int:
    """HFLM's rule: text_config, then config (n_positions, max_position_embeddings, n_ctx), then the
    tokenizer's model_max_length when it is finite, else `default`."""
    for cfg in (getattr(config, "text_config", None), config):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if value:
                return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < _TOKENIZER_INFINITY:
        return int(limit)
    return default


@dataclass
class _Scored:
    """One request after tokenization: `ids` is the model input, the last `n_cont` positions are scored."""

    index: int
    ids: list[int]  # (context + continuation)[-(max_length+1):][:-1]
    cont: list[int]  # continuation tokens (targets of the scored positions)


class HFBackend:
    """loglikelihood() as HFLM computes it; generate() delegates to `generation.generate_batch`."""

    def __init__(self, model, tokenizer, batch_size: int = 16, add_bos_token: bool | None = None,
                 max_length: int | None = None, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.add_bos_token = add_bos_token
        self.max_length = max_length or resolve_max_length(model.config, tokenizer)
        self.progress = progress
        self.device = next(model.parameters()).device
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        self._prefix_text = tokenizer.decode(self.prefix_token_id)
        probe = self.tok_encode("a")
        self.adds_bos = bool(probe) and bos is not None and probe[0] == bos
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
        self._head = _plain_head(model)
        self._shared: tuple[list[int], object] | None = None  # (tokens, their cache, batch 1) across batches
        self._common: list[int] | None = None  # tokens every prompt of the current call begins with

    def info(self) -> dict:
        """What the scores depend on, for results.json."""
        from layerprune.evaluation.decoding import CheckpointSettings

        return {"adds_bos": self.adds_bos, "prefix_token_id": self.prefix_token_id,
                "max_length": self.max_length, "batch_size": self.batch_size, "softmax_dtype": "float32",
                "generation_config": CheckpointSettings.of(self.model, self.tokenizer, strict=False).record(),
                "head_dtype": "float32" if self._head is not None else str(next(self.model.parameters()).dtype)}

    # ---- tokenization (HFLM.tok_encode / TemplateLM._encode_pair) ----

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        kwargs = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kwargs["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and self._prefix_text and text.startswith(self._prefix_text):
            kwargs["add_special_tokens"] = False  # the text already carries BOS (chat templates)
        return self.tokenizer.encode(text, **kwargs)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    # ---- log-likelihood ----

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        scored = []
        for i, req in enumerate(requests):
            ctx, cont = self.encode_pair(req.context, req.continuation)
            if not cont:
                raise ValueError(f"continuation {req.continuation!r} encodes to no tokens")
            full = (ctx + cont)[-(self.max_length + 1):]
            # a continuation longer than the window: only the tokens predicted inside it can be scored
            scored.append(_Scored(i, full[:-1], cont[-(len(full) - 1):]))
        groups = _share_groups(requests, scored)
        groups.sort(key=lambda g: (-max(len(s.ids) for s in g.items), g.items[0].ids))  # longest first
        shared = min(min(g.plen for g in groups) - 1, _common_prefix([g.items[0] for g in groups])) if groups else 0
        self._common = groups[0].items[0].ids[:shared] if shared >= MIN_SHARED else None
        results: list[LoglikelihoodResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="loglikelihood", disable=not self.progress, leave=False)
        for chunk in _chunks(groups, self.batch_size):
            for s, res in self._score_chunk(chunk):
                results[s.index] = res
            bar.update(sum(len(g.items) for g in chunk))
        bar.close()
        self._shared = self._common = None  # the next call has other prompts; free the memory
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _score_chunk(self, chunk: list["_Group"]):
        """Run the shared prefixes once (right-padded, no mask: causal attention keeps real positions
        exact), then every choice's remaining tokens on a per-choice copy of the KV cache."""
        plens = [g.plen for g in chunk]
        width = max(plens)
        prefix = torch.tensor([g.items[0].ids[:p] + [0] * (width - p) for g, p in zip(chunk, plens)],
                              device=self.device)  # [G, P]
        last = sorted(set(p - 1 for p in plens))
        c, cache = self._shared_cache(chunk)  # the first c positions are already in `cache`, one row per group
        keep = torch.tensor([pos - c for pos in last])  # CPU: indexes the last layer's output on any device
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        col = {pos: k for k, pos in enumerate(last)}
        if self._head is None:
            out = self.model(input_ids=prefix[:, c:], use_cache=True, logits_to_keep=keep, **kwargs)
            first = [out.logits[g, col[p - 1]][None] for g, p in enumerate(plens)]  # G × [1, V]: position plen-1
        else:  # the head on the kept positions only, in fp32 for a half-precision model
            out = self.model.base_model(input_ids=prefix[:, c:], use_cache=True, **kwargs)
            kept = self._logits(out.last_hidden_state[:, keep])  # [G, len(keep), V]
            first = [kept[g, col[p - 1]][None] for g, p in enumerate(plens)]
        rows = [(g, s) for g, grp in enumerate(chunk) for s in grp.items]
        cache = out.cache if hasattr(out, "cache") else out.past_key_values  # transformers ≥5 / 4.x
        rest = self._suffix_logits(rows, plens, cache, width)  # N × [suffix length, V]
        for (g, s), tail in zip(rows, rest):
            logits = torch.cat([first[g], tail]) if tail is not None else first[g]  # positions plen-1 … end
            yield s, _score(logits[-len(s.cont):].float(), s.cont)

    def _shared_cache(self, chunk: list["_Group"]):
        """(c, cache of the first c prefix tokens, one row per group of `chunk`), or (0, None) when fewer
        than MIN_SHARED tokens are shared. The shared tokens are those every prompt of the call begins with
        (`self._common`), else those of this chunk's groups; their run is kept and reused by later chunks
        that begin with them."""
        first, c = chunk[0].items[0].ids, min(g.plen for g in chunk) - 1  # position c must remain to run
        held = self._shared
        if held is None or len(held[0]) > c or first[: len(held[0])] != held[0]:
            tokens = self._common or first[: min(c, _common_prefix([g.items[0] for g in chunk]))]
            if len(chunk) < 2 and not self._common or len(tokens) < MIN_SHARED:
                return 0, None
            out = self.model(input_ids=torch.tensor([tokens], device=self.device), use_cache=True,
                             logits_to_keep=1)  # [1, c]
            held = self._shared = (tokens, out.cache if hasattr(out, "cache") else out.past_key_values)
        cache = copy.deepcopy(held[1])
        cache.batch_repeat_interleave(len(chunk))  # [G, heads, c, d] per layer
        return len(held[0]), cache

    def _suffix_logits(self, rows, plens: list[int], cache, width: int) -> list[torch.Tensor | None]:
        """Logits of every choice's tokens after its group's prefix, for real (unpadded) positions only."""
        suffixes = [s.ids[plens[g]:] for g, s in rows]
        span = max(len(x) for x in suffixes)
        if span == 0:
            return [None] * len(rows)
        owner = torch.tensor([g for g, _ in rows], device=self.device)
        select_cache_rows(cache, [g for g, _ in rows])  # one cache row per choice: [N, heads, P, d], per device
        ids = torch.tensor([x + [0] * (span - len(x)) for x in suffixes], device=self.device)  # [N, S]
        plen_t = torch.tensor(plens, device=self.device)[owner]  # [N]
        # keys: the prefix row's real tokens, then the suffix (its right padding is never a query we read)
        key_mask = torch.arange(width, device=self.device)[None, :] < plen_t[:, None]
        mask = torch.cat([key_mask, torch.ones_like(ids, dtype=torch.bool)], dim=1).long()  # [N, P+S]
        pos = plen_t[:, None] + torch.arange(span, device=self.device)[None, :]  # [N, S]
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "use_cache": True,
                  self._cache_kw: cache}
        lengths = [len(x) for x in suffixes]
        if self._head is None:  # the model's own forward: logits for padded positions too
            logits = self.model(**kwargs).logits  # [N, S, V]
            return [logits[r, :n] if n else None for r, n in enumerate(lengths)]
        hidden = self.model.base_model(**kwargs).last_hidden_state  # [N, S, H]
        dev = hidden.device  # the last layer's device under device_map="auto", not necessarily self.device
        real = torch.arange(span, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]
        logits = self._logits(hidden[real])  # [T, V]: T real positions, row-major
        return [chunk if len(chunk) else None for chunk in logits.split(lengths)]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head(hidden) [..., V]. For a bf16/fp16 model the product runs in fp32 on the (half-precision)
        final hidden state: scored logits are not rounded to 8 (bf16) mantissa bits before the fp32
        log-softmax, which keeps per-choice log-likelihoods closer to an fp32 forward than lm-eval's."""
        if hidden.dtype not in (torch.bfloat16, torch.float16):
            return self._head(hidden)
        weight = self._head.weight.float()  # [V, H]; one fp32 copy per call, freed after
        bias = self._head.bias.float() if getattr(self._head, "bias", None) is not None else None
        return torch.nn.functional.linear(hidden.float(), weight, bias)

    # ---- generation ----

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        from layerprune.evaluation.generation import generate_batch  # written alongside; imported late

        return generate_batch(self.model, self.tokenizer, list(requests), self.batch_size,
                              add_bos_token=self.add_bos_token, max_length=self.max_length, progress=self.progress)


def _score(logits: torch.Tensor, cont: list[int]) -> LoglikelihoodResult:
    """Sum of fp32 log-softmax at the continuation tokens; greedy when each is the argmax. logits: [n, V]."""
    target = torch.tensor(cont, device=logits.device)
    logp = logits.gather(1, target[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)  # [n]
    return LoglikelihoodResult(logp.sum().item(), bool((logits.argmax(-1) == target).all()))


def _plain_head(model):
    """The output layer when logits are exactly `lm_head(final hidden state)`, so it may be applied to real
    positions only; None for models that scale or soft-cap logits after it (Gemma 2/3, Cohere, Granite)."""
    config = getattr(model.config, "text_config", None) or model.config
    if any(getattr(config, a, None) for a in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    head = model.get_output_embeddings()
    return head if head is not None and model.base_model is not model else None


@dataclass
class _Group:
    items: list[_Scored]
    plen: int  # shared prefix length: every item's first plen input tokens are equal


def _share_groups(requests: Sequence[LoglikelihoodRequest], scored: list[_Scored]) -> list[_Group]:
    """Group by `request.group` (else by context). The shared prefix stops one token after the earliest
    scored position, so the prefix pass only needs its last position's logits."""
    by_key: dict = {}
    for req, s in zip(requests, scored):
        key = ("g", req.group) if req.group is not None else ("c", req.context)
        by_key.setdefault(key, []).append(s)
    groups = []
    for items in by_key.values():
        plen = min(_common_prefix(items), min(len(s.ids) - len(s.cont) + 1 for s in items))
        if plen >= 1:
            groups.append(_Group(items, plen))
        else:  # nothing shared: each request alone
            groups.extend(_Group([s], len(s.ids) - len(s.cont) + 1) for s in items)
    return groups


def _common_prefix(items: list[_Scored]) -> int:
    first = items[0].ids
    n = min(len(s.ids) for s in items)
    for s in items[1:]:
        k = 0
        while k < n and s.ids[k] == first[k]:
            k += 1
        n = k
    return n


def _chunks(groups: list[_Group], batch_size: int):
    """Consecutive groups holding at most `batch_size` requests (a larger group goes alone)."""
    chunk, size = [], 0
    for g in groups:
        if chunk and size + len(g.items) > batch_size:
            yield chunk
            chunk, size = [], 0
        chunk.append(g)
        size += len(g.items)
    if chunk:
        yield chunk
