"""Rotation and camera conventions, pinned with hand-computed values and property tests."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recurnet_hand.geometry import (
    axis_angle_to_matrix,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
    weak_perspective,
)

finite = st.floats(-math.pi + 1e-3, math.pi - 1e-3)


def test_axis_angle_quarter_turns_about_each_axis():
    # Right-handed: +90 deg about z takes x to y; about x takes y to z; about y takes z to x.
    cases = [((0, 0, 1), (1, 0, 0), (0, 1, 0)), ((1, 0, 0), (0, 1, 0), (0, 0, 1)), ((0, 1, 0), (0, 0, 1), (1, 0, 0))]
    for axis, src, dst in cases:
        r = axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float64) * math.pi / 2)
        torch.testing.assert_close(r @ torch.tensor(src, dtype=torch.float64), torch.tensor(dst, dtype=torch.float64))


def test_zero_axis_angle_is_identity_and_finite_gradient():
    aa = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    r = axis_angle_to_matrix(aa)
    torch.testing.assert_close(r, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    r.sum().backward()
    assert torch.isfinite(aa.grad).all()


@settings(max_examples=50, deadline=None)
@given(st.tuples(finite, finite, finite))
def test_6d_round_trip_and_orthonormal(aa):
    r = axis_angle_to_matrix(torch.tensor(aa, dtype=torch.float64))
    back = rotation_6d_to_matrix(matrix_to_rotation_6d(r))
    torch.testing.assert_close(back, r)
    torch.testing.assert_close(back @ back.T, torch.eye(3, dtype=torch.float64))
    assert torch.det(back).item() == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=6, max_size=6))
def test_6d_to_matrix_is_always_a_rotation(values):
    d6 = torch.tensor(values, dtype=torch.float64)
    a, b = d6[:3], d6[3:]
    if a.norm() < 1e-3 or torch.linalg.cross(a, b).norm() < 1e-3:  # degenerate frames have no rotation
        return
    r = rotation_6d_to_matrix(d6)
    torch.testing.assert_close(r.T @ r, torch.eye(3, dtype=torch.float64), atol=1e-9, rtol=0)
    assert torch.det(r).item() == pytest.approx(1.0)


def test_weak_perspective_hand_computed():
    points = torch.tensor([[[0.0, 0.0, 400.0], [10.0, -5.0, 380.0]]])
    out = weak_perspective(points, torch.tensor([1.5]), torch.tensor([[100.0, 120.0]]))
    # x = s * X + tx, y = s * Y + ty; depth is dropped.
    torch.testing.assert_close(out, torch.tensor([[[100.0, 120.0], [115.0, 112.5]]]))


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="6D rotations"):
        rotation_6d_to_matrix(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="axis-angle"):
        axis_angle_to_matrix(torch.zeros(4))
    with pytest.raises(ValueError, match="points must be"):
        weak_perspective(torch.zeros(2, 21, 2), torch.ones(2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="scale must be"):
        weak_perspective(torch.zeros(2, 21, 3), torch.ones(3), torch.zeros(2, 2))
