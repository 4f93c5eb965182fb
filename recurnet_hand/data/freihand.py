"""FreiHAND (Zimmermann et al., 2019): right hands with 3D joints, MANO fits and meshes.

Expected layout under ``root``::

    training_K.json          N x 3 x 3 intrinsics (px)
    training_xyz.json        N x 21 x 3 joints, metres, camera frame
    training_mano.json       N x [1 x 61]: 48 pose (3 global + 45 axis-angle), 10 shape, 3 translation
    training_verts.json      N x 778 x 3 MANO vertices, metres, camera frame
    training_scale.json      N floats: one bone length (metres), used by some methods to fix the scale
    training/rgb/%08d.jpg    4 N images, 224 x 224; version k of sample i is image i + k N
    evaluation_K.json, evaluation_scale.json, evaluation_xyz.json, evaluation_verts.json
    (evaluation_mano.json)   and evaluation/rgb/%08d.jpg, one version per sample

``N`` is read from the JSON files (the released set has :data:`FREIHAND_TRAIN_SAMPLES`
unique training and :data:`FREIHAND_EVAL_SAMPLES` evaluation samples). The four image
versions of a training sample differ only in background and post-processing and share
its labels. FreiHAND's joint order (wrist, then thumb to little finger, MCP to tip) is
the project order, so no reordering is applied. All hands are right hands.

Splits (:data:`FREIHAND_SPLITS`): ``"evaluation"`` is the official evaluation set
(labels from the v2 release); ``"all"`` is every training sample; ``"train"`` and
``"test"`` cut the training samples into a fit and a held-out part: ``"test"`` is the
last ``ceil(holdout * N)`` unique sample indices, ``"train"`` the others. The cut is a
contiguous block, so neighbouring (similar) frames mostly fall on one side, and is
made on unique samples, so no image version of a held-out sample is trained on;
FreiHAND ships no subject ids, so the parts are not subject-disjoint.

Labels are checked at construction: a missing file raises ``FileNotFoundError``; a
malformed one (not a JSON list, a sample of the wrong shape, a non-finite value, a
``K`` whose last row is not ``[0, 0, 1]``, a joint behind the camera, files of
different lengths) a :class:`~._io.HandDataError` naming the file and sample index.
Nothing is kept from a failed construction. The JSON files are parsed one sample at a
time, and ``*_verts.json`` (about 1 GB for the real set) and ``*_mano.json`` only when
``vertices`` / ``mano`` ask for them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..mano.io import NUM_VERTICES
from ._frames import FrameDataset, FrameTable
from ._io import HandDataError, load_rgb
from .transforms import AugmentConfig, AugmentParams, crop_hand, sample_augment

__all__ = [
    "FreiHANDDataset",
    "FREIHAND_EVAL_SAMPLES",
    "FREIHAND_SPLITS",
    "FREIHAND_TRAIN_SAMPLES",
    "FREIHAND_VERSIONS",
    "read_freihand_json",
]

#: Unique training samples of the released set (the loader reads N from the files).
FREIHAND_TRAIN_SAMPLES = 32_560
#: Evaluation samples of the released set.
FREIHAND_EVAL_SAMPLES = 3_960
#: Image versions per training sample (image ``i + k N`` is version ``k`` of sample ``i``).
FREIHAND_VERSIONS = 4
#: Accepted ``split`` values.
FREIHAND_SPLITS: tuple[str, ...] = ("train", "test", "all", "evaluation")

_MANO_PARAMS = 61  # 48 pose + 10 shape + 3 translation
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _row(item, shapes: tuple[tuple[int, ...], ...], path: Path, index: int) -> np.ndarray:
    try:
        value = np.asarray(item, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise HandDataError(f"{path}: sample {index} is not a numeric array of shape {shapes[0]} ({err})") from err
    if value.shape not in shapes:
        raise HandDataError(f"{path}: sample {index} has shape {value.shape}, expected {shapes[0]}")
    if not np.isfinite(value).all():
        raise HandDataError(f"{path}: sample {index} holds a non-finite value (NaN or infinity)")
    return value.reshape(shapes[0])


def read_freihand_json(path: str | Path, shape: tuple[int, ...] | Sequence[tuple[int, ...]], *,
                       keep: np.ndarray | None = None, factor: float = 1.0,
                       dtype=np.float64) -> tuple[int, np.ndarray]:
    """Read a FreiHAND label file (a JSON list with one entry per sample), one sample at a time.

    Only one sample's Python objects exist at a time, so a large file (``training_verts.json``)
    costs its text plus the returned array.

    Args:
        path: the JSON file.
        shape: the shape of every sample, or several accepted shapes; samples are
            reshaped to the first (e.g. ``[(61,), (1, 61)]``).
        keep: optional ``(N,)`` bool; only samples ``i`` with ``keep[i]`` are returned
            (all are checked).
        factor: multiply the values by this (e.g. 1000 for metres -> mm).
        dtype: dtype of the returned array.

    Returns:
        ``(count, array)``: the number of samples in the file and the kept samples,
        ``(K, *shape)``.

    Raises:
        FileNotFoundError: if the file is missing.
        HandDataError: naming the file (and the sample index) when it is not a JSON list,
            or a sample is not numeric, has another shape or holds NaN or infinity.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "training_scale.json"
        >>> _ = p.write_text("[0.03, 0.025]")
        >>> count, scale = read_freihand_json(p, (), factor=1000.0)
        >>> count, scale.tolist()
        (2, [30.0, 25.0])
    """
    path = Path(path)
    shapes = (tuple(shape),) if not shape or isinstance(shape[0], int) else tuple(tuple(s) for s in shape)
    if not path.is_file():
        raise FileNotFoundError(f"FreiHAND label file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise HandDataError(f"{path}: cannot read the file as text ({err})") from err
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end()
    if not text.startswith("[", pos):
        raise HandDataError(f"{path}: expected a JSON list with one entry per sample")
    pos = _WHITESPACE.match(text, pos + 1).end()
    rows: list[np.ndarray] = []
    count = 0
    closed = text.startswith("]", pos)
    while not closed:
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise HandDataError(f"{path}: malformed JSON in sample {count} ({err.msg}, char {err.pos})") from err
        value = _row(item, shapes, path, count)
        if keep is None or (count < len(keep) and keep[count]):
            rows.append((value * factor).astype(dtype) if factor != 1.0 else value.astype(dtype))
        count += 1
        pos = _WHITESPACE.match(text, pos).end()
        closed = text.startswith("]", pos)
        if not closed:
            if not text.startswith(",", pos):
                raise HandDataError(f"{path}: malformed JSON after sample {count - 1}: expected ',' or ']' "
                                    f"(char {pos})")
            pos = _WHITESPACE.match(text, pos + 1).end()
    if _WHITESPACE.match(text, pos + 1).end() != len(text):
        raise HandDataError(f"{path}: unexpected content after the list (char {pos + 1})")
    array = np.stack(rows) if rows else np.zeros((0, *shapes[0]), dtype=dtype)
    return count, array


def _check_length(reference: tuple[Path, int], path: Path, count: int) -> None:
    if count != reference[1]:
        raise HandDataError(f"{path} holds {count} samples but {reference[0]} holds {reference[1]}; "
                            "the label files of one split must have one entry per sample")


def _project(joints3d: np.ndarray, K: np.ndarray, ids: np.ndarray, paths: dict[str, Path]) -> np.ndarray:
    """``(U, 21, 2)`` px of ``(U, 21, 3)`` joints through per-sample ``(U, 3, 3)`` intrinsics."""
    bad = np.flatnonzero(np.any(np.abs(K[:, 2] - [0.0, 0.0, 1.0]) > 1e-6, axis=1))
    if bad.size:
        raise HandDataError(f"{paths['K']}: sample {ids[bad[0]]} has last row {K[bad[0], 2].tolist()}, "
                            "expected [0, 0, 1]")
    behind = np.flatnonzero(~(joints3d[..., 2] > 0).all(axis=1))
    if behind.size:
        raise HandDataError(f"{paths['xyz']}: sample {ids[behind[0]]} has a joint with Z <= 0 (behind the camera)")
    uvw = np.einsum("uij,ukj->uki", K, joints3d)
    return uvw[..., :2] / uvw[..., 2:3]


def _resolve_versions(split: str, versions: Sequence[int] | None) -> tuple[int, ...]:
    available = 1 if split == "evaluation" else FREIHAND_VERSIONS
    if versions is None:
        return tuple(range(available))
    chosen = tuple(int(v) for v in versions)
    if not chosen or len(set(chosen)) != len(chosen) or any(not 0 <= v < available for v in chosen):
        raise ValueError(f"versions must be distinct values in [0, {available}) for split {split!r}, got {versions}")
    return chosen


def _unique_ids(split: str, n: int, holdout: float) -> np.ndarray:
    held = math.ceil(holdout * n)
    return {
        "train": np.arange(0, n - held),
        "test": np.arange(n - held, n),
    }.get(split, np.arange(n))


def _camera_map(params: AugmentParams | None) -> np.ndarray:
    """The ``(3, 3)`` map :func:`~.transforms.crop_hand` applies to 3D points (``X -> M X``):
    the rotation about the optical axis, then the mirror ``diag(-1, 1, 1)`` of a flip."""
    if params is None:
        return np.eye(3)
    a = np.deg2rad(params.angle_deg)
    m = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return np.diag([-1.0, 1.0, 1.0]) @ m if params.flip else m


def _map_mano_pose(pose: np.ndarray, params: AugmentParams | None) -> np.ndarray:
    """Turn the global rotation with the camera; a flip mirrors every axis-angle ``(x, y, z) -> (x, -y, -z)``."""
    if params is None:
        return pose
    out = pose.astype(np.float64).reshape(16, 3).copy()
    rz = _camera_map(AugmentParams(angle_deg=params.angle_deg))
    out[0] = Rotation.from_matrix(rz @ Rotation.from_rotvec(out[0]).as_matrix()).as_rotvec()
    if params.flip:
        out[:, 1:] *= -1.0
    return out.reshape(48)


class FreiHANDDataset(FrameDataset):
    """FreiHAND samples as cropped hand samples (see the sample-format notes).

    Labels are read and checked at construction, images decoded in ``__getitem__``.
    Joints are in mm in the camera frame, in the project order; the 2D labels are the
    projections ``K @ xyz``. Item ``j`` is version ``versions[j // U]`` of the ``j % U``-th
    unique sample of the split (``U`` unique samples).

    Besides the common sample keys, ``vertices=True`` adds ``vertices`` ``(778, 3)``
    float32 mm (camera frame, moved with ``joints3d`` by the augmentation's rotation and
    flip), and ``mano=True`` adds ``mano_pose`` ``(48,)`` (axis-angle, global first;
    the global rotation turned with the camera, every rotation mirrored by a flip, the
    usual right-to-left convention) and ``mano_shape`` ``(10,)`` float32. MANO's
    translation is not returned: it does not move simply with a rotation about the camera.

    Args:
        root: dataset root holding the JSON files and ``training/`` / ``evaluation/``.
        split: a :data:`FREIHAND_SPLITS` value (see the module notes).
        versions: image versions (0-3) of each training sample to include; None takes
            all four (the evaluation set has only version 0).
        vertices: also read ``*_verts.json`` and return ``vertices``.
        mano: also read ``*_mano.json`` and return ``mano_pose`` and ``mano_shape``.
        holdout: fraction of the unique training samples in ``"test"`` (``0 <= h < 1``).
        crop_size: side S of the returned crops (px).
        margin: crop side over the joints' bounding-box side.
        augment: augmentation ranges, or None.
        seed: seed of the per-sample augmentation generators.

    Attributes:
        sample_ids: ``(len,)`` unique sample index (JSON row) of each item.
        image_ids: ``(len,)`` image file number of each item.
        scale_mm: ``(len,)`` the ``*_scale.json`` value of each item (mm).

    Raises:
        FileNotFoundError: a label file is missing (in ``__getitem__``: an image, naming
            the item).
        HandDataError: a label file is malformed (naming it and the sample).
        ValueError: unknown split, bad versions or holdout.
    """

    def __init__(self, root: str | Path, split: str = "train", versions: Sequence[int] | None = None, *,
                 vertices: bool = False, mano: bool = False, holdout: float = 0.05, crop_size: int = 224,
                 margin: float = 1.4, augment: AugmentConfig | None = None, seed: int = 0) -> None:
        if split not in FREIHAND_SPLITS:
            raise ValueError(f"unknown FreiHAND split {split!r}; choose from {list(FREIHAND_SPLITS)}")
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {holdout}")
        root = Path(root)
        chosen = _resolve_versions(split, versions)
        prefix = "evaluation" if split == "evaluation" else "training"
        paths = {k: root / f"{prefix}_{k}.json" for k in ("K", "xyz", "scale", "verts", "mano")}

        n, K = read_freihand_json(paths["K"], (3, 3))
        count, xyz = read_freihand_json(paths["xyz"], (21, 3), factor=1000.0)
        _check_length((paths["K"], n), paths["xyz"], count)
        count, scale = read_freihand_json(paths["scale"], [(), (1,)], factor=1000.0)
        _check_length((paths["K"], n), paths["scale"], count)
        ids = _unique_ids(split, n, holdout)
        keep = np.zeros(n, dtype=bool)
        keep[ids] = True
        verts = mano_params = None
        if vertices:
            count, verts = read_freihand_json(paths["verts"], (NUM_VERTICES, 3), keep=keep, factor=1000.0,
                                              dtype=np.float32)
            _check_length((paths["K"], n), paths["verts"], count)
        if mano:
            count, mano_params = read_freihand_json(paths["mano"], [(_MANO_PARAMS,), (1, _MANO_PARAMS)], keep=keep,
                                                    dtype=np.float32)
            _check_length((paths["K"], n), paths["mano"], count)
        joints3d, K = xyz[ids], K[ids]
        joints2d = _project(joints3d, K, ids, paths)

        reps = len(chosen)
        self.root = root
        self.split = split
        self.versions = chosen
        self.num_unique = len(ids)
        self.sample_ids = np.tile(ids, reps)
        self.image_ids = np.concatenate([ids + k * n for k in chosen]) if len(ids) else np.zeros(0, dtype=np.int64)
        self.scale_mm = np.tile(scale[ids], reps)
        self._vertices = verts
        self._mano = mano_params
        image_dir = root / prefix / "rgb"
        frames = FrameTable(
            image_paths=tuple(image_dir / f"{i:08d}.jpg" for i in self.image_ids),
            joints2d=np.tile(joints2d, (reps, 1, 1)),
            joints3d=np.tile(joints3d, (reps, 1, 1)),
            K=np.tile(K, (reps, 1, 1)),
            is_right=np.ones(reps * len(ids), dtype=bool),
            has_3d=True,
        )
        super().__init__(frames, crop_size, margin, augment, seed)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = self._position(index)
        f = self.frames
        # The same draw HandTransform makes, kept here so the 3D map can move the vertices too.
        params = None
        if self.transform.augment is not None:
            params = sample_augment(self.transform.augment, np.random.default_rng([self.seed, self.epoch, index]))
        path = f.image_paths[index]
        try:
            image = load_rgb(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"FreiHAND image of item {index} (sample {self.sample_ids[index]}) not found: "
                                    f"{path}") from err
        except HandDataError as err:
            raise HandDataError(f"item {index} (sample {self.sample_ids[index]}): {err}") from err
        crop = crop_hand(image, f.joints2d[index], f.joints3d[index], f.K[index], True, size=self.transform.size,
                         margin=self.transform.margin, params=params)
        sample = crop.to_sample(index, has_2d=True, has_3d=True)
        row = index % self.num_unique
        if self._vertices is not None:
            moved = self._vertices[row].astype(np.float64) @ _camera_map(params).T
            sample["vertices"] = torch.from_numpy(moved.astype(np.float32))
        if self._mano is not None:
            sample["mano_pose"] = torch.from_numpy(_map_mano_pose(self._mano[row, :48], params).astype(np.float32))
            sample["mano_shape"] = torch.from_numpy(np.ascontiguousarray(self._mano[row, 48:58], dtype=np.float32))
        return sample

    def __repr__(self) -> str:
        return (f"FreiHANDDataset({self.split!r}, {self.num_unique} samples x versions {list(self.versions)}, "
                f"{self.transform!r})")
