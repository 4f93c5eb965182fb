"""Optimizers and learning-rate schedules by name.

Both are registries so a config names them (``optimizer="adamw"``,
``schedule="cosine"``) and users add their own without touching the trainer.
Schedules step once per optimizer step and span one training phase.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..registry import Registry

__all__ = ["OPTIMIZERS", "SCHEDULES", "register_optimizer", "register_schedule"]

#: ``factory(param_groups, lr, weight_decay) -> torch.optim.Optimizer``.
OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
#: ``factory(optimizer, total_steps) -> torch.optim.lr_scheduler.LRScheduler``.
SCHEDULES: Registry[Any] = Registry("learning-rate schedule")


def register_optimizer(name: str, *, overwrite: bool = False) -> Callable:
    """Register ``factory(param_groups, lr, weight_decay) -> Optimizer`` under ``name``."""
    return OPTIMIZERS.register(name, overwrite=overwrite)


def register_schedule(name: str, *, overwrite: bool = False) -> Callable:
    """Register ``factory(optimizer, total_steps) -> LRScheduler`` under ``name``."""
    return SCHEDULES.register(name, overwrite=overwrite)


def _fusable(groups) -> bool:
    """Whether every parameter suits the fused Adam kernels (floating point, on the CPU or CUDA).

    The fused step updates all parameters in a few kernels instead of a dozen small ops per
    tensor, the same update to float rounding; on small networks the per-tensor loop is a
    visible part of the training step.
    """
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    devices = {p.device.type for p in params}
    return bool(params) and devices <= {"cpu", "cuda"} and len(devices) == 1 and all(
        p.is_floating_point() and not p.is_sparse for p in params)


@register_optimizer("adam")
def _adam(groups, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = list(groups)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=_fusable(groups) or None)


@register_optimizer("adamw")
def _adamw(groups, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = list(groups)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=_fusable(groups) or None)


@register_optimizer("sgd")
def _sgd(groups, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _one(_: int) -> float:
    return 1.0


@register_schedule("constant")
def _constant(optimizer: torch.optim.Optimizer, total_steps: int):
    # A module-level function (not a lambda): LambdaLR's state_dict stays plain data.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _one)


@register_schedule("cosine")
def _cosine(optimizer: torch.optim.Optimizer, total_steps: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
