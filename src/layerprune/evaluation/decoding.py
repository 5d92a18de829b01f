"""Choosing the next token as `model.generate` does under lm-eval's call, for a whole batch on the model's device.

    settings = CheckpointSettings.of(model)                   # what generation_config.json makes generate() apply
    chooser = Chooser(settings, vocab_size)
    plan = chooser.plan(temperature=0.9, top_p=0.95, top_k=0)  # shared by every row with these parameters
    tokens = chooser.choose(logits, plans, uniforms, history)  # logits (b, V) fp32 → (b,) token ids

lm-eval 0.4.13 (`HFLM._model_generate`) calls `model.generate(input_ids, do_sample=..., temperature=..., ...)`
with the task's `generation_kwargs`; everything else comes from the checkpoint's `generation_config.json`.
So, as transformers' `_get_logits_processor` builds them and with transformers' own classes:

* greedy and sampled: `repetition_penalty`, `no_repeat_ngram_size`, `bad_words_ids`, `min_length`,
  `min_new_tokens`, `suppress_tokens`, `begin_suppress_tokens`, `sequence_bias`, `forced_eos_token_id`,
  `exponential_decay_length_penalty`, `remove_invalid_values`; a row also ends on any of the config's
  `eos_token_id`s.
* sampled only, after those: temperature, top-k, top-p (always the request's own: a request carries them
  explicitly, so they win over the checkpoint's), then the checkpoint's `min_p`, `typical_p`,
  `epsilon_cutoff`, `eta_cutoff`. Top-p is `NucleusWarper`: transformers' rule without its full-vocabulary
  sort (the one class here that is not transformers' own).

Settings `generate` would honour that this engine does not implement (beam search, classifier-free guidance,
watermarking, ...) raise a UsageError rather than being silently ignored.

The draw is inverse-CDF on the device: each row brings one uniform number per step from its own seeded
generator, so a sample depends only on its row's seed, never on which rows share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    ExponentialDecayLengthPenalty,
    ForcedEOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from layerprune.errors import UsageError

# generation_config.json settings and their "off" values; anything else set raises (not implemented here)
_UNSUPPORTED = {"num_beams": (None, 1), "num_beam_groups": (None, 1), "penalty_alpha": (None,),
                "guidance_scale": (None, 1, 1.0), "watermarking_config": (None,), "top_h": (None,),
                "forced_bos_token_id": (None,), "constraints": (None,), "force_words_ids": (None,)}
# processors that only look at which ids a row holds, not at their order or count: safe on padded histories
_ORDER_FREE = (RepetitionPenaltyLogitsProcessor, SuppressTokensLogitsProcessor)


@dataclass(frozen=True)
class CheckpointSettings:
    """The checkpoint's generation settings that apply under lm-eval's `generate` call (see module doc)."""

    eos_ids: tuple[int, ...] = ()
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    min_length: int | None = None
    min_new_tokens: int | None = None
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    sequence_bias: tuple | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    exponential_decay_length_penalty: tuple | None = None
    remove_invalid_values: bool | None = None
    min_p: float | None = None
    typical_p: float | None = None
    epsilon_cutoff: float | None = None
    eta_cutoff: float | None = None
    max_length: int | None = field(default=None, compare=False)  # only for forced_eos_token_id

    @classmethod
    def of(cls, model, tokenizer=None, strict: bool = True) -> "CheckpointSettings":
        """From `model.generation_config` (transformers loads generation_config.json into it)."""
        return cls.from_config(getattr(model, "generation_config", None), tokenizer, strict)

    @classmethod
    def from_config(cls, cfg: GenerationConfig | None, tokenizer=None, strict: bool = True) -> "CheckpointSettings":
        """From a `GenerationConfig` (e.g. `GenerationConfig.from_pretrained(model_dir)` for another engine). EOS
        ids are the config's, plus the tokenizer's EOS (a row ends on it). `strict`: unsupported settings raise."""
        cfg = cfg or GenerationConfig()
        bad = [k for k, off in _UNSUPPORTED.items() if getattr(cfg, k, None) not in off]
        if bad and strict:
            raise UsageError(f"generation_config.json sets {', '.join(f'{k}={getattr(cfg, k)!r}' for k in bad)}, "
                             "which layerprune's HF engine does not implement; remove it from the checkpoint's "
                             "generation_config.json")
        eos = cfg.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)

        def tup(x):
            return None if x is None else tuple(tup(v) if isinstance(v, (list, tuple)) else v for v in x)

        typical = cfg.typical_p if cfg.typical_p is not None and cfg.typical_p < 1.0 else None
        return cls(
            eos_ids=tuple(eos),
            repetition_penalty=cfg.repetition_penalty if cfg.repetition_penalty not in (None, 1.0) else None,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size or None,
            bad_words_ids=tup(cfg.bad_words_ids), min_length=cfg.min_length or None,
            min_new_tokens=cfg.min_new_tokens or None, suppress_tokens=tup(cfg.suppress_tokens),
            begin_suppress_tokens=tup(cfg.begin_suppress_tokens),
            sequence_bias=tup(cfg.sequence_bias) if isinstance(cfg.sequence_bias, list) else (
                tuple(cfg.sequence_bias.items()) if cfg.sequence_bias else None),
            forced_eos_token_id=tup(cfg.forced_eos_token_id) if isinstance(cfg.forced_eos_token_id, list)
            else cfg.forced_eos_token_id,
            exponential_decay_length_penalty=tup(cfg.exponential_decay_length_penalty),
            remove_invalid_values=cfg.remove_invalid_values or None,
            min_p=cfg.min_p, typical_p=typical,
            epsilon_cutoff=cfg.epsilon_cutoff if cfg.epsilon_cutoff and 0 < cfg.epsilon_cutoff < 1 else None,
            eta_cutoff=cfg.eta_cutoff if cfg.eta_cutoff and 0 < cfg.eta_cutoff < 1 else None,
            max_length=cfg.max_length,
        )

    def record(self) -> dict:
        """The settings in effect, for results.json: only those set (EOS ids always)."""
        out = {"eos_token_ids": list(self.eos_ids)}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name not in ("eos_ids", "max_length") and value is not None:
                out[name] = value
        out["sampling_from_request"] = ["temperature", "top_p", "top_k"]
        return out

    def processors(self, prompt_len: int) -> LogitsProcessorList:
        """Greedy and sampled: transformers' processors in `_get_logits_processor`'s order."""
        procs = LogitsProcessorList()
        eos = list(self.eos_ids)
        if self.sequence_bias:
            procs.append(SequenceBiasLogitsProcessor(sequence_bias=_as_bias(self.sequence_bias)))
        if self.repetition_penalty is not None:
            procs.append(RepetitionPenaltyLogitsProcessor(float(self.repetition_penalty)))
        if self.no_repeat_ngram_size:
            procs.append(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        if self.bad_words_ids:
            procs.append(NoBadWordsLogitsProcessor([list(w) for w in self.bad_words_ids], eos))
        if self.min_length and eos:
            procs.append(MinLengthLogitsProcessor(self.min_length, eos))
        if self.min_new_tokens and eos:
            procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, self.min_new_tokens, eos))
        if self.forced_eos_token_id is not None and self.max_length:
            procs.append(ForcedEOSTokenLogitsProcessor(self.max_length, self.forced_eos_token_id))
        if self.remove_invalid_values:
            procs.append(InfNanRemoveLogitsProcessor())
        if self.exponential_decay_length_penalty:
            start, factor = self.exponential_decay_length_penalty
            procs.append(ExponentialDecayLengthPenalty((start, factor), eos, prompt_len))
        if self.suppress_tokens:
            procs.append(SuppressTokensLogitsProcessor(list(self.suppress_tokens)))
        if self.begin_suppress_tokens:
            procs.append(SuppressTokensAtBeginLogitsProcessor(list(self.begin_suppress_tokens), prompt_len))
        return procs

    def warpers(self, temperature: float, top_p: float, top_k: int) -> LogitsProcessorList:
        """Sampled rows only, after `processors`: the request's temperature/top-k/top-p, then the checkpoint's."""
        warps = LogitsProcessorList()
        if temperature != 1.0:
            warps.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warps.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warps.append(NucleusWarper(top_p))
        if self.min_p is not None:
            warps.append(MinPLogitsWarper(self.min_p))
        if self.typical_p is not None:
            warps.append(TypicalLogitsWarper(self.typical_p))
        if self.epsilon_cutoff is not None:
            warps.append(EpsilonLogitsWarper(self.epsilon_cutoff))
        if self.eta_cutoff is not None:
            warps.append(EtaLogitsWarper(self.eta_cutoff))
        return warps

    def prompt_dependent(self) -> bool:
        """Whether the processors depend on a row's prompt length (then each row builds its own)."""
        return bool(self.min_new_tokens or self.exponential_decay_length_penalty or self.begin_suppress_tokens)


