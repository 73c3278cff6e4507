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

    @classmethod
    def _views(cls, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        view = cls.__new__(cls)
        view.k, view.v, view.batch, view.max_len = k, v, k.shape[1], k.shape[3]
        view._k, view._v = k.unbind(0), v.unbind(0)
        return view

    def row(self, index: int) -> "KVCache":
        """A one-row cache that is a view of row ``index`` (a scheduler prefills a sequence there)."""
        return KVCache._views(self.k[:, index:index + 1], self.v[:, index:index + 1])

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
        k_all[rows.slots, :, rows.positions] = k[:, :, 0]
        v_all[rows.slots, :, rows.positions] = v[:, :, 0]
        return [(k_all[r:r + 1, :, :e], v_all[r:r + 1, :, :e]) for r, e in zip(rows.rows, rows.ends)]
