"""The training loss: causal-LM cross entropy with the vocabulary projection fused in.

Shapes: B rows, T tokens, C d_model, V vocabulary, N positions that carry loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .data import IGNORE

LOGIT_CHUNK = 1 << 22  # logits materialised at once: 16 MB of float32, whatever the vocabulary


class _LinearCrossEntropy(torch.autograd.Function):
    """``sum_i CE(h_i @ w, t_i)`` whose gradients are made during the forward pass.

    Chunk by chunk: logits, log-sum-exp, then the softmax in place and minus one
    at the target (that is dLoss/dlogits), then ``grad_h = p @ w^T`` and
    ``grad_w += h^T @ p``. The same three matmuls as autograd would run, but no
    [N, V] logits tensor is kept for backward, and no log-softmax backward pass
    walks it again: on the CI CPUs that is about a tenth of a training step.
    Backward only scales the saved gradients by the incoming scalar.
    """

    @staticmethod
    def forward(ctx, h, w, targets, need_h: bool, need_w: bool, amp):
        N, V = targets.numel(), w.shape[1]
        hm, wm = (h, w) if amp is None else (h.to(amp), w.to(amp))
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(w, memory_format=torch.contiguous_format) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        rows = max(1, LOGIT_CHUNK // V)
        for i in range(0, N, rows):
            hc, tc = hm[i:i + rows], targets[i:i + rows]
            logits = (hc @ wm).float()  # [n, V]
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            if need_h or need_w:
                p = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' memory
                p[torch.arange(tc.numel(), device=p.device), tc] -= 1.0
                pm = p if amp is None else p.to(amp)
                if need_h:
                    grad_h[i:i + rows] = pm @ wm.t()
                if need_w:
                    grad_w += hc.t() @ pm
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_out, None if grad_w is None else grad_w * grad_out,
                None, None, None, None)


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy of ``h [N, C] @ w [C, V]`` against ``targets [N]`` (float32 scalar).

    Under autocast the matmuls run in the autocast dtype and the softmax in float32,
    as autocast would do for ``F.cross_entropy(h @ w)``.
    """
    dev = h.device.type
    amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    grad = torch.is_grad_enabled()
    with torch.autocast(dev, enabled=False):
        return _LinearCrossEntropy.apply(h, w, targets, grad and h.requires_grad, grad and w.requires_grad, amp)


class CausalLMLoss(nn.Module):
    """``forward(ids [B, T], labels [B, T]) -> summed cross entropy`` (float32 scalar).

    Labels are unshifted (position t predicts labels[t+1]); IGNORE positions carry no
    loss and are never projected onto the vocabulary. DDP wraps this module, so the
    whole loss runs inside DDP's forward.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.model.forward_hidden(ids)[:, :-1]  # [B, T-1, C]
        targets = labels[:, 1:]  # [B, T-1]
        keep = targets != IGNORE
        if bool(keep.all()):  # packed text: every position counts, no gather (and no scatter back)
            h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
        else:
            h, targets = h[keep], targets[keep]  # [N, C], [N]
        head = self.model.head
        w = self.model.tok_emb.weight.t() if head is None else head.weight  # [C, V]
        return linear_cross_entropy(h, w, targets)
