"""Procrustes alignment, PA-MPJPE / PA-MPVPE, F-scores and the FreiHAND summary against known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.transform import Rotation

from recurnet_hand.metrics import auc, pck_curve
from recurnet_hand.procrustes import (
    PROCRUSTES_MODES,
    FreiHANDMetrics,
    aligned_error,
    f_score,
    freihand_metrics,
    pa_mpjpe,
    pa_mpvpe,
    procrustes_align,
    procrustes_transform,
)


def points(seed: int = 0, b: int = 3, n: int = 21) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 40.0, size=(b, n, 3)) + [0.0, 0.0, 500.0]


def similar_copy(x: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``s R x + t`` per sample, with the (s, R, t) used."""
    rng = np.random.default_rng(seed)
    b = x.shape[0]
    s = rng.uniform(0.3, 3.0, size=b)
    r = Rotation.random(b, random_state=seed).as_matrix()
    t = rng.uniform(-200.0, 200.0, size=(b, 3))
    return s[:, None, None] * np.einsum("bij,bnj->bni", r, x) + t[:, None], s, r, t


def sum_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a - b) ** 2).sum(axis=(1, 2))


#: An octahedron (+-11 on each axis) and a prediction whose best similarity is the identity:
#: the x pair pulled in to +-8 (errors 3), the y and z pairs pushed out to +-12 (errors 1).
#: (Centroids agree; G^T P = diag(176, 264, 264) is symmetric positive definite, so R = I;
#: the scale tr(G^T P) / |P|^2 = 704 / 704 = 1.)
OCTA_GT = np.array([[[11.0, 0, 0], [-11, 0, 0], [0, 11, 0], [0, -11, 0], [0, 0, 11], [0, 0, -11]]])
OCTA_PRED = np.array([[[8.0, 0, 0], [-8, 0, 0], [0, 12, 0], [0, -12, 0], [0, 0, 12], [0, 0, -12]]])
OCTA_ERRORS = [3.0, 3.0, 1.0, 1.0, 1.0, 1.0]


# --- alignment -----------------------------------------------------------------

def test_similar_copy_aligns_to_zero_and_the_transform_is_recovered():
    gt = points()
    pred, s, r, t = similar_copy(gt)
    np.testing.assert_allclose(procrustes_align(pred, gt), gt, atol=1e-9)
    assert pa_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-9)
    tr = procrustes_transform(pred, gt)
    np.testing.assert_allclose(tr.scale, 1.0 / s, rtol=1e-10)
    np.testing.assert_allclose(tr.rotation, np.swapaxes(r, 1, 2), atol=1e-10)
    np.testing.assert_allclose(tr.apply(pred), gt, atol=1e-9)


def test_scale_translation_and_translation_modes_recover_their_own_transforms():
    gt = points()
    np.testing.assert_allclose(procrustes_align(2.5 * gt + [1.0, -2.0, 3.0], gt, mode="scale_translation"), gt,
                               atol=1e-9)
    np.testing.assert_allclose(procrustes_align(gt + [1.0, -2.0, 3.0], gt, mode="translation"), gt, atol=1e-9)
    # A rotation is not undone by the modes without one.
    pred, _, _, _ = similar_copy(gt)
    assert pa_mpjpe(pred, gt, mode="scale_translation") > 1.0
    rot = procrustes_transform(pred, gt, mode="scale_translation").rotation
    np.testing.assert_array_equal(rot, np.broadcast_to(np.eye(3), rot.shape))


def test_mirror_image_is_not_aligned_by_a_reflection():
    # A chiral (non-planar) set and its mirror image: no proper rotation maps one onto the other.
    gt = np.array([[[0.0, 0, 0], [30, 0, 0], [0, 20, 0], [0, 0, 10], [5, 7, 40]]])
    pred = gt @ np.diag([-1.0, 1.0, 1.0])
    tr = procrustes_transform(pred, gt)
    np.testing.assert_allclose(np.linalg.det(tr.rotation), 1.0, atol=1e-12)
    np.testing.assert_allclose(tr.rotation[0] @ tr.rotation[0].T, np.eye(3), atol=1e-12)
    assert pa_mpjpe(pred, gt) > 1.0
    # An orthogonal fit allowed to reflect (the uncorrected SVD) would reach zero; ours is
    # still the best proper fit: no sampled rotation does better.
    p, g = pred[0] - pred[0].mean(0), gt[0] - gt[0].mean(0)
    u, _, vt = np.linalg.svd(g.T @ p)
    assert np.linalg.det(u @ vt) < 0
    np.testing.assert_allclose(p @ (u @ vt).T, g, atol=1e-9)
    best = sum_sq(procrustes_align(pred, gt), gt)[0]
    for r in Rotation.random(200, random_state=0).as_matrix():
        q = p @ r.T
        s = max((q * g).sum() / (q * q).sum(), 0.0)
        assert best <= ((s * q - g) ** 2).sum() + 1e-9


