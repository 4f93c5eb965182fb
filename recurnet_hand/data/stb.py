"""Stereo Hand Pose Tracking Benchmark (STB; Zhang et al., 2016).

Expected layout under ``root``::

    images/<seq>/SK_color_<i>.png      (and BB_left_<i>.png), i = 0, 1, ... unpadded
    labels/<seq>_SK.mat                 handPara: 3 x 21 x N, mm, SK depth-camera frame
    labels/<seq>_BB.mat                 handPara: 3 x 21 x N, mm, BB left-camera frame

with ``<seq>`` one of ``B1Counting, B1Random, ..., B6Random``. All hands are left hands.

STB's joint 0 is the palm centre, not the wrist. ``palm_to_wrist=None`` (the default)
keeps the palm centre as joint 0, so root-relative metrics are taken about the palm
centre, as in the usual STB evaluation; ``"ring"`` or ``"middle"`` replace it by
an extrapolated wrist (see :data:`PALM_TO_WRIST`). Which choice the DIR-Net paper
made is not stated; the option exists to match whichever protocol is compared to.

Frames whose labels are not finite are skipped with one counted
:class:`~._io.HandDataWarning` per label file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from ..joints import STB_TO_HAND21, reorder
from ._frames import FrameDataset, FrameTable
from ._io import HandDataError, warn_skipped
from .camera import STB_BB_LEFT, STB_SK_COLOUR, STB_SK_DEPTH_TO_COLOUR, Intrinsics, RigidTransform, project
from .transforms import AugmentConfig

__all__ = ["STBDataset", "STB_SEQUENCES", "STB_SPLITS", "PALM_TO_WRIST", "palm_to_wrist", "read_stb_labels"]

#: The twelve STB sequences.
STB_SEQUENCES: tuple[str, ...] = tuple(f"B{i}{kind}" for i in range(1, 7) for kind in ("Counting", "Random"))

#: The standard split: test on B1 (3,000 frames per camera), train on B2-B6 (15,000).
STB_SPLITS: dict[str, tuple[str, ...]] = {
    "train": STB_SEQUENCES[2:],
    "test": STB_SEQUENCES[:2],
    "all": STB_SEQUENCES,
}

#: Palm centre -> wrist: ``wrist = mcp + factor * (palm - mcp)`` with ``(mcp joint in
#: project order, factor)``. "ring" follows Zimmermann & Brox's STB preprocessing;
#: "middle" is the middle-MCP variant with factor 2.2.
PALM_TO_WRIST: dict[str, tuple[int, float]] = {
    "ring": (13, 2.0),
    "middle": (9, 2.2),
}


@dataclass(frozen=True)
class _StbCamera:
    image_prefix: str
    intrinsics: Intrinsics
    label_to_camera: RigidTransform


_CAMERAS: dict[str, _StbCamera] = {
    # SK labels live in the depth frame; move them into the colour camera.
    "SK": _StbCamera("SK_color", STB_SK_COLOUR, STB_SK_DEPTH_TO_COLOUR),
    "BB": _StbCamera("BB_left", STB_BB_LEFT, RigidTransform.identity()),
}


def read_stb_labels(path: str | Path) -> np.ndarray:
    """Read one STB label file.

    Args:
        path: ``labels/<seq>_SK.mat`` or ``<seq>_BB.mat``.

    Returns:
        ``(N, 21, 3)`` float64 joints in mm, STB joint order, the file's camera frame.

    Raises:
        FileNotFoundError: if the file is missing.
        HandDataError: if it is not a readable MATLAB file, lacks ``handPara`` or
            ``handPara`` is not ``3 x 21 x N``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STB label file not found: {path}")
    try:
        content = scipy.io.loadmat(path, variable_names=["handPara"])
    except Exception as err:  # scipy raises several unrelated types for damaged files
        raise HandDataError(f"{path}: cannot read MATLAB file ({type(err).__name__}: {err})") from err
    if "handPara" not in content:
        raise HandDataError(f"{path}: no 'handPara' variable")
    para = np.asarray(content["handPara"])
    if para.ndim != 3 or para.shape[:2] != (3, 21) or not np.issubdtype(para.dtype, np.number):
        raise HandDataError(f"{path}: 'handPara' must be a numeric 3 x 21 x N array, got {para.shape} {para.dtype}")
    return para.transpose(2, 1, 0).astype(np.float64)


