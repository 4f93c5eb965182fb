"""First-Person Hand Action benchmark (FPHA; Garcia-Hernando et al., 2018), hand pose part.

Expected layout under ``root``::

    data_split_action_recognition.txt
    Hand_pose_annotation_v1/Subject_<k>/<action>/<seq>/skeleton.txt
    Video_files/Subject_<k>/<action>/<seq>/color/color_<t:04d>.jpeg

The split file holds a line ``Training <n>``, ``n`` lines ``Subject_<k>/<action>/<seq>
<label>``, a line ``Test <m>`` and ``m`` such lines. Each ``skeleton.txt`` line is
``t x1 y1 z1 ... x21 y21 z21`` (64 numbers): frame index and 21 joints in mm in the
world (= depth camera) frame, FPHA joint order. Joints are moved into the colour
camera (:data:`~.camera.FPHA_WORLD_TO_COLOUR`), projected with
:data:`~.camera.FPHA_COLOUR` and reordered to the project order. All hands are right hands.

Empty skeleton files and frames with non-finite coordinates are skipped, each with
one counted :class:`~._io.HandDataWarning`. Sequences known to be unusable can be
left out with ``exclude``; no list is built in, so nothing is dropped by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..joints import FPHA_TO_HAND21, reorder
from ._frames import FrameDataset, FrameTable
from ._io import HandDataError, warn_skipped
from .camera import FPHA_COLOUR, FPHA_WORLD_TO_COLOUR, project
from .transforms import AugmentConfig

__all__ = ["FPHADataset", "FPHASequence", "read_fpha_split", "read_skeleton"]

_SPLIT_FILE = "data_split_action_recognition.txt"
_SPLIT_HEADERS = {"Training": "train", "Test": "test"}


@dataclass(frozen=True)
class FPHASequence:
    """One entry of the split file.

    Attributes:
        name: ``"Subject_<k>/<action>/<seq>"``.
        action: action label (0-44).
        split: ``"train"`` or ``"test"``.
    """

    name: str
    action: int
    split: str


def read_fpha_split(path: str | Path) -> tuple[FPHASequence, ...]:
    """Parse ``data_split_action_recognition.txt``.

    Returns:
        All entries, training then test, in file order.

    Raises:
        FileNotFoundError: if the file is missing.
        HandDataError: naming the file and line on a malformed header or entry, or
            when a section has fewer or more entries than its header announces.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FPHA split file not found: {path}")
    entries: list[FPHASequence] = []
    split, expected, seen, header_line = None, 0, 0, 0

    def close_section() -> None:
        if split is not None and seen != expected:
            raise HandDataError(f"{path}:{header_line}: header announces {expected} entries, found {seen}")

    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] in _SPLIT_HEADERS:
            close_section()
            if len(tokens) != 2 or not tokens[1].isdigit():
                raise HandDataError(f"{path}:{lineno}: malformed header {line.strip()!r}, expected e.g. 'Training 600'")
            split, expected, seen, header_line = _SPLIT_HEADERS[tokens[0]], int(tokens[1]), 0, lineno
            continue
        if split is None:
            raise HandDataError(f"{path}:{lineno}: entry before any 'Training'/'Test' header")
        if len(tokens) != 2 or not tokens[1].lstrip("-").isdigit() or tokens[0].count("/") != 2:
            raise HandDataError(f"{path}:{lineno}: malformed entry {line.strip()!r}, "
                                "expected 'Subject_<k>/<action>/<seq> <label>'")
        entries.append(FPHASequence(tokens[0], int(tokens[1]), split))
        seen += 1
    close_section()
    if not entries:
        raise HandDataError(f"{path}: no entries")
    return tuple(entries)


