"""Training-free repair at the cut: ReplaceMe's least-squares linear map, folded into the weights.

    record = repair("pruned/", "repaired/", LinearConfig(calibration="notes.txt"))

ReplaceMe (Shopkhoev et al., arXiv 2505.02819) replaces a removed contiguous block [a, b] by a linear map T
applied to the MLP output of the last kept layer a-1. On calibration text, in the *original* model, with
(every row one token, (N, D)):

    M = the MLP's contribution to the residual stream in layer a-1   (its down projection's output, × the
                                                                       family's residual multiplier if any)
    Y = h_a - M        everything else layer a-1 passes on (its input + attention)
    L = h_{b+1}        the block's output, which the next kept layer should receive

    T = argmin ||M T - (L - Y)||²  (+ ridge · mean(diag MᵀM) · ||T||²)  =  (MᵀM + λ I)⁻¹ Mᵀ (L - Y)

accumulated in float64 over all tokens (MᵀM and Mᵀ(L-Y) are D × D, so memory does not grow with the data),
then folded into the down projection: y = a Wᵀ + b ↦ y T = a (Tᵀ W)ᵀ + b T, i.e. W ← Tᵀ W, b ← b T
(GPT-2's Conv1D stores Wᵀ: W ← W T). The layer then outputs Y + M T exactly; nothing else in the layer
reads M, also in parallel attention+MLP blocks (x + attn(n(x)) + mlp(n'(x))), so the fold is exact there too. Families whose
MLP output is normed before the residual add (Gemma-2/3, OLMo-2/3, post-LN OPT) or routed through fused
experts are refused (`families.Family.fold_refused`).

Two departures from ReplaceMe's plain least squares, both recorded: each token is weighted by 1/||L_t||², so
a few large-norm tokens do not dominate the fit (the next layer's norm, and the final norm, see directions);
and the folded map is T_α = I + α (T - I), α ∈ {0, ¼, ½, ¾, 1} chosen by the pruned model's calibration NLL
(α = 1 is ReplaceMe's map, α = 0 plain pruning; `alpha=` fixes it). On the testbed, α = 1 *raises* the
calibration NLL of blocks that end at the last layer (the fit is good in hidden-state space, but the final
norm and head are not linear), while α ≈ ¼ lowers it.

A block that starts at layer 0 has no MLP before it: its input is the token embedding, so T is fitted from
h_0 to h_{b+1} and folded into the embedding matrix (E ← E T; a constant embedding scale commutes). That is
skipped, and recorded, when the embedding is tied to the output head or learned position embeddings are added
to it (GPT-2, OPT). The result keeps the pruned architecture and loads as a plain checkpoint; healing.json
records the calibration, each block's solution statistics (residual error before = plain pruning, after = the
fit) and the calibration NLL of the pruned model before and after.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from layerprune.errors import UsageError
from layerprune.families import decoder_layers, get_module, spec_for
from layerprune.provenance import atomic_dir, check_out_dir, fingerprint_source, now, read_json, versions, write_json

# ReplaceMe fits on a few thousand tokens; the hub default (used only when no --calibration is given) is C4.
DEFAULT_CALIBRATION = "allenai/c4:en"
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # α = 1: ReplaceMe's map; α = 0: plain pruning


@dataclass
class LinearConfig:
    calibration: str | None = None  # .txt/.jsonl/hub id; None: DEFAULT_CALIBRATION
    text_field: str = "text"
    split: str = "validation"
    seq_len: int = 256
    num_samples: int = 32
    seed: int = 0
    ridge: float = 0.0  # λ relative to mean(diag MᵀM); 0 = plain least squares (minimum-norm if singular)
    alpha: float | None = None  # fold T_α = I + α (T - I); None: the α in ALPHAS with the lowest calibration NLL
    batch_size: int = 8


def repair(model: str, out: str | Path, config: LinearConfig | None = None, overwrite: bool = False,
           device: str = "cpu", dtype: str | None = None) -> dict:
    """Fit and fold one linear map per removed contiguous block of the pruned `model`; write to `out`."""
    from layerprune.calibration import CalibrationSpec, load_calibration
    from layerprune.loading import load_config, load_model, load_tokenizer

    c = config or LinearConfig()
    if c.ridge < 0 or c.batch_size < 1:
        raise UsageError("--ridge must be >= 0 and --batch-size >= 1")
    out = check_out_dir(out, overwrite)
    pruning, source = _pruning_record(model)
    check_foldable(load_config(model))
    tok = load_tokenizer(model)
    cal = load_calibration(tok, CalibrationSpec(c.calibration or DEFAULT_CALIBRATION, seq_len=c.seq_len,
                                                num_samples=c.num_samples, seed=c.seed, text_field=c.text_field,
                                                split=c.split))
    blocks = contiguous_blocks(pruning["removed"])
    original, _ = load_model(source, dtype=dtype, device=device, tokenizer=False)
    _check_source(original, source, pruning)
    stats = collect(original, blocks, cal, c.batch_size)
    source_fingerprint = fingerprint_source(source, original)
    del original
    net, tok = load_model(model, dtype=dtype, device=device)
    if len(decoder_layers(net)) != len(pruning["kept"]):
        raise UsageError(f"{model} has {len(decoder_layers(net))} layers but its pruning.json keeps "
                         f"{len(pruning['kept'])}; re-prune it")
    nll_before = calibration_nll(net, cal, c.batch_size)
    solved = [fold(net, block, stats[block], pruning["kept"], c, lambda: calibration_nll(net, cal, c.batch_size))
              for block in blocks]
    nll_after = calibration_nll(net, cal, c.batch_size)
    record = {
        "format": "layerprune.healing/1", "arm": "linear",
        "model": {"path": str(model), "fingerprint": fingerprint_source(model)},
        "source": {"path": source, "fingerprint": source_fingerprint},
        "method": "ReplaceMe least squares (arXiv 2505.02819), folded into the MLP output projection",
        "calibration": cal.description, "hyperparameters": asdict(c),
        "blocks": solved, "calibration_nll": {"pruned": nll_before, "repaired": nll_after},
        "versions": versions(), "created": now(),
    }
    from layerprune.pruning import PRUNING_FILE

    with atomic_dir(out, overwrite) as tmp:
        net.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        shutil.copy2(Path(model).expanduser() / PRUNING_FILE, tmp / PRUNING_FILE)
        write_json(tmp / "healing.json", record)
    return record


def _pruning_record(model: str) -> tuple[dict, str]:
    """(pruning.json, the unpruned source model): the repair needs both."""
    from layerprune.pruning import PRUNING_FILE

    path = Path(model).expanduser() / PRUNING_FILE
    if not path.is_file():
        raise UsageError(f"--mode linear repairs a pruned model, but {model} has no {PRUNING_FILE}; "
                         "prune it with `layerprune prune` first")
    record = read_json(path)
    if not record.get("removed"):
        raise UsageError(f"{path} removes no layers; there is nothing to repair")
    root = record
    while "parent" in root:
        root = root["parent"]
    return record, str(root["source"]["model"])


def _check_source(original, source: str, pruning: dict) -> None:
    n = len(decoder_layers(original))
    if n != pruning["original_num_layers"]:
        raise UsageError(f"source model {source} has {n} layers, but pruning.json says "
                         f"{pruning['original_num_layers']}; pass the model it was pruned from")


def check_foldable(config) -> None:
    """A one-line UsageError when this family (or checkpoint) has no exact fold."""
    spec = spec_for(config)
    name = getattr(config, "model_type", "?")
    reason = spec.fold_refused
    for flag, (value, why) in spec.fold_blockers.items():
        if getattr(config, flag, None) == value:
            reason = why
    if reason:
        raise UsageError(f"--mode linear: {name} has no exact linear fold ({reason}); heal with another --mode")


def contiguous_blocks(removed: list[int]) -> list[tuple[int, int]]:
    """[3, 4, 7] → [(3, 4), (7, 7)]: inclusive runs of removed layers in the original numbering."""
    blocks: list[list[int]] = []
    for i in sorted(removed):
        if blocks and blocks[-1][1] == i - 1:
            blocks[-1][1] = i
        else:
            blocks.append([i, i])
    return [(a, b) for a, b in blocks]


class _Normal:
    """Running float64 sums for least squares from X (N, D) to Z (N, D), each token weighted by 1/||L_t||²
    (L = the block's output), so every token's *relative* error counts the same: XᵀWX, XᵀWZ, Σ w||z||²,
    Σ w||z - x||² (the error of T = I, i.e. of plain pruning), N."""

    def __init__(self, d: int):
        self.xtx = torch.zeros(d, d, dtype=torch.float64)
        self.xtz = torch.zeros(d, d, dtype=torch.float64)
        self.zz = 0.0
        self.ident = 0.0
        self.tokens = 0

    def add(self, x: torch.Tensor, z: torch.Tensor, target: torch.Tensor) -> None:
        d = x.shape[-1]
        x, z = x.reshape(-1, d).double().cpu(), z.reshape(-1, d).double().cpu()  # (N, D)
        w = target.reshape(-1, d).double().cpu().pow(2).sum(-1, keepdim=True).clamp_min(1e-12).rsqrt()  # (N, 1)
        x, z = x * w, z * w
        self.xtx += x.T @ x
        self.xtz += x.T @ z
        self.zz += float((z * z).sum())
        self.ident += float(((z - x) ** 2).sum())
        self.tokens += x.shape[0]

    def error(self, t: torch.Tensor) -> float:
        """Mean over tokens of ||x T - z||² / ||L||²."""
        err = self.zz - 2 * float((t * self.xtz).sum()) + float((t * (self.xtx @ t)).sum())
        return max(err, 0.0) / max(self.tokens, 1)


@torch.no_grad()
def collect(model, blocks: list[tuple[int, int]], cal, batch_size: int) -> dict[tuple[int, int], _Normal]:
    """One pass of the original model over the calibration windows, accumulating every block's sums."""
    from tqdm import tqdm

    from layerprune.activations import layer_io

    spec = spec_for(model.config)
    layers = decoder_layers(model)
    scale = float(getattr(model.config, spec.mlp_out_scale)) if spec.mlp_out_scale else 1.0
    d = model.config.get_text_config().hidden_size
    stats = {blk: _Normal(d) for blk in blocks}
    ends = {blk[1]: blk for blk in blocks}
    x: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # per block: (X, Y) until L is seen
    mlp_out: dict[int, torch.Tensor] = {}
    starts = {blk[0] - 1: blk for blk in blocks if blk[0] > 0}
    at_zero = next((blk for blk in blocks if blk[0] == 0), None)
    handles = [get_module(layers[k], spec.mlp_out).register_forward_hook(_keep(mlp_out, k, scale)) for k in starts]

    def on_layer(k: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        if k == 0 and at_zero is not None:
            x[at_zero] = (h_in, torch.zeros_like(h_in))  # block at layer 0: X = h_0, nothing passes around it
        if k in starts:
            m = mlp_out.pop(k).to(h_out.dtype)  # (B, T, D)
            x[starts[k]] = (m, h_out - m)  # X = M, Y = h_a - M
        if k in ends:
            blk = ends[k]
            xb, yb = x.pop(blk)
            stats[blk].add(xb, h_out.to(xb.device) - yb, h_out)  # target L - Y

    try:
        with layer_io(model, on_layer):
            total = (len(cal.input_ids) + batch_size - 1) // batch_size
            for ids in tqdm(cal.batches(batch_size), total=total, desc="linear repair: collect", unit="batch"):
                model(ids.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


def _keep(store: dict, k: int, scale: float):
    def hook(module, args, output):
        store[k] = output * scale

    return hook


def solve(s: _Normal, ridge: float) -> torch.Tensor:
    """ReplaceMe's T (D, D), float64: the (ridge-regularized) least-squares map."""
    a = s.xtx.clone()
    if ridge > 0:
        a += ridge * a.diagonal().mean() * torch.eye(len(a), dtype=a.dtype)
        return torch.linalg.solve(a, s.xtz)
    return torch.linalg.lstsq(a, s.xtz, driver="gelsd").solution  # minimum-norm when MᵀM is singular


@torch.no_grad()
def fold(net, block: tuple[int, int], s: _Normal, kept: list[int], c: LinearConfig, nll) -> dict:
    """Solve `block`'s map, fold T_α = I + α (T - I) into the pruned `net` (α fixed, or the grid value with the
    lowest calibration NLL `nll()`), and return what was done."""
    a, b = block
    spec = spec_for(net.config)
    info = {"removed": [a, b], "tokens": s.tokens, "relative_error_pruned": s.ident / max(s.tokens, 1)}
    if a == 0:
        module = net.get_input_embeddings()
        tied = getattr(net.config, "tie_word_embeddings", False) and module.weight is net.get_output_embeddings().weight
        skip = ("the input embedding is tied to the output head" if tied else
                None if spec.embeds_only_tokens else "learned position embeddings are added before layer 0")
        if skip:
            return info | {"repaired": False, "reason": f"block starts at layer 0 and {skip}"}
        where = "input embedding"
    else:
        j = kept.index(a - 1)
        module = get_module(decoder_layers(net)[j], spec.mlp_out)
        where = f"layer {j} (original {a - 1}) {spec.mlp_out}"
    t = solve(s, c.ridge)
    eye = torch.eye(len(t), dtype=t.dtype)
    saved = {n: p.detach().clone() for n, p in module.named_parameters(recurse=False)}
    tried = {}
    for alpha in ([c.alpha] if c.alpha is not None else ALPHAS):
        for n, p in module.named_parameters(recurse=False):
            p.copy_(saved[n])
        _fold_into(module, eye + alpha * (t - eye))
        tried[alpha] = nll() if c.alpha is None else None
    best = c.alpha if c.alpha is not None else min(tried, key=tried.get)
    if best != list(tried)[-1]:  # the last one tried is in place; redo the best
        for n, p in module.named_parameters(recurse=False):
            p.copy_(saved[n])
        _fold_into(module, eye + best * (t - eye))
    return info | {"repaired": best != 0, "folded_into": where, "alpha": best,
                   "relative_error_lstsq": s.error(t), "relative_error_repaired": s.error(eye + best * (t - eye)),
                   "calibration_nll_by_alpha": tried if c.alpha is None else None,
                   "condition_number": float(torch.linalg.cond(s.xtx))}


def _fold_into(module, t: torch.Tensor) -> None:
    if isinstance(module, torch.nn.Embedding):  # weight (V, D): h_0 ← h_0 T
        module.weight.copy_((module.weight.double() @ t.to(module.weight.device)).to(module.weight.dtype))
    else:
        _fold_linear(module, t)


def _fold_linear(module, t: torch.Tensor) -> None:
    from transformers.pytorch_utils import Conv1D

    w = module.weight
    t = t.to(w.device)
    if isinstance(module, Conv1D):  # weight (in, out): y = a W + b
        w.copy_((w.double() @ t).to(w.dtype))
    else:  # nn.Linear, weight (out, in): y = a Wᵀ + b
        w.copy_((t.T @ w.double()).to(w.dtype))
    if getattr(module, "bias", None) is not None:
        module.bias.copy_((module.bias.double() @ t).to(module.bias.dtype))


@torch.no_grad()
def calibration_nll(net, cal, batch_size: int) -> float:
    """Mean next-token NLL (nats) of `net` over the calibration windows."""
    total, count = 0.0, 0
    for ids in cal.batches(batch_size):
        ids = ids.to(net.device)
        logits = net(ids, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                reduction="sum")
        total, count = total + float(nll), count + ids[:, 1:].numel()
    return total / max(count, 1)
