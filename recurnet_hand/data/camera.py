"""Camera models and the calibration constants of the STB and FPHA rigs.

Conventions: points are row vectors in millimetres in a camera frame with X right,
Y down and Z forward; pixel coordinates have the centre of pixel (0, 0) at
(0.0, 0.0). A rigid transform maps ``X -> X @ R.T + t``.

The constants are the published calibrations of the two benchmarks (see the
project's reference notes, sections 5 and 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "Intrinsics",
    "RigidTransform",
    "project",
    "rodrigues",
    "STB_SK_COLOUR",
    "STB_SK_DEPTH_TO_COLOUR",
    "STB_BB_LEFT",
    "STB_BB_BASELINE_MM",
    "FPHA_COLOUR",
    "FPHA_WORLD_TO_COLOUR",
]


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics without skew, in pixels.

    Attributes:
        fx: focal length along x (px).
        fy: focal length along y (px).
        cx: principal point x (px).
        cy: principal point y (px).

    Examples:
        >>> Intrinsics(500.0, 500.0, 320.0, 240.0).matrix()[0].tolist()
        [500.0, 0.0, 320.0]
    """

    fx: float
    fy: float
    cx: float
    cy: float

    def matrix(self) -> np.ndarray:
        """The ``(3, 3)`` float64 matrix ``K``."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class RigidTransform:
    """A rotation and translation mapping points ``X -> X @ R.T + t``.

    Stored as nested tuples so the constant stays immutable and hashable.

    Attributes:
        rotation: row-major 3x3 rotation matrix.
        translation: translation in millimetres.
    """

    rotation: tuple[tuple[float, float, float], ...]
    translation: tuple[float, float, float]

    def __post_init__(self) -> None:
        r = np.asarray(self.rotation, dtype=np.float64)
        if r.shape != (3, 3) or np.asarray(self.translation).shape != (3,):
            raise ValueError(f"rotation must be 3x3 and translation length 3, got {r.shape} and "
                             f"{np.asarray(self.translation).shape}")
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise ValueError("rotation is not a proper rotation matrix (R R^T != I or det < 0)")

    @classmethod
    def from_arrays(cls, rotation: np.ndarray, translation: np.ndarray) -> RigidTransform:
        """Build from a ``(3, 3)`` rotation and a ``(3,)`` translation (mm)."""
        r = np.asarray(rotation, dtype=np.float64)
        return cls(tuple(tuple(float(v) for v in row) for row in r),
                   tuple(float(v) for v in np.asarray(translation, dtype=np.float64)))

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> RigidTransform:
        """Build from a homogeneous ``(4, 4)`` (or ``(3, 4)``) matrix ``[R | t]``."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"matrix must be 4x4 or 3x4, got {m.shape}")
        return cls.from_arrays(m[:3, :3], m[:3, 3])

    @classmethod
    def identity(cls) -> RigidTransform:
        """The transform that leaves points unchanged."""
        return cls.from_arrays(np.eye(3), np.zeros(3))

    @property
    def R(self) -> np.ndarray:  # noqa: N802 - the usual symbol
        """``(3, 3)`` float64 rotation."""
        return np.asarray(self.rotation, dtype=np.float64)

    @property
    def t(self) -> np.ndarray:
        """``(3,)`` float64 translation (mm)."""
        return np.asarray(self.translation, dtype=np.float64)

    def matrix(self) -> np.ndarray:
        """Homogeneous ``(4, 4)`` float64 matrix."""
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self.R, self.t
        return m

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points of shape ``(..., 3)`` (mm); returns float64 of the same shape."""
        points = np.asarray(points, dtype=np.float64)
        if points.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {points.shape}")
        return points @ self.R.T + self.t

    def inverse(self) -> RigidTransform:
        """The transform undoing this one."""
        return RigidTransform.from_arrays(self.R.T, -self.t @ self.R)

    def compose(self, first: RigidTransform) -> RigidTransform:
        """``self`` after ``first``: ``self.compose(first).apply(X) == self.apply(first.apply(X))``."""
        return RigidTransform.from_arrays(self.R @ first.R, first.t @ self.R.T + self.t)


def rodrigues(rotvec) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` of an axis-angle vector (radians), as OpenCV's ``Rodrigues``.

    Examples:
        >>> np.round(rodrigues([0.0, 0.0, np.pi / 2]), 6).tolist()
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    return Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64)).as_matrix()


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Perspective projection ``uv = (K X)[:2] / Z``.

    Args:
        points: ``(..., N, 3)`` points in the camera frame (mm), Z > 0.
        K: ``(3, 3)`` intrinsics whose last row is ``[0, 0, 1]``; any affine
            pixel map may be folded into its first two rows (crops, flips, rotations).

    Returns:
        ``(..., N, 2)`` float64 pixel coordinates.

    Raises:
        ValueError: on wrong shapes or points not in front of the camera.

    Examples:
        >>> K = Intrinsics(500.0, 500.0, 320.0, 240.0).matrix()
        >>> project(np.array([[0.0, 0.0, 1000.0], [100.0, -50.0, 500.0]]), K).tolist()
        [[320.0, 240.0], [420.0, 190.0]]
    """
    points = np.asarray(points, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., N, 3), got {points.shape}")
    if K.shape != (3, 3) or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise ValueError(f"K must be 3x3 with last row [0, 0, 1], got {K.tolist()}")
    z = points[..., 2:3]
    if np.any(~(z > 0)):
        raise ValueError(f"cannot project points with Z <= 0 or non-finite Z (min Z = {np.nanmin(z):.3f} mm)")
    return (points @ K[:2].T) / z


# --- Stereo Hand Pose Tracking Benchmark (STB) -------------------------------

#: Intel RealSense SR300 ("SK") colour camera, 640x480.
STB_SK_COLOUR = Intrinsics(fx=607.92271, fy=607.88192, cx=314.78337, cy=236.42484)

_STB_SK_ROTVEC = (0.00531, -0.01196, 0.00301)
_STB_SK_T_MM = np.array([-24.0381, -0.4563, -1.2326])
_stb_r = rodrigues(_STB_SK_ROTVEC)

#: SK depth frame (where the SK labels live) -> SK colour frame. The calibration is
#: given as ``Xc = (Xd - T) @ R`` on row vectors, i.e. rotation ``R.T`` and
#: translation ``-T @ R`` in this module's ``X @ R.T + t`` form.
STB_SK_DEPTH_TO_COLOUR = RigidTransform.from_arrays(_stb_r.T, -_STB_SK_T_MM @ _stb_r)

#: Point Grey Bumblebee2 ("BB") left camera, 640x480; BB labels are already in this frame.
STB_BB_LEFT = Intrinsics(fx=822.79041, fy=822.79041, cx=318.47345, cy=250.31296)

#: Bumblebee2 stereo baseline (mm).
STB_BB_BASELINE_MM = 120.054

# --- First-Person Hand Action benchmark (FPHA) -------------------------------

#: Intel RealSense SR300 colour camera, 1920x1080.
FPHA_COLOUR = Intrinsics(fx=1395.749023, fy=1395.749268, cx=935.732544, cy=540.681030)

#: FPHA world frame (= depth camera, where skeleton.txt lives) -> colour camera.
FPHA_WORLD_TO_COLOUR = RigidTransform.from_matrix(np.array([
    [0.999988496304, -0.00468848412856, 0.000982563360594, 25.7],
    [0.00469115935266, 0.999985218048, -0.00273845880292, 1.22],
    [-0.000969709653873, 0.00274303671904, 0.99999576807, 3.902],
    [0.0, 0.0, 0.0, 1.0],
]))
