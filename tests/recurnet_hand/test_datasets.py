"""STB, FPHA and CMU Panoptic loaders on tiny fake datasets written in the real formats."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from fixtures import (
    frame_colour,
    random_hand,
    random_points2d,
    write_fpha,
    write_fpha_sequence,
    write_fpha_split,
    write_hand_labels,
    write_skeleton,
    write_stb,
    write_stb_sequence,
    write_v143,
)

from recurnet_hand.data import FPHADataset, HandDataError, HandDataWarning, PanopticDataset, STBDataset
from recurnet_hand.data.camera import (
    FPHA_COLOUR,
    FPHA_WORLD_TO_COLOUR,
    STB_BB_LEFT,
    STB_SK_COLOUR,
    STB_SK_DEPTH_TO_COLOUR,
    project,
)
from recurnet_hand.data.transforms import square_box
from recurnet_hand.joints import FPHA_TO_HAND21, STB_TO_HAND21

CROP = 32  # small crops keep the tests fast

SAMPLE_SPEC = {
    "image": (torch.float32, (3, CROP, CROP)),
    "joints2d": (torch.float32, (21, 2)),
    "joints3d": (torch.float32, (21, 3)),
    "K": (torch.float32, (3, 3)),
    "has_2d": (torch.bool, ()),
    "has_3d": (torch.bool, ()),
    "is_right": (torch.bool, ()),
    "index": (torch.int64, ()),
}


def check_sample(sample: dict, index: int) -> None:
    assert set(sample) == set(SAMPLE_SPEC)
    for key, (dtype, shape) in SAMPLE_SPEC.items():
        assert sample[key].dtype == dtype, key
        assert tuple(sample[key].shape) == shape, key
    assert int(sample["index"]) == index
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    if sample["has_3d"]:
        uv = project(sample["joints3d"].double().numpy(), sample["K"].double().numpy())
        np.testing.assert_allclose(uv, sample["joints2d"].numpy(), atol=1e-3)


def assert_colour(sample: dict, colour, atol: float = 3.0) -> None:
    """The crop's centre pixel has the solid colour of the frame that was written."""
    centre = sample["image"][:, CROP // 2, CROP // 2].numpy() * 255.0
    np.testing.assert_allclose(centre, colour, atol=atol)


# --- STB ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def stb(tmp_path_factory):
    root = tmp_path_factory.mktemp("stb")
    return root, write_stb(root, frames=2)


@pytest.mark.parametrize(("split", "length"), [("train", 20), ("test", 4), ("all", 24), (["B3Random"], 2)])
def test_stb_split_lengths(stb, split, length):
    root, _ = stb
    ds = STBDataset(root, split=split, crop_size=CROP)
    assert len(ds) == length


def test_stb_standard_split_sequences(stb):
    root, _ = stb
    assert STBDataset(root, split="test", crop_size=CROP).sequences == ("B1Counting", "B1Random")
    train = STBDataset(root, split="train", crop_size=CROP).sequences
    assert len(train) == 10 and not any(s.startswith("B1") for s in train)


def test_stb_sk_labels_move_to_colour_frame_and_reorder(stb):
    root, truth = stb
    ds = STBDataset(root, split=["B2Counting"], camera="SK", crop_size=CROP)
    expected = truth["B2Counting"][:, STB_TO_HAND21]
    np.testing.assert_allclose(ds.frames.joints3d, expected, atol=1e-6)
    # STB joint 17 (thumb MCP) becomes project joint 1, STB joint 1 (little MCP) project joint 17.
    np.testing.assert_allclose(ds.frames.joints3d[:, 1], truth["B2Counting"][:, 17], atol=1e-6)
    np.testing.assert_allclose(ds.frames.joints3d[:, 17], truth["B2Counting"][:, 1], atol=1e-6)
    np.testing.assert_allclose(ds.frames.K[0], STB_SK_COLOUR.matrix())


def test_stb_sk_depth_to_colour_matches_reference_formula():
    depth = np.array([[10.0, -20.0, 400.0], [0.0, 0.0, 300.0]])
    rotation = STB_SK_DEPTH_TO_COLOUR.R.T  # R of Xc = (Xd - T) @ R
    expected = (depth - np.array([-24.0381, -0.4563, -1.2326])) @ rotation
    np.testing.assert_allclose(STB_SK_DEPTH_TO_COLOUR.apply(depth), expected, atol=1e-12)


def test_stb_point_on_optical_axis_projects_to_principal_point(tmp_path):
    joints = random_hand(np.random.default_rng(1))[None]
    joints[0, 5] = [0.0, 0.0, 500.0]  # STB joint 5 (index MCP) on the colour optical axis
    joints[0, 0] = [100.0, -50.0, 500.0]  # palm: u = cx + fx * 0.2, v = cy - fy * 0.1
    write_stb_sequence(tmp_path, "B1Counting", joints)
    ds = STBDataset(tmp_path, split=["B1Counting"], camera="SK", crop_size=CROP)
    index_mcp = list(STB_TO_HAND21).index(5)
    np.testing.assert_allclose(ds.frames.joints2d[0, index_mcp], [314.78337, 236.42484], atol=1e-6)
    np.testing.assert_allclose(ds.frames.joints2d[0, 0],
                               [314.78337 + 607.92271 * 0.2, 236.42484 - 607.88192 * 0.1], atol=1e-6)


def test_stb_bb_camera_uses_left_frame_and_intrinsics(stb):
    root, truth = stb
    ds = STBDataset(root, split=["B4Random"], camera="BB", crop_size=CROP)
    np.testing.assert_allclose(ds.frames.joints3d, truth["B4Random"][:, STB_TO_HAND21], atol=1e-9)
    np.testing.assert_allclose(ds.frames.joints2d, project(ds.frames.joints3d, STB_BB_LEFT.matrix()), atol=1e-9)
    assert ds.frames.image_paths[1].name == "BB_left_1.png"


def test_stb_samples(stb):
    root, _ = stb
    ds = STBDataset(root, split="test", crop_size=CROP)
    for i in (0, 1, 3):
        sample = ds[i]
        check_sample(sample, i)
        assert not sample["is_right"] and sample["has_3d"] and sample["has_2d"]
        assert_colour(sample, frame_colour(i % 2))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, CROP, CROP) and batch["is_right"].shape == (2,)


