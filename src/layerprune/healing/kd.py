"""Heal a pruned model by logit distillation from the unpruned one, on TRL's generalized KD trainer.

    record = distill("pruned/", "sgr.jsonl", "healed/", HealConfig(max_steps=200), KDConfig(student="lora"))

Minitron (arXiv 2407.14679, 2408.11796) heals depth-pruned Llama-3.1 with logit-only KL from the unpruned
teacher; this arm does that on the same prompt/response rows as SFT (SGR or original responses), with the loss
on response tokens only. `trl.experimental.gkd.GKDTrainer` computes the generalized Jensen-Shannon divergence
(Agarwal et al., arXiv 2306.13649): ``beta`` 0 = forward KL(teacher ‖ student) … 1 = reverse KL; ``lmbda`` is
the share of batches the student answers itself (0 = off-policy on the given responses, 1 = on-policy).
Defaults are Minitron's: forward KL, temperature 1, off-policy. The student is a LoRA, QLoRA or full model
with the SFT recipe's hyperparameters (`HealConfig`); the teacher is frozen in eval mode.

One extension of TRL: its trainer uses ``temperature`` only to sample on-policy answers, so `_TemperedGKD`
also divides both models' logits by it in the divergence (a no-op at the default 1).

Rows are tokenized exactly as SFT tokenizes them (TRL's SFT preparation, `fit_to_length`), so a response
token is trained under KD iff it is under SFT; TRL's ChatML collator then rebuilds the prompt/response split
from the rows' ``completion_mask``. Outputs in `out` are those of `heal` (merged checkpoint, ``adapter/``,
``pruning.json``, ``healing.json`` with the teacher's fingerprint and the KD settings, ``loss.jsonl``).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from layerprune.errors import UsageError
from layerprune.healing import process_state, sft
from layerprune.healing.chat import build_dataset, fit_to_length, read_rows
from layerprune.provenance import check_out_dir, fingerprint_source, read_json

STUDENTS = ("lora", "qlora", "full")


@dataclass
class KDConfig:
    """Distillation settings; training hyperparameters come from `HealConfig` (its `mode` is ignored)."""

    teacher: str | None = None  # None: the source model recorded in the student's pruning.json
    student: str = "lora"  # lora | qlora | full: what of the student trains
    lmbda: float = 0.0  # share of on-policy batches (student-generated responses)
    beta: float = 0.0  # 0 forward KL, 1 reverse KL, between: generalized JSD
    temperature: float = 1.0  # divides both models' logits in the loss; on-policy sampling temperature
    max_new_tokens: int = 128  # on-policy answer length (lmbda > 0)


def distill(model: str, data: str | Path, out: str | Path, config: sft.HealConfig | None = None,
            kd: KDConfig | None = None, overwrite: bool = False, callbacks: tuple = ()) -> dict:
    """Distil `teacher` into the pruned `model` on `data`'s rows; write the healed checkpoint to `out` and
    return healing.json."""
    kd = kd or KDConfig()
    _check_kd(kd)
    config = dataclasses.replace(config or sft.HealConfig(), mode=kd.student)
    sft._check_config(config)
    out = check_out_dir(out, overwrite)
    teacher_path, teacher_from = resolve_teacher(model, kd.teacher)
    check_same_tokenizer(model, teacher_path)
    state = process_state(config.process_group_timeout_s)
    stats: dict = {}  # like SFT: responses cut at max_new_tokens are skipped unless keep_truncated
    rows = read_rows(data, config.response_field, keep_truncated=config.keep_truncated, stats=stats)
    net, tok = sft._load(model, config, state)
    teacher = _load_teacher(teacher_path, state)
    fingerprint = fingerprint_source(model, net)
    teacher_record = {"path": teacher_path, "from": teacher_from,
                      "fingerprint": fingerprint_source(teacher_path, teacher)}
    work = out.with_name(out.name + sft.WORK_SUFFIX)
    signature = sft._run_signature(model, data, config) | {"kd": dataclasses.asdict(kd), "teacher": teacher_record}
    sft._claim_work_dir(work, signature, overwrite, state)
    try:
        trainer = build_kd_trainer(net, teacher, tok, rows, config, kd, work, callbacks)
        lengths = fit_to_length(trainer, config.max_length, verbose=state.is_main_process)
        trainer.train_dataset = with_completion_mask(trainer.train_dataset)
        resume = sft._last_checkpoint(work)
        result = trainer.train(resume_from_checkpoint=resume)
    except BaseException:
        if state.is_main_process and sft._last_checkpoint(work) is None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    trainer.save_model(str(work / "final"))  # every rank: FSDP/ZeRO-3 gather shards collectively
    record = sft._record(model, fingerprint, data, config, trainer, result, rows, {**stats, **lengths}, resume,
                         state)
    record.update(arm="kd", student=kd.student, teacher=teacher_record, kd=_kd_record(kd))
    return sft.publish(model, trainer, record, config, tok, work, out, overwrite, state)


def _check_kd(kd: KDConfig) -> None:
    if kd.student not in STUDENTS:
        raise UsageError(f"--student {kd.student!r} is unknown; use one of {', '.join(STUDENTS)}")
    if not (0 <= kd.lmbda <= 1 and 0 <= kd.beta <= 1):
        raise UsageError(f"--kd-lmbda {kd.lmbda} and --kd-beta {kd.beta} must both lie in [0, 1]")
    if kd.temperature <= 0 or kd.max_new_tokens < 1:
        raise UsageError("--kd-temperature must be > 0 and --kd-max-new-tokens >= 1")


def resolve_teacher(model: str, teacher: str | None) -> tuple[str, str]:
    """(teacher path or id, where it came from): `teacher`, else the unpruned source in pruning.json (the
    first model of a chain of prunings)."""
    from layerprune.loading import load_config
    from layerprune.pruning import PRUNING_FILE

    if teacher is None:
        record_path = Path(model).expanduser() / PRUNING_FILE
        if not record_path.is_file():
            raise UsageError(f"--mode kd needs a teacher: {model} has no {PRUNING_FILE} naming its source; "
                             "pass --teacher MODEL")
        record = read_json(record_path)
        while "parent" in record:  # pruned twice: the first model is the unpruned one
            record = record["parent"]
        teacher = record.get("source", {}).get("model")
        if not teacher:
            raise UsageError(f"{record_path} names no source model; pass --teacher MODEL")
        origin = PRUNING_FILE
    else:
        origin = "--teacher"
    try:
        load_config(teacher)
    except UsageError as err:
        raise UsageError(f"teacher {teacher} (from {origin}) cannot be loaded ({err}); pass --teacher MODEL") from None
    return str(teacher), origin


def check_same_tokenizer(student: str, teacher: str) -> None:
    """Token-level KD compares distributions over one vocabulary: both tokenizers must map the same strings
    to the same ids, and both heads must have the same size."""
    from layerprune.loading import load_config, load_tokenizer

    s_tok, t_tok = load_tokenizer(student), load_tokenizer(teacher)
    if s_tok is None or t_tok is None:
        raise UsageError(f"--mode kd: {student if s_tok is None else teacher} has no tokenizer; save the tokenizer "
                         "next to the model")
    s_vocab = load_config(student).get_text_config().vocab_size
    t_vocab = load_config(teacher).get_text_config().vocab_size
    if s_tok.get_vocab() != t_tok.get_vocab() or s_vocab != t_vocab:
        raise UsageError(f"--mode kd: teacher {teacher} and student {student} do not share a tokenizer "
                         f"(vocabularies {len(t_tok)} vs {len(s_tok)} tokens, heads {t_vocab} vs {s_vocab}); "
                         "use the student's own unpruned source as --teacher")


def _load_teacher(path: str, state):
    from layerprune.loading import load_model

    teacher, _ = load_model(path, device=str(state.device), tokenizer=False)
    teacher.requires_grad_(False)
    return teacher.eval()


def _tempered_gkd():
    from trl.experimental.gkd import GKDTrainer

    class _TemperedGKD(GKDTrainer):
        """GKDTrainer whose divergence uses `temperature` (TRL 1.16 uses it only for sampling)."""

        def generalized_jsd_loss(self, student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0,
                                 **kwargs):
            return GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, labels=labels, beta=beta,
                                                   temperature=self.temperature, **kwargs)

    return _TemperedGKD


def build_kd_trainer(net, teacher, tok, rows, c: sft.HealConfig, kd: KDConfig, work: Path, callbacks=()):
    """GKDTrainer with SFT's recipe and tokenization: rows prepared by TRL's SFT pipeline (prompt masked)."""
    import torch
    from transformers.trainer_callback import ProgressCallback
    from trl.experimental.gkd import GKDConfig
    from trl.experimental.utils import DataCollatorForChatML

    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # the collator pads (left) with it; padded positions are masked
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    args = GKDConfig(
        output_dir=str(work), per_device_train_batch_size=c.batch_size, gradient_accumulation_steps=c.grad_accum,
        learning_rate=c.learning_rate(), lr_scheduler_type="constant_with_warmup", warmup_steps=c.warmup_steps,
        adam_beta1=c.adam_betas[0], adam_beta2=c.adam_betas[1], weight_decay=c.weight_decay,
        max_grad_norm=c.max_grad_norm, num_train_epochs=c.epochs, max_steps=c.max_steps, seed=c.seed,
        logging_steps=c.logging_steps, save_steps=c.save_steps, save_total_limit=c.save_total_limit,
        bf16=bf16, fp16=False, gradient_checkpointing=c.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, report_to="none", max_length=None,
        completion_only_loss=True, dataset_num_proc=None, use_cpu=not torch.cuda.is_available(),
        lmbda=kd.lmbda, beta=kd.beta, temperature=kd.temperature, max_new_tokens=kd.max_new_tokens,
        disable_dropout=False,  # keep the recipe's LoRA dropout, as the SFT arms do
    )
    peft = sft.lora_config(net, c) if c.mode in sft.PEFT_MODES else None
    dataset = build_dataset(tok, rows)
    trainer = _tempered_gkd()(model=net, teacher_model=teacher, args=args, train_dataset=dataset,
                              processing_class=tok, peft_config=peft, callbacks=list(callbacks),
                              data_collator=DataCollatorForChatML(tokenizer=tok, max_length=None))
    # GKD skips SFT's preparation (its collator can tokenize chat rows itself); run it so KD trains on the
    # same tokens and masks as SFT.
    trainer.train_dataset = trainer._prepare_dataset(dataset, tok, args, False, None, "train")
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(sft._loss_bar())
    return trainer


def with_completion_mask(ds):
    """SFT rows (input_ids, labels) → the ChatML collator's form: ``completion_mask`` marks the trained
    tokens, from which the collator derives the prompt (for on-policy sampling) and the same labels."""
    return ds.map(lambda ex: {"completion_mask": [int(t != -100) for t in ex["labels"]]})


def _kd_record(kd: KDConfig) -> dict:
    return {**{k: v for k, v in dataclasses.asdict(kd).items() if k not in ("teacher", "student")},
            "loss": "generalized JSD on response tokens (beta 0: KL(teacher || student), 1: KL(student || teacher))",
            "trainer": "trl.experimental.gkd.GKDTrainer (temperature also applied to the divergence)"}