def read_skeleton(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one ``skeleton.txt``.

    Returns:
        ``(frames (T,) int64, joints (T, 21, 3) float64 mm, world frame, FPHA order)``;
        both empty for an empty file.

    Raises:
        FileNotFoundError: if the file is missing.
        HandDataError: naming the file and line when a line does not hold 64 numbers
            or its frame index is not a non-negative integer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FPHA skeleton file not found: {path}")
    frames, joints = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 64:
            raise HandDataError(f"{path}:{lineno}: expected 64 numbers (frame index + 21 x 3 coordinates), "
                                f"got {len(tokens)}")
        try:
            values = np.array(tokens, dtype=np.float64)
        except ValueError as err:
            raise HandDataError(f"{path}:{lineno}: not a number ({err})") from err
        if not (values[0] >= 0 and values[0] == int(values[0])):
            raise HandDataError(f"{path}:{lineno}: frame index must be a non-negative integer, got {tokens[0]}")
        frames.append(int(values[0]))
        joints.append(values[1:].reshape(21, 3))
    if not frames:
        return np.zeros((0,), dtype=np.int64), np.zeros((0, 21, 3))
    return np.asarray(frames, dtype=np.int64), np.stack(joints)


def _read_sequence(root: Path, name: str) -> tuple[FrameTable, int, int]:
    """Labels of one sequence, with the number of frames in its file and of non-finite frames dropped."""
    skeleton = root / "Hand_pose_annotation_v1" / name / "skeleton.txt"
    if not skeleton.is_file():
        raise FileNotFoundError(f"FPHA sequence {name!r} from the split file has no skeleton file: {skeleton}")
    frames, world = read_skeleton(skeleton)
    total = len(frames)
    keep = np.isfinite(world).all(axis=(1, 2))
    frames, world = frames[keep], world[keep]
    joints3d = reorder(FPHA_WORLD_TO_COLOUR.apply(world), FPHA_TO_HAND21)
    K = FPHA_COLOUR.matrix()
    try:
        joints2d = project(joints3d, K)
    except ValueError as err:
        raise HandDataError(f"{skeleton}: {err}") from err
    colour_dir = root / "Video_files" / name / "color"
    table = FrameTable(
        image_paths=tuple(colour_dir / f"color_{t:04d}.jpeg" for t in frames),
        joints2d=joints2d,
        joints3d=joints3d,
        K=np.broadcast_to(K, (len(frames), 3, 3)).copy(),
        is_right=np.ones(len(frames), dtype=bool),
        has_3d=True,
    )
    return table, total, int((~keep).sum())


class FPHADataset(FrameDataset):
    """FPHA frames as cropped hand samples (see the sample-format notes).

    Args:
        root: dataset root (holds the split file and the two folders above).
        split: ``"train"``, ``"test"`` or ``"all"``, per the action-recognition split file.
        crop_size: side S of the returned crops (px).
        margin: crop side over the joints' bounding-box side.
        augment: augmentation ranges, or None.
        seed: seed of the per-sample augmentation generators.
        exclude: sequence names (``"Subject_<k>/<action>/<seq>"``) to leave out;
            each must appear in the split file.

    Attributes:
        sequences: the :class:`FPHASequence` entries read (after ``exclude``).

    Raises:
        FileNotFoundError: the split file, or the skeleton of a listed sequence, is missing.
        HandDataError: the split file or a skeleton file is malformed.
        ValueError: unknown split, or an ``exclude`` name not in the split file.
    """

    def __init__(self, root: str | Path, split: str = "train", crop_size: int = 224, margin: float = 1.4,
                 augment: AugmentConfig | None = None, seed: int = 0, exclude: Sequence[str] = ()) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"unknown FPHA split {split!r}; choose from ['all', 'test', 'train']")
        self.root = Path(root)
        entries = read_fpha_split(self.root / _SPLIT_FILE)
        known = {e.name for e in entries}
        missing = sorted(set(exclude) - known)
        if missing:
            raise ValueError(f"exclude names sequences not in {self.root / _SPLIT_FILE}: {missing}")
        self.sequences = tuple(e for e in entries if (split == "all" or e.split == split) and e.name not in exclude)
        tables, empty, non_finite = [], 0, 0
        for entry in self.sequences:
            table, total, dropped = _read_sequence(self.root, entry.name)
            non_finite += dropped
            empty += total == 0
            tables.append(table)
        warn_skipped(empty, "sequences with empty skeleton files", self.root)
        warn_skipped(non_finite, "frames with non-finite joints", self.root)
        super().__init__(FrameTable.concat(tables, has_3d=True), crop_size, margin, augment, seed)
