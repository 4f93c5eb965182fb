"""Tests for :mod:`recurnet_hand.mano`: MANO file I/O, procedural assets and the smplx-backed layer."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import pickletools
import struct
import sys
import types
from collections import Counter

import numpy as np
import pytest
import smplx
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import csc_matrix
from scipy.spatial.transform import Rotation
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS

from recurnet_hand.joints import MANO_TO_HAND21, PARENTS
from recurnet_hand.mano import (
    ManoAssets,
    ManoFormatError,
    ManoLayer,
    ManoOutput,
    load_mano,
    save_mano,
    synthetic_mano_assets,
)

ARRAY_KEYS = (
    "v_template", "shapedirs", "posedirs", "J_regressor", "J", "weights",
    "kintree_table", "f", "hands_components", "hands_mean",
)
MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
# finger -> (MANO joints base..distal, smplx tip id, project tip index)
FINGERS = {
    "thumb": ((13, 14, 15), 744, 4),
    "index": ((1, 2, 3), 320, 8),
    "middle": ((4, 5, 6), 443, 12),
    "ring": ((10, 11, 12), 554, 16),
    "pinky": ((7, 8, 9), 671, 20),
}
FLIP = np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def right() -> ManoAssets:
    return synthetic_mano_assets("right")


@pytest.fixture(scope="module")
def left() -> ManoAssets:
    return synthetic_mano_assets("left")


@pytest.fixture(scope="module")
def flat64(right) -> ManoLayer:
    """Full axis-angle pose, flat mean, float64: exact comparisons."""
    return ManoLayer(right, use_pca=False, flat_hand_mean=True, dtype=torch.float64)


def _bone_lengths(joints: torch.Tensor) -> torch.Tensor:
    """(..., 21, 3) -> (..., 20) lengths of the bones of the 21-joint skeleton."""
    child = torch.arange(1, 21)
    parent = torch.tensor(PARENTS[1:])
    return (joints[..., child, :] - joints[..., parent, :]).norm(dim=-1)


def _plain_dict(assets: ManoAssets) -> dict:
    return {k: np.array(getattr(assets, k)) for k in ARRAY_KEYS}


def _dump(obj, path, protocol: int = 4) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


# --------------------------------------------------------------------------- synthetic mesh


def test_synthetic_assets_have_mano_shapes(right):
    assert right.side == "right"
    assert right.v_template.shape == (778, 3)
    assert right.f.shape == (1538, 3)
    assert right.shapedirs.shape == (778, 3, 10)
    assert right.posedirs.shape == (778, 3, 135)
    assert right.J_regressor.shape == (16, 778)
    assert right.weights.shape == (778, 16)
    assert right.hands_components.shape == (45, 45) and right.hands_mean.shape == (45,)
    assert right.kintree_table[0].tolist() == MANO_PARENTS
    assert right.kintree_table[1].tolist() == list(range(16))
    assert not right.v_template.flags.writeable  # assets are immutable


def test_faces_index_valid_vertices_and_are_not_degenerate(right):
    v, f = right.v_template, right.f
    assert f.min() == 0 and f.max() == 777
    assert np.unique(f).size == 778  # every vertex is used
    assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]))
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    assert area.min() > 1e-7  # 0.1 mm^2


def test_surface_is_an_oriented_disc_open_at_the_wrist(right):
    f = right.f
    directed = Counter((int(a), int(b)) for tri in f for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])))
    assert max(directed.values()) == 1  # consistently oriented
    undirected = Counter(tuple(sorted(e)) for e in directed)
    assert set(undirected.values()) <= {1, 2}  # manifold
    boundary = [e for e, n in undirected.items() if n == 1]
    boundary_vertices = {v for e in boundary for v in e}
    # One 16-edge loop: MANO's open wrist, the same vertices the wrist joint is regressed from.
    assert len(boundary) == 16 and len(boundary_vertices) == 16
    assert boundary_vertices == set(np.flatnonzero(right.J_regressor[0]).tolist())
    assert 778 - len(undirected) + 1538 == 1  # Euler characteristic of a disc
    # Outward normals: positive enclosed volume (the wrist opening is centred on the origin,
    # so closing it with a fan adds nothing), of a plausible size.
    v = right.v_template
    volume = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert 150e-6 < volume < 600e-6  # m^3


def test_rest_pose_dimensions_and_orientation(right):
    v, joints = right.v_template, right.J
    np.testing.assert_allclose(joints[0], 0.0, atol=1e-12)  # wrist at the origin
    middle_tip = v[443]
    assert 0.16 < middle_tip[0] < 0.20  # hand length
    assert 0.045 < joints[7, 2] - joints[1, 2] < 0.075  # index to pinky knuckle spacing
    for name, (ids, tip, _) in FINGERS.items():
        chain = joints[list(ids)]
        assert np.all(np.diff(np.r_[chain, v[tip][None]][:, 0]) > 0), name  # fingers point along +x
    assert np.all(joints[[13, 14, 15], 2] < joints[1, 2]) and v[744, 2] < v[320, 2]  # right thumb on the -z side
    assert v[:, 1].max() - v[:, 1].min() < 0.05  # flat hand


def test_joint_regressor_rows_are_convex_and_regress_joints(right):
    reg = right.J_regressor
    assert np.all(reg >= 0)
    np.testing.assert_allclose(reg.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(reg @ right.v_template, right.J, atol=1e-6)


def test_skinning_weights_are_convex_and_follow_the_kinematic_tree(right):
    w = right.weights
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    for row in w:
        support = set(np.flatnonzero(row > 1e-12).tolist())
        # Connected in the tree: every supported joint but the topmost has its parent supported.
        roots = [j for j in support if MANO_PARENTS[j] not in support]
        assert len(roots) == 1, support
    for _, (ids, tip, _) in FINGERS.items():
        assert w[tip, ids[2]] == pytest.approx(1.0)  # fingertips ride on the distal joint


def test_tips_sit_at_smplx_ids_and_are_farthest_along_each_finger(right):
    assert {k: v for k, v in SMPLX_VERTEX_IDS["mano"].items()} == {k: t for k, (_, t, _) in FINGERS.items()}
    v, w, joints = right.v_template, right.weights, right.J
    owner = w.argmax(axis=1)
    for name, (ids, tip, _) in FINGERS.items():
        direction = joints[ids[2]] - joints[ids[1]]
        distal = np.flatnonzero(owner == ids[2])
        assert distal[np.argmax(v[distal] @ direction)] == tip, name
        # ... and of all vertices within 12 mm of that segment's axis line.
        rel = v - joints[ids[2]]
        unit = direction / np.linalg.norm(direction)
        near = np.flatnonzero(np.linalg.norm(rel - np.outer(rel @ unit, unit), axis=1) < 0.012)
        assert near[np.argmax(rel[near] @ unit)] == tip, name


def test_shape_directions_are_orthogonal_with_a_few_mm_per_unit(right):
    dirs = right.shapedirs.reshape(-1, 10)
    gram = dirs.T @ dirs
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-12
    expected = np.full(10, 0.005)
    expected[3] = 0.002  # finger thickness moves less: fingers are only ~8 mm in radius
    np.testing.assert_allclose(np.linalg.norm(right.shapedirs, axis=1).max(axis=0), expected)


def test_pose_components_are_orthonormal(right):
    comps = right.hands_components
    np.testing.assert_allclose(comps @ comps.T, np.eye(45), atol=1e-12)


def test_posedirs_are_zero(right):
    # Documented: the synthetic model has no pose-corrective blend shapes.
    assert not right.posedirs.any()


def test_synthetic_is_deterministic_per_seed():
    a, b, c = synthetic_mano_assets(seed=3), synthetic_mano_assets(seed=3), synthetic_mano_assets(seed=4)
    for key in ARRAY_KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    np.testing.assert_array_equal(a.f, c.f)
    scale = np.abs(a.v_template - c.v_template).max()
    assert 1e-4 < scale < 0.01  # seeds vary proportions by millimetres


def test_synthetic_rejects_unknown_side():
    with pytest.raises(ValueError, match="side"):
        synthetic_mano_assets("middle")


def test_left_hand_is_the_mirror_of_the_right(right, left):
    assert left.side == "left"
    np.testing.assert_allclose(left.v_template, right.v_template * FLIP)
    np.testing.assert_allclose(left.J, right.J * FLIP)
    np.testing.assert_array_equal(left.f, right.f[:, ::-1])
    np.testing.assert_allclose(left.shapedirs, right.shapedirs * FLIP[:, None])
    # Mirrored rotations: the same PCA coefficients pose the left hand as the mirror image.
    gen = torch.Generator().manual_seed(0)
    orient = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    pose = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    betas = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    out_r = ManoLayer(right, dtype=torch.float64)(orient, pose, betas)
    mirrored_orient = orient * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    out_l = ManoLayer(left, dtype=torch.float64)(mirrored_orient, pose, betas)
    flip = torch.tensor(FLIP)
    torch.testing.assert_close(out_l.vertices, out_r.vertices * flip, atol=1e-7, rtol=0)
    torch.testing.assert_close(out_l.joints, out_r.joints * flip, atol=1e-7, rtol=0)


# --------------------------------------------------------------------------- file formats


def test_smplx_reads_saved_assets_unchanged(tmp_path, right, left):
    gen = torch.Generator().manual_seed(1)
    for assets, is_rhand in ((right, True), (left, False)):
        written = save_mano(assets, tmp_path)
        assert written.name == ("MANO_RIGHT.pkl" if is_rhand else "MANO_LEFT.pkl")
        model = smplx.MANO(model_path=str(tmp_path), is_rhand=is_rhand, use_pca=True, num_pca_comps=6)
        np.testing.assert_allclose(model.v_template.numpy(), assets.v_template, atol=1e-7)
        np.testing.assert_array_equal(model.faces_tensor.numpy(), assets.f)
        np.testing.assert_allclose(model.J_regressor.numpy(), assets.J_regressor, atol=1e-7)
        orient, pose, betas = (torch.randn(3, n, generator=gen) for n in (3, 6, 10))
        expected = model(betas=betas, global_orient=orient, hand_pose=pose)
        tips = expected.vertices[:, list(SMPLX_VERTEX_IDS["mano"].values())]
        mano21 = torch.cat([expected.joints, tips], dim=1)[:, MANO_TO_HAND21]
        out = ManoLayer(assets)(orient, pose, betas)
        torch.testing.assert_close(out.vertices, expected.vertices)
        torch.testing.assert_close(out.joints, mano21)


def test_plain_pickle_and_npz_round_trip(tmp_path, right):
    for name in ("hand.pkl", "hand.npz"):
        written = save_mano(right, tmp_path / name)
        loaded = load_mano(written)
        assert loaded.side == "right"
        for key in ARRAY_KEYS:
            np.testing.assert_array_equal(getattr(loaded, key), getattr(right, key))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hand.npz", "hand.pkl"]  # no temp files left


def test_load_folder_picks_the_side(tmp_path, right, left):
    save_mano(right, tmp_path)
    save_mano(left, tmp_path)
    np.testing.assert_array_equal(load_mano(tmp_path, side="left").v_template, left.v_template)
    with pytest.raises(ManoFormatError, match="side"):
        load_mano(tmp_path)


def test_side_comes_from_the_file_name_when_the_file_has_none(tmp_path, right):
    _dump(_plain_dict(right), tmp_path / "MANO_LEFT.pkl")
    assert load_mano(tmp_path / "MANO_LEFT.pkl").side == "left"
    _dump(_plain_dict(right), tmp_path / "model.pkl")
    with pytest.raises(ManoFormatError, match="side"):
        load_mano(tmp_path / "model.pkl")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_mano(tmp_path / "nope.pkl")


def test_save_rejects_unknown_suffix(tmp_path, right):
    with pytest.raises(ValueError, match=r"\.txt"):
        save_mano(right, tmp_path / "hand.txt")


class _Py2Pickler(pickle._Pickler):
    """Writes bytes and str as Python-2 ``str`` (BINSTRING), as the official MANO files hold them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _chumpy_style_pickle(assets: ManoAssets, monkeypatch) -> bytes:
    """Pickle assets the way the official file does: chumpy objects, CSC regressor, Python-2 strings."""
    package, ch_mod, reordering = (types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering"))
    Ch = type("Ch", (), {"__module__": "chumpy.ch"})
    Select = type("Select", (), {"__module__": "chumpy.reordering"})
    ch_mod.Ch, reordering.Select = Ch, Select
    with monkeypatch.context() as patch:
        for mod in (package, ch_mod, reordering):
            patch.setitem(sys.modules, mod.__name__, mod)

        def ch(x):
            obj = Ch()
            obj.__dict__.update({"x": x, "_dirty_vars": set(), "label": None})
            return obj

        # shapedirs as a Select over a shuffled copy held by a Ch nested in another Ch.
        flat = np.array(assets.shapedirs).ravel()
        perm = np.random.default_rng(0).permutation(flat.size)
        select = Select()
        select.__dict__.update(
            {
                "a": ch(ch(flat[perm])),
                "idxs": np.argsort(perm),
                "preferred_shape": assets.shapedirs.shape,
                "_dirty_vars": set(),
            }
        )
        payload = _plain_dict(assets)
        del payload["J"]  # optional: regressed from the template when missing
        payload.update(
            shapedirs=select,
            posedirs=ch(np.array(assets.posedirs)),
            J_regressor=csc_matrix(np.array(assets.J_regressor)),
            kintree_table=np.array(assets.kintree_table).astype(np.uint32),  # root parent = 2**32 - 1
            bs_style="lbs",
            bs_type="lrotmin",
        )
        buffer = io.BytesIO()
        _Py2Pickler(buffer, protocol=2).dump(payload)
    data = buffer.getvalue()
    # Module paths as NumPy 1.x / SciPy < 1.8 under Python 2 wrote them.
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    return data.replace(b"cscipy.sparse._csc\n", b"cscipy.sparse.csc\n")


def _globals_of(data: bytes) -> set[str]:
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_chumpy_style_pickle_loads_without_chumpy(tmp_path, right, monkeypatch):
    data = _chumpy_style_pickle(right, monkeypatch)
    assert _globals_of(data) == {
        "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "__builtin__.set",
        "chumpy.ch.Ch", "chumpy.reordering.Select", "scipy.sparse.csc.csc_matrix",
    }
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(data)
    monkeypatch.setitem(sys.modules, "chumpy", None)  # make `import chumpy` fail
    with pytest.raises(ImportError):
        __import__("chumpy")
    loaded = load_mano(path)
    assert loaded.side == "right"
    for key in ARRAY_KEYS:
        np.testing.assert_allclose(getattr(loaded, key), getattr(right, key), atol=1e-15, err_msg=key)
    assert loaded.kintree_table[0, 0] == -1


def _evil_pickle(module: str, name: str, marker) -> bytes:
    """A pickle whose v_template calls ``module.name("touch marker")`` when loaded naively."""

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    data = pickle.dumps({"v_template": Evil()}, protocol=2)
    return data.replace(f"c{os.system.__module__}\nsystem\n".encode(), f"c{module}\n{name}\n".encode())


def test_evil_fixture_really_runs_code_when_loaded_naively(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(_evil_pickle("os", "system", marker))  # the plain unpickler runs the payload
    assert marker.exists()


@pytest.mark.parametrize(("module", "name"), [("os", "system"), ("posix", "system"), ("subprocess", "call")])
def test_other_globals_are_refused_and_never_run(tmp_path, module, name):
    marker = tmp_path / "ran"
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(_evil_pickle(module, name, marker))
    with pytest.raises(ManoFormatError) as info:
        load_mano(path)
    assert f"{module}.{name}" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("key", ["v_template", "J_regressor", "f", "hands_mean", "kintree_table"])
def test_missing_key_is_named(tmp_path, right, key):
    payload = _plain_dict(right)
    del payload[key]
    path = tmp_path / "MANO_RIGHT.pkl"
    _dump(payload, path)
    with pytest.raises(ManoFormatError, match=f"missing key '{key}'") as info:
        load_mano(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("key", "bad_shape", "expected"),
    [("hands_mean", (44,), "(45,)"), ("shapedirs", (778, 3, 300), "(778, 3, 10)"), ("f", (1538, 4), "(1538, 3)")],
)
def test_wrong_shape_names_key_and_shapes(tmp_path, right, key, bad_shape, expected):
    payload = _plain_dict(right)
    payload[key] = np.zeros(bad_shape)
    path = tmp_path / "hand.npz"
    np.savez(path, **payload, side="right")
    with pytest.raises(ManoFormatError) as info:
        load_mano(path)
    message = str(info.value)
    assert repr(key) in message and str(bad_shape) in message and expected in message and str(path) in message


def test_out_of_range_faces_and_broken_pickles_are_refused(tmp_path, right):
    payload = _plain_dict(right)
    payload["f"] = payload["f"] + 1  # 778 is out of range
    _dump(payload, tmp_path / "MANO_RIGHT.pkl")
    with pytest.raises(ManoFormatError, match="'f'"):
        load_mano(tmp_path / "MANO_RIGHT.pkl")
    (tmp_path / "MANO_LEFT.pkl").write_bytes(pickle.dumps(_plain_dict(right))[:100])
    with pytest.raises(ManoFormatError, match="MANO_LEFT.pkl"):
        load_mano(tmp_path / "MANO_LEFT.pkl")


def test_assets_validate_on_construction(right):
    fields = right.to_dict()
    fields["weights"] = np.zeros((778, 15))
    with pytest.raises(ManoFormatError, match="'weights'"):
        ManoAssets(**fields)


# --------------------------------------------------------------------------- layer


def test_layer_outputs_and_api(right):
    layer = ManoLayer.synthetic("right")
    assert isinstance(layer.smplx_model, smplx.MANO)
    assert layer.num_pose_params == 6 and layer.num_betas == 10
    assert ManoLayer(right, use_pca=False).num_pose_params == 45
    assert ManoLayer(right, num_pca_comps=45).num_pose_params == 45
    assert list(layer.parameters()) == []  # all pose/shape inputs are forward arguments
    assert layer.state_dict() == {}  # MANO arrays stay out of checkpoints
    assert {"smplx_model.v_template", "smplx_model.shapedirs", "faces"} <= {n for n, _ in layer.named_buffers()}
    out = layer(torch.zeros(4, 3), torch.zeros(4, 6), torch.zeros(4, 10))
    assert isinstance(out, ManoOutput)
    assert out.vertices.shape == (4, 778, 3) and out.joints.shape == (4, 21, 3)
    assert out.faces is layer.faces and layer.faces.dtype == torch.long and layer.faces.shape == (1538, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.vertices = out.vertices  # type: ignore[misc]
    # Project order: fingertips are the smplx tip vertices, the wrist comes first.
    for _, (_, tip, index21) in FINGERS.items():
        torch.testing.assert_close(out.joints[:, index21], out.vertices[:, tip])
    assert layer(torch.zeros(1, 3), torch.zeros(1, 6)).joints.shape == (1, 21, 3)  # betas default to zero


def test_zero_flat_pose_gives_the_template(right, flat64):
    out = flat64(torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 45, dtype=torch.float64))
    np.testing.assert_allclose(out.vertices[0].numpy(), right.v_template, atol=1e-6)
    mano21 = np.concatenate([right.J, right.v_template[[744, 320, 443, 554, 671]]])[MANO_TO_HAND21]
    np.testing.assert_allclose(out.joints[0].numpy(), mano21, atol=1e-6)


def test_layer_from_file_matches_in_memory_assets(tmp_path, right):
    save_mano(right, tmp_path)
    args = (torch.full((1, 3), 0.3), torch.full((1, 6), 0.5), torch.full((1, 10), -0.5))
    from_file = ManoLayer.from_file(tmp_path, side="right")(*args)
    torch.testing.assert_close(from_file.vertices, ManoLayer(right)(*args).vertices)


def test_mean_pose_is_a_relaxed_curl_and_components_mean_what_they_say(right):
    layer = ManoLayer(right, flat_hand_mean=True, dtype=torch.float64)
    zeros = torch.zeros(1, 3, dtype=torch.float64)

    def tips(coeffs, mean=False):
        model = ManoLayer(right, flat_hand_mean=False, dtype=torch.float64) if mean else layer
        pose = torch.tensor([coeffs], dtype=torch.float64)
        return model(zeros, pose).joints[0, [4, 8, 12, 16, 20]].numpy()

    flat = tips([0.0] * 6)
    drop = flat[:, 1] - tips([0.0] * 6, mean=True)[:, 1]
    assert np.all((drop > 0.005) & (drop < 0.06))  # relaxed hand: tips hang 0.5-6 cm towards the palm
    curled = tips([2.0, 0, 0, 0, 0, 0])
    assert np.all(curled[:, 1] < flat[:, 1] - 0.02)  # curl: all tips move to the palm side (-y)
    spread = tips([0, 1.5, 0, 0, 0, 0])
    assert spread[4, 2] - spread[1, 2] > flat[4, 2] - flat[1, 2] + 0.02  # index-pinky tips separate
    opposed = tips([0, 0, 1.5, 0, 0, 0])
    assert opposed[0, 1] < flat[0, 1] - 0.02 and opposed[0, 2] > flat[0, 2]  # thumb under the palm, inwards


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((torch.zeros(2, 4), torch.zeros(2, 6), torch.zeros(2, 10)), "global_orient"),
        ((torch.zeros(2, 3), torch.zeros(2, 45), torch.zeros(2, 10)), "hand_pose"),
        ((torch.zeros(2, 3), torch.zeros(3, 6), torch.zeros(2, 10)), "hand_pose"),
        ((torch.zeros(2, 3), torch.zeros(2, 6), torch.zeros(2, 9)), "betas"),
        ((torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 6), torch.zeros(2, 10)), "global_orient"),
    ],
)
def test_bad_input_names_the_argument(args, name):
    layer = ManoLayer.synthetic("right")
    with pytest.raises(ValueError, match=name):
        layer(*args)