@pytest.mark.parametrize(("method", "mcp", "factor"), [("ring", 13, 2.0), ("middle", 9, 2.2)])
def test_stb_palm_to_wrist(stb, method, mcp, factor):
    root, truth = stb
    ds = STBDataset(root, split=["B2Random"], camera="BB", palm_to_wrist=method, crop_size=CROP)
    hand = truth["B2Random"][:, STB_TO_HAND21]
    np.testing.assert_allclose(ds.frames.joints3d[:, 0], hand[:, mcp] + factor * (hand[:, 0] - hand[:, mcp]))
    np.testing.assert_allclose(ds.frames.joints3d[:, 1:], hand[:, 1:])
    np.testing.assert_allclose(ds.frames.joints2d[:, 0], project(ds.frames.joints3d, STB_BB_LEFT.matrix())[:, 0])


def test_stb_augmentation_is_seeded(stb):
    from recurnet_hand.data import AugmentConfig

    root, _ = stb
    aug = AugmentConfig(rotation_deg=30, scale=0.2, translation=0.1, flip_prob=0.5, brightness=0.2)
    a = STBDataset(root, split="test", crop_size=CROP, augment=aug, seed=3)
    b = STBDataset(root, split="test", crop_size=CROP, augment=aug, seed=3)
    torch.testing.assert_close(a[2], b[2])
    check_sample(a[2], 2)
    a.set_epoch(1)
    assert not torch.equal(a[2]["joints2d"], b[2]["joints2d"])


