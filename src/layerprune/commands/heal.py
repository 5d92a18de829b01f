"""layerprune heal MODEL --data FILE.jsonl --out DIR --mode lora|qlora|full|partial|lm"""

from layerprune.healing.sft import MODES, HealConfig, heal

NAME = "heal"
HELP = "heal a pruned model with SFT (TRL + PEFT) on SGR or original responses; defaults = the seed paper's recipe"


def add_arguments(p):
    d = HealConfig()
    p.add_argument("model", help="the (pruned) model: local directory or hub id")
    p.add_argument("--data", required=True, help="JSONL from `layerprune sgr`, or prompt-pool rows with answers")
    p.add_argument("--out", required=True, help="output directory for the healed, standalone checkpoint")
    p.add_argument("--mode", default=d.mode, choices=MODES,
                   help="lora | qlora (4-bit NF4 base) | full | partial (head, norm, last k layers) | lm "
                        "(LoRA, loss on all tokens) (default lora)")
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


def run(args) -> int:
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

    rec = heal(args.model, args.data, args.out, config, overwrite=args.overwrite)
    if process_state().is_main_process:
        print(f"{rec['arm']}: {rec['steps']} steps, final loss {rec['final_loss']} → {args.out}")
    return 0
