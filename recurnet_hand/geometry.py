"""Rotations and the weak-perspective camera used by the pose predictor.

Conventions:

- Rotation matrices act on column vectors, ``x' = R @ x``; a batch of points
  ``(B, J, 3)`` rotates as ``points @ R.transpose(-1, -2)``.
- The 6D rotation representation is the first two *columns* of ``R``
  (Zhou et al., CVPR 2019), ``(B, 6) = [R[:, 0], R[:, 1]]``, turned back into a
  rotation by Gram-Schmidt; it is continuous, which makes it easy to regress.
- Weak perspective (the paper's Eq. 2): ``x2d = s * Pi(R X) + t`` where ``Pi``
  keeps the first two coordinates (orthographic projection), ``s`` is in
  crop pixels per millimetre and ``t`` in crop pixels. Image axes: x right,
  y down, matching the camera frame (X right, Y down, Z forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

__all__ = [
    "rotation_6d_to_matrix",
    "matrix_to_rotation_6d",
    "axis_angle_to_matrix",
    "weak_perspective",
]


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """6D representation ``(..., 6)`` -> rotation matrices ``(..., 3, 3)``.

    Examples:
        >>> rotation_6d_to_matrix(torch.tensor([1., 0., 0., 0., 1., 0.]))
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    if d6.shape[-1] != 6:
        raise ValueError(f"6D rotations need a last dimension of 6, got shape {tuple(d6.shape)}")
    a, b = d6[..., :3], d6[..., 3:]
    c0 = nnf.normalize(a, dim=-1)
    c1 = nnf.normalize(b - (c0 * b).sum(-1, keepdim=True) * c0, dim=-1)
    c2 = torch.cross(c0, c1, dim=-1)
    return torch.stack([c0, c1, c2], dim=-1)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> 6D representation ``(..., 6)`` (first two columns)."""
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must end in (3, 3), got shape {tuple(matrix.shape)}")
    return torch.cat([matrix[..., :, 0], matrix[..., :, 1]], dim=-1)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Axis-angle ``(..., 3)`` in radians -> rotation matrices ``(..., 3, 3)`` (Rodrigues' formula).

    Examples:
        >>> import math
        >>> r = axis_angle_to_matrix(torch.tensor([0., 0., math.pi / 2]))
        >>> (r @ torch.tensor([1., 0., 0.])).round(decimals=6)
        tensor([0., 1., 0.])
    """
    if axis_angle.shape[-1] != 3:
        raise ValueError(f"axis-angle vectors need a last dimension of 3, got shape {tuple(axis_angle.shape)}")
    angle = axis_angle.norm(dim=-1, keepdim=True)
    axis = axis_angle / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    return eye + s * k + (1 - c) * (k @ k)


def weak_perspective(points: torch.Tensor, scale: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Project ``(B, J, 3)`` camera-oriented points to ``(B, J, 2)`` crop pixels: ``s * (X, Y) + t``.

    Args:
        points: ``(B, J, 3)`` millimetres, already rotated into the camera's orientation.
        scale: ``(B,)`` pixels per millimetre.
        translation: ``(B, 2)`` pixels (where the point ``(0, 0, *)`` lands).

    Examples:
        >>> weak_perspective(torch.tensor([[[10., -20., 500.]]]), torch.tensor([2.]), torch.tensor([[112., 112.]]))
        tensor([[[132.,  72.]]])
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, J, 3), got {tuple(points.shape)}")
    if scale.shape != points.shape[:1] or translation.shape != (points.shape[0], 2):
        raise ValueError(
            f"scale must be ({points.shape[0]},) and translation ({points.shape[0]}, 2), "
            f"got {tuple(scale.shape)} and {tuple(translation.shape)}"
        )
    return scale[:, None, None] * points[..., :2] + translation[:, None, :]