def test_stb_bad_arguments(stb):
    root, _ = stb
    with pytest.raises(ValueError, match="unknown STB split"):
        STBDataset(root, split="val")
    with pytest.raises(ValueError, match="B7Random"):
        STBDataset(root, split=["B7Random"])
    with pytest.raises(ValueError, match="camera"):
        STBDataset(root, camera="RGB")
    with pytest.raises(ValueError, match="palm_to_wrist"):
        STBDataset(root, palm_to_wrist="thumb")


def test_stb_missing_label_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="B1Counting_SK.mat"):
        STBDataset(tmp_path, split="test")


def test_stb_missing_image(tmp_path):
    write_stb_sequence(tmp_path, "B1Counting", random_hand(np.random.default_rng(0))[None].repeat(2, 0))
    (tmp_path / "images" / "B1Counting" / "SK_color_1.png").unlink()
    ds = STBDataset(tmp_path, split=["B1Counting"], crop_size=CROP)
    check_sample(ds[0], 0)
    with pytest.raises(FileNotFoundError, match="SK_color_1.png"):
        ds[1]


def test_stb_corrupt_image(tmp_path):
    write_stb_sequence(tmp_path, "B1Counting", random_hand(np.random.default_rng(0))[None])
    path = tmp_path / "images" / "B1Counting" / "SK_color_0.png"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(HandDataError, match="SK_color_0.png"):
        STBDataset(tmp_path, split=["B1Counting"], crop_size=CROP)[0]


def test_stb_truncated_mat(tmp_path):
    write_stb_sequence(tmp_path, "B1Counting", random_hand(np.random.default_rng(0))[None].repeat(3, 0))
    path = tmp_path / "labels" / "B1Counting_SK.mat"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(HandDataError, match="B1Counting_SK.mat"):
        STBDataset(tmp_path, split=["B1Counting"])


def test_stb_mat_without_handpara_or_wrong_shape(tmp_path):
    import scipy.io

    write_stb_sequence(tmp_path, "B1Counting", random_hand(np.random.default_rng(0))[None])
    path = tmp_path / "labels" / "B1Counting_SK.mat"
    scipy.io.savemat(path, {"other": np.zeros(3)})
    with pytest.raises(HandDataError, match="B1Counting_SK.mat.*handPara"):
        STBDataset(tmp_path, split=["B1Counting"])
    scipy.io.savemat(path, {"handPara": np.zeros((3, 20, 4))})
    with pytest.raises(HandDataError, match="3 x 21 x N"):
        STBDataset(tmp_path, split=["B1Counting"])


def test_stb_nan_frames_are_skipped_with_a_count(tmp_path):
    joints = np.stack([random_hand(np.random.default_rng(i)) for i in range(3)])
    joints[1, 4, 2] = np.nan
    write_stb_sequence(tmp_path, "B1Counting", joints, cameras=("BB",))
    with pytest.warns(HandDataWarning, match="skipped 1 frames with non-finite labels"):
        ds = STBDataset(tmp_path, split=["B1Counting"], camera="BB", crop_size=CROP)
    assert len(ds) == 2
    assert [p.name for p in ds.frames.image_paths] == ["BB_left_0.png", "BB_left_2.png"]
    assert_colour(ds[1], frame_colour(2))


# --- FPHA --------------------------------------------------------------------

TRAIN = {"Subject_1/open_juice_bottle/1": 2, "Subject_1/charge_cell_phone/2": 1}
TEST = {"Subject_2/open_juice_bottle/1": 2}


@pytest.fixture(scope="module")
def fpha(tmp_path_factory):
    root = tmp_path_factory.mktemp("fpha")
    return root, write_fpha(root, TRAIN, TEST)


