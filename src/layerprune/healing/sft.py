"""Heal a pruned model with SFT on TRL's SFTTrainer (+ PEFT), the seed paper's recipe by default.

    record = heal("pruned/", "sgr.jsonl", "healed/", HealConfig(mode="qlora"))

Arms (`mode`): ``lora`` and ``qlora`` (LoRA on a 4-bit NF4 base) with completion-only loss; ``full``;
``partial`` (Lu et al.: train only the head, the final norm and the last k layers); ``lm`` (LoRA with loss on
every token, Gromov-style healing). Training examples and truncation: `layerprune.healing.chat`.

Outputs in `out`: a standalone HF checkpoint (LoRA merged into the base; for QLoRA into its dequantised NF4
weights, see `QLORA_MERGE`), ``adapter/`` for the
LoRA arms, the input's ``pruning.json``, ``healing.json`` (provenance) and ``loss.jsonl``. Trainer
checkpoints live in ``<out>.work`` next to `out`; a rerun after an interruption resumes from the last one and
the work dir is removed once `out` is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from layerprune.errors import UsageError
from layerprune.healing import process_state
from layerprune.families import decoder_layers, final_norm, spec_for
from layerprune.healing.chat import build_dataset, fit_to_length, read_rows
from layerprune.provenance import (atomic_dir, check_out_dir, fingerprint_source, now, read_json, versions, write_json,
                                   write_text)

MODES = ("lora", "qlora", "full", "partial", "lm")
PEFT_MODES = ("lora", "qlora", "lm")
WORK_SUFFIX = ".work"
RUN_FILE = "run.json"


@dataclass
class HealConfig:
    """Defaults = the seed paper's recipe (methods.md §1.5): QLoRA/LoRA r=64 α=16 dropout 0.05, lr 2e-4
    constant with 50 warmup steps, AdamW β=(0.9, 0.99), wd 1e-4, clip 1.0, batch 4 × accum 2, 1 epoch."""

    mode: str = "lora"
    response_field: str = "response"
    lr: float | None = None  # None: 2e-4 for the LoRA arms, 2e-5 (TRL's default) for full/partial
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 2
    max_length: int = 8192
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    partial_layers: int = 3
    seed: int = 42
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    gradient_checkpointing: bool = True
    dtype: str | None = None  # weights dtype for training (default: checkpoint's; float32 for full/partial)
    process_group_timeout_s: int = 7200  # collectives under `accelerate launch` (torch's default is 10 minutes)
    keep_truncated: bool = False  # train on SGR responses cut at max_new_tokens too (default: skip them)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.mode in PEFT_MODES else 2e-5)


def heal(model: str, data: str | Path, out: str | Path, config: HealConfig | None = None, overwrite: bool = False,
         callbacks: tuple = ()) -> dict:
    """Train `model` on `data` as `config` says and write the healed checkpoint to `out`; return healing.json."""
    config = config or HealConfig()
    _check_config(config)
    out = check_out_dir(out, overwrite)
    state = process_state(config.process_group_timeout_s)  # under `accelerate launch`: rank and device
    data_stats: dict = {}
    rows = read_rows(data, config.response_field, lm=config.mode == "lm", keep_truncated=config.keep_truncated,
                     stats=data_stats)
    net, tok = _load(model, config, state)
    fingerprint = fingerprint_source(model, net)  # before training changes the weights
    work = out.with_name(out.name + WORK_SUFFIX)
    _claim_work_dir(work, _run_signature(model, data, config), overwrite, state)
    try:
        trainer = build_trainer(net, tok, rows, config, work, callbacks)
        lengths = fit_to_length(trainer, config.max_length, verbose=state.is_main_process)
        resume = _last_checkpoint(work)
        result = trainer.train(resume_from_checkpoint=resume)
    except BaseException:
        if state.is_main_process and _last_checkpoint(work) is None:
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from: leave no trace
        raise
    trainer.save_model(str(work / "final"))  # every rank: FSDP/ZeRO-3 gather shards collectively
    record = _record(model, fingerprint, data, config, trainer, result, rows, {**data_stats, **lengths}, resume,
                     state)
    return publish(model, trainer, record, config, tok, work, out, overwrite, state)


def publish(model: str, trainer, record: dict, c: HealConfig, tok, work: Path, out: Path, overwrite: bool,
            state) -> dict:
    """Rank 0 writes the healed checkpoint (QLoRA: merged into the dequantised NF4 weights) and its records from
    the model saved in `work/final`, atomically, then drops the work dir; every rank waits for it."""
    quantized = _quantized_linears(trainer.model) if c.mode == "qlora" else None
    if state.is_main_process:
        with atomic_dir(out, overwrite) as tmp:
            _write_model(model, work / "final", tmp, c, tok, quantized)
            _write_records(model, trainer, record, tmp)
        shutil.rmtree(work, ignore_errors=True)
    state.wait_for_everyone()
    return record


def _check_config(c: HealConfig) -> None:
    if c.mode not in MODES:
        raise UsageError(f"--mode {c.mode!r} is unknown; use one of {', '.join(MODES)}")
    if c.response_field not in ("response", "original"):
        raise UsageError(f"--response-field {c.response_field!r}: use response (SGR) or original")
    if c.mode == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UsageError("--mode qlora needs bitsandbytes (pip install bitsandbytes) or use --mode lora") from None
    if c.partial_layers < 0 or c.max_length < 2 or c.batch_size < 1 or c.grad_accum < 1:
        raise UsageError("--partial-layers must be >= 0, --max-length >= 2, batch size and accumulation >= 1")


def _load(model: str, c: HealConfig, state):
    """(model, tokenizer) on this process's device, prepared for the arm (quantized, frozen, ...)."""
    from layerprune.loading import load_model, load_tokenizer

    device = str(state.device)
    if c.mode == "qlora":
        net = _load_4bit(model, state)
    else:
        dtype = c.dtype or ("float32" if c.mode in ("full", "partial") else None)
        net, _ = load_model(model, dtype=dtype, device=device, tokenizer=False)
    tok = load_tokenizer(model)
    if tok is None:
        raise UsageError(f"{model} has no tokenizer; save the tokenizer next to the model")
    if c.mode == "partial":
        _freeze_for_partial(net, c.partial_layers)
    net.train()
    return net, tok


