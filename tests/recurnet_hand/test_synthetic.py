"""Tests for the synthetic hand dataset and its on-disk cache (recurnet_hand.data.synthetic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recurnet_hand.data import _scene, synthetic
from recurnet_hand.data.synthetic import (
    CacheMismatchError,
    SyntheticCacheError,
    SyntheticHands,
    generate_synthetic_hands,
)

S = 64  # small crops keep the tests fast; the scene is sampled the same way at any size


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Five samples in shards of two, rendered in this process."""
    root = tmp_path_factory.mktemp("synth") / "cache"
    generate_synthetic_hands(root, 5, S, seed=3, workers=0, shard_size=2, progress=False)
    return root


@pytest.fixture(scope="module")
def live():
    """The same samples rendered on the fly."""
    return SyntheticHands(5, S, seed=3)


def _project(joints3d, K):
    p = joints3d @ K.T
    return p[:, :2] / p[:, 2:3]


def test_sample_has_the_documented_keys_types_and_shapes(cache):
    ds = SyntheticHands(5, S, seed=3, cache_dir=cache)
    assert len(ds) == 5
    sample = ds[4]
    assert set(sample) == {"image", "joints2d", "joints3d", "K", "rotation", "has_2d", "has_3d", "has_rotation",
                           "is_right", "index"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, S, S)
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert sample["joints2d"].shape == (21, 2) and sample["joints3d"].shape == (21, 3)
    assert sample["K"].shape == (3, 3) and sample["K"].dtype == torch.float32
    assert sample["has_2d"].item() and sample["has_3d"].item() and sample["is_right"].item()
    assert sample["index"].dtype == torch.int64 and sample["index"].item() == 4
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, S, S) and batch["index"].tolist() == [0, 1]
    with pytest.raises(IndexError, match="out of range"):
        ds[5]


def test_shards_hold_uint8_images_and_float32_labels(cache):
    with np.load(cache / "shard-00002.npz") as shard:
        assert sorted(shard.files) == ["K", "images", "index", "joints2d", "joints3d", "rotation"]
        assert shard["images"].dtype == np.uint8 and shard["images"].shape == (1, S, S, 3)
        assert shard["joints3d"].dtype == np.float32 and shard["joints2d"].dtype == np.float32
        assert shard["K"].dtype == np.float32 and shard["index"].tolist() == [4]


def test_cached_samples_equal_samples_rendered_on_the_fly(cache, live):
    ds = SyntheticHands(5, S, seed=3, cache_dir=cache)
    for i in range(5):
        a, b = ds[i], live[i]
        for key in a:
            assert torch.equal(a[key], b[key]), (i, key)


def test_same_seed_same_images_other_seed_other_images(live):
    again = SyntheticHands(5, S, seed=3)
    other = SyntheticHands(5, S, seed=4)
    assert torch.equal(again[2]["image"], live[2]["image"])
    assert torch.equal(again[2]["joints3d"], live[2]["joints3d"])
    assert not torch.equal(other[2]["image"], live[2]["image"])
    assert not torch.equal(live[1]["image"], live[2]["image"])


def test_worker_processes_do_not_change_the_result(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "_TASK_SIZE", 1)  # five tasks, so both workers render
    root = generate_synthetic_hands(tmp_path / "w2", 5, S, seed=3, workers=2, shard_size=2, progress=False)
    for name in ("shard-00000.npz", "shard-00001.npz", "shard-00002.npz"):
        with np.load(cache / name) as a, np.load(root / name) as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")


