"""CMU Panoptic hand keypoints (Simon et al., 2017): 2D-only samples.

Two of CMU's hand keypoint releases are read, chosen by ``layout``:

``"hand_labels"`` (``hand_labels.zip``, manual annotations)::

    <root>/manual_train/<name>.json  + <name>.jpg
    <root>/manual_test/<name>.json   + <name>.jpg

  each JSON holding ``"hand_pts"`` (21 x [x, y, flag]) and ``"is_left"`` (0 or 1).

``"v143"`` (``hand143_panopticdb.tar``, multiview bootstrapped)::

    <root>/hands_v143_14817.json     {"root": [{"img_paths": "imgs/....jpg",
                                                "joint_self": 21 x [x, y, flag], ...}, ...]}

  ``img_paths`` is relative to ``root``. The entries carry no handedness; an entry
  with an ``"is_left"`` key uses it, otherwise it is returned as a right hand. The
  set has no test part, so only ``split="train"`` / ``"all"`` are accepted.

Joint order: CMU's 21 points are the wrist, then thumb, index, middle, ring and
little finger, each from base to tip, which is the project order
(:mod:`recurnet_hand.joints`); no reordering is applied.

Coordinates are full-image pixels. A flag of 0 marks a point that is not labelled;
since the sample format carries no per-joint mask, a hand with any such point is
skipped (one counted :class:`~._io.HandDataWarning`), as are hands with non-finite
coordinates. Samples have ``has_3d=False``; their ``joints3d`` and ``K`` are all
zeros because no camera is known for these images: ``K`` is undefined, not an
identity, and must not be used to project.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._frames import FrameDataset, FrameTable
from ._io import HandDataError, warn_skipped
from .transforms import AugmentConfig

__all__ = ["PanopticDataset", "PANOPTIC_LAYOUTS", "read_panoptic_json"]

_V143_FILE = "hands_v143_14817.json"
_HAND_LABELS_SPLITS = {"train": ("manual_train",), "test": ("manual_test",), "all": ("manual_train", "manual_test")}


@dataclass(frozen=True)
class _Hand:
    image: Path
    points: np.ndarray  # (21, 3): x, y, flag
    is_right: bool


def read_panoptic_json(path: str | Path) -> Any:
    """Load a JSON file, naming it in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Panoptic annotation file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HandDataError(f"{path}: malformed JSON ({err})") from err


def _points(value: Any, where: str) -> np.ndarray:
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise HandDataError(f"{where}: keypoints are not numeric ({err})") from err
    if points.shape != (21, 3):
        raise HandDataError(f"{where}: keypoints must be 21 x [x, y, flag], got shape {points.shape}")
    return points


def _is_left(value: Any, where: str) -> bool:
    if value not in (0, 1):  # also accepts True/False
        raise HandDataError(f"{where}: 'is_left' must be 0 or 1, got {value!r}")
    return bool(value)


def _read_hand_labels(root: Path, split: str) -> Iterator[_Hand]:
    if split not in _HAND_LABELS_SPLITS:
        raise ValueError(f"unknown split {split!r} for layout 'hand_labels'; choose from {sorted(_HAND_LABELS_SPLITS)}")
    for folder in _HAND_LABELS_SPLITS[split]:
        directory = root / folder
        if not directory.is_dir():
            raise FileNotFoundError(f"Panoptic annotation folder not found: {directory}")
        for path in sorted(directory.glob("*.json")):
            record = read_panoptic_json(path)
            if not isinstance(record, dict) or "hand_pts" not in record or "is_left" not in record:
                raise HandDataError(f"{path}: expected an object with keys 'hand_pts' and 'is_left'")
            yield _Hand(path.with_suffix(".jpg"), _points(record["hand_pts"], str(path)),
                        not _is_left(record["is_left"], str(path)))


def _read_v143(root: Path, split: str) -> Iterator[_Hand]:
    if split not in ("train", "all"):
        raise ValueError(f"layout 'v143' has no {split!r} split; use 'train' or 'all'")
    path = root / _V143_FILE
    content = read_panoptic_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("root"), list):
        raise HandDataError(f"{path}: expected an object with a list under 'root'")
    for i, entry in enumerate(content["root"]):
        where = f"{path} entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("img_paths"), str) or "joint_self" not in entry:
            raise HandDataError(f"{where}: expected an object with 'img_paths' (string) and 'joint_self'")
        is_right = not _is_left(entry["is_left"], where) if "is_left" in entry else True
        yield _Hand(root / entry["img_paths"], _points(entry["joint_self"], where), is_right)


#: Layout name -> reader yielding the hands of ``(root, split)``; add entries for other releases.
PANOPTIC_LAYOUTS: dict[str, Callable[[Path, str], Iterator[_Hand]]] = {
    "hand_labels": _read_hand_labels,
    "v143": _read_v143,
}


class PanopticDataset(FrameDataset):
    """CMU Panoptic hands as cropped 2D-only samples (``has_3d`` False, ``joints3d`` and ``K`` zeros).

    Args:
        root: the release folder (``hand_labels`` or ``hand143_panopticdb``).
        layout: a key of :data:`PANOPTIC_LAYOUTS`.
        split: ``"train"``, ``"test"`` or ``"all"`` (``"v143"`` has no test part).
        crop_size: side S of the returned crops (px).
        margin: crop side over the joints' bounding-box side.
        augment: augmentation ranges, or None. Rotations turn about the hand's box centre.
        seed: seed of the per-sample augmentation generators.

    Raises:
        FileNotFoundError: an annotation file or folder is missing.
        HandDataError: an annotation file is malformed.
        ValueError: unknown layout or split.
    """

    def __init__(self, root: str | Path, layout: str = "hand_labels", split: str = "train", crop_size: int = 224,
                 margin: float = 1.4, augment: AugmentConfig | None = None, seed: int = 0) -> None:
        if layout not in PANOPTIC_LAYOUTS:
            raise ValueError(f"unknown Panoptic layout {layout!r}; choose from {sorted(PANOPTIC_LAYOUTS)}")
        self.root = Path(root)
        self.layout = layout
        hands, unlabelled, non_finite = [], 0, 0
        for hand in PANOPTIC_LAYOUTS[layout](self.root, split):
            if not np.isfinite(hand.points).all():
                non_finite += 1
            elif np.any(hand.points[:, 2] == 0):
                unlabelled += 1
            else:
                hands.append(hand)
        warn_skipped(unlabelled, "hands with unlabelled joints (flag 0)", self.root)
        warn_skipped(non_finite, "hands with non-finite coordinates", self.root)
        n = len(hands)
        frames = FrameTable(
            image_paths=tuple(h.image for h in hands),
            joints2d=np.stack([h.points[:, :2] for h in hands]) if hands else np.zeros((0, 21, 2)),
            joints3d=np.zeros((n, 21, 3)),
            K=np.zeros((n, 3, 3)),
            is_right=np.array([h.is_right for h in hands], dtype=bool),
            has_3d=False,
        )
        super().__init__(frames, crop_size, margin, augment, seed)
