"""The trainer's configuration: a frozen dataclass, stored in every checkpoint as a plain dict.

Fields are of two kinds. Those that shape the result (protocol, learning rate,
batch size, seed, ...) must match when a run is resumed from a checkpoint.
Those marked ``runtime`` (output folder, device, logging, progress bar) only
say how this particular process runs and may differ on resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .optim import OPTIMIZERS, SCHEDULES
from .protocols import EndToEnd, Progressive, protocol_from_dict, protocol_to_dict

__all__ = ["TrainConfig", "config_to_dict", "config_from_dict", "config_differences", "PRECISIONS",
           "native_bfloat16"]

#: Training precisions: float32, or a bfloat16 autocast forward.
PRECISIONS = ("float32", "bfloat16")


def native_bfloat16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (so a bfloat16 forward is faster, not emulated).

    CPUs: AVX-512 bf16 or AMX tiles; CUDA: :func:`torch.cuda.is_bf16_supported`; else False.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(check()) for check in checks if check is not None)
    return False


def _runtime(default):
    return field(default=default, metadata={"runtime": True})


@dataclass(frozen=True)
class TrainConfig:
    """How to train a looped network.

    Attributes:
        protocol: :class:`~recurnet.training.EndToEnd` or :class:`~recurnet.training.Progressive`.
        batch_size: samples per step and process (with DDP the global batch is this x world size).
        lr: base learning rate.
        optimizer: an :data:`~recurnet.training.optim.OPTIMIZERS` name (``"adam"``, ``"adamw"``, ``"sgd"``).
        weight_decay: optimizer weight decay.
        schedule: a :data:`~recurnet.training.optim.SCHEDULES` name (``"constant"``, ``"cosine"``),
            spanning each phase.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        seed: seeds torch, numpy and Python at the start and the data order of every epoch.
        num_workers: DataLoader worker processes.
        drop_last: drop the last incomplete batch of each epoch.
        input_key: batch key of the ``(B, C, H, W)`` images.
        precision: ``"float32"`` or ``"bfloat16"``: the forward pass under
            :func:`torch.autocast` in bfloat16 (weights, optimizer and loss stay float32). On
            CPUs with AMX or AVX-512 bf16 and on recent GPUs the step is faster; elsewhere
            bfloat16 is emulated (a CPU with AVX2 only runs the step many times slower) and
            the :class:`~recurnet.training.Trainer` warns (:func:`~recurnet.training.native_bfloat16` decides). A
            setting of the result (it must match on resume).
        ema: keep an exponential moving average of the weights in every phase with this decay
            (e.g. ``0.999``) and end each phase on the average (:class:`~recurnet.training.ema.WeightAverage`);
            None: off. Evaluation callbacks inside a phase see the current weights.
        find_unused_parameters: passed to DDP; needed when some trainable parameter gets no
            gradient (e.g. an uncertainty head whose loss weight is 0).
        out_dir: folder for ``metrics.csv``, ``tensorboard/`` and ``checkpoints/last.pt``
            (None: write nothing). Runtime.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``... Runtime.
        log_every: log training scalars every this many steps. Runtime.
        progress: show a progress bar; None: only when stderr is a terminal. Runtime.
        tensorboard: also write TensorBoard scalars (needs the ``tensorboard`` package). Runtime.
        channels_last: train in the channels-last memory format (model and 4D images); on CPUs
            and tensor-core GPUs convolution nets train faster so. Changes float rounding only.
            Runtime.
        tune_allocator: on a CPU device, keep freed host memory in the process heap
            (:func:`~recurnet.training.allocator.tune_allocator`, glibc only): a faster step,
            the same numbers. Process-wide. Runtime.
        compile: run the network's forward (and so its backward) through :func:`torch.compile`
            (inductor): the first step of every phase compiles for a minute or more, later
            steps fuse the norms, activations and the MANO layer. Changes float rounding only.
            Runtime.

    Examples:
        >>> TrainConfig(EndToEnd(epochs=3), lr=1e-3).protocol.total_epochs
        3
    """

    protocol: EndToEnd | Progressive
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    grad_clip: float | None = None
    seed: int = 0
    num_workers: int = 0
    drop_last: bool = True
    input_key: str = "image"
    precision: str = "float32"
    ema: float | None = None
    find_unused_parameters: bool = False
    out_dir: str | None = _runtime(None)
    device: str = _runtime("auto")
    log_every: int = _runtime(10)
    progress: bool | None = _runtime(None)
    tensorboard: bool = _runtime(False)
    channels_last: bool = _runtime(False)
    tune_allocator: bool = _runtime(True)
    compile: bool = _runtime(False)

    def __post_init__(self):
        if not hasattr(self.protocol, "phases"):
            raise TypeError(f"protocol must be EndToEnd or Progressive, got {type(self.protocol).__name__}")
        for name in ("batch_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if self.num_workers < 0:
            raise ValueError(f"TrainConfig.num_workers must be >= 0, got {self.num_workers}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.ema is not None and not (isinstance(self.ema, (int, float)) and 0 < self.ema < 1):
            raise ValueError(f"TrainConfig.ema must be a decay in (0, 1) or None, got {self.ema!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        OPTIMIZERS.get(self.optimizer)  # unknown names fail now, listing the known ones
        SCHEDULES.get(self.schedule)
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", str(self.out_dir))


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain data (the protocol as ``{"name": ..., ...}``), as stored in checkpoints."""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        out[f.name] = protocol_to_dict(value) if f.name == "protocol" else value
    return out


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from :func:`config_to_dict`'s output or a YAML mapping.

    Raises:
        ValueError: naming unknown keys.
    """
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown TrainConfig keys {unknown}; known: {sorted(known)}")
    values = dict(data)
    if isinstance(values.get("protocol"), Mapping):
        values["protocol"] = protocol_from_dict(values["protocol"])
    return TrainConfig(**values)


def _normalise(value):
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], *, prefix: str = "") -> list[str]:
    """Describe every field where two config dicts differ, e.g. ``"lr: checkpoint 0.001, now 0.01"``.

    Runtime fields of :class:`TrainConfig` are skipped when ``prefix`` is ``"train."``.
    """
    runtime = {f.name for f in fields(TrainConfig) if f.metadata.get("runtime")} if prefix == "train." else set()
    saved, current = _normalise(dict(saved)), _normalise(dict(current))
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        if key in runtime:
            continue
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, prefix=f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out
