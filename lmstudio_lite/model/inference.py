"""The inference object: a ``Transformer`` laid out to serve, and its CPU fast path.

The block's maths lives in two places: the ``Transformer``'s forward (the reference,
used for training, GPUs and whatever the kernel does not take) and native/decode.c
(the CPU decode step of 1..8 rows, through ``decode.NativeDecoder``). This object owns
everything only inference needs: the fused q|k|v and gate|up weights, the layout the
kernel and ``layers.matmul`` stream fastest, the head's inference copy and the native
step. The training model keeps no inference state and no grad-mode branches.

Shapes: B rows, T new tokens, C d_model, V vocabulary.
"""
from __future__ import annotations

import torch

from .decode import MAX_ROWS, NativeDecoder
from .kv_cache import KVCache, Packed, Rows
from .layers import Linear, matmul, store_out_in
from .quant import QuantLinear, fuse_quantized, kernel_rows
from .transformer import Transformer


def fuse_linears(*layers: Linear, out_in: bool = False):
    """One [in, sum(out)] weight for several projections of the same input.

    The layers' own parameters become column views of the fused tensor, so the
    model holds no second copy; a decode step then streams one matrix instead
    of two or three small ones. ``out_in`` stores it [sum(out), in] (see
    ``layers.matmul``).
    """
    if out_in:
        weight = torch.cat([l.weight.data.t() for l in layers], dim=0).t()
    else:
        weight = torch.cat([l.weight.data for l in layers], dim=1)
    bias = torch.cat([l.bias.data for l in layers]) if layers[0].bias is not None else None
    start = 0
    for l in layers:
        end = start + l.d_out
        l.weight.data = weight[:, start:end]
        if bias is not None:
            l.bias.data = bias[start:end]
        start = end
    return weight, bias


def _fuse(layers, out_in: bool):
    """q|k|v or gate|up as one projection: a float ``(weight, bias)`` pair, or a module when any is quantized."""
    if any(isinstance(l, QuantLinear) for l in layers):
        return fuse_quantized(*layers)
    return fuse_linears(*layers, out_in=out_in)