def test_known_aligned_errors_are_invariant_to_a_similarity_of_the_prediction():
    np.testing.assert_allclose(aligned_error(OCTA_PRED, OCTA_GT), [OCTA_ERRORS], atol=1e-9)
    moved, _, _, _ = similar_copy(OCTA_PRED, seed=4)
    np.testing.assert_allclose(aligned_error(moved, OCTA_GT), [OCTA_ERRORS], atol=1e-9)
    assert pa_mpjpe(moved, OCTA_GT) == pytest.approx(5.0 / 3.0)
    assert pa_mpvpe(moved, OCTA_GT) == pytest.approx(5.0 / 3.0)
    for mode in ("scale_translation", "translation"):
        assert pa_mpjpe(OCTA_PRED, OCTA_GT, mode=mode) == pytest.approx(5.0 / 3.0)


def test_scale_is_never_negative_and_degenerate_predictions_go_to_the_centroid():
    gt = points(b=2)
    flipped = procrustes_transform(-gt, gt, mode="scale_translation")  # -I is a point reflection
    np.testing.assert_array_equal(flipped.scale, 0.0)
    collapsed = np.repeat(gt[:, :1], gt.shape[1], axis=1)  # every predicted point the same
    for mode in PROCRUSTES_MODES:
        out = procrustes_align(collapsed, gt, mode=mode)
        np.testing.assert_allclose(out, np.broadcast_to(gt.mean(1, keepdims=True), gt.shape), atol=1e-9)


def test_torch_input_and_batch_independence():
    gt = points(b=4)
    pred = gt + np.random.default_rng(3).normal(0.0, 5.0, size=gt.shape)
    joint = procrustes_align(torch.from_numpy(pred), torch.from_numpy(gt))
    single = np.concatenate([procrustes_align(pred[i:i + 1], gt[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(joint, single, atol=1e-10)


def test_bad_input():
    gt = points()
    with pytest.raises(ValueError, match="unknown alignment mode 'affine'"):
        procrustes_align(gt, gt, mode="affine")
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        procrustes_align(gt[:, :5], gt)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        procrustes_align(gt[..., :2], gt[..., :2])
    with pytest.raises(ValueError, match="threshold"):
        f_score(gt, gt, -1.0)
    with pytest.raises(ValueError, match="both pred_verts and gt_verts"):
        freihand_metrics(gt, gt, pred_verts=gt)


finite = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (2, 7, 3), elements=finite), arrays(np.float64, (2, 7, 3), elements=finite))
def test_more_freedom_never_fits_worse(pred, gt):
    # Each mode minimises the sum of squared distances over a superset of the next one's
    # transforms: similarity > scale and translation > translation > identity.
    sim, sc, tr = (sum_sq(procrustes_align(pred, gt, mode=m), gt) for m in
                   ("similarity", "scale_translation", "translation"))
    tol = 1e-9 * (1.0 + sum_sq(pred, gt))
    assert np.all(sim <= sc + tol)
    assert np.all(sc <= tr + tol)
    assert np.all(tr <= sum_sq(pred, gt) + tol)
    r = procrustes_transform(pred, gt).rotation
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3), st.floats(0.1, 10.0),
       st.lists(st.floats(-500.0, 500.0), min_size=3, max_size=3))
def test_similarity_undoes_any_similarity(seed, rotvec, scale, shift):
    gt = np.random.default_rng(seed).normal(0.0, 30.0, size=(1, 12, 3))
    r = Rotation.from_rotvec(rotvec).as_matrix()
    pred = scale * gt @ r.T + shift
    np.testing.assert_allclose(procrustes_align(pred, gt), gt, atol=1e-7)


# --- F-score -------------------------------------------------------------------

def test_f_score_hand_computed():
    gt = np.array([[[0.0, 0, 0], [10, 0, 0]]])
    pred = np.array([[[1.0, 0, 0], [30, 0, 0], [31, 0, 0], [32, 0, 0]]])
    # precision 1/4 (only (1,0,0) is within 5 of a true point), recall 1/2 (only (0,0,0)).
    assert f_score(pred, gt, 5.0, mode=None)[0] == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    # At 20.5 every true point is near a prediction (recall 1), 2 of 4 predictions (at 1 and 20)
    # near a true point (precision 1/2); at 25 all are.
    np.testing.assert_allclose(f_score(pred, gt, [0.5, 5.0, 20.5, 25.0], mode=None),
                               [[0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]])
    # Strictly closer than the threshold, as the official script counts.
    assert f_score(np.array([[[5.0, 0, 0]]]), np.zeros((1, 1, 3)), 5.0, mode=None)[0] == 0.0


