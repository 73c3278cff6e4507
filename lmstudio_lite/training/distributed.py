"""DDP under torchrun: the same training code, launched as N processes.

``torchrun --nproc_per_node N -m lmstudio_lite.training.cli --model ... --data ...``
sets RANK / WORLD_SIZE / LOCAL_RANK; ``init_distributed`` then joins the process
group (gloo on CPU, nccl on CUDA). Every rank reads the same data and takes its
own rows of each global batch (``Batcher.shard``), so N processes follow the
one-process loss curve; only rank 0 writes files. Without those variables everything here is a
no-op for one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group when started by torchrun; returns a one-process context otherwise."""
    if not launched_by_torchrun():
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend)
    return ctx


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Each CUDA rank gets its own GPU (cuda:LOCAL_RANK); CPU ranks share the CPU."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def comm_device() -> torch.device:
    """Where collective tensors must live: the GPU for nccl, the CPU for gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a small tensor over ranks in place; make it on ``comm_device()``."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_str(value: str | None, ctx: DistContext) -> str | None:
    """Rank 0's string on every rank (the run id). Sent as bytes in a tensor: no pickling."""
    if not ctx.enabled:
        return value
    dev = comm_device()
    data = torch.tensor(list((value or "").encode("utf-8")), dtype=torch.uint8, device=dev)
    size = torch.tensor([data.numel() if ctx.is_main else 0], dtype=torch.long, device=dev)
    dist.broadcast(size, src=0)
    buf = data if ctx.is_main else torch.zeros(int(size), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src=0)
    return bytes(buf.tolist()).decode("utf-8") or None


def barrier(ctx: DistContext):
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext):
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()