class NucleusWarper(LogitsProcessor):
    """Top-p with transformers' `TopPLogitsWarper` rule (drop the ids whose ascending cumulative probability,
    their own included, is <= 1 - top_p; the top id always stays), without its full-vocabulary sort.

    Why: that sort is the largest single cost of a sampled decode step on a CPU (16 × 32,768 scores: 25 ms,
    against 2 ms for a top-256 and 6 ms for a top-4096). The nucleus is looked for among each row's most
    likely ids, `candidates[0]` of them, then `candidates[1]` for the rows whose nucleus reached further, ...;
    a row whose nucleus is larger still takes transformers' own warper. The masks are transformers' except
    where a cumulative sum lies within float rounding (~1e-7) of 1 - top_p: the sums run in another order."""

    def __init__(self, top_p: float, candidates: tuple[int, ...] = (256, 4096)):
        self.top_p, self.candidates = top_p, candidates
        self._full = TopPLogitsWarper(top_p)

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(scores, -float("inf"))  # (n, V): only the nucleus will survive
        probs = scores.softmax(dim=-1)  # (n, V)
        rows = torch.arange(scores.shape[0], device=scores.device)  # rows still looking for their nucleus
        to_sort = []  # rows whose nucleus cannot fit among the next candidates: transformers' warper
        for k, k_next in zip(self.candidates, self.candidates[1:] + (scores.shape[-1],)):
            top, ids = probs[rows].topk(min(k, scores.shape[-1]), dim=-1)  # (r, k) descending
            # ascending cumulative probability at each candidate, summed from the small end as transformers
            # does (the mass below the candidates, then the candidates upwards): no 1 - (sum of the top)
            below = probs[rows].scatter(1, ids, 0.0).sum(dim=-1, keepdim=True)  # (r, 1)
            keep = below + top.flip(-1).cumsum(dim=-1).flip(-1) > 1 - self.top_p  # (r, k)
            keep[:, 0] = True
            done = ~keep[:, -1]  # (r,) the k-th id dropped: so is every id below it
            kept = scores[rows[done]].gather(1, ids[done]).masked_fill(~keep[done], -float("inf"))  # (d, k)
            out[rows[done]] = out[rows[done]].scatter_(1, ids[done], kept)
            rows, top = rows[~done], top[~done]
            # k_next candidates hold at most this much (no id below the k-th weighs more than it); 0.999: margin
            # for float32 sums. A row that cannot reach top_p there goes straight to the sort.
            reach = top.sum(dim=-1) + top[:, -1] * (k_next - top.shape[-1])  # (r,)
            to_sort.append(rows[reach < 0.999 * self.top_p])
            rows = rows[reach >= 0.999 * self.top_p]
        rows = torch.cat(to_sort + [rows])
        if len(rows):
            out[rows] = self._full(None, scores[rows])
        return out