def test_bad_construction_arguments(right):
    with pytest.raises(ValueError, match="num_pca_comps"):
        ManoLayer(right, num_pca_comps=0)
    with pytest.raises(TypeError, match="ManoAssets"):
        ManoLayer(right.to_dict())  # type: ignore[arg-type]


def test_gradients_reach_every_input(right):
    layer = ManoLayer(right)
    inputs = [torch.full((2, n), 0.1, requires_grad=True) for n in (3, 6, 10)]
    out = layer(*inputs)
    (out.vertices.square().sum() + out.joints.square().sum()).backward()
    for x in inputs:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_root_relative_puts_the_wrist_at_the_origin(right):
    layer = ManoLayer(right, root_relative=True)
    out = layer(torch.full((2, 3), 0.4), torch.ones(2, 6), torch.full((2, 10), 2.0))
    torch.testing.assert_close(out.joints[:, 0], torch.zeros(2, 3))


_rotvecs = st.lists(st.floats(-2.0, 2.0, allow_nan=False), min_size=3, max_size=3)


@settings(max_examples=20, deadline=None)
@given(rotvec=_rotvecs)
def test_global_rotation_turns_the_hand_rigidly_about_the_wrist(flat64, rotvec):
    pose = torch.linspace(-0.3, 0.5, 45, dtype=torch.float64)[None]
    betas = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)[None]
    rest = flat64(torch.zeros(1, 3, dtype=torch.float64), pose, betas).joints[0]
    turned = flat64(torch.tensor([rotvec], dtype=torch.float64), pose, betas).joints[0]
    rot = torch.from_numpy(Rotation.from_rotvec(rotvec).as_matrix())
    torch.testing.assert_close(turned[0], rest[0], atol=1e-7, rtol=0)  # the wrist stays put
    torch.testing.assert_close(turned - turned[0], (rest - rest[0]) @ rot.T, atol=1e-7, rtol=0)
    torch.testing.assert_close(_bone_lengths(turned), _bone_lengths(rest), atol=1e-7, rtol=0)


