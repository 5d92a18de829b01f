"""Decoder-layer inputs and outputs, read with hooks, and a runner that does not compute chosen layers.

Index convention (methods.md conventions): ``h_k`` is the input of decoder layer k, so ``h_0`` is the
embedding output and ``h_{k+1}`` the output of layer k. Unlike HF's ``hidden_states[L]``, ``h_L`` here is the
last layer's output **before the final norm**; ``post_norm=True`` passes it through the model's final norm,
which reproduces ``hidden_states[L]`` (what ShortGPT and PruneMe compare against).

Both tools work through the model's own ``forward`` (embeddings, rotary tables, per-layer-type masks, final
norm, head, soft-capping), so they are correct for every family in `families.py` without re-implementing it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch

from layerprune.families import decoder_layers, final_norm


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer was called with, (B, T, D): first positional or `hidden_states`."""
    return args[0] if args else kwargs["hidden_states"]


def layer_output(output) -> torch.Tensor:
    """A decoder layer's hidden-state output (B, T, D); some families (falcon) return a tuple."""
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def layer_io(model, callback: Callable[[int, torch.Tensor, torch.Tensor], None],
             post_norm: bool = False) -> Iterator[None]:
    """Call ``callback(k, h_k, h_{k+1})`` as each decoder layer k runs (both (B, T, D), on h_{k+1}'s device)."""
    layers = decoder_layers(model)
    last = len(layers) - 1
    norm = final_norm(model)

    def hook_for(k: int):
        def hook(module, args, kwargs, output):
            h_out = layer_output(output)
            if post_norm and k == last:
                h_out = norm(h_out)  # = HF hidden_states[L]
            callback(k, layer_input(args, kwargs).to(h_out.device), h_out)

        return hook

    handles = [layer.register_forward_hook(hook_for(k), with_kwargs=True) for k, layer in enumerate(layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class LayerRunner:
    """Run the model's forward while chosen decoder layers are *not computed*.

        runner = LayerRunner(model)
        logits, h = runner.run(ids, skip={3}, capture={5})     # layer 3 as identity; h[5] = input of layer 5
        logits, _ = runner.run(ids, skip={3, 5}, resume=(6, h[5]))  # same as skipping {3, 5}, but layers 0-5
                                                                    # are not run again: layer 6 starts from h[5]

    A layer that is not computed has its ``forward`` swapped for a stub that returns its input (identity, i.e.
    what removing it computes) or, for the layer before ``resume``'s index, the cached state. Hooks and the
    model's own code around the layers run unchanged. ``layer_forwards`` counts the layers actually computed.
    """

    def __init__(self, model):
        self.model = model
        self.layers = decoder_layers(model)
        self.layer_forwards = 0
        self._tuple = self._returns_tuple()

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, skip: Iterable[int] = (), capture: Iterable[int] = (),
            resume: tuple[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Logits (B, T, V) with `skip` as identity, and the input hidden states of the layers in `capture`."""
        stubs = {i: self._stub() for i in skip}
        if resume is not None:
            start, state = resume  # layers < start are not run; layer start receives `state`
            stubs.update({i: self._stub() for i in range(start - 1)})
            stubs[start - 1] = self._stub(state)
        captured: dict[int, torch.Tensor] = {}
        handles = [self.layers[i].register_forward_pre_hook(_capture_into(captured, i), with_kwargs=True)
                   for i in capture]
        try:
            with self._swapped(stubs):
                logits = self.model(input_ids.to(self.model.device), use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
        self.layer_forwards += len(self.layers) - len(stubs)
        return logits, captured

    def _stub(self, value: torch.Tensor | None = None):
        def forward(*args, **kwargs):
            h = layer_input(args, kwargs) if value is None else value
            return (h,) if self._tuple else h

        return forward

    @contextlib.contextmanager
    def _swapped(self, stubs: dict[int, Callable]) -> Iterator[None]:
        # Instance attributes shadow the class's forward; an existing one (accelerate's hook) is restored.
        saved = {i: self.layers[i].__dict__.get("forward") for i in stubs}
        for i, fn in stubs.items():
            self.layers[i].forward = fn
        try:
            yield
        finally:
            for i, old in saved.items():
                if old is None:
                    del self.layers[i].forward
                else:
                    self.layers[i].forward = old

    @torch.no_grad()
    def _returns_tuple(self) -> bool:
        seen: list[bool] = []
        handle = self.layers[0].register_forward_hook(lambda m, a, out: seen.append(isinstance(out, tuple)))
        try:
            self.model(torch.ones(1, 2, dtype=torch.long, device=self.model.device), use_cache=False)
        finally:
            handle.remove()
        return seen[0]


def _capture_into(store: dict[int, torch.Tensor], k: int):
    def pre_hook(module, args, kwargs):
        store[k] = layer_input(args, kwargs)

    return pre_hook