def qlora_compute_dtype(device) -> str:
    """The dtype 4-bit layers compute in: bf16 where the GPU supports it (Ampere on), else fp16 on older GPUs,
    fp32 on CPU (bitsandbytes' CPU kernels; bf16/fp16 matmuls there are slow or missing)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def _load_4bit(model: str, state):
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from layerprune.loading import load_config

    spec_for(load_config(model))
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=getattr(torch, qlora_compute_dtype(state.device)))
    try:
        net = AutoModelForCausalLM.from_pretrained(model, quantization_config=quant,
                                                   device_map={"": str(state.device)})
    except Exception as err:  # bitsandbytes without a kernel for this device, or a broken install
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--mode qlora: bitsandbytes cannot load 4-bit weights here ({first}); "
                         "use --mode lora") from None
    # fp32 norms/head and input grads, as QLoRA recommends; checkpointing is left to the trainer's setting
    return prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)


def _freeze_for_partial(net, k: int) -> None:
    """Lu et al.'s partial-layer finetuning: only the output head, the final norm and the last k layers train.
    With tied embeddings the head *is* the input embedding, so that matrix trains too (healing.json says so)."""
    layers = decoder_layers(net)
    if k > len(layers):
        raise UsageError(f"--partial-layers {k} exceeds the model's {len(layers)} layers; pass at most {len(layers)}")
    net.requires_grad_(False)
    for module in [net.get_output_embeddings(), final_norm(net), *list(layers)[len(layers) - k :]]:
        module.requires_grad_(True)


def lora_config(net, c: HealConfig):
    """PEFT LoraConfig for this model: the family's projections inside its decoder layers, and its fused
    MoE expert weights where the model has them."""
    import re

    from peft import LoraConfig

    spec = spec_for(net.config)
    names = spec.lora_targets
    pattern = rf"{re.escape(spec.layers)}\.\d+\..*\b({'|'.join(names)})"
    if not any(re.fullmatch(pattern, n) for n, _ in net.named_modules()):
        raise UsageError(f"no LoRA target ({', '.join(names)}) found in {net.config.model_type} layers; "
                         "set the family's lora_targets in layerprune/families.py")
    experts = expert_parameters(net)
    # PEFT has no dropout for adapted parameters; the config says 0 and `_linear_dropout` restores the
    # requested dropout on the Linear targets, so only the experts go without.
    return LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0 if experts else c.lora_dropout,
                      target_modules=pattern, target_parameters=experts or None, bias="none", task_type="CAUSAL_LM")


def expert_parameters(net) -> list[str]:
    """The family's fused-MoE expert parameters (names relative to a layer) that `net` has (before or after
    PEFT wrapped them: its wrappers insert `base_layer` into the names)."""
    names = {n.replace(".base_layer", "") for n, _ in net.named_parameters()}
    return [p for p in spec_for(net.config).lora_parameters if any(n.endswith("." + p) for n in names)]


def _linear_dropout(model, p: float) -> None:
    """Dropout `p` on the inputs of every LoRA-adapted Linear module of a PEFT model."""
    import torch
    from peft.tuners.lora import Linear

    for module in model.modules():
        if isinstance(module, Linear):
            for name in module.lora_dropout:
                module.lora_dropout[name] = torch.nn.Dropout(p)


def build_trainer(net, tok, rows, c: HealConfig, work: Path, callbacks=()):
    """SFTTrainer for the arm, data already tokenized and masked by TRL (`trainer.train_dataset`)."""
    import torch
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTConfig, SFTTrainer

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    args = SFTConfig(
        output_dir=str(work), per_device_train_batch_size=c.batch_size, gradient_accumulation_steps=c.grad_accum,
        learning_rate=c.learning_rate(), lr_scheduler_type="constant_with_warmup", warmup_steps=c.warmup_steps,
        adam_beta1=c.adam_betas[0], adam_beta2=c.adam_betas[1], weight_decay=c.weight_decay,
        max_grad_norm=c.max_grad_norm, num_train_epochs=c.epochs, max_steps=c.max_steps, seed=c.seed,
        logging_steps=c.logging_steps, save_steps=c.save_steps, save_total_limit=c.save_total_limit,
        bf16=bf16, fp16=False, gradient_checkpointing=c.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, report_to="none",
        max_length=None,  # truncation is ours (fit_to_length), so dropped/truncated rows can be counted
        completion_only_loss=c.mode != "lm", dataset_num_proc=None, use_cpu=not torch.cuda.is_available(),
        ddp_timeout=c.process_group_timeout_s,
        # batches of similar lengths (transformers' LengthGroupedSampler: random mega-batches sorted by
        # length), so padding does not double the tokens computed; the loss is TRL's fused LM head (chunked
        # log-probs over the vocabulary, no [B, T, V] logits), which SFTTrainer installs by itself
        train_sampling_strategy="group_by_length",
    )
    peft = lora_config(net, c) if c.mode in PEFT_MODES else None
    trainer = SFTTrainer(model=net, args=args, train_dataset=build_dataset(tok, rows, lm=c.mode == "lm"),
                         processing_class=tok, peft_config=peft, callbacks=list(callbacks))
    if peft is not None and peft.target_parameters and c.lora_dropout > 0:
        _linear_dropout(trainer.model, c.lora_dropout)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_loss_bar())
    return trainer


def _loss_bar():
    """Trainer's progress bar with the latest loss as its postfix, instead of a printed dict per log."""
    from transformers.trainer_callback import ProgressCallback

    class LossBar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}")

    return LossBar()


