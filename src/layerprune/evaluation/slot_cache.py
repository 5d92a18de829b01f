"""A KV cache of fixed slots for continuous batching: rows come and go, nothing is re-concatenated per step.

    state = SlotState(slots=16, capacity=1100)
    cache = slot_cache(model, state)          # a transformers `Cache` whose layers are `SlotLayer`s
    layer.load(slot, keys, values)            # a prefilled prompt's (kv_heads, T, head_dim) into a slot
    state.begin_step(lengths)                 # before each decode forward: the rows' cached lengths
    model(input_ids=(n, 1), attention_mask=state.mask(...), position_ids=lengths[:, None], cache=cache)

Each layer holds (slots, kv_heads, capacity, head_dim) keys and values, allocated once. The active rows are
always slots 0..n-1 (a finished row's slot is refilled by moving the last row into it: one row's cache,
copied once), so the keys handed to attention are a view `keys[:n, :, :span]`, never a copy. A decode step
writes each row's new key at that row's own length; the (n, 1, 1, span) mask hides the slots' unused tail.
Only plain full-attention layers are handled (the caller checks); prompts are prefilled elsewhere.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class SlotState:
    """What every layer of one cache shares: slot count, capacity, and the current step's write positions."""

    def __init__(self, slots: int, capacity: int):
        self.slots, self.capacity = slots, capacity
        self.n = 0  # active rows: slots 0..n-1
        self.span = 0  # keys visible this step: max cached length + 1
        self.rows: torch.Tensor | None = None  # (n,) arange
        self.write: torch.Tensor | None = None  # (n,) each row's cached length = where its new key goes

    def begin_step(self, lengths: list[int], device) -> None:
        self.n, self.span = len(lengths), max(lengths) + 1
        self.write = torch.tensor(lengths, device=device)
        self.rows = torch.arange(self.n, device=device)

    def mask(self, dtype: torch.dtype, additive: bool) -> torch.Tensor:
        """(n, 1, 1, span): a row sees its cached keys and the one it writes now; bool (sdpa) or additive (eager)."""
        keep = torch.arange(self.span, device=self.write.device)[None, :] <= self.write[:, None]  # (n, span)
        keep = keep[:, None, None, :]
        if not additive:
            return keep
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)


class SlotLayer(CacheLayerMixin):
    """One decoder layer's slots: keys/values (slots, kv_heads, capacity, head_dim)."""

    is_sliding = False
    is_compileable = False

    def __init__(self, state: SlotState):
        super().__init__()
        self.state = state

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        s = self.state
        self.device = key_states.device
        self.keys = key_states.new_zeros((s.slots, key_states.shape[-3], s.capacity, key_states.shape[-1]))
        self.values = value_states.new_zeros((s.slots, value_states.shape[-3], s.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def load(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put a prefilled row's keys/values (kv_heads, T, head_dim) at the start of `slot`."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self.keys[slot, :, : keys.shape[1]] = keys
        self.values[slot, :, : values.shape[1]] = values

    def move(self, src: int, dst: int, length: int) -> None:
        self.keys[dst, :, :length] = self.keys[src, :, :length]
        self.values[dst, :, :length] = self.values[src, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Decode step: key_states (n, kv_heads, 1, head_dim) written at each row's length; returns views
        (n, kv_heads, span, head_dim)."""
        s = self.state
        rows, write = s.rows, s.write
        if rows.device != self.keys.device:  # layers spread over devices (device_map="auto")
            rows, write = rows.to(self.keys.device), write.to(self.keys.device)
        self.keys[rows, :, write] = key_states[:, :, 0]
        self.values[rows, :, write] = value_states[:, :, 0]
        return self.keys[: s.n, :, : s.span], self.values[: s.n, :, : s.span]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.state.span, 0

    def get_seq_length(self) -> int:
        return self.state.span - 1

    def get_max_length(self) -> int:
        return self.state.capacity


def slot_cache(n_layers: int, state: SlotState) -> Cache:
    return Cache(layers=[SlotLayer(state) for _ in range(n_layers)])