_betas = st.lists(st.floats(-3.0, 3.0, allow_nan=False), min_size=10, max_size=10)


@settings(max_examples=20, deadline=None)
@given(betas=_betas)
def test_betas_change_bone_lengths_smoothly(flat64, betas):
    b = torch.tensor([betas], dtype=torch.float64)
    zeros3, zeros45 = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 45, dtype=torch.float64)
    j0, jb, jh = (flat64(zeros3, zeros45, x).joints[0] for x in (torch.zeros_like(b), b, b / 2))
    # At rest the skeleton is affine in beta ...
    torch.testing.assert_close(jh, (j0 + jb) / 2, atol=1e-9, rtol=0)
    # ... and no joint moves more than 5 mm per unit of any beta, so a bone changes by at most twice that.
    bound = 2 * 0.005 * b.abs().sum()
    assert (_bone_lengths(jb) - _bone_lengths(j0)).abs().max() <= bound + 1e-9


def test_positive_size_beta_lengthens_every_bone(flat64):
    zeros3, zeros45 = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 45, dtype=torch.float64)
    beta = torch.zeros(1, 10, dtype=torch.float64)
    base = _bone_lengths(flat64(zeros3, zeros45, beta).joints[0])
    beta[0, 0] = 1.0
    assert torch.all(_bone_lengths(flat64(zeros3, zeros45, beta).joints[0]) > base)