def _run_signature(model: str, data, c: HealConfig) -> dict:
    """What must match for a work dir's checkpoints to be resumed (max_steps may grow between runs)."""
    hp = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("max_steps", "save_steps", "logging_steps")}
    return {"model": str(model), "data_sha256": file_sha256(data), "config": hp}


def _claim_work_dir(work: Path, signature: dict, overwrite: bool, state) -> None:
    if state.is_main_process:
        run = work / RUN_FILE
        if run.is_file() and json.loads(json.dumps(signature)) != read_json(run):
            if not overwrite:
                raise UsageError(f"{work} holds checkpoints of a different run (model, data or settings); "
                                 "pass --overwrite to discard them or delete the directory")
            shutil.rmtree(work)
        write_json(run, signature)
    state.wait_for_everyone()


def _last_checkpoint(work: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(work)) if work.is_dir() else None


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


QLORA_MERGE = ("adapter merged into the dequantised NF4 weights the adapter was trained on: each 4-bit layer's "
               "weight is dequantize(quantize_nf4(W)) (bitsandbytes, blocksize 64, double quant), so the merged "
               "model computes what base-in-4-bit + adapter computed, up to the compute dtype's rounding")


def _quantized_linears(peft_model) -> list[str]:
    """Names (as in the unwrapped base model) of the layers bitsandbytes holds in 4 bits."""
    import bitsandbytes as bnb

    base = peft_model.get_base_model()
    return sorted(n.replace(".base_layer", "") for n, m in base.named_modules() if isinstance(m, bnb.nn.Linear4bit))


