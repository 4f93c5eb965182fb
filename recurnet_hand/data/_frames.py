"""The label table every real-data loader builds, and the dataset machinery on top of it.

A loader reads all labels at construction into a :class:`FrameTable` (source-image
pixels, camera-frame millimetres, project joint order); images are decoded only in
``__getitem__``, where the table row goes through a :class:`~.transforms.HandTransform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._io import load_rgb
from .transforms import AugmentConfig, HandTransform

__all__ = ["FrameDataset", "FrameTable"]


@dataclass(frozen=True, eq=False)
class FrameTable:
    """Labels of N frames in the project joint order.

    Attributes:
        image_paths: N image files.
        joints2d: ``(N, 21, 2)`` float64 source-image pixels.
        joints3d: ``(N, 21, 3)`` float64 mm, colour-camera frame (zeros without 3D labels).
        K: ``(N, 3, 3)`` float64 source intrinsics (zeros where undefined).
        is_right: ``(N,)`` bool.
        has_3d: whether ``joints3d`` and ``K`` are defined.
    """

    image_paths: tuple[Path, ...]
    joints2d: np.ndarray
    joints3d: np.ndarray
    K: np.ndarray
    is_right: np.ndarray
    has_3d: bool

    def __post_init__(self) -> None:
        n = len(self.image_paths)
        shapes = {"joints2d": (n, 21, 2), "joints3d": (n, 21, 3), "K": (n, 3, 3), "is_right": (n,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"FrameTable.{name} must have shape {shape}, got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.image_paths)

    @classmethod
    def concat(cls, tables: list[FrameTable], has_3d: bool) -> FrameTable:
        """Join tables row-wise (an empty list gives an empty table)."""
        if not tables:
            return cls((), np.zeros((0, 21, 2)), np.zeros((0, 21, 3)), np.zeros((0, 3, 3)),
                       np.zeros((0,), dtype=bool), has_3d)
        return cls(
            tuple(p for t in tables for p in t.image_paths),
            np.concatenate([t.joints2d for t in tables]),
            np.concatenate([t.joints3d for t in tables]),
            np.concatenate([t.K for t in tables]),
            np.concatenate([t.is_right for t in tables]),
            has_3d,
        )


class FrameDataset(torch.utils.data.Dataset):
    """Crops and returns the rows of a :class:`FrameTable` in the sample-dict format.

    Augmentation draws come from ``numpy.random.default_rng([seed, epoch, index])``:
    reproducible, independent of worker count and order; call :meth:`set_epoch` to
    get fresh draws each epoch.

    Attributes:
        frames: the full-image labels, before cropping.
        transform: the crop/augmentation applied in ``__getitem__``.
        seed: seed of the augmentation generators.
        epoch: epoch selected by :meth:`set_epoch`.
    """

    def __init__(self, frames: FrameTable, crop_size: int, margin: float,
                 augment: AugmentConfig | None, seed: int) -> None:
        self.frames = frames
        self.transform = HandTransform(size=crop_size, margin=margin, augment=augment)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (no effect without augmentation)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def _position(self, index: int) -> int:
        """``index`` as a position in ``0..len - 1`` (negative indices count from the end)."""
        n = len(self.frames)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return int(index) % n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = self._position(index)
        f = self.frames
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.transform.augment else None
        crop = self.transform(load_rgb(f.image_paths[index]), f.joints2d[index], f.joints3d[index], f.K[index],
                              bool(f.is_right[index]), rng=rng)
        return crop.to_sample(index, has_2d=True, has_3d=f.has_3d)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.transform!r})"
