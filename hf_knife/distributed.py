"""Cross-process helpers: an all-gather that carries gradient, parameter broadcast, and a clean exit from torchrun."""

from __future__ import annotations

import os
import sys
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_gather_with_grad",
    "broadcast_module",
    "check_gather",
    "check_launch",
    "end_distributed_run",
    "is_distributed",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_launch(world_size: int) -> None:
    """Raise if the launcher started more processes than the training arguments will use.

    Under ``accelerate launch --multi_gpu`` on a machine without a GPU, ``TrainingArguments`` without
    ``use_cpu=True`` sets up no process group: every process would train alone on the full data.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > world_size:
        raise ValueError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but the training arguments use "
            f"{world_size}: each process would train alone. On a machine without a GPU pass --use_cpu "
            "(TrainingArguments(use_cpu=True)) so that the processes join one gloo group."
        )


def check_gather(gather_features: bool, world_size: int) -> None:
    """Check ``gather_features=True`` against the launch: a warning in one process, an error without a group.

    In a single process there is nothing to gather (the penalty sees the local batch, as with ``False``), so
    the option is a no-op and a warning says so. With ``world_size > 1`` the all-gather needs an initialised
    ``torch.distributed`` process group of that size; without one it raises ``ValueError``.
    """
    if not gather_features:
        return
    if world_size <= 1:
        warnings.warn(
            "gather_features=True has no effect in a single process (world_size=1): there is nothing to gather, "
            "the penalty uses the local batch. It all-gathers Z and S when several processes are launched "
            "(accelerate launch --multi_gpu --num_processes N, or torchrun).",
            UserWarning,
            stacklevel=3,
        )
        return
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"gather_features=True with world_size={world_size}, but torch.distributed "
            f"{'is not available in this torch build' if not dist.is_available() else 'has no process group'}: "
            "launch with accelerate launch or torchrun, or set gather_features=False"
        )
    if dist.get_world_size() != world_size:
        raise ValueError(
            f"gather_features=True: the training arguments use world_size={world_size} but the torch.distributed "
            f"process group has {dist.get_world_size()} processes"
        )


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


class _AllGather(torch.autograd.Function):
    """Forward: concatenate every process's ``[B_r, ...]`` rows. Backward: sum over processes, own rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        sizes = _gather_sizes(x.shape[0], x.device)
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])  # [sum B_r, ...]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every process holds the gradient of its own copy of the global loss
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x [B_r, ...]`` from all processes in rank order (identity with one process).

    Gradient: each process computes the same global loss, so the backward pass sums the incoming gradients
    over processes and keeps this process's rows; DDP's gradient average then equals the single-process gradient.
    Batches may differ in size across processes.
    """
    if not is_distributed():
        return x
    if not x.requires_grad:
        return _AllGather.apply(x).detach()
    return _AllGather.apply(x)


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of ``module`` from process ``src`` to all others (no-op without DDP)."""
    if not is_distributed():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src)


def end_distributed_run() -> None:
    """Under torchrun, leave once every rank has finished, skipping the interpreter's teardown of the live gloo
    group: that teardown sometimes aborts a rank after all the work is written ("terminate called without an active
    exception", about 1 run in 20 on CPU, with or without ``destroy_process_group``), so torchrun reports a failure.
    Nothing happens in a single process. Call it last in a script's ``if __name__ == "__main__":``."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