def test_f_score_of_aligned_vertices():
    gt = points(b=2, n=50)
    moved, _, _, _ = similar_copy(gt)
    np.testing.assert_allclose(f_score(moved, gt, 5.0), [1.0, 1.0])
    assert np.all(f_score(moved, gt, 5.0, mode=None) < 1.0)
    # The octahedron: nearest distances are the aligned errors 3, 3, 1, 1, 1, 1 both ways.
    np.testing.assert_allclose(f_score(OCTA_PRED, OCTA_GT, [0.5, 2.0, 5.0]), [[0.0, 2.0 / 3.0, 1.0]])


def test_nearest_distances_in_chunks_match_brute_force():
    from recurnet_hand.procrustes import _nearest_distances

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 50, size=(5, 9, 3)) + 700.0, rng.normal(0, 50, size=(5, 13, 3)) + 700.0
    brute = np.linalg.norm(a[:, :, None] - b[:, None], axis=-1).min(axis=2)
    np.testing.assert_allclose(_nearest_distances(a, b, chunk_elements=100), brute, rtol=1e-9)
    np.testing.assert_allclose(_nearest_distances(a, b), brute, rtol=1e-9)


# --- the FreiHAND summary ------------------------------------------------------

def test_freihand_metrics_hand_computed():
    # Thresholds 0.5, 1.5, ..., 4.5 mm; errors 3, 3, 1, 1, 1, 1 -> PCK 0, 4/6, 4/6, 1, 1.
    moved, _, _, _ = similar_copy(OCTA_PRED, seed=7)
    m = freihand_metrics(moved, OCTA_GT, moved, OCTA_GT, threshold_range=(0.5, 4.5), steps=5)
    assert isinstance(m, FreiHANDMetrics)
    assert m.count == 1
    np.testing.assert_allclose(m.pck_joints, [0.0, 2 / 3, 2 / 3, 1.0, 1.0])
    expected_auc = (1 / 3 + 2 / 3 + 5 / 6 + 1.0) / 4.0  # trapezoids of width 1 over a range of 4
    assert m.auc_joints == pytest.approx(expected_auc)
    assert m.auc_vertices == pytest.approx(expected_auc)
    assert m.pa_mpjpe == pytest.approx(5 / 3) and m.pa_mpvpe == pytest.approx(5 / 3)
    assert m.f_5 == pytest.approx(1.0) and m.f_15 == pytest.approx(1.0)
    assert m.mpjpe > 10.0  # the prediction was moved away; unaligned errors see it
    # Without the rotation, scale and translation alone recover the same errors.
    plain = freihand_metrics(2.0 * OCTA_PRED + 9.0, OCTA_GT, threshold_range=(0.5, 4.5), steps=5)
    assert plain.st_mpjpe == pytest.approx(5 / 3)
    assert plain.pa_mpvpe is None and plain.f_5 is None and plain.pck_vertices is None


def test_freihand_metrics_agree_with_the_building_blocks():
    gt_j, gt_v = points(b=3), points(seed=5, b=3, n=60)
    rng = np.random.default_rng(9)
    pred_j = gt_j + rng.normal(0, 6.0, size=gt_j.shape)
    pred_v = gt_v + rng.normal(0, 6.0, size=gt_v.shape)
    m = freihand_metrics(torch.from_numpy(pred_j), gt_j, pred_v, torch.from_numpy(gt_v))
    th = np.linspace(0.0, 50.0, 100)
    np.testing.assert_allclose(m.thresholds, th)
    assert m.pa_mpjpe == pytest.approx(pa_mpjpe(pred_j, gt_j))
    assert m.pa_mpvpe == pytest.approx(pa_mpvpe(pred_v, gt_v))
    assert m.auc_joints == pytest.approx(auc(th, pck_curve(aligned_error(pred_j, gt_j), th)))
    assert m.auc_vertices == pytest.approx(auc(th, pck_curve(aligned_error(pred_v, gt_v), th)))
    assert m.f_5 == pytest.approx(f_score(pred_v, gt_v, 5.0).mean())
    assert m.f_15 == pytest.approx(f_score(pred_v, gt_v, 15.0).mean())
    assert m.st_mpvpe == pytest.approx(pa_mpvpe(pred_v, gt_v, mode="scale_translation"))
    assert 0.0 < m.f_5 < m.f_15 <= 1.0
