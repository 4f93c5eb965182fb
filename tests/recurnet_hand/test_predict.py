"""``predict`` on photographs: hand boxes, crops like the training crops, joints back in image pixels, meshes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from recurnet_hand import SHIPPED_MODEL
from recurnet_hand.inference import load_model, parse_box, predict_images, read_boxes, write_obj
from recurnet_hand.model import build_dirnet, mesh_outputs, preset

pytestmark = pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="the shipped model file is missing")


def _hand_image(tmp_path, seed=0):
    """A 96 px crop of a synthetic hand, and the same crop enlarged 1.5x and pasted into a larger photograph."""
    from recurnet_hand.data.synthetic import SyntheticHands

    sample = SyntheticHands(1, 96, seed=seed, cache_dir=tmp_path / "hand", progress=False)[0]
    crop = (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    photo = np.full((300, 400, 3), 40, np.uint8)
    big = np.asarray(Image.fromarray(crop).resize((144, 144), Image.BILINEAR))
    photo[50:194, 120:264] = big
    Image.fromarray(crop).save(tmp_path / "crop.png")
    Image.fromarray(photo).save(tmp_path / "photo.png")
    # The box whose 1.4x square is exactly the pasted crop: centre (191.5, 121.5) in pixel centres.
    side = 144 / 1.4
    return (120 + 72 - side / 2, 50 + 72 - side / 2, side, side)


def test_a_box_crops_like_the_training_crop_and_maps_joints_back(tmp_path):
    box = _hand_image(tmp_path)
    whole = predict_images(SHIPPED_MODEL, [tmp_path / "crop.png"], tmp_path / "a", overlays=False, meshes=False)[0]
    boxed = predict_images(SHIPPED_MODEL, [tmp_path / "photo.png"], tmp_path / "b", overlays=False, meshes=False,
                           boxes=box)[0]
    expected = np.asarray(whole.joints2d) * 1.5 + [120 + 0.25, 50 + 0.25]  # crop px -> photo px (1.5x, centres)
    err = np.linalg.norm(np.asarray(boxed.joints2d) - expected, axis=1)
    assert err.max() < 3.0, err  # the same hand, up to resampling the enlarged copy
    gap3d = np.linalg.norm(np.asarray(boxed.joints3d) - np.asarray(whole.joints3d), axis=1)
    assert gap3d.mean() < 4.0 and gap3d.max() < 10.0, gap3d  # mm; the model's own error is about 30 mm
    assert boxed.box == pytest.approx(list(box)) and whole.box is None
    np.testing.assert_allclose(np.asarray(boxed.sigma2d) / np.asarray(whole.sigma2d), 1.5, rtol=0.2)


def test_boxes_per_image_write_one_prediction_and_mesh_per_hand(tmp_path):
    box = _hand_image(tmp_path)
    spec = tmp_path / "boxes.json"
    spec.write_text(json.dumps({"photo.png": [list(box), [0, 0, 100, 80]]}))
    preds = predict_images(SHIPPED_MODEL, [tmp_path / "photo.png", tmp_path / "crop.png"], tmp_path / "out",
                           boxes=read_boxes(spec))
    assert [(p.hand, p.box is None) for p in preds] == [(0, False), (1, False), (0, True)]
    names = sorted(f.name for f in (tmp_path / "out").iterdir())
    assert names == ["crop.obj", "crop_pred.png", "photo_0.obj", "photo_0_pred.png", "photo_1.obj",
                     "photo_1_pred.png", "predictions.json"]
    lines = (tmp_path / "out" / "photo_0.obj").read_text().splitlines()
    verts = np.array([[float(v) for v in line.split()[1:]] for line in lines if line.startswith("v ")])
    faces = [line for line in lines if line.startswith("f ")]
    assert verts.shape == (778, 3) and len(faces) == 1538
    # The mesh is in the joints' frame: every joint lies inside the hand, near its surface (mm).
    joints = np.asarray(preds[0].joints3d)
    nearest = np.linalg.norm(joints[:, None] - verts[None], axis=-1).min(axis=1)
    assert nearest.max() < 20.0, nearest
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert saved[0]["mesh"].endswith("photo_0.obj") and saved[1]["box"] == [0, 0, 100, 80]


def test_vertex_path_agrees_with_the_joints_only_path():
    net = build_dirnet(preset("tiny", max_loops=1)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.05)
        x = torch.rand(3, 3, 96, 96)
        plain = net(x, exit="all")
        with mesh_outputs(net):
            mesh = net(x, exit="all")
    assert "vertices" not in plain.final and mesh.final["vertices"].shape == (3, 778, 3)
    for a, b in zip(plain.iterations, mesh.iterations):
        torch.testing.assert_close(a["joints3d"], b["joints3d"], atol=1e-3, rtol=0)
    # The five fingertip joints are mesh vertices: the mesh carries them exactly.
    head = next(m for m in net.modules() if hasattr(m, "vertices") and hasattr(m, "mano"))
    tips = head.mano.tip_vertex_ids
    tip_joints = mesh.final["joints3d"][:, [4, 8, 12, 16, 20]]
    torch.testing.assert_close(mesh.final["vertices"][:, tips], tip_joints, atol=1e-3, rtol=0)
    assert not head.vertices  # switched off again after the block


def test_mesh_outputs_refuses_a_network_without_mano():
    net = build_dirnet(preset("tiny", max_loops=0, head="direct"))
    with pytest.raises(ValueError, match="no MANO head"):
        with mesh_outputs(net):
            pass


def test_bad_boxes_are_named(tmp_path):
    with pytest.raises(ValueError, match="x, y, w, h"):
        parse_box("1,2,3")
    with pytest.raises(ValueError, match="w, h > 0"):
        parse_box("1,2,0,4")
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"a.png": [1, 2, "x", 4]}))
    with pytest.raises(ValueError, match="entry 'a.png'"):
        read_boxes(bad)
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_boxes(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_boxes(tmp_path / "missing.json")


def test_write_obj_checks_its_input(tmp_path):
    path = write_obj(tmp_path / "t.obj", [[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])
    assert path.read_text().splitlines()[-1] == "f 1 2 3"
    with pytest.raises(ValueError, match="face indices"):
        write_obj(tmp_path / "u.obj", [[0, 0, 0]], [[0, 1, 2]])
    assert not (tmp_path / "u.obj").exists()


def test_the_shipped_model_loads_with_its_mano_faces():
    net, run = load_model(SHIPPED_MODEL)
    assert run.model.head == "mano" and run.model.crop_size == 96


def test_cli_predict_with_a_box(tmp_path):
    from typer.testing import CliRunner

    from recurnet_hand.cli import app

    box = _hand_image(tmp_path)
    result = CliRunner().invoke(app, ["predict", str(SHIPPED_MODEL), str(tmp_path / "photo.png"), "--out-dir",
                                      str(tmp_path / "p"), "--box", ",".join(f"{v:.3f}" for v in box)])
    assert result.exit_code == 0, result.output
    assert "hand 0" in result.output and "photo.obj" in result.output
    result = CliRunner().invoke(app, ["predict", str(SHIPPED_MODEL), str(tmp_path / "photo.png"), "--box", "1,2,3,4",
                                      "--boxes", str(tmp_path / "x.json")])
    assert result.exit_code == 1 and "not both" in result.output


def test_boxes_for_images_not_given_are_an_error(tmp_path):
    _hand_image(tmp_path)
    with pytest.raises(ValueError, match="not among the inputs: phot.png"):
        predict_images(SHIPPED_MODEL, [tmp_path / "photo.png"], tmp_path / "o", boxes={"phot.png": [0, 0, 9, 9]})
    assert not (tmp_path / "o" / "predictions.json").exists()
    # A single box in a mapping is one hand, as a list of boxes is several.
    preds = predict_images(SHIPPED_MODEL, [tmp_path / "photo.png"], tmp_path / "o", overlays=False, meshes=False,
                           boxes={"photo.png": (0, 0, 100, 80)})
    assert len(preds) == 1 and preds[0].box == [0, 0, 100, 80]