class InferenceModel:
    """A ``Transformer`` prepared to serve: what the engine, the scheduler and inspection drive.

    Inference layout, chosen by measurement (bench/gemv.py): fused q|k|v and gate|up
    weights (``qkv``, ``gate_up``: one per layer, on the CPU), so a decode step streams one matrix
    instead of two or three; in float32 a contiguous [C, V] copy of a tied head
    (``head_t``: batch-1 ``x @ W`` streams fastest that way); in bfloat16 on the CPU every
    weight stored [out, in], where ``torch.mv`` streams about twice as fast as any bf16
    matmul (the tied embedding already is [V, C], so no copy at all). The net's layers
    become views of the fused tensors (no second copy); its weights keep their logical
    shapes, so the net still computes the same logits and tied weights stay tied.

    ``native`` is the C step when it builds for this model (CPU, a supported shape), else None.
    A snapshot: it holds the tensors it was built from, so a later ``net.to(...)`` leaves it
    valid but running the old weights; build a new one after changing the net.

    The driven-model contract (shared with ``Transformer``): ``config``, ``parameters()``,
    ``forward(ids, start_pos, cache, last_only)``, ``forward_hidden``, ``project``,
    ``decode_rows``, ``trace``.
    """

    def __init__(self, net: Transformer):
        net.eval()
        self.net, self.config = net, net.config
        cpu = net.device.type == "cpu"
        out_in = cpu and net.dtype != torch.float32
        self.head_t: torch.Tensor | None = None  # a tied head for inference, [C, V]
        if net.head is None:
            emb = net.tok_emb.weight.detach()
            self.head_t = emb.t() if out_in else emb.t().contiguous()
        elif out_in and isinstance(net.head, Linear):
            net.head.weight.data = store_out_in(net.head.weight.data)
        self.qkv, self.gate_up = [], []  # only the native step reads them: fused on the CPU only
        for b in net.blocks if cpu else ():
            self.qkv.append(_fuse((b.attn.q, b.attn.k, b.attn.v), out_in))
            self.gate_up.append(_fuse((b.mlp.gate, b.mlp.up), out_in) if b.mlp.gated else None)
            for layer in (b.attn.o, b.mlp.down) + (() if b.mlp.gated else (b.mlp.up,)):
                if out_in and isinstance(layer, Linear):
                    layer.weight.data = store_out_in(layer.weight.data)
        self.native: NativeDecoder | None = NativeDecoder.build(self)
        self._rows = torch.arange(MAX_ROWS)  # cache rows 0..B-1 of a step (made once: arange cost 14 us a token)

    # -- what the engine reads ------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.net.dtype

    @property
    def device(self) -> torch.device:
        return self.net.device

    def parameters(self):
        """The net's parameters (the engine reads the device and the cache dtype from them)."""
        return self.net.parameters()

    @property
    def norm_f(self):
        return self.net.norm_f

    def extra_weights(self) -> list[torch.Tensor]:
        """Weight copies beside the net's own tensors (a tied float head's [C, V] copy), for
        ``quant.weight_bytes``."""
        return [self.head_t] if self.head_t is not None else []

    # -- forward --------------------------------------------------------------
    def _native_rows(self, ids: torch.Tensor, start_pos, cache: KVCache | None) -> bool:
        """Whether ids [B, 1] at one position take the native step."""
        return (self.native is not None and ids.shape[1] == 1 and cache is not None and isinstance(start_pos, int)
                and self.native.usable(ids, cache))

    def _native_step(self, ids: torch.Tensor, pos: int, cache: KVCache, logits: bool) -> torch.Tensor:
        """ids [B, 1] at ``pos`` -> logits [B, V] (``logits``) or the residual stream [B, C]."""
        self.net.check_length(pos, 1)
        B = ids.shape[0]
        return self.native.step(ids[:, 0], torch.full((B,), pos), self._rows[:B], cache, logits=logits)

    def __call__(self, ids: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None,
                 last_only: bool = False) -> torch.Tensor:
        return self.forward(ids, start_pos, cache, last_only)

    def forward(self, ids: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] (or [B, 1, V] with ``last_only``), as ``Transformer.forward``."""
        if self._native_rows(ids, start_pos, cache) and self.native.fused_head:
            # step and head in one native call (one parallel region per token)
            return self._native_step(ids, start_pos, cache, logits=True).unsqueeze(1)
        h = self.forward_hidden(ids, start_pos, cache)
        if last_only:
            h = h[:, -1:]
        return self.project(h)

    def forward_hidden(self, ids: torch.Tensor, start_pos: int | Rows | Packed = 0,
                       cache: KVCache | None = None) -> torch.Tensor:
        """ids [B, T] -> final normed hidden state [B, T, C] (``Transformer.forward_hidden``)."""
        if self._native_rows(ids, start_pos, cache):
            x = self._native_step(ids, start_pos, cache, logits=False)
            return self.net.norm_f(x.to(self.dtype)).unsqueeze(1)
        with kernel_rows():  # 4-bit layers through the kernel's packed rows, as the step reads them
            return self.net.forward_hidden(ids, start_pos, cache)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden [.., C] -> logits [.., V]."""
        if self.native is not None and self.native.head is not None and h[..., 0].numel() <= MAX_ROWS:
            # A quantized head at decode: the kernel's GEMV reads the blocks once. Prefill's many
            # rows keep the exact dequantized GEMM, which beats re-reading the blocks per 8 rows.
            return self.native.project(h)
        if self.head_t is not None:
            return matmul(h, self.head_t)
        return self.net.project(h)

    def decode_rows(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                    cache: KVCache) -> torch.Tensor:
        """A batched decode step -> logits [B, V] (``Transformer.decode_rows``). On the CPU the
        native step takes 8 rows per call; where it runs the head too, each group is one call (no
        torch norm and head between steps: a second parallel region per step cost about as
        much as the head itself)."""
        native, B = self.native, tokens.shape[0]
        if native is None or not native.takes(cache):
            return self.project(self.net.forward_hidden(tokens[:, None], Rows(positions, slots), cache)[:, 0])
        groups = [(tokens[i:i + MAX_ROWS], positions[i:i + MAX_ROWS], slots[i:i + MAX_ROWS])
                  for i in range(0, B, MAX_ROWS)]
        if native.fused_head:
            parts = [native.step(*g, cache, logits=True) for g in groups]
            return torch.cat(parts) if len(parts) > 1 else parts[0]
        # each step returns a view of one buffer the next step overwrites
        parts = [native.step(*g, cache).clone() if B > MAX_ROWS else native.step(*g, cache) for g in groups]
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        return self.project(self.net.norm_f(x.to(self.dtype)))

    def trace(self, ids: torch.Tensor, attention_layers=()):
        """``Transformer.trace``, with the arithmetic of this model's own forward (``kernel_rows``), so
        inspection's last layer is the model's own prediction."""
        with kernel_rows():
            return self.net.trace(ids, attention_layers)