@pytest.mark.parametrize(("split", "length", "sequences"), [("train", 3, 2), ("test", 2, 1), ("all", 5, 3)])
def test_fpha_split_lengths(fpha, split, length, sequences):
    root, _ = fpha
    ds = FPHADataset(root, split=split, crop_size=CROP)
    assert len(ds) == length and len(ds.sequences) == sequences
    assert {s.split for s in ds.sequences} <= {"train", "test"}


def test_fpha_world_to_colour_and_order(fpha):
    root, truth = fpha
    ds = FPHADataset(root, split="test", crop_size=CROP)
    expected = truth["Subject_2/open_juice_bottle/1"][:, FPHA_TO_HAND21]
    np.testing.assert_allclose(ds.frames.joints3d, expected, atol=1e-3)  # skeleton.txt keeps 4 decimals
    # FPHA joint 1 (thumb MCP) -> project 1; FPHA joint 2 (index MCP) -> project 5; FPHA 6 (TPIP) -> project 2.
    for project_index, fpha_index in [(1, 1), (5, 2), (2, 6), (20, 20)]:
        np.testing.assert_allclose(ds.frames.joints3d[:, project_index],
                                   truth["Subject_2/open_juice_bottle/1"][:, fpha_index], atol=1e-3)
    np.testing.assert_allclose(ds.frames.joints2d, project(ds.frames.joints3d, FPHA_COLOUR.matrix()), atol=1e-9)
    assert ds.frames.is_right.all()


def test_fpha_known_point_projection(tmp_path):
    colour = random_hand(np.random.default_rng(0), centre=(0.0, 0.0, 400.0))[None]
    colour[0, 0] = [0.0, 0.0, 400.0]  # wrist on the colour optical axis
    colour[0, 3] = [200.0, 100.0, 400.0]  # FPHA joint 3 = middle MCP: u = cx + fx / 2, v = cy + fy / 4
    write_fpha_split(tmp_path, ["Subject_1/a/1"], [])
    write_fpha_sequence(tmp_path, "Subject_1/a/1", colour)
    ds = FPHADataset(tmp_path, split="train", crop_size=CROP)
    np.testing.assert_allclose(ds.frames.joints2d[0, 0], [935.732544, 540.681030], atol=1e-2)
    np.testing.assert_allclose(ds.frames.joints2d[0, 9], [935.732544 + 1395.749023 / 2, 540.681030 + 1395.749268 / 4],
                               atol=1e-2)
    world = FPHA_WORLD_TO_COLOUR.inverse().apply(np.array([0.0, 0.0, 400.0]))
    assert not np.allclose(world, [0.0, 0.0, 400.0])  # the extrinsic really moved it


def test_fpha_samples_and_frame_indices(tmp_path):
    name = "Subject_3/pour_milk/4"
    write_fpha_split(tmp_path, [name], [])
    joints = np.stack([random_hand(np.random.default_rng(i), centre=(0.0, 0.0, 400.0)) for i in range(2)])
    write_fpha_sequence(tmp_path, name, joints, frames=[5, 7])
    ds = FPHADataset(tmp_path, split="train", crop_size=CROP)
    assert [p.name for p in ds.frames.image_paths] == ["color_0005.jpeg", "color_0007.jpeg"]
    sample = ds[1]
    check_sample(sample, 1)
    assert sample["is_right"] and sample["has_3d"]
    assert_colour(sample, frame_colour(7), atol=4.0)  # JPEG


