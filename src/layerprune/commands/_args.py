"""Argument groups several verbs share."""

from layerprune.loading import DTYPES


def add_load_arguments(p, trust_remote_code: bool = True) -> None:
    """--dtype / --device (/ --trust-remote-code) for verbs that load a model."""
    p.add_argument("--dtype", default=None, help=f"{' | '.join(DTYPES)} (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    if trust_remote_code:
        p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
