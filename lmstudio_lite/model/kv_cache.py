"""A preallocated, fixed-shape KV cache owned by the generation engine."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ModelConfig


@dataclass(frozen=True, eq=False)
class Rows:
    """Where a batched decode step's new tokens go: row b's one token at ``positions[b]`` of
    cache row ``slots[b]`` (a scheduler's sequences sit at different lengths). Passed as the
    forward's ``start_pos``; tensors [B] long."""
    positions: torch.Tensor
    slots: torch.Tensor
    ends: list[int] = field(init=False)  # each row's cached length after the write
    rows: list[int] = field(init=False)  # the cache rows, as ints

    def __post_init__(self):
        # read to the host once per step, not once per layer
        object.__setattr__(self, "ends", (self.positions + 1).tolist())
        object.__setattr__(self, "rows", self.slots.tolist())


@dataclass(frozen=True, eq=False)
class Packed:
    """Several sequences' next tokens side by side in one row (ids [1, N], N = sum of ``lengths``):
    segment i's ``lengths[i]`` tokens go at ``starts[i]``.. of cache row ``slots[i]`` and attend
    over that row's prefix and themselves. A scheduler prefills a burst of prompts in one pass
    this way: every matrix once for all of them, no padding, no alignment of their positions.
    Passed as the forward's ``start_pos``."""
    slots: list[int]
    starts: list[int]
    lengths: list[int]
    device: torch.device | str = "cpu"
    positions: torch.Tensor = field(init=False)  # [N] each token's position (its rope angle)
    offsets: list[int] = field(init=False)  # where each segment starts among the N tokens
    ends: list[int] = field(init=False)  # each row's cached length after the write

    def __post_init__(self):
        if not (len(self.slots) == len(self.starts) == len(self.lengths)) or min(self.lengths, default=0) < 1:
            raise ValueError("Packed needs one slot, start and length (at least 1) per segment")
        positions = torch.cat([torch.arange(s, s + n) for s, n in zip(self.starts, self.lengths)])
        offsets = [0]
        for n in self.lengths[:-1]:
            offsets.append(offsets[-1] + n)
        object.__setattr__(self, "positions", positions.to(self.device))
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "ends", [s + n for s, n in zip(self.starts, self.lengths)])


class KVCache:
    """K and V for every layer, written in place at absolute positions.

    Shapes: ``k, v: [n_layer, B, n_kv_head, max_len, head_dim]``. Allocated once
    (first touch of new memory is slow on the CI VMs) and reused across
    generations; the model never allocates a cache itself.
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, zeroed: bool = True):
        shape = (config.n_layer, batch, config.n_kv_head, max_len, config.head_dim)
        # ``zeroed=False`` leaves the memory untouched, so a large pool costs only the pages its
        # rows have written: every reader (SDPA over ``:end``, the native step up to its
        # position) reads only positions that were written first.
        make = torch.zeros if zeroed else torch.empty
        self.k = make(shape, device=device, dtype=dtype)
        self.v = make(shape, device=device, dtype=dtype)
        self.batch, self.max_len = batch, max_len
        # Per-layer views made once: indexing the 5-D tensors on every write
        # costs more than the copy itself at decode.
        self._k, self._v = self.k.unbind(0), self.v.unbind(0)

    @property
    def bytes_per_token(self) -> int:
        """K and V of one position of one row, all layers."""
        n_layer, _, kv, _, d = self.k.shape
        return 2 * n_layer * kv * d * self.k.element_size()

    def fits(self, config: ModelConfig, batch: int, max_len: int, device, dtype) -> bool:
        """True when this cache can be reused for a request of this size."""
        return (self.k.shape[0] == config.n_layer and self.batch == batch and self.max_len >= max_len
                and self.k.shape[2] == config.n_kv_head and self.k.shape[4] == config.head_dim
                and self.k.device == torch.device(device) and self.k.dtype == dtype)

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v ``[B, n_kv_head, T, head_dim]`` at positions start..start+T and
        return views of everything cached so far for this layer."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise IndexError(f"KV cache holds {self.max_len} positions, asked to write up to {end}")
        k_all, v_all = self._k[layer], self._v[layer]
        k_all[:, :, start:end].copy_(k)
        v_all[:, :, start:end].copy_(v)
        return k_all[:, :, :end], v_all[:, :, :end]

    def write_rows(self, layer: int, rows: Rows, k: torch.Tensor, v: torch.Tensor) -> list:
        """Store k, v ``[B, n_kv_head, 1, head_dim]`` of row b at ``rows.positions[b]`` of cache row
        ``rows.slots[b]``; -> per row, views (k, v) ``[1, n_kv_head, end_b, head_dim]`` of that cache
        row up to its new token: positions past a row's end are never read, so rows need no masks."""
        if max(rows.ends) > self.max_len:
            raise IndexError(f"KV cache holds {self.max_len} positions, asked to write at {rows.positions.tolist()}")
        k_all, v_all = self._k[layer], self._v[layer]
        k_all[rows.slots, :, rows.positions] = k[:, :, 0].to(k_all.dtype)  # a narrower cache rounds (index_put won't)
        v_all[rows.slots, :, rows.positions] = v[:, :, 0].to(v_all.dtype)
        return [(k_all[r:r + 1, :, :e], v_all[r:r + 1, :, :e]) for r, e in zip(rows.rows, rows.ends)]

    def write_packed(self, layer: int, packed: Packed, k: torch.Tensor, v: torch.Tensor) -> list:
        """Store k, v ``[1, n_kv_head, N, head_dim]``, segment i's tokens at ``starts[i]``.. of cache
        row ``slots[i]``; -> per segment, views (k, v) ``[1, n_kv_head, end_i, head_dim]`` of its
        cache row up to its last new token."""
        if max(packed.ends) > self.max_len:
            raise IndexError(f"KV cache holds {self.max_len} positions, asked to write up to {max(packed.ends)}")
        k_all, v_all = self._k[layer], self._v[layer]
        views = []
        for r, at, o, n in zip(packed.slots, packed.starts, packed.offsets, packed.lengths):
            # a copy per segment: one scattered index_put of all N cost 10% of a 76-token pass
            k_all[r, :, at:at + n].copy_(k[0, :, o:o + n])
            v_all[r, :, at:at + n].copy_(v[0, :, o:o + n])
            views.append((k_all[r:r + 1, :, :at + n], v_all[r:r + 1, :, :at + n]))
        return views