def test_fpha_empty_skeleton_and_nan_frames_are_counted(tmp_path):
    write_fpha_split(tmp_path, ["Subject_1/a/1", "Subject_1/a/2", "Subject_1/a/3"], [])
    write_fpha_sequence(tmp_path, "Subject_1/a/1", np.zeros((0, 21, 3)))
    write_fpha_sequence(tmp_path, "Subject_1/a/2", np.zeros((0, 21, 3)))
    joints = np.stack([random_hand(np.random.default_rng(i), centre=(0.0, 0.0, 400.0)) for i in range(3)])
    joints[0, 7, 0] = np.nan
    write_fpha_sequence(tmp_path, "Subject_1/a/3", joints, images=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = FPHADataset(tmp_path, split="train", crop_size=CROP)
    messages = [str(w.message) for w in caught if issubclass(w.category, HandDataWarning)]
    assert any("skipped 2 sequences with empty skeleton files" in m for m in messages)
    assert any("skipped 1 frames with non-finite joints" in m for m in messages)
    assert len(ds) == 2 and [p.name for p in ds.frames.image_paths] == ["color_0001.jpeg", "color_0002.jpeg"]


def test_fpha_malformed_skeleton_line(tmp_path):
    name = "Subject_1/a/1"
    write_fpha_split(tmp_path, [name], [])
    path = tmp_path / "Hand_pose_annotation_v1" / name / "skeleton.txt"
    write_skeleton(path, [0, 1, 2], np.ones((3, 21, 3)))
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0]  # 63 numbers on line 3
    path.write_text("\n".join(lines))
    with pytest.raises(HandDataError, match=r"skeleton\.txt:3: expected 64 numbers"):
        FPHADataset(tmp_path, split="train")
    lines[2] = lines[1].replace("1.0000", "abc", 1)
    path.write_text("\n".join(lines))
    with pytest.raises(HandDataError, match=r"skeleton\.txt:3: not a number"):
        FPHADataset(tmp_path, split="train")


def test_fpha_split_naming_missing_sequence(fpha):
    root, _ = fpha
    split = root / "data_split_action_recognition.txt"
    original = split.read_text()
    try:
        split.write_text(original.replace("Training 2\n", "Training 3\nSubject_9/ghost/1 3\n"))
        with pytest.raises(FileNotFoundError, match="Subject_9/ghost/1"):
            FPHADataset(root, split="train")
    finally:
        split.write_text(original)


@pytest.mark.parametrize(("text", "message"), [
    ("Training 2\nSubject_1/a/1 0\n", r"\.txt:1: header announces 2 entries, found 1"),
    ("Subject_1/a/1 0\n", r"\.txt:1: entry before any"),
    ("Training 1\nSubject_1/a/1\n", r"\.txt:2: malformed entry"),
    ("Training two\n", r"\.txt:1: malformed header"),
])
def test_fpha_malformed_split_file(tmp_path, text, message):
    (tmp_path / "data_split_action_recognition.txt").write_text(text)
    with pytest.raises(HandDataError, match=message):
        FPHADataset(tmp_path)


def test_fpha_exclude(fpha):
    root, _ = fpha
    ds = FPHADataset(root, split="train", crop_size=CROP, exclude=["Subject_1/open_juice_bottle/1"])
    assert len(ds) == 1 and [s.name for s in ds.sequences] == ["Subject_1/charge_cell_phone/2"]
    with pytest.raises(ValueError, match="Subject_7/x/1"):
        FPHADataset(root, exclude=["Subject_7/x/1"])


def test_fpha_missing_split_file_and_bad_split(tmp_path, fpha):
    with pytest.raises(FileNotFoundError, match="data_split_action_recognition.txt"):
        FPHADataset(tmp_path)
    with pytest.raises(ValueError, match="unknown FPHA split"):
        FPHADataset(fpha[0], split="val")


# --- CMU Panoptic ------------------------------------------------------------