def _as_bias(items) -> dict | list:
    return {tuple(k): v for k, v in items} if items and isinstance(items[0][0], tuple) else [list(x) for x in items]


@dataclass(eq=False)
class Plan:
    """How one group of rows picks tokens: processors (greedy and sampled), warpers (sampled only)."""

    processors: LogitsProcessorList
    warpers: LogitsProcessorList | None  # None → greedy
    order_free: bool  # processors may see a history padded with repeated ids


class Chooser:
    """Builds and shares `Plan`s, and picks the next token of every row at once."""

    def __init__(self, settings: CheckpointSettings):
        self.settings = settings
        self._plans: dict = {}

    def plan(self, temperature: float, top_p: float, top_k: int, prompt_len: int) -> Plan:
        per_prompt = prompt_len if self.settings.prompt_dependent() else None
        key = (temperature, top_p, top_k, per_prompt)
        if key not in self._plans:
            procs = self.settings.processors(prompt_len)
            warps = self.settings.warpers(temperature, top_p, top_k) if temperature > 0 else None
            self._plans[key] = Plan(procs, warps, all(isinstance(p, _ORDER_FREE) for p in procs))
        return self._plans[key]

    def choose(self, logits: torch.Tensor, plans: list[Plan], uniforms: torch.Tensor, history) -> torch.Tensor:
        """Next token per row. logits: (b, V) fp32; uniforms: (b,) in [0, 1) on logits' device, used by
        sampled rows; history(rows, exact) → (len(rows), L) long ids of those rows (prompt + generated;
        with exact=False right-padded with a repeat of the row's own first id, for order-free processors).
        Returns (b,) long on logits' device."""
        chosen = logits.argmax(dim=-1)  # (b,) greedy rows without processors: the fp32 argmax as generate
        groups: dict[int, list[int]] = {}
        for j, plan in enumerate(plans):
            if plan.processors or plan.warpers is not None:
                groups.setdefault(id(plan), []).append(j)
        for rows in groups.values():
            plan = plans[rows[0]]
            index = torch.tensor(rows, device=logits.device)
            scores = logits.index_select(0, index)  # (n, V)
            if plan.processors:
                if plan.order_free:
                    scores = plan.processors(history(rows, False), scores)
                else:  # order-sensitive processors see each row's exact ids
                    scores = torch.cat([plan.processors(history([r], True), scores[k : k + 1])
                                        for k, r in enumerate(rows)])
            if plan.warpers is None:
                chosen[index] = scores.argmax(dim=-1)
                continue
            scores = plan.warpers(None, scores)
            chosen[index] = _draw(scores, uniforms.index_select(0, index))
        return chosen


def _draw(scores: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row: the first id whose cumulative probability exceeds u·total. scores: (n, V);
    u: (n,). Ids filtered to -inf add no mass, so the strict `right=True` search never lands on one; `last`
    (the id where the total is reached, itself of positive mass) catches a product rounded up to the total."""
    cdf = scores.softmax(dim=-1).cumsum(dim=-1)  # (n, V)
    total = cdf[:, -1:]  # (n, 1)
    ids = torch.searchsorted(cdf, uniforms.unsqueeze(1) * total, right=True).squeeze(1)  # (n,)
    last = (cdf < total).sum(dim=-1)  # (n,)
    return torch.minimum(ids, last)
