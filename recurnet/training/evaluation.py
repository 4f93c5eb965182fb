"""Evaluate a looped network over a dataset: per-loop metrics averaged over samples."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..output import LoopOutput
from .distributed import unwrap

__all__ = ["evaluate", "loss_metrics"]

#: ``metrics(output, batch) -> name -> (B,) per-sample values or a scalar for the batch``.
MetricFn = Callable[[LoopOutput, Mapping[str, Any]], Mapping[str, torch.Tensor]]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    metrics: MetricFn,
    *,
    batch_size: int = 64,
    loops: int | None = None,
    exit: str = "all",
    input_key: str = "image",
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean of per-sample metrics over ``data`` with the network in eval mode.

    Args:
        model: a :class:`recurnet.LoopedNet` (or a DDP wrapper around one).
        data: a dataset of dicts (images under ``input_key``).
        metrics: ``metrics(output, batch)`` returning name -> ``(B,)`` per-sample values (averaged
            over samples) or 0-dim tensors (averaged weighted by batch size).
        batch_size: evaluation batch size.
        loops: iterations ``0..loops`` (default: the network's ``max_loops``).
        exit: forward mode, ``"all"`` (every iteration, for per-loop metrics), ``"compact"`` or
            ``"simulate"`` (apply the network's exit policy).
        input_key: batch key of the images.
        device: where to run (default: the model's device).

    Returns:
        name -> mean value.

    Examples:
        >>> def accuracy(out, batch):  # per-loop accuracy, for evaluate(net, data, accuracy)
        ...     return {f"acc/l{l}": (it["logits"].argmax(1) == batch["label"]).float()
        ...             for l, it in enumerate(out.iterations)}
    """
    net = unwrap(model)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    sums: dict[str, float] = {}
    count = 0
    try:
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            if not isinstance(batch, Mapping) or input_key not in batch:
                raise KeyError(f"evaluation batches must be dicts with {input_key!r}; got {type(batch).__name__}")
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            b = batch[input_key].shape[0]
            out = net(batch[input_key], exit=exit, loops=loops, count_cost=exit != "all")
            for name, value in metrics(out, batch).items():
                value = torch.as_tensor(value).detach().double()
                total = value.sum() if value.dim() > 0 else value * b
                if value.dim() > 0 and value.shape[0] != b:
                    raise ValueError(f"metric {name!r} has {value.shape[0]} values for a batch of {b}")
                sums[name] = sums.get(name, 0.0) + float(total)
            count += b
    finally:
        net.train(was_training)
    if count == 0:
        raise ValueError("evaluate got an empty dataset")
    return {name: total / count for name, total in sums.items()}


def loss_metrics(loss: Callable[[LoopOutput, Mapping[str, Any]], Any], prefix: str = "") -> MetricFn:
    """A metric function giving the loss's ``scalars()`` (e.g. per-loop task losses) per batch.

    Args:
        loss: a loss whose result has ``scalars()`` (:class:`recurnet.losses.LoopLoss`).
        prefix: prepended to every name (e.g. ``"val/"``).

    Returns:
        ``metrics(output, batch) -> name -> 0-dim tensor``, for :func:`evaluate`.
    """

    def metrics(output: LoopOutput, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {prefix + k: torch.tensor(v) for k, v in loss(output, batch).scalars().items()}

    return metrics