@pytest.mark.parametrize("use_pca", [True, False])
def test_joints_fast_path_matches_full_forward_with_pose_correctives(right, use_pca):
    # Random pose blend shapes exercise the corrective offsets the synthetic assets leave at zero.
    rng = np.random.default_rng(3)
    assets = dataclasses.replace(right, posedirs=rng.normal(0, 2e-3, right.posedirs.shape))
    layer = ManoLayer(assets, use_pca=use_pca, num_pca_comps=12).double()
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    p = torch.randn(5, layer.num_pose_params, generator=gen, dtype=torch.float64)
    b = torch.randn(5, 10, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(layer.joints(g, p, b), layer(g, p, b).joints, rtol=0, atol=1e-12)


def test_joints_fast_path_gradients_match_the_full_forward(right):
    layer = ManoLayer(right, use_pca=True, num_pca_comps=12).double()
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(3, n, generator=gen, dtype=torch.float64, requires_grad=True)
              for n in (3, layer.num_pose_params, 10)]
    weights = torch.randn(3, 21, 3, generator=gen, dtype=torch.float64)
    fast = torch.autograd.grad((layer.joints(*inputs) * weights).sum(), inputs)
    full = torch.autograd.grad((layer(*inputs).joints * weights).sum(), inputs)
    for a, b in zip(fast, full):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_kinematic_levels_cover_every_joint_once(right):
    layer = ManoLayer(right)
    ids = torch.cat([i for i, _ in layer._levels()]).tolist()
    assert sorted(ids) == list(range(1, 16)) and len(layer._levels()) == 3  # MANO: 3 joints per finger
    for i, par in layer._levels():
        assert (layer.smplx_model.parents[i] == par).all()