def palm_to_wrist(joints: np.ndarray, method: str) -> np.ndarray:
    """Replace joint 0 (palm centre) by an extrapolated wrist.

    Args:
        joints: ``(..., 21, 3)`` in project order with the palm centre at index 0 (mm).
        method: a key of :data:`PALM_TO_WRIST`.

    Returns:
        A copy with joint 0 replaced.

    Examples:
        >>> j = np.zeros((21, 3)); j[0] = [0.0, 10.0, 0.0]
        >>> palm_to_wrist(j, "ring")[0].tolist()
        [0.0, 20.0, 0.0]
    """
    if method not in PALM_TO_WRIST:
        raise ValueError(f"unknown palm_to_wrist {method!r}; choose from {sorted(PALM_TO_WRIST)} or None")
    mcp, factor = PALM_TO_WRIST[method]
    out = np.array(joints, dtype=np.float64, copy=True)
    out[..., 0, :] = out[..., mcp, :] + factor * (out[..., 0, :] - out[..., mcp, :])
    return out


def _resolve_sequences(split: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(split, str):
        if split not in STB_SPLITS:
            raise ValueError(f"unknown STB split {split!r}; choose from {sorted(STB_SPLITS)} or pass sequence names")
        return STB_SPLITS[split]
    sequences = tuple(split)
    unknown = [s for s in sequences if s not in STB_SEQUENCES]
    if unknown or not sequences:
        raise ValueError(f"unknown STB sequences {unknown}; known: {list(STB_SEQUENCES)}")
    return sequences


def _read_sequence(root: Path, seq: str, cam: str, wrist: str | None) -> FrameTable:
    spec = _CAMERAS[cam]
    label_path = root / "labels" / f"{seq}_{cam}.mat"
    image_dir = root / "images" / seq
    stb_order = read_stb_labels(label_path)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"STB image folder not found: {image_dir}")
    keep = np.flatnonzero(np.isfinite(stb_order).all(axis=(1, 2)))
    warn_skipped(len(stb_order) - len(keep), "frames with non-finite labels", label_path)
    joints3d = reorder(spec.label_to_camera.apply(stb_order[keep]), STB_TO_HAND21)
    if wrist is not None:
        joints3d = palm_to_wrist(joints3d, wrist)
    K = spec.intrinsics.matrix()
    try:
        joints2d = project(joints3d, K)
    except ValueError as err:
        raise HandDataError(f"{label_path}: {err}") from err
    return FrameTable(
        image_paths=tuple(image_dir / f"{spec.image_prefix}_{i}.png" for i in keep),
        joints2d=joints2d,
        joints3d=joints3d,
        K=np.broadcast_to(K, (len(keep), 3, 3)).copy(),
        is_right=np.zeros(len(keep), dtype=bool),
        has_3d=True,
    )


class STBDataset(FrameDataset):
    """STB frames as cropped hand samples (see the sample-format notes).

    Labels are read at construction; images are decoded in ``__getitem__``. Joints are
    returned in the project order, in the chosen camera's frame (mm), with 2D labels
    from projecting them through that camera.

    Args:
        root: dataset root holding ``images/`` and ``labels/``.
        split: ``"train"`` (B2-B6), ``"test"`` (B1), ``"all"``, or a sequence of
            sequence names such as ``["B1Counting"]``.
        camera: ``"SK"`` (SR300 colour; labels moved from its depth frame) or
            ``"BB"`` (Bumblebee left image).
        palm_to_wrist: None keeps STB's palm centre as joint 0; ``"ring"`` or
            ``"middle"`` replace it by an extrapolated wrist (:data:`PALM_TO_WRIST`).
        crop_size: side S of the returned crops (px).
        margin: crop side over the joints' bounding-box side.
        augment: augmentation ranges, or None.
        seed: seed of the per-sample augmentation generators.

    Raises:
        FileNotFoundError: a label file or image folder is missing.
        HandDataError: a label file is malformed.
        ValueError: unknown split, sequence, camera or palm_to_wrist.
    """

    def __init__(self, root: str | Path, split: str | Sequence[str] = "train", camera: str = "SK",
                 palm_to_wrist: str | None = None, crop_size: int = 224, margin: float = 1.4,
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        if camera not in _CAMERAS:
            raise ValueError(f"unknown STB camera {camera!r}; choose from {sorted(_CAMERAS)}")
        if palm_to_wrist is not None and palm_to_wrist not in PALM_TO_WRIST:
            raise ValueError(f"unknown palm_to_wrist {palm_to_wrist!r}; choose from {sorted(PALM_TO_WRIST)} or None")
        self.root = Path(root)
        self.sequences = _resolve_sequences(split)
        self.camera = camera
        tables = [_read_sequence(self.root, seq, camera, palm_to_wrist) for seq in self.sequences]
        super().__init__(FrameTable.concat(tables, has_3d=True), crop_size, margin, augment, seed)