@pytest.fixture(scope="module")
def hand_labels(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand_labels")
    rng = np.random.default_rng(0)
    train = {f"img_{i:03d}_{'l' if i == 1 else 'r'}": (random_points2d(rng), int(i == 1)) for i in range(3)}
    test = {"test_000_r": (random_points2d(rng), 0)}
    write_hand_labels(root, "manual_train", train)
    write_hand_labels(root, "manual_test", test)
    return root, train


@pytest.mark.parametrize(("split", "length"), [("train", 3), ("test", 1), ("all", 4)])
def test_panoptic_hand_labels_lengths(hand_labels, split, length):
    assert len(PanopticDataset(hand_labels[0], split=split, crop_size=CROP)) == length


def test_panoptic_hand_labels_samples(hand_labels):
    root, train = hand_labels
    ds = PanopticDataset(root, split="train", crop_size=CROP)
    assert ds.frames.is_right.tolist() == [True, False, True]
    names = sorted(train)
    np.testing.assert_allclose(ds.frames.joints2d[1], train[names[1]][0][:, :2])  # identity joint order
    sample = ds[1]
    check_sample(sample, 1)
    assert not sample["has_3d"] and sample["has_2d"] and not sample["is_right"]
    assert not sample["joints3d"].any() and not sample["K"].any()
    assert_colour(sample, frame_colour(1), atol=4.0)
    box = square_box(ds.frames.joints2d[1], margin=1.4)
    scale = CROP / box.side
    expected = (ds.frames.joints2d[1] - [box.cx - box.side / 2, box.cy - box.side / 2]) * scale - 0.5
    np.testing.assert_allclose(sample["joints2d"].numpy(), expected, atol=1e-4)


def test_panoptic_v143(tmp_path):
    rng = np.random.default_rng(0)
    entries = [random_points2d(rng) for _ in range(3)]
    write_v143(tmp_path, entries)
    ds = PanopticDataset(tmp_path, layout="v143", crop_size=CROP)
    assert len(ds) == 3 and ds.frames.is_right.all()
    assert ds.frames.image_paths[2] == tmp_path / "imgs" / "00000002.jpg"
    np.testing.assert_allclose(ds.frames.joints2d[2], entries[2][:, :2])
    check_sample(ds[2], 2)
    with pytest.raises(ValueError, match="no 'test' split"):
        PanopticDataset(tmp_path, layout="v143", split="test")


def test_panoptic_unlabelled_joints_are_skipped(tmp_path):
    rng = np.random.default_rng(0)
    partial = random_points2d(rng)
    partial[3, 2] = 0
    write_hand_labels(tmp_path, "manual_train", {"a": (random_points2d(rng), 0), "b": (partial, 0)})
    with pytest.warns(HandDataWarning, match="skipped 1 hands with unlabelled joints"):
        ds = PanopticDataset(tmp_path, crop_size=CROP)
    assert [p.name for p in ds.frames.image_paths] == ["a.jpg"]


def test_panoptic_malformed_json(tmp_path):
    write_hand_labels(tmp_path, "manual_train", {"a": (random_points2d(np.random.default_rng(0)), 0)})
    (tmp_path / "manual_train" / "a.json").write_text('{"hand_pts": [[1, 2')
    with pytest.raises(HandDataError, match=r"a\.json: malformed JSON"):
        PanopticDataset(tmp_path)
    (tmp_path / "manual_train" / "a.json").write_text('{"hand_pts": [[1, 2, 1]], "is_left": 0}')
    with pytest.raises(HandDataError, match=r"a\.json: keypoints must be 21"):
        PanopticDataset(tmp_path)
    (tmp_path / "manual_train" / "a.json").write_text('{"hand_pts": []}')
    with pytest.raises(HandDataError, match=r"a\.json: expected an object"):
        PanopticDataset(tmp_path)


def test_panoptic_missing_image_and_bad_arguments(tmp_path):
    write_hand_labels(tmp_path, "manual_train", {"a": (random_points2d(np.random.default_rng(0)), 0)})
    (tmp_path / "manual_train" / "a.jpg").unlink()
    ds = PanopticDataset(tmp_path, crop_size=CROP)
    with pytest.raises(FileNotFoundError, match=r"a\.jpg"):
        ds[0]
    with pytest.raises(ValueError, match="layout"):
        PanopticDataset(tmp_path, layout="coco")
    with pytest.raises(FileNotFoundError, match="manual_test"):
        PanopticDataset(tmp_path, split="test")
    with pytest.raises(IndexError):
        ds[1]
