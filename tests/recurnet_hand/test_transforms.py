"""Crops, intrinsics bookkeeping and augmentation consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from recurnet_hand.data.camera import Intrinsics, RigidTransform, project, rodrigues
from recurnet_hand.data.transforms import (
    AugmentConfig,
    AugmentParams,
    CropBox,
    HandTransform,
    augment_crops,
    colour_jitter,
    crop_affine,
    crop_hand,
    flip_crop,
    image_rotation,
    sample_augment,
    square_box,
)

K_SRC = Intrinsics(600.0, 610.0, 320.0, 240.0).matrix()
SIZE = 64


def hand(seed: int = 0, centre=(30.0, -20.0, 500.0)) -> tuple[np.ndarray, np.ndarray]:
    joints3d = np.asarray(centre) + np.random.default_rng(seed).uniform(-50, 50, size=(21, 3))
    return joints3d, project(joints3d, K_SRC)


def blob_image(points: np.ndarray, size=(640, 480), sigma: float = 3.0) -> Image.Image:
    """Black image with one Gaussian blob at each point (all in the red channel)."""
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    img = np.zeros((size[1], size[0]), dtype=np.float64)
    for x, y in points:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    rgb = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    rgb[..., 0] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def centroid(channel: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0:channel.shape[0], 0:channel.shape[1]]
    w = channel.astype(np.float64)
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


# --- camera helpers ------------------------------------------------------------

def test_project_hand_computed():
    K = Intrinsics(500.0, 400.0, 320.0, 240.0).matrix()
    uv = project(np.array([[0.0, 0.0, 800.0], [80.0, -40.0, 400.0]]), K)
    np.testing.assert_allclose(uv, [[320.0, 240.0], [420.0, 200.0]])
    with pytest.raises(ValueError, match="Z <= 0"):
        project(np.array([[0.0, 0.0, -1.0]]), K)
    with pytest.raises(ValueError, match="K must be 3x3"):
        project(np.zeros((1, 3)) + 1, np.eye(2))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=3, max_size=3), st.lists(st.floats(-100, 100), min_size=3, max_size=3))
def test_rigid_transform_round_trips(rotvec, translation):
    t = RigidTransform.from_arrays(rodrigues(rotvec), np.array(translation))
    x = np.random.default_rng(0).normal(size=(5, 3)) * 100
    np.testing.assert_allclose(t.inverse().apply(t.apply(x)), x, atol=1e-9)
    np.testing.assert_allclose(t.compose(t.inverse()).matrix(), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(RigidTransform.from_matrix(t.matrix()).apply(x), t.apply(x), atol=1e-9)


def test_rigid_transform_rejects_non_rotation():
    with pytest.raises(ValueError, match="not a proper rotation"):
        RigidTransform.from_arrays(np.diag([1.0, 1.0, -1.0]), np.zeros(3))


# --- crop geometry -------------------------------------------------------------

def test_square_box_and_crop_affine_hand_computed():
    box = square_box(np.array([[100.0, 50.0], [140.0, 70.0]]), margin=1.5)
    assert box == CropBox(cx=120.0, cy=60.0, side=60.0)
    a = crop_affine(box, 30)
    # The box's outer edges map to the crop's outer pixel edges; its centre to (S - 1) / 2.
    corners = np.array([[90.0, 30.0, 1.0], [150.0, 90.0, 1.0], [120.0, 60.0, 1.0]]) @ a.T
    np.testing.assert_allclose(corners[:, :2], [[-0.5, -0.5], [29.5, 29.5], [14.5, 14.5]])
    shifted = square_box(np.array([[100.0, 50.0], [140.0, 70.0]]), margin=1.5, scale=2.0, shift=(0.1, -0.5))
    assert shifted == CropBox(cx=132.0, cy=0.0, side=120.0)


def test_crop_keeps_projection_and_optical_axis():
    joints3d, joints2d = hand()
    crop = crop_hand(Image.new("RGB", (640, 480)), joints2d, joints3d, K_SRC, False, size=SIZE)
    np.testing.assert_allclose(project(crop.joints3d, crop.K), crop.joints2d, atol=1e-3)
    np.testing.assert_allclose(crop.joints3d, joints3d, atol=1e-4)  # no augmentation: 3D untouched
    # A point on the optical axis lands on the crop's principal point, i.e. where
    # the source principal point (320, 240) is mapped by the crop.
    a = crop_affine(crop.box, SIZE)
    np.testing.assert_allclose(project(np.array([[0.0, 0.0, 700.0]]), crop.K)[0], (a @ [320.0, 240.0, 1.0])[:2],
                               atol=1e-3)
    # The joints' bounding box is centred and spans 1 / margin of the crop.
    span = crop.joints2d.max(0) - crop.joints2d.min(0)
    np.testing.assert_allclose(span.max(), SIZE / 1.4, rtol=1e-5)
    np.testing.assert_allclose((crop.joints2d.max(0) + crop.joints2d.min(0)) / 2, [(SIZE - 1) / 2] * 2, atol=1e-4)


def test_crop_image_content_follows_labels():
    joints3d, joints2d = hand(1)
    image = blob_image(joints2d[:1], sigma=4.0)
    for params in (AugmentParams(), AugmentParams(angle_deg=50.0, flip=True), AugmentParams(scale=2.5)):
        crop = crop_hand(image, joints2d, joints3d, K_SRC, True, size=SIZE, params=params)
        np.testing.assert_allclose(centroid(crop.image[0]), crop.joints2d[0], atol=0.1)


@pytest.mark.parametrize("size", [48, 100, 400])
def test_crop_content_aligned_when_shrinking_and_enlarging(size):
    # Box side ~270 px: 48 takes the reduce-then-warp path, 100 a plain shrink, 400 an enlargement.
    joints3d, joints2d = hand(2, centre=(0.0, 0.0, 300.0))
    image = blob_image(joints2d[3:4], sigma=6.0)
    crop = crop_hand(image, joints2d, joints3d, K_SRC, True, size=size)
    np.testing.assert_allclose(centroid(crop.image[0]), crop.joints2d[3], atol=0.1 * max(1.0, size / crop.box.side))


# --- augmentation --------------------------------------------------------------

params_strategy = st.builds(
    AugmentParams,
    angle_deg=st.floats(-180, 180),
    scale=st.floats(0.7, 1.3),
    shift=st.tuples(st.floats(-0.2, 0.2), st.floats(-0.2, 0.2)),
    flip=st.booleans(),
)


@settings(max_examples=25, deadline=None)
@given(params_strategy, st.integers(0, 100))
def test_augmented_3d_projects_onto_augmented_2d(params, seed):
    joints3d, joints2d = hand(seed)
    crop = crop_hand(Image.new("RGB", (64, 48)), joints2d, joints3d, K_SRC, True, size=SIZE, params=params)
    np.testing.assert_allclose(project(crop.joints3d, crop.K), crop.joints2d, atol=1e-3)
    # Rotation about the optical axis and mirroring keep depth and bone lengths.
    np.testing.assert_allclose(crop.joints3d[:, 2], joints3d[:, 2], atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(crop.joints3d - crop.joints3d[0], axis=1),
                               np.linalg.norm(joints3d - joints3d[0], axis=1), atol=1e-3)
    assert crop.is_right == (not params.flip)


def test_rotation_turns_2d_and_3d_by_the_angle():
    joints3d, joints2d = hand(3)
    plain = crop_hand(Image.new("RGB", (64, 48)), joints2d, joints3d, K_SRC, True, size=SIZE)
    turned = crop_hand(Image.new("RGB", (64, 48)), joints2d, joints3d, K_SRC, True, size=SIZE,
                       params=AugmentParams(angle_deg=90.0))
    # X' = Rz(90) X: (x, y) -> (-y, x).
    np.testing.assert_allclose(turned.joints3d[:, :2], np.stack([-joints3d[:, 1], joints3d[:, 0]], 1), atol=1e-3)
    d_plain = plain.joints2d[5] - plain.joints2d[0]
    d_turned = turned.joints2d[5] - turned.joints2d[0]
    # fx != fy makes the image motion K Rz K^-1 slightly anisotropic; the angle is still ~90 degrees.
    cos = d_plain @ d_turned / np.linalg.norm(d_plain) / np.linalg.norm(d_turned)
    assert abs(cos) < 0.02


def test_flip_twice_is_identity_and_flip_mirrors():
    joints3d, joints2d = hand(4)
    image = blob_image(joints2d[:2])
    crop = crop_hand(image, joints2d, joints3d, K_SRC, False, size=SIZE, params=AugmentParams(angle_deg=20.0))
    flipped = flip_crop(crop)
    np.testing.assert_allclose(flipped.joints2d[:, 0], SIZE - 1 - crop.joints2d[:, 0], atol=1e-5)
    np.testing.assert_allclose(flipped.joints3d[:, 0], -crop.joints3d[:, 0])
    np.testing.assert_array_equal(flipped.image, crop.image[:, :, ::-1])
    assert flipped.is_right and not crop.is_right
    np.testing.assert_allclose(project(flipped.joints3d, flipped.K), flipped.joints2d, atol=1e-3)
    twice = flip_crop(flipped)
    np.testing.assert_array_equal(twice.image, crop.image)
    np.testing.assert_allclose(twice.joints2d, crop.joints2d, atol=1e-5)
    np.testing.assert_array_equal(twice.joints3d, crop.joints3d)
    np.testing.assert_allclose(twice.K, crop.K, atol=1e-5)
    assert twice.is_right == crop.is_right


def test_2d_only_samples_keep_zero_intrinsics():
    _, joints2d = hand(5)
    image = blob_image(joints2d[7:8])
    crop = crop_hand(image, joints2d, np.zeros((21, 3)), np.zeros((3, 3)), True, size=SIZE,
                     params=AugmentParams(angle_deg=-70.0, flip=True))
    assert not crop.K.any() and not crop.joints3d.any()
    np.testing.assert_allclose(centroid(crop.image[0]), crop.joints2d[7], atol=0.1)
    # Without intrinsics the rotation turns about the joints' box centre: distances are kept.
    plain = crop_hand(image, joints2d, np.zeros((21, 3)), np.zeros((3, 3)), True, size=SIZE)
    np.testing.assert_allclose(np.linalg.norm(crop.joints2d - crop.joints2d[0], axis=1) * crop.box.side,
                               np.linalg.norm(plain.joints2d - plain.joints2d[0], axis=1) * plain.box.side,
                               rtol=1e-4)


def test_image_rotation_without_intrinsics_fixes_pivot():
    m = image_rotation(90.0, None, pivot=(10.0, 20.0))
    np.testing.assert_allclose(m @ [10.0, 20.0, 1.0], [10.0, 20.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(m @ [11.0, 20.0, 1.0], [10.0, 21.0, 1.0], atol=1e-12)


def test_sample_augment_is_deterministic_and_in_range():
    config = AugmentConfig(rotation_deg=30, scale=0.25, translation=0.1, brightness=0.3, contrast=0.2,
                           saturation=0.2, flip_prob=0.5)
    draws = [sample_augment(config, np.random.default_rng(s)) for s in range(200)]
    assert sample_augment(config, np.random.default_rng(7)) == draws[7]
    assert all(abs(d.angle_deg) <= 30 and 0.75 <= d.scale <= 1.25 and max(map(abs, d.shift)) <= 0.1
               and 0.7 <= d.brightness <= 1.3 for d in draws)
    assert 60 < sum(d.flip for d in draws) < 140
    assert sample_augment(AugmentConfig(), np.random.default_rng(0)) == AugmentParams()


def test_hand_transform_determinism_and_errors():
    joints3d, joints2d = hand(6)
    image = blob_image(joints2d[:3])
    t = HandTransform(size=SIZE, augment=AugmentConfig(rotation_deg=40, scale=0.2, brightness=0.3, flip_prob=0.5))
    a = t(image, joints2d, joints3d, K_SRC, True, rng=np.random.default_rng(1))
    b = t(image, joints2d, joints3d, K_SRC, True, rng=np.random.default_rng(1))
    c = t(image, joints2d, joints3d, K_SRC, True, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.joints2d, b.joints2d)
    assert not np.array_equal(a.joints2d, c.joints2d)
    with pytest.raises(ValueError, match="rng"):
        t(image, joints2d, joints3d, K_SRC, True)
    with pytest.raises(ValueError, match="joints2d"):
        crop_hand(image, joints2d[:20], joints3d, K_SRC, True)
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=1.0)
    with pytest.raises(ValueError, match="finite"):
        square_box(np.full((21, 2), np.nan))


def test_colour_jitter():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 0.5, size=(3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(colour_jitter(image), image, atol=1e-6)
    np.testing.assert_allclose(colour_jitter(image, brightness=2.0), image * 2.0, atol=1e-6)
    grey = colour_jitter(image, saturation=0.0)
    np.testing.assert_allclose(grey[0], grey[1], atol=1e-6)
    flat = colour_jitter(image, contrast=0.0)
    assert np.ptp(0.299 * flat[0] + 0.587 * flat[1] + 0.114 * flat[2]) < 1e-6
    assert colour_jitter(image, brightness=5.0).max() <= 1.0


def test_to_sample_matches_sample_format():
    joints3d, joints2d = hand(7)
    crop = crop_hand(Image.new("RGB", (640, 480), (255, 0, 0)), joints2d, joints3d, K_SRC, False, size=SIZE)
    sample = crop.to_sample(5, has_3d=True)
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
    assert sample["index"].dtype == torch.int64 and int(sample["index"]) == 5
    assert sample["has_2d"].dtype == torch.bool and sample["is_right"].item() is False
    np.testing.assert_allclose(sample["image"][:, SIZE // 2, SIZE // 2].numpy(), [1.0, 0.0, 0.0])


def _centred_crops(n: int, size: int = 48, seed: int = 0):
    """``n`` hand-centred crops with intrinsics (as synthetic hands are stored) and smooth images."""
    rng = np.random.default_rng(seed)
    K = np.array([[180.0, 0.0, (size - 1) / 2], [0.0, 182.0, (size - 1) / 2], [0.0, 0.0, 1.0]])
    j3d = np.stack([np.array([0.0, 0.0, 400.0]) + rng.uniform(-40, 40, size=(21, 3)) for _ in range(n)])
    j2d = np.stack([project(j, K) for j in j3d])
    ys, xs = np.mgrid[0:size, 0:size]
    images = np.stack([np.stack([(127 + 120 * np.sin(xs / (3 + c + k) + ys / (5 + k))).astype(np.uint8)
                                 for c in range(3)], axis=-1) for k in range(n)])
    rotation = np.stack([rodrigues(rng.normal(size=3)) for _ in range(n)])
    return images, j2d, j3d, np.repeat(K[None], n, axis=0), rotation


@pytest.mark.parametrize("flip", [False, True])
def test_batched_augmentation_equals_crop_hand(flip):
    n, size = 6, 48
    images, j2d, j3d, K, rotation = _centred_crops(n, size)
    config = AugmentConfig(rotation_deg=40, scale=0.2, translation=0.08, brightness=0.3, contrast=0.3,
                           saturation=0.3, flip_prob=1.0 if flip else 0.0)
    params = [sample_augment(config, np.random.default_rng(i)) for i in range(n)]
    right = np.array([True, False] * (n // 2))
    batch = augment_crops(images, j2d, j3d, K, right, params, rotation=rotation)
    centre = (size - 1) / 2
    for b in range(n):
        one = crop_hand(Image.fromarray(images[b]), j2d[b], j3d[b], K[b], bool(right[b]), size=size,
                        params=params[b], box=CropBox(centre, centre, float(size)), rotation=rotation[b])
        for key, value in (("joints2d", one.joints2d), ("joints3d", one.joints3d), ("K", one.K),
                           ("rotation", one.rotation)):
            np.testing.assert_allclose(batch[key][b].numpy(), value, rtol=1e-5, atol=1e-4, err_msg=key)
        assert bool(batch["is_right"][b]) == one.is_right
        # Images agree away from the source's edge (where black comes in, the two resamplers differ).
        inside = _inside_source(params[b], K[b], size)
        diff = np.abs(batch["image"][b].numpy() - one.image)[:, inside]
        assert diff.mean() < 0.01 and np.quantile(diff, 0.99) < 0.05


def _inside_source(params, K, size, margin: float = 2.0) -> np.ndarray:
    """Crop pixels whose source point lies at least ``margin`` px inside the source image."""
    rot = image_rotation(params.angle_deg, K)
    side = size * params.scale
    centre = (size - 1) / 2.0
    box = CropBox(centre + params.shift[0] * side, centre + params.shift[1] * side, side)
    inv = np.linalg.inv(crop_affine(box, size) @ rot)
    ys, xs = np.mgrid[0:size, 0:size]
    src = np.einsum("ij,jhw->ihw", inv, np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64))
    inside = (src[0] >= margin) & (src[0] <= size - 1 - margin) & (src[1] >= margin) & (src[1] <= size - 1 - margin)
    return inside[:, ::-1] if params.flip else inside


def test_batched_augmentation_checks_its_input():
    images, j2d, j3d, K, _ = _centred_crops(2)
    with pytest.raises(ValueError, match="uint8"):
        augment_crops(images.astype(np.float32), j2d, j3d, K, np.ones(2, bool), [AugmentParams()] * 2)
    with pytest.raises(ValueError, match="2 images"):
        augment_crops(images, j2d, j3d, K, np.ones(2, bool), [AugmentParams()])
    with pytest.raises(ValueError, match="box scales"):
        augment_crops(images, j2d, j3d, K, np.ones(2, bool), [AugmentParams(scale=2.5)] * 2)
