"""Writers of tiny STB, FPHA and CMU Panoptic datasets in their real on-disk formats.

Each writer returns the ground truth it wrote so tests can compare the loaders'
output with values computed independently here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from recurnet_hand.data.camera import FPHA_WORLD_TO_COLOUR, STB_SK_DEPTH_TO_COLOUR

STB_IMAGE_SIZE = (640, 480)
FPHA_IMAGE_SIZE = (1920, 1080)


def random_hand(rng: np.random.Generator, centre=(0.0, 0.0, 450.0), spread: float = 60.0) -> np.ndarray:
    """``(21, 3)`` joints (mm) scattered in a ``2 * spread`` cube around ``centre``."""
    return np.asarray(centre) + rng.uniform(-spread, spread, size=(21, 3))


def frame_colour(i: int) -> tuple[int, int, int]:
    """A distinct solid colour per frame index, so tests can tell which image was loaded."""
    return (20 + 10 * i, 200 - 10 * i, 77)


def write_solid_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# --- STB ---------------------------------------------------------------------

def write_stb_sequence(root: Path, seq: str, colour_joints: np.ndarray, cameras=("SK", "BB"),
                       images: bool = True) -> None:
    """Write ``labels/<seq>_<cam>.mat`` and ``images/<seq>/<prefix>_<i>.png`` for N frames.

    Args:
        colour_joints: ``(N, 21, 3)`` mm, STB joint order. For "SK" they are the
            colour-frame positions (stored in the depth frame, as STB does); for
            "BB" they are stored as given (left-camera frame).
    """
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for cam in cameras:
        if cam == "SK":
            stored = STB_SK_DEPTH_TO_COLOUR.inverse().apply(colour_joints)
        else:
            stored = colour_joints
        # handPara is 3 x 21 x N (xyz, joint, frame).
        scipy.io.savemat(root / "labels" / f"{seq}_{cam}.mat", {"handPara": stored.transpose(2, 1, 0)})
        if images:
            prefix = "SK_color" if cam == "SK" else "BB_left"
            for i in range(len(colour_joints)):
                write_solid_image(root / "images" / seq / f"{prefix}_{i}.png", STB_IMAGE_SIZE, frame_colour(i))


def write_stb(root: Path, frames: int = 2, seed: int = 0, sequences=None) -> dict[str, np.ndarray]:
    """A full STB tree (all 12 sequences unless given); returns seq -> ``(N, 21, 3)`` colour joints, STB order."""
    from recurnet_hand.data.stb import STB_SEQUENCES

    rng = np.random.default_rng(seed)
    truth = {}
    for seq in sequences or STB_SEQUENCES:
        joints = np.stack([random_hand(rng) for _ in range(frames)])
        write_stb_sequence(root, seq, joints)
        truth[seq] = joints
    return truth


# --- FPHA --------------------------------------------------------------------

def write_skeleton(path: Path, frames: list[int], world: np.ndarray) -> None:
    """``skeleton.txt``: per line ``t x1 y1 z1 ... x21 y21 z21`` (world mm, FPHA order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [" ".join([str(t)] + [f"{v:.4f}" for v in joints.ravel()]) for t, joints in zip(frames, world)]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def write_fpha_split(root: Path, train: list[str], test: list[str]) -> None:
    lines = [f"Training {len(train)}"] + [f"{name} {i % 45}" for i, name in enumerate(train)]
    lines += [f"Test {len(test)}"] + [f"{name} {i % 45}" for i, name in enumerate(test)]
    (root / "data_split_action_recognition.txt").write_text("\n".join(lines) + "\n")


def write_fpha_sequence(root: Path, name: str, colour_joints: np.ndarray, frames: list[int] | None = None,
                        images: bool = True) -> None:
    """Skeleton (world frame) and colour JPEGs of one sequence.

    Args:
        colour_joints: ``(N, 21, 3)`` colour-frame positions (mm), FPHA order.
        frames: frame indices written in the first column (default ``0..N-1``).
    """
    frames = list(range(len(colour_joints))) if frames is None else frames
    world = FPHA_WORLD_TO_COLOUR.inverse().apply(colour_joints)
    write_skeleton(root / "Hand_pose_annotation_v1" / name / "skeleton.txt", frames, world)
    if images:
        for t in frames:
            path = root / "Video_files" / name / "color" / f"color_{t:04d}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", FPHA_IMAGE_SIZE, frame_colour(t)).save(path, quality=90)


def write_fpha(root: Path, train: dict[str, int], test: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Split file plus sequences ``name -> frame count``; returns name -> colour joints (FPHA order)."""
    rng = np.random.default_rng(seed)
    write_fpha_split(root, list(train), list(test))
    truth = {}
    for name, n in {**train, **test}.items():
        joints = np.stack([random_hand(rng, centre=(0.0, 0.0, 400.0)) for _ in range(n)]) if n else np.zeros((0, 21, 3))
        write_fpha_sequence(root, name, joints)
        truth[name] = joints
    return truth


# --- CMU Panoptic --------------------------------------------------------------

def random_points2d(rng: np.random.Generator, size=(320, 240)) -> np.ndarray:
    """``(21, 3)`` hand_pts rows ``[x, y, 1]`` inside an image of ``size``."""
    xy = rng.uniform([60, 60], [size[0] - 60, size[1] - 60], size=(21, 2))
    return np.concatenate([xy, np.ones((21, 1))], axis=1)


def write_hand_labels(root: Path, folder: str, hands: dict[str, tuple[np.ndarray, int]],
                      size=(320, 240)) -> None:
    """``<root>/<folder>/<name>.json`` with ``hand_pts`` and ``is_left``, plus ``<name>.jpg``."""
    directory = root / folder
    directory.mkdir(parents=True, exist_ok=True)
    for i, (name, (points, is_left)) in enumerate(hands.items()):
        record = {"version": 1.0, "hand_pts": points.tolist(), "is_left": is_left}
        (directory / f"{name}.json").write_text(json.dumps(record))
        Image.new("RGB", size, frame_colour(i)).save(directory / f"{name}.jpg")


def write_v143(root: Path, entries: list[np.ndarray], size=(320, 240)) -> None:
    """``<root>/hands_v143_14817.json`` with ``root: [{img_paths, joint_self}]`` and ``imgs/%08d.jpg``."""
    records = []
    for i, points in enumerate(entries):
        rel = f"imgs/{i:08d}.jpg"
        write_solid_image(root / rel, size, frame_colour(i))
        records.append({"img_paths": rel, "img_width": size[0], "img_height": size[1],
                        "joint_self": points.tolist(), "objpos": points[:, :2].mean(0).tolist()})
    root.mkdir(parents=True, exist_ok=True)
    (root / "hands_v143_14817.json").write_text(json.dumps({"root": records}))
