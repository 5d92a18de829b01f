"""layerprune heal MODEL --data FILE.jsonl --out DIR --mode lora|qlora|full|partial|lm|kd|linear"""

from layerprune.healing.sft import MODES, HealConfig, heal

EXTRA_MODES = ("kd", "linear")  # healing/kd.py (logit distillation), healing/linear.py (training-free repair)

NAME = "heal"
HELP = "heal a pruned model with SFT (TRL + PEFT) on SGR or original responses; defaults = the seed paper's recipe"


def add_arguments(p):
    d = HealConfig()
    p.add_argument("model", help="the (pruned) model: local directory or hub id")
    p.add_argument("--data", default=None,
                   help="JSONL from `layerprune sgr`, or prompt-pool rows with answers (all modes but linear)")
    p.add_argument("--out", required=True, help="output directory for the healed, standalone checkpoint")
    p.add_argument("--mode", default=d.mode, choices=MODES + EXTRA_MODES,
                   help="lora | qlora (4-bit NF4 base) | full | partial (head, norm, last k layers) | lm "
                        "(LoRA, loss on all tokens) | kd (logit distillation from --teacher) | linear "
                        "(training-free ReplaceMe repair on --calibration text) (default lora)")
    p.add_argument("--response-field", default=d.response_field, choices=("response", "original"),
                   help="train on the SGR response or the source's original answer (default response)")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after N optimizer steps (default: 1 epoch)")
    p.add_argument("--epochs", type=float, default=d.epochs, help="epochs over the data (default 1)")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help="tokens per row; longer rows are cut (default 8192)")
    p.add_argument("--partial-layers", type=int, default=d.partial_layers, help="k for --mode partial (default 3)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 2e-4 LoRA arms, 2e-5 full/partial)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="constant schedule after N warmup steps (default 50)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per-device batch size (default 4)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="gradient accumulation steps (default 2)")
    p.add_argument("--lora-r", type=int, default=d.lora_r, help="LoRA rank (default 64)")
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha, help="LoRA alpha (default 16)")
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help="LoRA dropout (default 0.05)")
    p.add_argument("--seed", type=int, default=d.seed, help="training seed (default 42)")
    p.add_argument("--save-steps", type=int, default=d.save_steps, help="checkpoint every N steps, for resuming (500)")
    p.add_argument("--logging-steps", type=int, default=d.logging_steps, help="log the loss every N steps (default 10)")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    p.add_argument("--dtype", default=None, help="training weights dtype (default: checkpoint's; float32 full/partial)")
    p.add_argument("--keep-truncated", action="store_true",
                   help="also train on SGR responses cut at max_new_tokens (finish_reason length; default: skipped)")
    p.add_argument("--overwrite", action="store_true", help="replace --out; discard a work dir of a different run")
    _add_kd_arguments(p.add_argument_group("--mode kd"))
    _add_linear_arguments(p.add_argument_group("--mode linear"))


def _add_kd_arguments(g):
    from layerprune.healing.kd import STUDENTS, KDConfig

    k = KDConfig()
    g.add_argument("--teacher", default=None, help="teacher model (default: the source named in pruning.json)")
    g.add_argument("--student", default=k.student, choices=STUDENTS, help="what of the student trains (default lora)")
    g.add_argument("--kd-lmbda", type=float, default=k.lmbda, help="share of on-policy batches, 0..1 (default 0)")
    g.add_argument("--kd-beta", type=float, default=k.beta,
                   help="0 forward KL … 1 reverse KL, between: generalized JSD (default 0)")
    g.add_argument("--kd-temperature", type=float, default=k.temperature, help="logit temperature (default 1)")
    g.add_argument("--kd-max-new-tokens", type=int, default=k.max_new_tokens,
                   help="on-policy answer length (default 128)")


def _add_linear_arguments(g):
    from layerprune.healing.linear import DEFAULT_CALIBRATION, LinearConfig

    c = LinearConfig()
    g.add_argument("--calibration", default=None,
                   help=f".txt, .jsonl or hub dataset id (default {DEFAULT_CALIBRATION})")
    g.add_argument("--text-field", default=c.text_field, help="JSONL field / dataset column (default text)")
    g.add_argument("--split", default=c.split, help=f"hub dataset split (default {c.split})")
    g.add_argument("--seq-len", type=int, default=c.seq_len, help=f"tokens per window (default {c.seq_len})")
    g.add_argument("--num-samples", type=int, default=c.num_samples, help=f"windows (default {c.num_samples})")
    g.add_argument("--ridge", type=float, default=c.ridge, help="ridge, relative to mean diag(MᵀM) (default 0)")
    g.add_argument("--alpha", type=float, default=None,
                   help="fold I + α(T − I) (1 = ReplaceMe's map; default: α by calibration NLL)")
    g.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")


def run(args) -> int:
    if args.mode == "linear":
        return _run_linear(args)
    if args.data is None:
        from layerprune.errors import UsageError

        raise UsageError(f"--mode {args.mode} trains on --data FILE.jsonl; pass it")
    config = HealConfig(
        mode=args.mode, response_field=args.response_field, lr=args.lr, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_length=args.max_length, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, partial_layers=args.partial_layers, seed=args.seed,
        save_steps=args.save_steps, logging_steps=args.logging_steps,
        gradient_checkpointing=not args.no_gradient_checkpointing, dtype=args.dtype,
        keep_truncated=args.keep_truncated,
    )
    from layerprune.healing import process_state

    if args.mode == "kd":
        from layerprune.healing.kd import KDConfig, distill

        kd = KDConfig(teacher=args.teacher, student=args.student, lmbda=args.kd_lmbda, beta=args.kd_beta,
                      temperature=args.kd_temperature, max_new_tokens=args.kd_max_new_tokens)
        rec = distill(args.model, args.data, args.out, config, kd, overwrite=args.overwrite)
    else:
        rec = heal(args.model, args.data, args.out, config, overwrite=args.overwrite)
    if process_state().is_main_process:
        print(f"{rec['arm']}: {rec['steps']} steps, final loss {rec['final_loss']} → {args.out}")
    return 0


def _run_linear(args) -> int:
    from layerprune.healing.linear import LinearConfig, repair

    config = LinearConfig(calibration=args.calibration, text_field=args.text_field, split=args.split,
                          seq_len=args.seq_len, num_samples=args.num_samples, seed=args.seed, ridge=args.ridge,
                          alpha=args.alpha, batch_size=args.batch_size)
    rec = repair(args.model, args.out, config, overwrite=args.overwrite, device=args.device, dtype=args.dtype)
    nll = rec["calibration_nll"]
    print(f"linear: {len(rec['blocks'])} block(s), calibration NLL {nll['pruned']:.4f} → {nll['repaired']:.4f} "
          f"→ {args.out}")
    return 0
