"""Data-parallel training with ``torchrun``: process group, ranks, model wrapping.

Launch a training script with ``torchrun --nproc_per_node N script.py``; the
script calls :func:`init_distributed` once, then builds the :class:`Trainer`
as in a single process. The trainer shards the data with a
``DistributedSampler``, wraps the network in ``DistributedDataParallel``
(``gloo`` on CPU, ``nccl`` on GPU), and lets only rank 0 write logs and
checkpoints.

DDP handles the network's :class:`recurnet.LoopOutput` (it searches dataclass
fields for tensors). Parameters that get no gradient in a phase are frozen
before wrapping (see :mod:`recurnet.training.protocols`), so
``find_unused_parameters`` is needed only when a trainable part is left out
of the loss (e.g. an uncertainty head whose loss weight is 0).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistributedContext",
    "init_distributed",
    "current_context",
    "cleanup_distributed",
    "main_process_first",
    "unwrap",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes (1 in a single process).
        local_rank: rank on this machine, selects the GPU.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files."""
        return self.rank == 0


def current_context() -> DistributedContext:
    """The context of the initialised process group, or a single-process context."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local)
    return DistributedContext()


def init_distributed(backend: str | None = None) -> DistributedContext:
    """Join the process group described by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ...).

    Without those variables (a plain ``python script.py``) nothing is initialised and the
    single-process context is returned.

    Args:
        backend: ``"gloo"``, ``"nccl"``...; default ``nccl`` when CUDA is available, else ``gloo``.

    Returns:
        The :class:`DistributedContext`.
    """
    if dist.is_available() and dist.is_initialized():
        return current_context()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return current_context()


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (e.g. building a dataset cache).

    The other ranks wait at a barrier until rank 0 has left the block, so they find
    its files finished instead of writing the same files at the same time. If rank 0
    fails inside the block it raises without reaching the barrier, and ``torchrun``
    stops the waiting ranks. Outside a process group the block just runs.

    Examples:
        >>> with main_process_first():
        ...     pass
    """
    context = current_context()
    if context.enabled and not context.is_main:
        dist.barrier()
    yield
    if context.enabled and context.is_main:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