def _dequantised_nf4(base, names: list[str]) -> None:
    """Replace each named Linear's weight by its NF4 round trip, exactly as the 4-bit load quantised it."""
    import bitsandbytes.functional as F
    import torch

    modules = dict(base.named_modules())
    with torch.no_grad():
        for name in names:
            w = modules[name].weight
            q, state = F.quantize_4bit(w.data, blocksize=64, quant_type="nf4", compress_statistics=True)
            w.copy_(F.dequantize_4bit(q, state).to(w.dtype))


def _write_model(model: str, final: Path, tmp: Path, c: HealConfig, tok, quantized: list[str] | None = None) -> None:
    """Standalone checkpoint in tmp: the adapter merged into a fresh load of the base model (its own dtype);
    for QLoRA into the base's dequantised NF4 weights (QLORA_MERGE), so the saved model is the trained one.
    Full/partial weights are moved as saved."""
    if c.mode not in PEFT_MODES:
        for f in final.iterdir():
            shutil.move(str(f), tmp / f.name)
        return
    from peft import PeftModel

    from layerprune.loading import load_model

    shutil.copytree(final, tmp / "adapter")
    base, _ = load_model(model, device="cpu", tokenizer=False)
    if quantized:
        _dequantised_nf4(base, quantized)
    merged = PeftModel.from_pretrained(base, str(tmp / "adapter")).merge_and_unload()
    merged.save_pretrained(tmp)
    tok.save_pretrained(tmp)


def _write_records(model: str, trainer, record: dict, tmp: Path) -> None:
    from layerprune.pruning import PRUNING_FILE

    src = Path(model).expanduser() / PRUNING_FILE
    if src.is_file():
        shutil.copy2(src, tmp / PRUNING_FILE)  # the healed model has the same layers as its input
    write_json(tmp / "healing.json", record)
    losses = [{k: e[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in e}
              for e in trainer.state.log_history if "loss" in e]
    write_text(tmp / "loss.jsonl", "".join(json.dumps(e) + "\n" for e in losses))


def _record(model, fingerprint, data, c: HealConfig, trainer, result, rows, lengths, resume, state) -> dict:
    import peft
    import trl

    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    hp = {**dataclasses.asdict(c), "adam_betas": list(c.adam_betas), "learning_rate": c.learning_rate(),
          "effective_batch": c.batch_size * c.grad_accum * state.num_processes,
          "batching": "group_by_length", "loss": "TRL fused LM head (vocabulary tiles; no [B, T, V] logits)"}
    if c.mode == "qlora":
        hp["qlora_compute_dtype"] = qlora_compute_dtype(state.device)
        hp["merge"] = QLORA_MERGE
    if c.mode in PEFT_MODES:
        config = trainer.model.peft_config["default"]
        modules = config.target_modules  # the regex; PEFT may hand back a set of names
        hp["lora_target_modules"] = modules if isinstance(modules, str) else sorted(modules)
        experts = expert_parameters(trainer.model.get_base_model())
        if experts:  # fused MoE experts: adapted, without dropout (PEFT has none for them)
            hp["lora_target_parameters"] = sorted(experts)
    return {
        "format": "layerprune.healing/1",
        "model": {"path": str(model), "fingerprint": fingerprint},
        "data": {"path": str(data), "sha256": file_sha256(data), "rows": len(rows), **lengths,
                 "response_field": c.response_field},
        "arm": c.mode,
        "hyperparameters": hp,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "tied_embeddings": bool(getattr(trainer.model.config, "tie_word_embeddings", False)),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "final_loss": logged[-1] if logged else None,
        "mean_train_loss": result.training_loss,
        "resumed_from": Path(resume).name if resume else None,
        "world_size": state.num_processes,
        "seed": c.seed,
        "versions": {**versions(), "trl": trl.__version__, "peft": peft.__version__},
        "created": now(),
    }
