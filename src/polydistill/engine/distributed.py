"""Cross-process reductions for multi-process training (``torchrun`` / ``accelerate launch``).

Why a module of its own: the engine and the weighting strategies must agree across ranks — on whether a
step is skipped, on the loss statistics a strategy keeps, on the gradients of a strategy's own parameters
(which DDP does not see: only the student is wrapped) and on validation metrics. Every function is the
identity in a single process, so single-process code paths stay exactly as they were.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def shutdown() -> None:
    """End a multi-process run cleanly: every rank waits for the others, then the process group is destroyed.
    A rank that simply exits while gloo's threads still serve the group can abort (SIGABRT, "terminate called
    without an active exception") and fail the launcher although training finished. No-op in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """gloo reduces CPU tensors, NCCL CUDA tensors."""
    backend = dist.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(backend) else torch.device("cpu")


def _mean_of(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's mean over ranks, in one all-reduce of their concatenation (float64, on the comm device)."""
    flat = torch.cat([t.detach().reshape(-1).to(_comm_device(), torch.float64) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def nanmean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Elementwise mean over ranks of a 1-D float vector, ignoring NaN entries (NaN where every rank has NaN):
    logged per-term losses, where a rank whose batch lacks a task has no value for it."""
    if world_size() == 1:
        return values
    finite = torch.isfinite(values)
    buf = torch.stack([torch.where(finite, values, 0).double(), finite.double()]).to(_comm_device())
    dist.all_reduce(buf)
    total, count = buf.cpu()
    return torch.where(count > 0, total / count.clamp_min(1), float("nan")).to(values.dtype)


def any_over_ranks(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (every rank must call it, so all take the same branch)."""
    if world_size() == 1:
        return flag
    buf = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return bool(buf.item() > 0)


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects: metrics dictionaries)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of parameters DDP does not manage (a weighting's learnable weights, its RL policy)
    over ranks, in one all-reduce. A parameter without a gradient on some ranks counts as zero there; one
    without a gradient on every rank keeps ``None`` (the optimizer then skips it, as in a single process)."""
    params = [p for p in params if p.requires_grad]
    if world_size() == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([float(p.grad is not None) for p in params])
    *means, anywhere = _mean_of([*grads, has])
    for p, mean, present in zip(params, means, anywhere):
        if present > 0:
            p.grad = mean.to(p.device, p.dtype)


def average_buffers(module: torch.nn.Module) -> None:
    """Average floating buffers (batch-norm and teacher-norm running statistics) over ranks after a step, so
    the statistics the saved student evaluates with come from every rank's images, not rank 0's alone."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if world_size() == 1 or not buffers:
        return
    with torch.no_grad():
        for buffer, mean in zip(buffers, _mean_of(buffers)):
            buffer.copy_(mean)
