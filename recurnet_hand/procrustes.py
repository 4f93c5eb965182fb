"""Procrustes-aligned hand errors and the FreiHAND evaluation protocol.

FreiHAND-style evaluation (:func:`freihand_metrics`) aligns each predicted hand onto
its ground truth first (:func:`procrustes_align`: scale, proper rotation and
translation, Umeyama's least-squares solution) and reports the aligned mean errors
(PA-MPJPE for joints, PA-MPVPE for mesh vertices), F-scores of the aligned vertices at
5 and 15 mm and the AUC over 0-50 mm of the aligned joints and vertices. A weaker
alignment (scale and translation only) is reported next to it, and every function
takes ``mode`` to choose among :data:`PROCRUSTES_MODES`.

Unlike an unconstrained orthogonal Procrustes solution, the rotation here is always
proper (det +1): a mirrored hand is never "aligned" by a reflection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .metrics import _numpy, auc, pck_curve

__all__ = [
    "FreiHANDMetrics",
    "PROCRUSTES_MODES",
    "ProcrustesTransform",
    "aligned_error",
    "f_score",
    "freihand_metrics",
    "pa_mpjpe",
    "pa_mpvpe",
    "procrustes_align",
    "procrustes_transform",
]


@dataclass(frozen=True, eq=False)
class ProcrustesTransform:
    """Per-sample similarity transforms ``x -> scale * R x + translation``.

    Attributes:
        scale: ``(B,)`` non-negative scales.
        rotation: ``(B, 3, 3)`` proper rotations (det +1; the identity for the modes
            without rotation).
        translation: ``(B, 3)`` translations, units of the points.
    """

    scale: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points) -> np.ndarray:
        """Map ``(B, N, 3)`` points (sample ``b`` by transform ``b``) to ``(B, N, 3)`` float64."""
        points = _numpy(points, "points")
        if points.ndim != 3 or points.shape[0] != self.scale.shape[0] or points.shape[-1] != 3:
            raise ValueError(f"points must be ({self.scale.shape[0]}, N, 3), got {points.shape}")
        rotated = np.einsum("bij,bnj->bni", self.rotation, points)
        return self.scale[:, None, None] * rotated + self.translation[:, None, :]


def _centred(pred: np.ndarray, gt: np.ndarray):
    mu_p, mu_g = pred.mean(axis=1), gt.mean(axis=1)
    return pred - mu_p[:, None], gt - mu_g[:, None], mu_p, mu_g


def _similarity(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Umeyama (1991): the SVD of the cross-covariance, with the last singular direction
    # flipped when U V^T would be a reflection, gives the best proper rotation.
    p, g, _, _ = _centred(pred, gt)
    cov = np.einsum("bni,bnj->bij", g, p)  # sum_n g_n p_n^T
    u, d, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    s_diag = np.ones_like(d)
    s_diag[:, -1] = sign
    rotation = u @ (s_diag[:, :, None] * vt)
    var_p = np.einsum("bni,bni->b", p, p)
    scale = np.divide((d * s_diag).sum(axis=1), var_p, out=np.zeros_like(var_p), where=var_p > 0)
    return scale, rotation


def _scale_only(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g, _, _ = _centred(pred, gt)
    num = np.einsum("bni,bni->b", p, g)
    den = np.einsum("bni,bni->b", p, p)
    # s >= 0: a negative scale would be the point reflection -I, which is not a similarity
    # the other modes may use either.
    scale = np.divide(np.maximum(num, 0.0), den, out=np.zeros_like(den), where=den > 0)
    return scale, np.broadcast_to(np.eye(3), (pred.shape[0], 3, 3)).copy()


def _translation_only(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ones(pred.shape[0]), np.broadcast_to(np.eye(3), (pred.shape[0], 3, 3)).copy()


#: Alignment modes of :func:`procrustes_align`, ``(pred, gt) -> (scale (B,), rotation (B, 3, 3))``
#: minimising the sum of squared distances; the translation then maps the centroids onto each other.
#: ``"similarity"``: scale, proper rotation and translation (Umeyama; FreiHAND's PA alignment);
#: ``"scale_translation"``: least-squares scale ``>= 0`` and translation; ``"translation"``: centroids only.
PROCRUSTES_MODES: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "similarity": _similarity,
    "scale_translation": _scale_only,
    "translation": _translation_only,
}


def _check_points(pred, gt, *, same_count: bool = True) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _numpy(pred, "pred"), _numpy(gt, "gt")
    ok = pred.ndim == 3 and gt.ndim == 3 and pred.shape[-1] == 3 and gt.shape[-1] == 3
    ok = ok and pred.shape[0] == gt.shape[0] and pred.shape[1] >= 1 and gt.shape[1] >= 1
    if not ok or (same_count and pred.shape != gt.shape):
        want = "the same (B, N, 3)" if same_count else "(B, N, 3) and (B, M, 3)"
        raise ValueError(f"pred and gt must be {want} point sets, got {pred.shape} and {gt.shape}")
    return pred, gt


def procrustes_transform(pred, gt, *, mode: str = "similarity") -> ProcrustesTransform:
    """The per-sample transform of ``mode`` that best maps ``pred`` onto ``gt`` (least squares).

    Args:
        pred: ``(B, N, 3)`` points (joints or vertices), numpy or torch.
        gt: ``(B, N, 3)`` corresponding points, same units.
        mode: a key of :data:`PROCRUSTES_MODES`.

    Returns:
        :class:`ProcrustesTransform` with ``apply(pred)`` the aligned prediction. A sample
        whose predicted points all coincide gets scale 0 (every point at the true centroid).

    Examples:
        >>> gt = np.array([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]]])
        >>> t = procrustes_transform(2.0 * gt + 5.0, gt)
        >>> round(float(t.scale[0]), 6), round(float(np.linalg.det(t.rotation[0])), 6)
        (0.5, 1.0)
    """
    if mode not in PROCRUSTES_MODES:
        raise ValueError(f"unknown alignment mode {mode!r}; choose from {sorted(PROCRUSTES_MODES)}")
    pred, gt = _check_points(pred, gt)
    scale, rotation = PROCRUSTES_MODES[mode](pred, gt)
    mu_p, mu_g = pred.mean(axis=1), gt.mean(axis=1)
    translation = mu_g - scale[:, None] * np.einsum("bij,bj->bi", rotation, mu_p)
    return ProcrustesTransform(scale, rotation, translation)


def procrustes_align(pred, gt, *, mode: str = "similarity") -> np.ndarray:
    """Align each predicted point set onto its ground truth (:func:`procrustes_transform`).

    Args:
        pred: ``(B, N, 3)`` predicted points.
        gt: ``(B, N, 3)`` true points, same units.
        mode: a key of :data:`PROCRUSTES_MODES`.

    Returns:
        ``(B, N, 3)`` float64 aligned prediction.

    Examples:
        >>> gt = np.array([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]]])
        >>> turn = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 degrees about z
        >>> pred = 3.0 * gt @ turn.T + [10.0, -4.0, 2.0]
        >>> bool(np.allclose(procrustes_align(pred, gt), gt))
        True
    """
    return procrustes_transform(pred, gt, mode=mode).apply(pred)


def aligned_error(pred, gt, *, mode: str = "similarity") -> np.ndarray:
    """Per-point Euclidean error ``(B, N)`` after :func:`procrustes_align` (units of the input)."""
    pred, gt = _check_points(pred, gt)
    return np.linalg.norm(procrustes_align(pred, gt, mode=mode) - gt, axis=-1)


def pa_mpjpe(pred, gt, *, mode: str = "similarity") -> float:
    """Procrustes-aligned mean per-joint position error: the mean of :func:`aligned_error`.

    Args:
        pred: ``(B, J, 3)`` predicted joints.
        gt: ``(B, J, 3)`` true joints, same units (the result has them, e.g. mm).
        mode: a key of :data:`PROCRUSTES_MODES`.

    Examples:
        >>> gt = np.array([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]]])
        >>> round(pa_mpjpe(4.0 * gt - 1.0, gt), 9)
        0.0
    """
    return float(aligned_error(pred, gt, mode=mode).mean())


def pa_mpvpe(pred, gt, *, mode: str = "similarity") -> float:
    """Procrustes-aligned mean per-vertex position error of ``(B, V, 3)`` meshes; as :func:`pa_mpjpe`."""
    return float(aligned_error(pred, gt, mode=mode).mean())


def _nearest_distances(a: np.ndarray, b: np.ndarray, chunk_elements: int = 1 << 22) -> np.ndarray:
    """``(B, N)`` distance from each point of ``a (B, N, 3)`` to the nearest point of ``b (B, M, 3)``."""
    out = np.empty(a.shape[:2])
    step = max(1, chunk_elements // (a.shape[1] * b.shape[1]))
    for lo in range(0, a.shape[0], step):
        # Centre on b's centroid so the expansion |x|^2 + |y|^2 - 2 x.y keeps its precision.
        centre = b[lo:lo + step].mean(axis=1, keepdims=True)
        x, y = a[lo:lo + step] - centre, b[lo:lo + step] - centre
        sq = (x * x).sum(-1)[:, :, None] + (y * y).sum(-1)[:, None, :] - 2.0 * np.einsum("bni,bmi->bnm", x, y)
        out[lo:lo + step] = np.sqrt(np.maximum(sq.min(axis=2), 0.0))
    return out


def f_score(pred_verts, gt_verts, threshold, *, mode: str | None = "similarity") -> np.ndarray:
    """Per-sample F-score of two point sets at distance ``threshold`` (FreiHAND's definition).

    Precision is the fraction of predicted points closer than ``threshold`` to their
    nearest true point, recall the fraction of true points closer than ``threshold`` to
    their nearest predicted point (strict ``<``, as the official script), and
    ``F = 2 P R / (P + R)`` (0 when both are 0). The benchmark averages it over samples.

    Args:
        pred_verts: ``(B, N, 3)`` predicted vertices.
        gt_verts: ``(B, M, 3)`` true vertices, same units as ``threshold`` (FreiHAND: mm,
            thresholds 5 and 15).
        threshold: a distance, or a sequence of ``T`` distances.
        mode: align ``pred_verts`` onto ``gt_verts`` first with this
            :data:`PROCRUSTES_MODES` key (needs ``N == M``; FreiHAND uses
            ``"similarity"``); None compares the sets as given.

    Returns:
        ``(B,)`` float64, or ``(B, T)`` for a sequence of thresholds.

    Examples:
        >>> gt = np.array([[[0.0, 0, 0], [10, 0, 0]]])
        >>> pred = np.array([[[1.0, 0, 0], [30, 0, 0], [31, 0, 0], [32, 0, 0]]])
        >>> f_score(pred, gt, 5.0, mode=None).tolist()  # P = 1/4, R = 1/2
        [0.3333333333333333]
    """
    pred, gt = _check_points(pred_verts, gt_verts, same_count=mode is not None)
    if mode is not None:
        pred = procrustes_align(pred, gt, mode=mode)
    th = _numpy(threshold, "threshold")
    if th.ndim > 1 or not np.all(th >= 0):
        raise ValueError(f"threshold must be a non-negative number or 1D sequence, got {threshold!r}")
    d_pred, d_gt = _nearest_distances(pred, gt), _nearest_distances(gt, pred)
    return _f_from_distances(d_pred, d_gt, th)


def _f_from_distances(d_pred: np.ndarray, d_gt: np.ndarray, th: np.ndarray) -> np.ndarray:
    t = th.reshape(-1)
    precision = (d_pred[:, :, None] < t).mean(axis=1)  # (B, T)
    recall = (d_gt[:, :, None] < t).mean(axis=1)
    total = precision + recall
    f = np.divide(2.0 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return f[:, 0] if th.ndim == 0 else f


@dataclass(frozen=True, eq=False)
class FreiHANDMetrics:
    """FreiHAND-protocol summary (Zimmermann et al., 2019), every length in mm.

    ``pa_*``, ``f_*`` and ``auc_*`` use the per-sample similarity (Procrustes) alignment of
    joints and, separately, of vertices; ``st_*`` the scale-and-translation alignment;
    ``mpjpe`` / ``mpvpe`` none. The vertex fields are None without vertices.

    Attributes:
        count: number of samples.
        pa_mpjpe: mean aligned joint error.
        pa_mpvpe: mean aligned vertex error.
        f_5: mean F-score at 5 mm of the aligned vertices.
        f_15: mean F-score at 15 mm.
        auc_joints: normalised AUC of the aligned joints' PCK over ``thresholds``.
        auc_vertices: the same for the aligned vertices.
        st_mpjpe: mean joint error after scale and translation alignment.
        st_mpvpe: mean vertex error after scale and translation alignment.
        mpjpe: mean joint error without alignment.
        mpvpe: mean vertex error without alignment.
        thresholds: ``(T,)`` PCK thresholds (mm).
        pck_joints: ``(T,)`` PCK curve of the aligned joints.
        pck_vertices: ``(T,)`` PCK curve of the aligned vertices.
    """

    count: int
    pa_mpjpe: float
    pa_mpvpe: float | None
    f_5: float | None
    f_15: float | None
    auc_joints: float
    auc_vertices: float | None
    st_mpjpe: float
    st_mpvpe: float | None
    mpjpe: float
    mpvpe: float | None
    thresholds: np.ndarray
    pck_joints: np.ndarray
    pck_vertices: np.ndarray | None


def freihand_metrics(pred_joints, gt_joints, pred_verts=None, gt_verts=None, *,
                     threshold_range: tuple[float, float] = (0.0, 50.0), steps: int = 100) -> FreiHANDMetrics:
    """Evaluate predictions as the FreiHAND benchmark does.

    Joints and vertices are aligned separately, per sample; PCK curves follow this
    module's conventions (:func:`pck_curve`, mean over points of the fraction of samples
    with error ``<= t``; :func:`auc`), with ``linspace(0, 50, 100)`` mm as the official
    script. The official script returns a reflection when that fits better (it calls
    ``scipy.linalg.orthogonal_procrustes``); this one never does, which only matters for
    predictions that are mirror images of the truth.

    Args:
        pred_joints: ``(B, 21, 3)`` mm (any ``J``), numpy or torch.
        gt_joints: ``(B, 21, 3)`` mm.
        pred_verts: optional ``(B, 778, 3)`` mm (any ``V``).
        gt_verts: ``(B, 778, 3)`` mm, given with ``pred_verts``.
        threshold_range: ``(lo, hi)`` of the PCK thresholds (mm).
        steps: number of thresholds.

    Returns:
        :class:`FreiHANDMetrics`.

    Examples:
        >>> gt = np.random.default_rng(0).normal(0.0, 40.0, size=(2, 21, 3))
        >>> m = freihand_metrics(1.1 * gt + [3.0, 4.0, 0.0], gt)
        >>> round(m.pa_mpjpe, 6), round(m.st_mpjpe, 6), m.pa_mpvpe is None
        (0.0, 0.0, True)
    """
    if (pred_verts is None) != (gt_verts is None):
        raise ValueError("give both pred_verts and gt_verts, or neither")
    lo, hi = threshold_range
    if not hi > lo or steps < 2:
        raise ValueError(f"need threshold_range lo < hi and steps >= 2, got {threshold_range}, {steps}")
    thresholds = np.linspace(lo, hi, steps)
    pj, gj = _check_points(pred_joints, gt_joints)
    if pj.shape[0] == 0:
        raise ValueError("freihand_metrics needs at least one sample")
    err_j = aligned_error(pj, gj)
    pck_j = pck_curve(err_j, thresholds)
    fields: dict[str, object] = dict(pa_mpvpe=None, f_5=None, f_15=None, auc_vertices=None, st_mpvpe=None,
                                     mpvpe=None, pck_vertices=None)
    if pred_verts is not None:
        pv, gv = _check_points(pred_verts, gt_verts)
        if pv.shape[0] != pj.shape[0]:
            raise ValueError(f"{pj.shape[0]} joint samples but {pv.shape[0]} vertex samples")
        aligned = procrustes_align(pv, gv)
        err_v = np.linalg.norm(aligned - gv, axis=-1)
        f = _f_from_distances(_nearest_distances(aligned, gv), _nearest_distances(gv, aligned),
                              np.array([5.0, 15.0])).mean(axis=0)
        pck_v = pck_curve(err_v, thresholds)
        fields = dict(pa_mpvpe=float(err_v.mean()), f_5=float(f[0]), f_15=float(f[1]),
                      auc_vertices=auc(thresholds, pck_v), st_mpvpe=pa_mpvpe(pv, gv, mode="scale_translation"),
                      mpvpe=float(np.linalg.norm(pv - gv, axis=-1).mean()), pck_vertices=pck_v)
    return FreiHANDMetrics(
        count=int(pj.shape[0]),
        pa_mpjpe=float(err_j.mean()),
        auc_joints=auc(thresholds, pck_j),
        st_mpjpe=pa_mpjpe(pj, gj, mode="scale_translation"),
        mpjpe=float(np.linalg.norm(pj - gj, axis=-1).mean()),
        thresholds=thresholds,
        pck_joints=pck_j,
        **fields,
    )
