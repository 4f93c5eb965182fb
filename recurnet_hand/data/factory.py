"""Datasets by name, and the wrappers the training pipeline puts around them.

:data:`DATASETS` maps a name to a builder ``builder(spec, split) -> Dataset``;
:func:`build_dataset` reads a :class:`DatasetSpec`. Built-in names:
``synthetic`` (rendered hands, the offline default), ``stb``, ``fpha``,
``freihand`` and ``panoptic`` (2D only, mixed into STB training as in the paper).

The model's MANO layer has one handedness, so :class:`MirrorToSide` mirrors
every sample of the other hand (image, labels and camera) to that side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset

from recurnet.registry import Registry

from .fpha import FPHADataset
from .freihand import FreiHANDDataset
from .panoptic import PanopticDataset
from .stb import STBDataset
from .synthetic import SyntheticHands
from .transforms import AugmentConfig

__all__ = ["DatasetSpec", "DATASETS", "register_dataset", "build_dataset", "MirrorToSide", "mirror_sample",
           "TRAIN_AUGMENT", "SYNTHETIC_AUGMENT"]

#: Augmentation used for real training data.
TRAIN_AUGMENT = AugmentConfig(rotation_deg=30.0, scale=0.15, translation=0.08, brightness=0.3, contrast=0.3,
                              saturation=0.3)
#: Augmentation of synthetic training hands: the rendering already varies colour, light and
#: placement, so the colour ranges are smaller than for real data. The viewpoints already roll
#: the hand by up to 60 degrees either way, so the in-plane rotation is 15 degrees rather than
#: 30 (it scored better at full size: ``benchmarks/results/full_ablation.md``). The shift
#: stays small so the hand stays near the principal point (the crop centre).
SYNTHETIC_AUGMENT = AugmentConfig(rotation_deg=15.0, scale=0.15, translation=0.04, brightness=0.2, contrast=0.2,
                                  saturation=0.2)


@dataclass(frozen=True)
class DatasetSpec:
    """Which data to load.

    Attributes:
        name: a :data:`DATASETS` name.
        root: dataset folder (real datasets); for ``synthetic``, the cache folder (None renders on the fly).
        crop_size: crop side in pixels.
        num_samples: dataset length (``synthetic`` only; per split).
        seed: dataset seed (``synthetic``: sample ``i`` depends on it; real data: augmentation draws).
        augment: apply :data:`TRAIN_AUGMENT` to real training data.
        workers: rendering processes for the synthetic cache.
        progress: show progress bars while building caches.
        viewpoint: ``synthetic`` only: the viewpoint distribution
            (:data:`recurnet_hand.data.synthetic.VIEWPOINTS`).
        rotation_deg: largest in-plane rotation of the training augmentation (degrees);
            None keeps the default of :data:`TRAIN_AUGMENT` / :data:`SYNTHETIC_AUGMENT`.
        vertices: ``freihand`` only: samples also carry the true mesh ``vertices`` (778 x 3, mm).
    """

    name: str = "synthetic"
    root: str | None = None
    crop_size: int = 224
    num_samples: int = 1000
    seed: int = 0
    augment: bool = True
    workers: int | None = None
    progress: bool = True
    viewpoint: str = "stb"
    rotation_deg: float | None = None
    vertices: bool = False


#: name -> ``builder(spec, split)``.
DATASETS: Registry[Dataset] = Registry("dataset")


def register_dataset(name: str, *, overwrite: bool = False) -> Callable:
    """Register ``builder(spec: DatasetSpec, split: str) -> Dataset`` under ``name``."""
    return DATASETS.register(name, overwrite=overwrite)


def _root(spec: DatasetSpec) -> Path:
    if spec.root is None:
        raise ValueError(f"dataset {spec.name!r} needs a data root (the folder holding its files)")
    root = Path(spec.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{spec.name} data root {root} does not exist or is not a folder")
    return root


def _augment(spec: DatasetSpec, split: str, base: AugmentConfig = TRAIN_AUGMENT) -> AugmentConfig | None:
    if not spec.augment or split != "train":
        return None
    return base if spec.rotation_deg is None else replace(base, rotation_deg=float(spec.rotation_deg))


# Distinct seeds per split keep the synthetic test set disjoint from the training set.
_SPLIT_SEED = {"train": 0, "test": 1_000_003}


@register_dataset("synthetic")
def _synthetic(spec: DatasetSpec, split: str) -> Dataset:
    if split not in _SPLIT_SEED:
        raise ValueError(f"synthetic split must be one of {sorted(_SPLIT_SEED)}, got {split!r}")
    seed = spec.seed + _SPLIT_SEED[split]
    name = f"{split}-{spec.crop_size}px-seed{seed}-{spec.viewpoint}"
    cache = None if spec.root is None else Path(spec.root) / name
    augment = _augment(spec, split, SYNTHETIC_AUGMENT)
    return SyntheticHands(spec.num_samples, crop_size=spec.crop_size, seed=seed, cache_dir=cache,
                          workers=spec.workers, progress=spec.progress, viewpoint=spec.viewpoint, augment=augment)


@register_dataset("stb")
def _stb(spec: DatasetSpec, split: str) -> Dataset:
    # MANO's root is the wrist; STB labels the palm centre, so extrapolate the wrist (documented in stb.py).
    return STBDataset(_root(spec), split=split, palm_to_wrist="ring", crop_size=spec.crop_size,
                      augment=_augment(spec, split), seed=spec.seed)


@register_dataset("fpha")
def _fpha(spec: DatasetSpec, split: str) -> Dataset:
    return FPHADataset(_root(spec), split=split, crop_size=spec.crop_size, augment=_augment(spec, split),
                       seed=spec.seed)


@register_dataset("freihand")
def _freihand(spec: DatasetSpec, split: str) -> Dataset:
    # As published methods do: train on every training sample in all four image versions and
    # test on the official evaluation set (FreiHAND's own "train"/"test" cut is for held-out checks).
    name = {"train": "all", "test": "evaluation"}.get(split, split)
    return FreiHANDDataset(_root(spec), split=name, crop_size=spec.crop_size, augment=_augment(spec, split),
                           seed=spec.seed, vertices=spec.vertices)


@register_dataset("panoptic")
def _panoptic(spec: DatasetSpec, split: str) -> Dataset:
    return PanopticDataset(_root(spec), split=split, crop_size=spec.crop_size, augment=_augment(spec, split),
                           seed=spec.seed)


def build_dataset(spec: DatasetSpec, split: str, *, side: str | None = "right", mix: DatasetSpec | None = None
                  ) -> Dataset:
    """Build a dataset split, optionally mixed with a second one and mirrored to one hand side.

    Args:
        spec: the main dataset.
        split: ``"train"`` or ``"test"``.
        side: mirror every sample to this hand (``"right"``/``"left"``), or None to keep them.
        mix: a second dataset concatenated to the training split (e.g. PANOPTIC with STB).

    Raises:
        KeyError: unknown dataset name (listing the known ones).
        ValueError / FileNotFoundError: a missing root or split.
    """
    data = DATASETS.build(spec.name, spec, split)
    if mix is not None and split == "train":
        data = ConcatDataset([data, DATASETS.build(mix.name, mix, split)])
    return data if side is None else MirrorToSide(data, side)


def mirror_sample(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mirror one sample horizontally: image, 2D (``x -> S - 1 - x``), 3D (``X -> -X``, joints and any
    ``vertices``), ``K``, the hand ``rotation``, any ``mano_pose`` and handedness.

    The projection stays consistent: ``K' X' / Z' == joints2d'``.
    """
    size = sample["image"].shape[-1]
    out = dict(sample)
    out["image"] = sample["image"].flip(-1)
    j2d = sample["joints2d"].clone()
    j2d[:, 0] = size - 1 - j2d[:, 0]
    out["joints2d"] = j2d
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=sample["joints3d"].dtype))
    out["joints3d"] = sample["joints3d"] @ mirror
    flip = torch.tensor([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=sample["K"].dtype)
    out["K"] = flip @ sample["K"] @ mirror.to(sample["K"].dtype)
    out["is_right"] = ~sample["is_right"]
    if "rotation" in sample:  # the mirrored hand model: R -> M R M
        out["rotation"] = mirror @ sample["rotation"] @ mirror
    if "vertices" in sample:
        out["vertices"] = sample["vertices"] @ mirror.to(sample["vertices"].dtype)
    if "mano_pose" in sample:  # a mirrored axis-angle rotation: (x, y, z) -> (x, -y, -z)
        out["mano_pose"] = sample["mano_pose"] * sample["mano_pose"].new_tensor([1.0, -1.0, -1.0]).repeat(
            sample["mano_pose"].shape[-1] // 3)
    return out


class MirrorToSide(Dataset):
    """Wraps a hand dataset so that every sample shows a ``side`` hand.

    Args:
        dataset: yields sample dicts with ``is_right``.
        side: ``"right"`` or ``"left"``.
    """

    def __init__(self, dataset: Dataset, side: str = "right"):
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        self.dataset = dataset
        self.side = side

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.dataset[index]
        if bool(sample["is_right"]) != (self.side == "right"):
            sample = mirror_sample(sample)
        return sample

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch of samples, fetched in one call where the wrapped dataset can (see
        :meth:`SyntheticHands.__getitems__`)."""
        fetch = getattr(self.dataset, "__getitems__", None)
        samples = fetch(list(indices)) if callable(fetch) else [self.dataset[i] for i in indices]
        right = self.side == "right"
        return [s if bool(s["is_right"]) == right else mirror_sample(s) for s in samples]

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to datasets that draw augmentation per epoch."""
        for d in getattr(self.dataset, "datasets", [self.dataset]):
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)