def test_labels_are_an_exact_projection_and_joints_lie_in_the_crop():
    renderer = synthetic._Renderer(synthetic._mano_layer(None, "right")[0])
    inside = []
    for i in range(24):
        scene = _scene.render_scene(i, 11, S, renderer.rig, renderer._forward)
        j3, j2, K = (np.asarray(x, np.float32) for x in (scene.joints3d, scene.joints2d, scene.K))
        np.testing.assert_allclose(_project(j3.astype(np.float64), K.astype(np.float64)), j2, atol=1e-3)
        assert np.all(j3[:, 2] > 100.0)  # mm in front of the camera
        # Bone lengths are hand-sized (mm): wrist to middle MCP between 5 and 15 cm.
        assert 50 < np.linalg.norm(j3[9] - j3[0]) < 150
        inside.append(np.mean((j2 >= 0) & (j2 <= S - 1)))
        assert scene.image.dtype == np.uint8 and scene.image.shape == (S, S, 3)
    assert np.mean(inside) > 0.95


def test_the_hand_is_drawn_where_its_joints_project():
    renderer = synthetic._Renderer(synthetic._mano_layer(None, "right")[0])
    hits = []
    for i in range(8):
        scene = _scene.render_scene(i, 5, S, renderer.rig, renderer._forward)
        assert 0.03 < scene.mask.mean() < 0.9  # the hand fills a fair part of the crop, not all of it
        px = np.rint(scene.joints2d).astype(int)
        ok = np.all((px >= 0) & (px < S), axis=1)
        hits.extend(scene.mask[px[ok, 1], px[ok, 0]])
    # Joints lie inside the mesh, so they project inside its silhouette (tips may round outside).
    assert np.mean(hits) > 0.9


def test_cache_is_reused_without_rendering(cache, monkeypatch):
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_samples"] == 5 and manifest["crop_size"] == S
    assert manifest["seed"] == 3 and manifest["generator_version"] == synthetic.GENERATOR_VERSION
    assert len(manifest["mano"]["sha256"]) == 64 and manifest["mano"]["source"] == "synthetic"
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 1]
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}

    def fail(*args):
        raise AssertionError("a complete cache must not be rendered again")

    monkeypatch.setattr(synthetic._Renderer, "render", fail)
    SyntheticHands(5, S, seed=3, cache_dir=cache, workers=0)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes


@pytest.mark.parametrize("change, message", [
    ({"seed": 4}, "seed: cache has 3, requested 4"),
    ({"crop_size": 48}, "crop_size"),
    ({"side": "left"}, "side"),
])
def test_cache_built_with_other_settings_is_refused(cache, change, message):
    args = {"num_samples": 5, "crop_size": S, "seed": 3, "side": "right"} | change
    with pytest.raises(CacheMismatchError, match=message):
        SyntheticHands(args["num_samples"], args["crop_size"], args["seed"], cache_dir=cache, workers=0,
                       side=args["side"], progress=False)


def test_a_cache_serves_fewer_samples_and_extends_to_more(tmp_path, live, monkeypatch):
    root = tmp_path / "c"
    generate_synthetic_hands(root, 3, S, seed=3, workers=0, shard_size=2, progress=False)  # shards [0, 1] [2]
    real = synthetic._Renderer.render
    starts = []

    def recording(self, seed, size, start, stop, *rest):
        starts.append((start, stop))
        return real(self, seed, size, start, stop, *rest)

    monkeypatch.setattr(synthetic._Renderer, "render", recording)
    fewer = SyntheticHands(2, S, seed=3, cache_dir=root, workers=0, progress=False)
    assert len(fewer) == 2 and starts == []  # the first two samples, nothing rendered
    more = SyntheticHands(5, S, seed=3, cache_dir=root, workers=0, progress=False)
    assert starts == [(3, 5)]  # only the missing samples
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_samples"] == 5
    assert [(e["start"], e["count"]) for e in manifest["shards"]] == [(0, 2), (2, 1), (3, 2)]
    assert len(SyntheticHands(4, S, seed=3, cache_dir=root, workers=0, progress=False)) == 4 and len(starts) == 1
    monkeypatch.setattr(synthetic._Renderer, "render", real)
    for i in range(5):
        assert torch.equal(more[i]["image"], live[i]["image"]) and torch.equal(more[i]["joints3d"], live[i]["joints3d"])


