"""FreiHAND loader on tiny fake datasets written in the real on-disk format (JSON lists, 224 px JPEGs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import frame_colour, random_hand
from PIL import Image
from scipy.spatial.transform import Rotation

from recurnet_hand.data import AugmentConfig, FreiHANDDataset, HandDataError
from recurnet_hand.data.camera import project
from recurnet_hand.data.factory import DatasetSpec, build_dataset
from recurnet_hand.data.freihand import FREIHAND_VERSIONS, read_freihand_json

CROP = 32
TRAIN_N, EVAL_N = 3, 2
#: A vertex placed exactly on a joint, so the two must move together.
VERTEX_ON_JOINT = (0, 5)
AUGMENT = AugmentConfig(rotation_deg=90.0, scale=0.2, translation=0.1, flip_prob=0.5, brightness=0.2)


def labels(n: int, seed: int) -> dict[str, list]:
    """FreiHAND labels of ``n`` samples as the JSON files hold them (metres, camera frame)."""
    rng = np.random.default_rng(seed)
    K, xyz, verts, mano, scale = [], [], [], [], []
    for _ in range(n):
        f = rng.uniform(450.0, 550.0)
        K.append([[f, 0.0, rng.uniform(100.0, 124.0)], [0.0, f * 1.01, rng.uniform(100.0, 124.0)], [0.0, 0.0, 1.0]])
        joints = random_hand(rng, centre=(0.0, 0.0, 600.0), spread=50.0) / 1000.0
        v = joints[rng.integers(0, 21, size=778)] + rng.normal(0.0, 0.005, size=(778, 3))
        v[VERTEX_ON_JOINT[0]] = joints[VERTEX_ON_JOINT[1]]
        xyz.append(joints.tolist())
        verts.append(v.tolist())
        mano.append([rng.normal(0.0, 0.3, size=61).tolist()])  # 1 x 61
        scale.append(float(rng.uniform(0.02, 0.04)))
    return {"K": K, "xyz": xyz, "verts": verts, "mano": mano, "scale": scale}


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


def write_freihand(root: Path, train: int = TRAIN_N, evaluation: int = EVAL_N) -> dict[str, dict[str, list]]:
    """Training (4 image versions at ``i + k N``) and evaluation files; returns the labels written."""
    truth = {"training": labels(train, 0), "evaluation": labels(evaluation, 1)}
    for prefix, versions in (("training", FREIHAND_VERSIONS), ("evaluation", 1)):
        n = len(truth[prefix]["K"])
        for key, value in truth[prefix].items():
            write_json(root / f"{prefix}_{key}.json", value)
        folder = root / prefix / "rgb"
        folder.mkdir(parents=True, exist_ok=True)
        for image_id in range(versions * n):
            Image.new("RGB", (224, 224), frame_colour(image_id)).save(folder / f"{image_id:08d}.jpg", quality=95)
    return truth


@pytest.fixture(scope="module")
def freihand(tmp_path_factory):
    root = tmp_path_factory.mktemp("freihand")
    return root, write_freihand(root)


@pytest.fixture
def fresh(tmp_path):
    """A writable copy for the bad-input tests."""
    return tmp_path, write_freihand(tmp_path, train=3, evaluation=1)


def centre_colour(sample: dict) -> np.ndarray:
    return sample["image"][:, CROP // 2, CROP // 2].numpy() * 255.0


# --- lengths, versions, labels -----------------------------------------------------

@pytest.mark.parametrize(("split", "versions", "length"), [
    ("all", None, 12), ("all", (0,), 3), ("train", None, 8), ("test", None, 4), ("train", (1, 3), 4),
    ("evaluation", None, 2), ("evaluation", (0,), 2),
])
def test_split_lengths(freihand, split, versions, length):
    root, _ = freihand
    assert len(FreiHANDDataset(root, split=split, versions=versions, crop_size=CROP)) == length


def test_holdout_is_the_tail_of_the_unique_samples_in_every_version(freihand):
    root, _ = freihand
    train = FreiHANDDataset(root, split="train", crop_size=CROP)  # ceil(0.05 * 3) = 1 held out
    test = FreiHANDDataset(root, split="test", crop_size=CROP)
    assert train.sample_ids.tolist() == [0, 1] * 4
    assert test.sample_ids.tolist() == [2] * 4
    assert test.image_ids.tolist() == [2, 5, 8, 11]
    assert not set(train.sample_ids) & set(test.sample_ids)
    wide = FreiHANDDataset(root, split="test", holdout=0.5, crop_size=CROP)
    assert wide.sample_ids.tolist() == [1, 2] * 4


def test_items_load_version_k_of_sample_i_from_image_i_plus_k_n(freihand):
    root, truth = freihand
    ds = FreiHANDDataset(root, split="all", versions=(2, 0), crop_size=CROP)
    assert ds.image_ids.tolist() == [6, 7, 8, 0, 1, 2]
    for item, image_id in enumerate(ds.image_ids):
        sample = ds[item]
        np.testing.assert_allclose(centre_colour(sample), frame_colour(int(image_id)), atol=4)
        i = ds.sample_ids[item]
        np.testing.assert_allclose(sample["joints3d"].numpy(), np.asarray(truth["training"]["xyz"][i]) * 1000.0,
                                   rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(ds.scale_mm, np.array(truth["training"]["scale"])[ds.sample_ids] * 1000.0)


def test_samples_mm_projection_and_right_hands(freihand):
    root, truth = freihand
    ds = FreiHANDDataset(root, split="evaluation", crop_size=CROP)
    for i in range(len(ds)):
        xyz_mm = np.asarray(truth["evaluation"]["xyz"][i]) * 1000.0
        K_src = np.asarray(truth["evaluation"]["K"][i])
        uvw = xyz_mm @ K_src.T
        source_uv = uvw[:, :2] / uvw[:, 2:]
        np.testing.assert_allclose(ds.frames.joints2d[i], source_uv)  # full-image labels are K @ xyz
        s = ds[i]
        assert set(s) == {"image", "joints2d", "joints3d", "K", "has_2d", "has_3d", "is_right", "index"}
        assert tuple(s["image"].shape) == (3, CROP, CROP) and s["image"].dtype == torch.float32
        assert bool(s["is_right"]) and bool(s["has_2d"]) and bool(s["has_3d"]) and int(s["index"]) == i
        np.testing.assert_allclose(s["joints3d"].numpy(), xyz_mm, atol=1e-3)
        # In the crop, the returned K projects the joints onto the returned 2D labels ...
        np.testing.assert_allclose(project(s["joints3d"].double().numpy(), s["K"].double().numpy()),
                                   s["joints2d"].numpy(), atol=1e-3)
        # ... and K_crop = A K_src for a scale-and-shift pixel map A that moves K @ xyz there.
        a = s["K"].double().numpy() @ np.linalg.inv(K_src)
        np.testing.assert_allclose(a[[0, 1, 2, 2], [1, 0, 0, 1]], 0.0, atol=1e-5)
        assert a[0, 0] == pytest.approx(a[1, 1], rel=1e-5) and a[2, 2] == pytest.approx(1.0)
        np.testing.assert_allclose(source_uv @ a[:2, :2].T + a[:2, 2], s["joints2d"].numpy(), atol=1e-3)
        # The joints' box (margin 1.4) fills the crop: the joints span 1 / 1.4 of it.
        span = (s["joints2d"].numpy().max(0) - s["joints2d"].numpy().min(0)).max()
        assert span == pytest.approx(CROP / 1.4, rel=1e-4)


def test_vertices_and_mano_without_augmentation(freihand):
    root, truth = freihand
    ds = FreiHANDDataset(root, split="all", versions=(1,), vertices=True, mano=True, crop_size=CROP)
    s = ds[2]
    np.testing.assert_allclose(s["vertices"].numpy(), np.asarray(truth["training"]["verts"][2]) * 1000.0,
                               rtol=1e-6, atol=1e-3)
    mano = np.asarray(truth["training"]["mano"][2][0])
    np.testing.assert_allclose(s["mano_pose"].numpy(), mano[:48], rtol=1e-6)
    np.testing.assert_allclose(s["mano_shape"].numpy(), mano[48:58], rtol=1e-6)
    assert s["vertices"].shape == (778, 3) and s["vertices"].dtype == torch.float32


def test_vertices_move_with_the_joints_under_augmentation(freihand):
    root, truth = freihand
    ds = FreiHANDDataset(root, split="all", vertices=True, crop_size=CROP, augment=AUGMENT, seed=1)
    flips = set()
    for epoch in range(2):
        ds.set_epoch(epoch)
        for item in range(len(ds)):
            s = ds[item]
            flips.add(bool(s["is_right"]))
            v, j = s["vertices"].double().numpy(), s["joints3d"].double().numpy()
            np.testing.assert_allclose(v[VERTEX_ON_JOINT[0]], j[VERTEX_ON_JOINT[1]], atol=1e-3)
            # A rigid map (rotation about the optical axis, maybe a mirror): distances are kept.
            orig = np.asarray(truth["training"]["verts"][ds.sample_ids[item]]) * 1000.0
            np.testing.assert_allclose(np.linalg.norm(v[:50] - v[50:100], axis=1),
                                       np.linalg.norm(orig[:50] - orig[50:100], axis=1), atol=1e-3)
            # ... that turns about Z (depth unchanged).
            np.testing.assert_allclose(v[:, 2], orig[:, 2], atol=1e-3)
    assert flips == {True, False}  # both branches were exercised


def test_mano_pose_turns_with_the_camera_and_mirrors_on_a_flip(freihand):
    root, truth = freihand
    mano = np.asarray(truth["training"]["mano"][0][0])
    turn = FreiHANDDataset(root, split="all", versions=(0,), mano=True, crop_size=CROP,
                           augment=AugmentConfig(rotation_deg=90.0))
    s = turn[0]
    src = np.asarray(truth["training"]["xyz"][0]) * 1000.0
    rz, *_ = np.linalg.lstsq(src, s["joints3d"].double().numpy(), rcond=None)  # joints3d = src @ rz
    global_after = Rotation.from_rotvec(s["mano_pose"][:3].double().numpy()).as_matrix()
    np.testing.assert_allclose(global_after, rz.T @ Rotation.from_rotvec(mano[:3]).as_matrix(), atol=1e-4)
    np.testing.assert_allclose(s["mano_pose"][3:].numpy(), mano[3:48], rtol=1e-6)
    flip = FreiHANDDataset(root, split="all", versions=(0,), mano=True, crop_size=CROP,
                           augment=AugmentConfig(flip_prob=1.0))
    s = flip[0]
    assert not bool(s["is_right"])
    mirrored = mano[:48].reshape(16, 3) * [1.0, -1.0, -1.0]
    np.testing.assert_allclose(s["mano_pose"].numpy(), mirrored.ravel(), rtol=1e-5, atol=1e-6)


def test_augmentation_is_seeded_and_consistent(freihand):
    root, _ = freihand
    a = FreiHANDDataset(root, split="train", crop_size=CROP, augment=AUGMENT, seed=3)
    b = FreiHANDDataset(root, split="train", crop_size=CROP, augment=AUGMENT, seed=3)
    torch.testing.assert_close(a[5], b[5])
    s = a[5]
    np.testing.assert_allclose(project(s["joints3d"].double().numpy(), s["K"].double().numpy()),
                               s["joints2d"].numpy(), atol=1e-3)
    a.set_epoch(1)
    assert not torch.equal(a[5]["joints2d"], b[5]["joints2d"])


def test_factory_trains_on_all_versions_and_tests_on_the_evaluation_set(freihand):
    root, _ = freihand
    spec = DatasetSpec(name="freihand", root=str(root), crop_size=CROP)
    train, test = build_dataset(spec, "train"), build_dataset(spec, "test")
    assert len(train) == 12 and len(test) == 2
    assert train.dataset.transform.augment is not None and test.dataset.transform.augment is None
    assert test.dataset.split == "evaluation"
    assert bool(test[1]["is_right"])


def test_json_reader_accepts_pretty_printed_files(tmp_path):
    value = [[[1.0, 2.0, 3.0]] * 21, [[4.0, 5.0, 6.0]] * 21]
    compact, pretty = tmp_path / "a.json", tmp_path / "b.json"
    compact.write_text(json.dumps(value, separators=(",", ":")))
    pretty.write_text("\n " + json.dumps(value, indent=2) + "\n")
    for path in (compact, pretty):
        count, array = read_freihand_json(path, (21, 3), keep=np.array([False, True]))
        assert count == 2 and array.shape == (1, 21, 3) and array[0, 0].tolist() == [4.0, 5.0, 6.0]
    empty = tmp_path / "c.json"
    empty.write_text("[ ]")
    assert read_freihand_json(empty, (3, 3))[1].shape == (0, 3, 3)


# --- bad input -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["training_K.json", "training_xyz.json", "training_scale.json"])
def test_missing_label_file(fresh, name):
    root, _ = fresh
    (root / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        FreiHANDDataset(root)


def test_vertex_and_mano_files_are_read_only_when_asked(fresh):
    root, _ = fresh
    (root / "training_verts.json").write_text("[[[0.0, 0.0")  # truncated: reading it would fail
    (root / "training_mano.json").unlink()
    assert len(FreiHANDDataset(root, split="all", crop_size=CROP)) == 12
    with pytest.raises(HandDataError, match="training_verts.json.*sample 0"):
        FreiHANDDataset(root, split="all", vertices=True)
    with pytest.raises(FileNotFoundError, match="training_mano.json"):
        FreiHANDDataset(root, split="all", mano=True)


@pytest.mark.parametrize("key", ["xyz", "scale", "verts", "mano"])
def test_files_of_different_lengths(fresh, key):
    root, truth = fresh
    write_json(root / f"training_{key}.json", truth["training"][key][:2])
    with pytest.raises(HandDataError, match=rf"training_{key}.json holds 2 samples but \S*training_K.json holds 3"):
        FreiHANDDataset(root, split="all", vertices=True, mano=True)


def _corrupt(truth: dict, key: str, index: int, value) -> list:
    rows = list(truth["training"][key])
    rows[index] = value
    return rows


@pytest.mark.parametrize(("key", "index", "value", "message"), [
    ("xyz", 1, [[0.1, 0.1, 0.5]] * 20, r"sample 1 has shape \(20, 3\), expected \(21, 3\)"),
    ("verts", 2, [[0.1, 0.1, 0.5]] * 777, r"sample 2 has shape \(777, 3\), expected \(778, 3\)"),
    ("K", 1, [[500.0, 0.0, 112.0, 0.0], [0.0, 500.0, 112.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
     r"sample 1 has shape \(3, 4\), expected \(3, 3\)"),
    ("K", 2, [[500.0, 0.0, 112.0], [0.0, 500.0, 112.0], [0.0, 0.1, 1.0]], r"sample 2 has last row"),
    ("K", 0, "K", r"sample 0 is not a numeric array"),
    ("mano", 1, [[0.0] * 60], r"sample 1 has shape \(1, 60\)"),
    ("scale", 2, [0.1, 0.2], r"sample 2 has shape \(2,\)"),
])
def test_malformed_sample_names_file_and_index(fresh, key, index, value, message):
    root, truth = fresh
    write_json(root / f"training_{key}.json", _corrupt(truth, key, index, value))
    with pytest.raises(HandDataError, match=rf"training_{key}.json: {message}"):
        FreiHANDDataset(root, split="all", vertices=True, mano=True)


@pytest.mark.parametrize("key", ["xyz", "verts", "K", "scale"])
def test_nan_label_names_file_and_index(fresh, key):
    root, truth = fresh
    rows = json.loads(json.dumps(truth["training"][key]))
    if key == "scale":
        rows[1] = float("nan")
    else:
        rows[1][0][0] = float("nan")
    (root / f"training_{key}.json").write_text(json.dumps(rows))  # json writes the NaN literal
    with pytest.raises(HandDataError, match=rf"training_{key}.json: sample 1 holds a non-finite value"):
        FreiHANDDataset(root, split="all", vertices=True)


def test_joint_behind_the_camera(fresh):
    root, truth = fresh
    rows = json.loads(json.dumps(truth["training"]["xyz"]))
    rows[2][7][2] = -0.1
    write_json(root / "training_xyz.json", rows)
    with pytest.raises(HandDataError, match=r"training_xyz.json: sample 2 has a joint with Z <= 0"):
        FreiHANDDataset(root, split="all")


@pytest.mark.parametrize(("text", "message"), [
    ('{"K": []}', "expected a JSON list"),
    ("[[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0", "malformed JSON in sample 1"),
    ("[[[1, 0, 0], [0, 1, 0], [0, 0, 1]] [[1, 0, 0]]]", "malformed JSON after sample 0"),
    ("[[[1, 0, 0], [0, 1, 0], [0, 0, 1]]] extra", "unexpected content after the list"),
])
def test_malformed_json(fresh, text, message):
    root, _ = fresh
    (root / "training_K.json").write_text(text)
    with pytest.raises(HandDataError, match=f"training_K.json: {message}"):
        FreiHANDDataset(root)


def test_missing_image_names_path_and_item(fresh):
    root, _ = fresh
    (root / "training" / "rgb" / "00000007.jpg").unlink()  # version 2 of sample 1
    ds = FreiHANDDataset(root, split="all", crop_size=CROP)
    ds[6]
    with pytest.raises(FileNotFoundError, match=r"item 7 \(sample 1\).*00000007.jpg"):
        ds[7]


def test_corrupt_image_names_path_and_item(fresh):
    root, _ = fresh
    path = root / "evaluation" / "rgb" / "00000000.jpg"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(HandDataError, match=r"item 0 \(sample 0\).*00000000.jpg"):
        FreiHANDDataset(root, split="evaluation", crop_size=CROP)[0]


def test_bad_arguments(freihand):
    root, _ = freihand
    with pytest.raises(ValueError, match="unknown FreiHAND split 'val'"):
        FreiHANDDataset(root, split="val")
    with pytest.raises(ValueError, match="versions"):
        FreiHANDDataset(root, versions=(4,))
    with pytest.raises(ValueError, match="versions"):
        FreiHANDDataset(root, versions=(0, 0))
    with pytest.raises(ValueError, match="versions"):
        FreiHANDDataset(root, split="evaluation", versions=(1,))
    with pytest.raises(ValueError, match="holdout"):
        FreiHANDDataset(root, holdout=1.0)
    with pytest.raises(IndexError):
        FreiHANDDataset(root, split="evaluation")[2]


# --- evaluation with meshes --------------------------------------------------------

def test_evaluate_on_freihand_reports_mesh_measures_per_loop(tmp_path):
    from recurnet_hand import SHIPPED_MODEL
    from recurnet_hand.inference import evaluate_model

    if not SHIPPED_MODEL.is_file():
        pytest.skip("the shipped model file is missing")
    (tmp_path / "data").mkdir()
    write_freihand(tmp_path / "data", train=1, evaluation=5)
    rows = evaluate_model(SHIPPED_MODEL, dataset="freihand", root=str(tmp_path / "data"), out_dir=tmp_path / "ev",
                          progress=False)
    fixed = [r for r in rows if r.policy == "fixed"]
    assert len(fixed) == 4 and all(np.isfinite(r.pa_mpjpe) and 0 < r.pa_mpjpe < r.epe3d for r in fixed)
    table = (tmp_path / "ev" / "eval_mesh.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| ") and line[2].isdigit()]
    assert len(body) == 4
    # The per-exit table's PA-MPJPE is the mesh table's, loop by loop.
    for r, line in zip(fixed, body):
        assert float(line.split("|")[2]) == pytest.approx(r.pa_mpjpe, abs=0.01)
        f5, f15 = float(line.split("|")[4]), float(line.split("|")[5])
        assert 0.0 <= f5 <= f15 <= 1.0


@pytest.mark.slow
def test_train_the_freihand_preset_on_freihand_files(tmp_path):
    from recurnet_hand.config import RunConfig, with_overrides
    from recurnet_hand.train import train

    (tmp_path / "data").mkdir()
    write_freihand(tmp_path / "data", train=3, evaluation=2)
    run = with_overrides(RunConfig(), {
        "model.preset": "freihand", "model.max_loops": 1, "data.dataset": "freihand",
        "data.root": str(tmp_path / "data"), "train.epochs": 1, "train.loop_epochs": 1, "train.batch_size": 4,
        "gate.enabled": False, "out_dir": str(tmp_path / "run")})
    summary = train(run, progress=False)
    assert summary.model_path.is_file() and len(summary.loops) == 2
    assert all(np.isfinite(r.epe3d) and np.isfinite(r.pa_mpjpe) for r in summary.loops)


def test_a_later_evaluation_without_meshes_removes_the_old_mesh_table(tmp_path):
    from recurnet_hand import SHIPPED_MODEL
    from recurnet_hand.inference import evaluate_model

    if not SHIPPED_MODEL.is_file():
        pytest.skip("the shipped model file is missing")
    (tmp_path / "data").mkdir()
    write_freihand(tmp_path / "data", train=1, evaluation=2)
    evaluate_model(SHIPPED_MODEL, dataset="freihand", root=str(tmp_path / "data"), out_dir=tmp_path / "ev",
                   progress=False)
    assert (tmp_path / "ev" / "eval_mesh.md").is_file()
    evaluate_model(SHIPPED_MODEL, dataset="synthetic", root=str(tmp_path / "cache"), samples=3,
                   out_dir=tmp_path / "ev", progress=False)
    assert not (tmp_path / "ev" / "eval_mesh.md").exists() and (tmp_path / "ev" / "eval.md").is_file()
