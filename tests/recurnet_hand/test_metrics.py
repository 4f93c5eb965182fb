"""EPE, PCK, AUC, alignment and the per-loop / per-exit summaries against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recurnet_hand.joints import PARENTS
from recurnet_hand.metrics import (
    EvalConfig,
    PoseEvaluator,
    align_scale,
    auc,
    end_point_error,
    evaluate_loops,
    pck_curve,
    root_relative,
    summarize_cost,
)


def skeleton(seed: int = 0, n: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-80, 80, size=(n, 21, 3)) + [0.0, 0.0, 500.0]


def test_epe_of_known_offset_numpy_and_torch():
    gt = skeleton()
    pred = gt + [3.0, 4.0, 0.0]
    np.testing.assert_allclose(end_point_error(pred, gt), np.full((4, 21), 5.0))
    np.testing.assert_allclose(end_point_error(torch.from_numpy(pred).float(), torch.from_numpy(gt).float()),
                               np.full((4, 21), 5.0), atol=1e-4)
    ev = PoseEvaluator()
    ev.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert ev.compute().epe_mean == pytest.approx(5.0)


def test_pck_and_auc_of_a_known_step():
    # Every error is 30 mm: PCK(t) = 1 for t >= 30, else 0. Over thresholds 20, 21, ..., 50 the
    # trapezoid area is 0.5 (ramp from 29 to 30) + 20 (30 to 50), divided by the 30 mm range.
    errors = np.full((5, 21), 30.0)
    thresholds = np.linspace(20, 50, 31)
    curve = pck_curve(errors, thresholds)
    np.testing.assert_array_equal(curve, (thresholds >= 30).astype(float))
    assert auc(thresholds, curve) == pytest.approx(20.5 / 30)
    ev = PoseEvaluator(EvalConfig(threshold_range=(20, 50), steps=31))
    gt = skeleton(n=5)
    ev.update(gt + [0.0, 30.0, 0.0], gt)
    assert ev.compute().auc == pytest.approx(20.5 / 30)


def test_pck_is_per_joint_then_averaged():
    # Joint 0 valid in 2 samples (errors 1, 5), joint 1 valid in 1 sample (error 2).
    errors = np.array([[1.0, 9.0], [5.0, 2.0]])
    valid = np.array([[True, False], [True, True]])
    # At t=3: joint 0 -> 1/2, joint 1 -> 1/1; mean 0.75 (a pooled count would give 2/3).
    np.testing.assert_allclose(pck_curve(errors, [3.0], valid), [0.75])
    with pytest.raises(ValueError, match="no valid joints"):
        pck_curve(errors, [3.0], np.zeros((2, 2), dtype=bool))


def test_auc_extremes_and_errors():
    t = np.linspace(0, 50, 20)
    assert auc(t, np.ones(20)) == pytest.approx(1.0)
    assert auc(t, np.zeros(20)) == 0.0
    with pytest.raises(ValueError, match="increasing"):
        auc([1.0, 0.0], [0.0, 1.0])


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, (6, 21), elements=st.floats(0, 100)),
       arrays(np.float64, (8,), elements=st.floats(0, 120), unique=True),
       arrays(np.bool_, (6, 21)))
def test_pck_is_monotone_in_threshold(errors, thresholds, valid):
    valid[0, 0] = True
    thresholds = np.sort(thresholds)
    curve = pck_curve(errors, thresholds, valid)
    assert np.all(np.diff(curve) >= 0)
    assert np.all((curve >= 0) & (curve <= 1))


def test_median_follows_evalutil():
    # Joint 0 errors [1, 2, 30] (median 2, mean 11), joint 1 [10, 10, 10]: the mean of per-joint
    # medians is 6, while the pooled median of all six errors would be 10.
    gt = np.zeros((3, 2, 2))
    pred = gt.copy()
    pred[:, 0, 0] = [1.0, 2.0, 30.0]
    pred[:, 1, 0] = [10.0, 10.0, 10.0]
    ev = PoseEvaluator(EvalConfig(unit="px"))
    ev.update(pred, gt)
    m = ev.compute()
    assert m.epe_median == pytest.approx((2.0 + 10.0) / 2)  # pooled median would be 10
    assert m.epe_mean == pytest.approx((11.0 + 10.0) / 2)
    np.testing.assert_allclose(m.per_joint_epe, [11.0, 10.0])
    assert m.unit == "px" and m.count == 3


def test_valid_mask_ignores_invalid_joints_and_samples():
    gt = skeleton(n=3)
    pred = gt + [1.0, 0.0, 0.0]
    pred[1, 4] += 1000.0
    per_joint = np.ones((3, 21), dtype=bool)
    per_joint[1, 4] = False
    ev = PoseEvaluator()
    ev.update(pred, gt, per_joint)
    assert ev.compute().epe_mean == pytest.approx(1.0)
    ev = PoseEvaluator()
    ev.update(pred, gt, np.array([True, False, True]))
    m = ev.compute()
    assert m.epe_mean == pytest.approx(1.0) and m.count == 3
    with pytest.raises(ValueError, match="valid must have shape"):
        ev.update(pred, gt, np.ones(5, dtype=bool))


def test_root_relative_evaluation():
    gt = skeleton()
    pred = gt + [50.0, -20.0, 7.0]  # a pure translation
    absolute, relative = PoseEvaluator(), PoseEvaluator(EvalConfig(root_relative=True))
    absolute.update(pred, gt)
    relative.update(pred, gt)
    assert absolute.compute().epe_mean == pytest.approx(np.linalg.norm([50.0, -20.0, 7.0]))
    assert relative.compute().epe_mean == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(root_relative(gt)[:, 0], 0.0)


@pytest.mark.parametrize("method", ["bone", "lstsq"])
def test_scale_alignment_undoes_a_scaling(method):
    gt = root_relative(skeleton())
    pred = 0.8 * gt
    np.testing.assert_allclose(align_scale(pred, gt, method), gt, atol=1e-9)
    ev = PoseEvaluator(EvalConfig(root_relative=True, scale_align=method))
    ev.update(pred + 100.0, gt)
    assert ev.compute().epe_mean == pytest.approx(0.0, abs=1e-9)


def test_scale_alignment_hand_computed():
    gt = np.zeros((1, 21, 2))
    pred = np.zeros((1, 21, 2))
    gt[0, 1:, 0] = 2.0  # every non-root joint at (2, 0)
    pred[0, 1:, 0] = 1.0
    pred[0, 20, 0] = 3.0
    # lstsq: s = sum(p . g) / sum(p . p) = (19 * 2 + 6) / (19 + 9) = 44 / 28.
    np.testing.assert_allclose(align_scale(pred, gt, "lstsq")[0, 20, 0], 3.0 * 44 / 28)
    # bone: gt bones: 5 root->MCP of length 2, others 0 -> total 10; pred: 5 of length 1
    # plus little_dip (1) -> little_tip (3) of length 2 -> total 7.
    assert PARENTS[20] == 19
    np.testing.assert_allclose(align_scale(pred, gt, "bone")[0, 20, 0], 3.0 * 10 / 7)
    with pytest.raises(ValueError, match="unknown scale alignment"):
        align_scale(pred, gt, "procrustes")


def test_accumulating_batches_equals_one_batch():
    gt = skeleton(1, n=10)
    pred = gt + np.random.default_rng(2).normal(0, 15, size=gt.shape)
    one, many = PoseEvaluator(), PoseEvaluator()
    one.update(pred, gt)
    for i in range(0, 10, 3):
        many.update(pred[i:i + 3], gt[i:i + 3])
    a, b = one.compute(), many.compute()
    assert a.epe_mean == pytest.approx(b.epe_mean) and a.auc == pytest.approx(b.auc)
    np.testing.assert_allclose(a.pck, b.pck)
    many.reset()
    with pytest.raises(ValueError, match="before any update"):
        many.compute()


def test_evaluator_rejects_bad_shapes_and_config():
    ev = PoseEvaluator()
    with pytest.raises(ValueError, match="pred and gt"):
        ev.update(np.zeros((2, 21, 3)), np.zeros((2, 21, 2)))
    with pytest.raises(ValueError, match="threshold_range"):
        EvalConfig(threshold_range=(50, 20))
    with pytest.raises(ValueError, match="scale_align"):
        EvalConfig(scale_align="similarity")


def test_evaluate_loops_per_loop_and_per_exit():
    n, loops = 6, 3
    gt = skeleton(3, n=n)
    # After l loops every joint is off by 3 - l mm along x: errors 3, 2, 1.
    preds = np.stack([gt + [3.0 - l, 0.0, 0.0] for l in range(loops)])
    exit_steps = np.array([0, 2, 2, 1, 2, 0])
    report = evaluate_loops(torch.from_numpy(preds), gt, exit_steps)
    assert [m.epe_mean for m in report.per_loop] == pytest.approx([3.0, 2.0, 1.0])
    # At exit: errors 3, 1, 1, 2, 1, 3 -> mean 11 / 6.
    assert report.at_exit.epe_mean == pytest.approx(11.0 / 6.0)
    assert report.exit_counts.tolist() == [2, 1, 3]
    assert sorted(report.by_exit_step) == [0, 1, 2]
    assert {k: m.count for k, m in report.by_exit_step.items()} == {0: 2, 1: 1, 2: 3}
    assert report.by_exit_step[0].epe_mean == pytest.approx(3.0)
    assert report.by_exit_step[2].epe_mean == pytest.approx(1.0)
    loops_only = evaluate_loops(preds, gt)
    assert loops_only.at_exit is None and loops_only.by_exit_step == {}
    with pytest.raises(ValueError, match="exit_steps must be < 3"):
        evaluate_loops(preds, gt, np.array([0, 3, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="non-negative integers"):
        evaluate_loops(preds, gt, np.array([0.5, 1, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"\(L, N, J, D\)"):
        evaluate_loops(preds[0], gt)


def test_summarize_cost_hand_computed():
    steps = torch.tensor([0, 1, 1, 4])
    macs = np.array([0.46e9, 0.6e9, 0.6e9, 1.5e9])
    cost = summarize_cost(steps, macs)
    assert cost.count == 4 and cost.mean_loops == pytest.approx(1.5)
    assert cost.mean_macs == pytest.approx(0.79e9) and cost.mean_gmacs == pytest.approx(0.79)
    assert cost.loop_histogram.tolist() == [1, 2, 0, 0, 1]
    with pytest.raises(ValueError, match="exit_steps"):
        summarize_cost([0, 1], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        summarize_cost([0], [-1.0])
