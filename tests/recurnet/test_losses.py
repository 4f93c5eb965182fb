"""Uncertainty losses (Eq. 8, 9) and the loop loss (Eq. 12)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recurnet.losses import (
    LOG_VAR_BOUND,
    TASK_LOSSES,
    GaussianUncertaintyLoss,
    L1UncertaintyLoss,
    LoopLoss,
    LoopLossOutput,
    LossTerm,
    TaskLoss,
    gaussian_uncertainty_loss,
    l1_uncertainty_loss,
    register_task_loss,
)
from recurnet.output import LoopOutput


def make_output(preds, log_vars=None):
    """A LoopOutput from per-iteration {name: tensor} dicts (every sample ran every iteration)."""
    n = len(preds)
    b = next(iter(preds[0].values())).shape[0]
    log_vars = log_vars or [{} for _ in range(n)]
    return LoopOutput(
        list(preds), list(log_vars), [None] * n, torch.full((b,), n - 1), torch.ones(n, b, dtype=torch.bool)
    )


# ---------------------------------------------------------------------- pure functions


def test_gaussian_hand_values():
    L = torch.tensor([4.0, 4.0, 0.0])
    a = torch.tensor([0.0, math.log(4.0), 2.0])
    expected = torch.tensor([2.0, 0.5 * 0.25 * 4 + 0.5 * math.log(4.0), 1.0])
    torch.testing.assert_close(gaussian_uncertainty_loss(L, a), expected)


def test_l1_hand_values_and_small_error_branch():
    d = torch.tensor([3.0, 0.5, 1.0])
    a = torch.tensor([0.0, 0.0, math.log(2.0)])
    # 3 > 1: Eq. 9 literally, e^0 (3 - 0.5); 0.5 <= 1: quadratic 0.5^2 / 2; 1: 0.5 / 2 + log(2) / 2
    expected = torch.tensor([2.5, 0.125, 0.25 + 0.5 * math.log(2.0)])
    torch.testing.assert_close(l1_uncertainty_loss(d, a), expected)


@settings(max_examples=30, deadline=None)
@given(d=st.floats(1.001, 1e3), a=st.floats(-15, 15))
def test_l1_equals_eq9_for_large_errors(d, a):
    got = l1_uncertainty_loss(torch.tensor(d, dtype=torch.float64), torch.tensor(a, dtype=torch.float64))
    assert float(got) == pytest.approx(math.exp(-a) * (d - 0.5) + a / 2, rel=1e-9)


def test_l1_bounded_below_for_small_errors():
    # Literal Eq. 9 at d = 0.1 goes to -inf as a -> -inf; ours has a finite minimum at a = log(2 * 0.005).
    a = torch.linspace(-15, 5, 2001, dtype=torch.float64)
    values = l1_uncertainty_loss(torch.full_like(a, 0.1), a)
    best = a[values.argmin()]
    assert abs(float(best) - math.log(2 * 0.005)) < 0.02
    assert float(values.min()) > -3


@pytest.mark.parametrize(
    "fn, error, optimum",
    [
        (gaussian_uncertainty_loss, 0.3, math.log(0.3)),  # d/da = -e^-a L / 2 + 1/2 = 0 at a = log L
        (l1_uncertainty_loss, 3.0, math.log(2 * 2.5)),  # -e^-a (d - 1/2) + 1/2 = 0 at a = log(2 (d - 1/2))
    ],
)
def test_gradient_vanishes_at_the_optimal_log_variance(fn, error, optimum):
    a = torch.tensor(optimum, dtype=torch.float64, requires_grad=True)
    fn(torch.tensor(error, dtype=torch.float64), a).backward()
    assert abs(float(a.grad)) < 1e-9


@settings(max_examples=40, deadline=None)
@given(a=st.floats(-1e4, 1e4), err=st.floats(0, 1e4))
def test_extreme_log_variances_are_finite_with_finite_gradients(a, err):
    for fn in (gaussian_uncertainty_loss, l1_uncertainty_loss):
        a_t = torch.tensor([a], requires_grad=True)
        e_t = torch.tensor([err], requires_grad=True)
        value = fn(e_t, a_t)
        value.sum().backward()
        assert torch.isfinite(value).all() and torch.isfinite(a_t.grad).all() and torch.isfinite(e_t.grad).all()


def test_gradient_pulls_out_of_range_log_variance_back():
    a = torch.tensor([-1e4, 1e4], requires_grad=True)
    gaussian_uncertainty_loss(torch.tensor([1.0, 1.0]), a).sum().backward()
    assert a.grad[0] < 0 and a.grad[1] > 0  # gradient descent moves -1e4 up and +1e4 down
    assert float(gaussian_uncertainty_loss(torch.tensor(1.0), torch.tensor(1e4))) == pytest.approx(
        0.5 * math.exp(-LOG_VAR_BOUND) + 0.5 * LOG_VAR_BOUND
    )


def test_gradcheck_float64():
    err = torch.rand(6, dtype=torch.float64) * 3 + 0.01
    a = torch.randn(6, dtype=torch.float64)
    err.requires_grad_(True)
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(gaussian_uncertainty_loss, (err, a))
    # keep errors away from the smooth-L1 kink at 1, where the second branch takes over
    err2 = (torch.tensor([0.2, 0.5, 0.8, 1.5, 2.0, 5.0], dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(l1_uncertainty_loss, (err2, a))


def test_modules_agree_with_functions():
    pred, target, a = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(
        GaussianUncertaintyLoss(reduction="none")(pred, target, a), gaussian_uncertainty_loss((pred - target) ** 2, a)
    )
    torch.testing.assert_close(
        L1UncertaintyLoss(reduction="sum")(pred, target, a), l1_uncertainty_loss((pred - target).abs(), a).sum()
    )


@pytest.mark.parametrize("kwargs", [{"reduction": "avg"}, {"bound": 0}, {"bound": 100}])
def test_modules_reject_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        GaussianUncertaintyLoss(**kwargs)


# ---------------------------------------------------------------------- loop loss


def test_loop_loss_sums_weighted_terms_over_loops():
    target = torch.tensor([[1.0], [3.0]])
    preds = [
        {"y": torch.tensor([[0.0], [3.0]]), "z": torch.tensor([[2.0], [2.0]])},
        {"y": torch.tensor([[1.0], [1.0]]), "z": torch.tensor([[1.0], [2.0]])},
    ]
    log_vars = [{"y": torch.zeros(2, 1)}, {"y": torch.full((2, 1), math.log(2.0))}]
    loss = LoopLoss(
        [LossTerm("y", "t", "l2", weight=2.0, variance_weight=0.5), LossTerm("z", "t", "l1", weight=1.0)],
        loop_weights=[1.0, 3.0, 99.0],
    )
    out = loss(make_output(preds, log_vars), {"t": target})
    # y: squared errors loop0 [1, 0] -> 0.5; loop1 [0, 4] -> 2
    # y var: loop0 mean(e^0/2 * [1, 0]) = 0.25; loop1 mean(0.25 * [0, 4] + log2 / 2) = 0.5 + log2 / 2
    # z: abs errors loop0 [1, 1] -> 1; loop1 [0, 1] -> 0.5
    torch.testing.assert_close(out.task["y"], torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(out.variance["y"], torch.tensor([0.25, 0.5 + math.log(2.0) / 2]))
    torch.testing.assert_close(out.task["z"], torch.tensor([1.0, 0.5]))
    assert "z" not in out.variance
    expected = 1 * (2 * 0.5 + 0.5 * 0.25 + 1.0) + 3 * (2 * 2.0 + 0.5 * (0.5 + math.log(2.0) / 2) + 0.5)
    assert float(out.total) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(out.task_per_sample["y"], torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    torch.testing.assert_close(out.weighted_task_per_sample(), torch.tensor([[3.0, 1.0], [0.0, 9.0]]))
    scalars = out.scalars()
    assert scalars["loss"] == pytest.approx(expected, rel=1e-6)
    assert scalars["y/task/l1"] == pytest.approx(2.0) and scalars["y/var/l0"] == pytest.approx(0.25)
    assert out.nonfinite() == []


def test_masked_samples_contribute_nothing_and_mean_is_over_valid_samples():
    pred = torch.tensor([[1.0, 1.0], [5.0, 5.0], [3.0, 3.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [float("nan"), float("nan")], [1.0, 1.0]])  # sample 1: no 3D label
    mask = torch.tensor([True, False, True])
    loss = LoopLoss([LossTerm("y", "t", "l2", mask="has_t")])
    out = loss(make_output([{"y": pred}]), {"t": target, "has_t": mask})
    assert out.total.item() == pytest.approx((1 + 4) / 2)  # mean over the two valid samples
    out.total.backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.equal(pred.grad[1], torch.zeros(2))
    assert out.valid["y"].tolist() == [True, False, True]
    assert out.task_per_sample["y"][0].tolist() == [1.0, 0.0, 4.0]


def test_all_masked_batch_gives_zero_loss_and_zero_gradient():
    pred = torch.randn(2, 3, requires_grad=True)
    loss = LoopLoss([LossTerm("y", "t", "smooth_l1", mask="m")])
    out = loss(make_output([{"y": pred}]), {"t": torch.full((2, 3), float("nan")), "m": torch.zeros(2)})
    out.total.backward()
    assert out.total.item() == 0.0 and torch.equal(pred.grad, torch.zeros(2, 3))


def test_per_element_mask_averages_over_valid_elements():
    pred = torch.zeros(2, 3, 2)  # e.g. (B, joints, xy)
    target = torch.ones(2, 3, 2) * torch.tensor([1.0, 2.0, 3.0])[None, :, None]
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool)  # visible joints
    out = LoopLoss([LossTerm("y", "t", "l1", mask="vis")])(make_output([{"y": pred}]), {"t": target, "vis": mask})
    assert float(out.total) == pytest.approx((1 + 1 + 2) / 3)  # elements: 1,1 | 1,1,2,2 -> mean over 6
    torch.testing.assert_close(out.task_per_sample["y"][0], torch.tensor([1.0, 1.5]))


def test_cross_entropy_with_per_sample_variance():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    label = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, label, reduction="none")
    a = torch.tensor([[0.0], [1.0]])
    out = LoopLoss([LossTerm("logits", "label", "cross_entropy", variance_weight=1.0)])(
        make_output([{"logits": logits}], [{"logits": a}]), {"label": label}
    )
    expected_var = (ce * torch.exp(-a[:, 0]) + a[:, 0] / 2).mean()
    assert float(out.variance["logits"][0]) == pytest.approx(float(expected_var), rel=1e-6)
    assert float(out.total) == pytest.approx(float(ce.mean() + expected_var), rel=1e-6)


def test_log_variance_per_joint_broadcasts_over_coordinates():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    a = torch.zeros(2, 4, 1)
    out = LoopLoss([LossTerm("j", "t", "l2", variance_weight=1.0)])(
        make_output([{"j": pred}], [{"j": a}]), {"t": target}
    )
    assert float(out.variance["j"][0]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "term, batch, log_vars, message",
    [
        (LossTerm("y", "missing"), {"t": torch.zeros(2, 1)}, None, "no target 'missing'"),
        (LossTerm("nope", "t"), {"t": torch.zeros(2, 1)}, None, "no output 'nope'"),
        (LossTerm("y", "t"), {"t": torch.zeros(2, 3)}, None, "has shape"),
        (LossTerm("y", "t", variance_weight=1.0), {"t": torch.zeros(2, 1)}, None, "no log-variance"),
        (LossTerm("y", "t", mask="m"), {"t": torch.zeros(2, 1)}, None, "no mask 'm'"),
        (LossTerm("y", "t", mask="m"), {"t": torch.zeros(2, 1), "m": torch.ones(3)}, None, "mask 'm' has shape"),
        (LossTerm("y", "t", variance_weight=1.0), {"t": torch.zeros(2, 1)}, [{"y": torch.zeros(2, 5)}], "broadcast"),
    ],
)
def test_bad_inputs_name_the_problem(term, batch, log_vars, message):
    out = make_output([{"y": torch.zeros(2, 1)}], log_vars)
    with pytest.raises((KeyError, ValueError), match=message):
        LoopLoss([term])(out, batch)


def test_bad_configuration_fails_at_construction():
    with pytest.raises(KeyError, match="unknown task loss 'l3'"):
        LossTerm("y", "t", kind="l3")
    with pytest.raises(ValueError, match="weight"):
        LossTerm("y", "t", weight=-1.0)
    with pytest.raises(ValueError, match="unique"):
        LoopLoss([LossTerm("y", "t"), LossTerm("y", "u")])
    with pytest.raises(ValueError, match="at least one"):
        LoopLoss([])
    loss = LoopLoss([LossTerm("y", "t")], loop_weights=[1.0])
    with pytest.raises(ValueError, match="loop_weights has 1"):
        loss(make_output([{"y": torch.zeros(2, 1)}] * 2), {"t": torch.zeros(2, 1)})


def test_nonfinite_parts_are_named():
    out = LoopLoss([LossTerm("y", "t")])(
        make_output([{"y": torch.zeros(1, 1)}, {"y": torch.full((1, 1), float("nan"))}]), {"t": torch.zeros(1, 1)}
    )
    assert out.nonfinite() == ["y/task at loop 1 = nan"]
    assert isinstance(out, LoopLossOutput)


def test_registered_task_loss_kind_is_usable():
    name = "test_cube"
    if name not in TASK_LOSSES:
        register_task_loss(name, TaskLoss(lambda p, t: (p - t).abs() ** 3, lambda p, t, a: (p - t).abs() ** 3 + a))
    output = make_output([{"y": torch.full((2, 1), 2.0)}])
    out = LoopLoss([LossTerm("y", "t", kind=name)])(output, {"t": torch.zeros(2, 1)})
    assert float(out.total) == 8.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_uncertainty_losses_stay_finite_in_half_precision(dtype):
    """Half-precision inputs are computed in float32; within the heads' default bound (10) so are gradients."""
    err = torch.tensor([2.0, 2.0, 2.0], dtype=dtype)
    for fn in (gaussian_uncertainty_loss, l1_uncertainty_loss):
        loss = fn(err, torch.tensor([-30.0, 0.0, 30.0], dtype=dtype))
        assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
        a = torch.tensor([-10.0, 0.0, 10.0], dtype=dtype, requires_grad=True)
        (grad,) = torch.autograd.grad(fn(err, a).sum(), [a])
        assert torch.isfinite(grad).all()