@pytest.mark.parametrize("shards", ["none", [{"file": "shard-00000.npz", "start": 0}], [3]])
def test_a_manifest_with_a_bad_shard_list_is_refused_naming_it(tmp_path, shards):
    root = tmp_path / "c"
    generate_synthetic_hands(root, 2, S, seed=0, workers=0, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "shards": shards}))
    with pytest.raises(SyntheticCacheError, match="manifest.json: not a synthetic-hands manifest .*'shards'"):
        generate_synthetic_hands(root, 2, S, seed=0, workers=0, progress=False)


def test_an_interrupted_extension_resumes(tmp_path, monkeypatch):
    root = tmp_path / "c"
    generate_synthetic_hands(root, 2, S, seed=0, workers=0, shard_size=2, progress=False)
    real = synthetic._Renderer.render

    def interrupted(self, seed, size, start, stop, *rest):
        if start >= 4:
            raise RuntimeError("interrupted")
        return real(self, seed, size, start, stop, *rest)

    monkeypatch.setattr(synthetic._Renderer, "render", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_synthetic_hands(root, 6, S, seed=0, workers=0, shard_size=2, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"] is False and len(manifest["shards"]) == 1  # the original cache, still listed
    monkeypatch.setattr(synthetic._Renderer, "render", real)
    ds = SyntheticHands(6, S, seed=0, cache_dir=root, workers=0, progress=False)
    assert torch.equal(ds[5]["image"], SyntheticHands(6, S, seed=0)[5]["image"])
    assert json.loads((root / "manifest.json").read_text())["complete"] is True


def test_other_mano_model_or_generator_version_is_refused_and_rebuild_replaces(tmp_path, monkeypatch):
    from recurnet_hand.mano import synthetic_mano_assets

    root = generate_synthetic_hands(tmp_path / "c", 2, S, seed=0, workers=0, progress=False)
    with pytest.raises(CacheMismatchError, match="MANO model"):
        generate_synthetic_hands(root, 2, S, seed=0, workers=0, mano=synthetic_mano_assets("right", seed=1),
                                 progress=False)
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", "0-older")
    with pytest.raises(CacheMismatchError, match="generator_version"):
        generate_synthetic_hands(root, 2, S, seed=0, workers=0, progress=False)
    generate_synthetic_hands(root, 2, S, seed=0, workers=0, progress=False, rebuild=True)
    assert json.loads((root / "manifest.json").read_text())["generator_version"] == "0-older"


def test_no_temporary_files_are_left_and_an_interrupted_build_resumes(tmp_path, monkeypatch):
    root = tmp_path / "c"
    real = synthetic._Renderer.render
    starts = []

    def interrupted(self, seed, size, start, stop, *rest):
        if start >= 2:  # the second shard never finishes
            raise RuntimeError("interrupted")
        return real(self, seed, size, start, stop, *rest)

    def recording(self, seed, size, start, stop, *rest):
        starts.append(start)
        return real(self, seed, size, start, stop, *rest)

    monkeypatch.setattr(synthetic._Renderer, "render", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_synthetic_hands(root, 4, S, seed=0, workers=0, shard_size=2, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "shard-00000.npz"]
    assert json.loads((root / "manifest.json").read_text())["complete"] is False
    monkeypatch.setattr(synthetic._Renderer, "render", recording)
    generate_synthetic_hands(root, 4, S, seed=0, workers=0, shard_size=2, progress=False)
    assert starts == [2]  # the finished shard is kept
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "shard-00000.npz", "shard-00001.npz"]
    assert json.loads((root / "manifest.json").read_text())["complete"] is True
    ds = SyntheticHands(4, S, seed=0, cache_dir=root)
    assert torch.equal(ds[3]["image"], SyntheticHands(4, S, seed=0)[3]["image"])


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    def disk_full(fh):
        fh.write(b"half a shard")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        synthetic._write_atomic(tmp_path / "shard-00000.npz", disk_full)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_shard_fails_naming_the_file(cache, tmp_path):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(cache, root)
    shard = root / "shard-00001.npz"
    size = shard.stat().st_size
    shard.write_bytes(b"\x00" * size)  # same size, garbage content
    with pytest.raises(SyntheticCacheError, match="shard-00001.npz"):
        SyntheticHands(5, S, seed=3, cache_dir=root)
    shard.write_bytes(b"PK")  # truncated
    with pytest.raises(SyntheticCacheError, match=r"shard-00001\.npz.*size 2 bytes"):
        SyntheticHands(5, S, seed=3, cache_dir=root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(SyntheticCacheError, match="manifest.json"):
        SyntheticHands(5, S, seed=3, cache_dir=root)


def test_mano_file_assets_and_layer_sources_give_the_same_samples(tmp_path, live):
    from recurnet_hand.mano import ManoLayer, save_mano, synthetic_mano_assets

    assets = synthetic_mano_assets("right")
    path = save_mano(assets, tmp_path / "MANO_RIGHT.pkl")
    layer = ManoLayer(assets, use_pca=False, flat_hand_mean=True, dtype=torch.float64)
    for mano in (path, assets, layer):
        assert torch.equal(SyntheticHands(5, S, seed=3, mano=mano)[1]["image"], live[1]["image"])
    # The cache records the model by content, so a file with the same arrays reuses it.
    root = generate_synthetic_hands(tmp_path / "c", 2, S, workers=0, progress=False)
    generate_synthetic_hands(root, 2, S, workers=0, mano=path, progress=False)
    with pytest.raises(ValueError, match="use_pca=False and flat_hand_mean=True"):
        SyntheticHands(2, S, mano=ManoLayer(assets))
    with pytest.raises(ValueError, match="left hand but side='right'"):
        SyntheticHands(2, S, mano=synthetic_mano_assets("left"))


def test_left_hands_are_labelled_left_with_exact_labels():
    left = SyntheticHands(3, S, seed=3, side="left")
    sample = left[0]
    assert not sample["is_right"].item()
    p = sample["joints3d"].double() @ sample["K"].double().T
    torch.testing.assert_close(p[:, :2] / p[:, 2:], sample["joints2d"].double(), atol=1e-3, rtol=0)


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticHands(0)
    with pytest.raises(ValueError, match="crop_size"):
        SyntheticHands(4, crop_size=8)
    with pytest.raises(ValueError, match="side"):
        SyntheticHands(4, side="both")
    with pytest.raises(TypeError, match="mano must be"):
        SyntheticHands(4, mano=3.5)
    with pytest.raises(FileNotFoundError):
        SyntheticHands(4, mano="/nonexistent/MANO_RIGHT.pkl")


def test_a_batch_fetch_draws_what_per_sample_fetches_draw(cache):
    from recurnet_hand.data.factory import SYNTHETIC_AUGMENT, MirrorToSide

    data = SyntheticHands(5, S, seed=3, cache_dir=cache, augment=SYNTHETIC_AUGMENT, progress=False)
    data.set_epoch(2)
    index = [4, 0, 3, 3]
    batch = data.__getitems__(index)
    for i, got in zip(index, batch):
        want = data[i]
        assert got.keys() == want.keys()
        for key in ("joints2d", "joints3d", "K", "rotation"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-4)
        assert bool(got["is_right"]) == bool(want["is_right"]) and int(got["index"]) == i
        assert (got["image"] - want["image"]).abs().mean() < 0.02
    data.set_epoch(3)
    assert not torch.equal(data.__getitems__([4, 0])[0]["joints2d"], batch[0]["joints2d"])
    # The side wrapper forwards batch fetches and mirrors what needs mirroring.
    left = MirrorToSide(data, "left").__getitems__([1, 2])
    assert all(not bool(s["is_right"]) for s in left)
    torch.testing.assert_close(left[0]["joints2d"][:, 0], S - 1 - data[1]["joints2d"][:, 0])
