"""Hand pose metrics: end-point error, PCK curves and their AUC, per loop and per exit step.

Conventions follow Zimmermann & Brox's ``EvalUtil`` (the usual STB/RHD protocol):

* the end-point error (EPE) of a joint is the Euclidean distance between prediction
  and ground truth (px for 2D, mm for 3D);
* statistics are taken per joint over the samples where that joint is valid, then
  averaged over joints: mean EPE is the mean of per-joint means, median EPE the mean
  of per-joint medians, and the PCK at threshold ``t`` the mean over joints of the
  fraction of valid samples with error ``<= t``;
* thresholds are ``linspace(lo, hi, steps)``; the AUC is the trapezoid area under the
  PCK curve divided by ``hi - lo``, so a perfect model scores 1.

Procrustes-aligned errors and the FreiHAND protocol are in :mod:`recurnet_hand.procrustes`.

For looped models, ``preds[l]`` is the prediction after ``l`` refinement loops
(``l = 0`` the first estimate, before any loop), and a sample's exit step is the ``l``
whose prediction it returns, so its number of loops is its exit step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .joints import PARENTS

__all__ = [
    "CostSummary",
    "EvalConfig",
    "LoopMetrics",
    "PoseEvaluator",
    "PoseMetrics",
    "SCALE_ALIGNMENTS",
    "align_scale",
    "auc",
    "end_point_error",
    "evaluate_loops",
    "pck_curve",
    "root_relative",
    "summarize_cost",
]


def _numpy(x, name: str) -> np.ndarray:
    """numpy float64 view of an array or tensor (tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric array-like, got {type(x).__name__}") from err


def _valid_mask(valid, shape: tuple[int, int]) -> np.ndarray:
    """``(N, J)`` bool from None, a per-sample ``(N,)`` or a per-joint ``(N, J)`` mask."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    v = _numpy(valid, "valid").astype(bool)
    if v.shape == shape[:1]:
        return np.repeat(v[:, None], shape[1], axis=1)
    if v.shape != shape:
        raise ValueError(f"valid must have shape {shape[:1]} or {shape}, got {v.shape}")
    return v


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.ndim != 3 or pred.shape != gt.shape or pred.shape[-1] not in (2, 3):
        raise ValueError(f"pred and gt must both be (N, J, 2) or (N, J, 3), got {pred.shape} and {gt.shape}")


def root_relative(joints, root: int = 0) -> np.ndarray:
    """Subtract the root joint: ``(..., J, D) -> (..., J, D)``, joint ``root`` becomes zero."""
    joints = _numpy(joints, "joints")
    return joints - joints[..., root:root + 1, :]


def _bone_scale(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    child = np.arange(1, len(PARENTS))
    parent = np.asarray(PARENTS[1:])
    bone_valid = valid[:, child] & valid[:, parent]
    length_p = np.linalg.norm(pred[:, child] - pred[:, parent], axis=-1)
    length_g = np.linalg.norm(gt[:, child] - gt[:, parent], axis=-1)
    sum_p = (length_p * bone_valid).sum(axis=1)
    sum_g = (length_g * bone_valid).sum(axis=1)
    return np.divide(sum_g, sum_p, out=np.ones_like(sum_p), where=sum_p > 0)


def _lstsq_scale(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    p = pred - pred[:, :1]
    g = gt - gt[:, :1]
    num = (np.einsum("njd,njd->nj", p, g) * valid).sum(axis=1)
    den = (np.einsum("njd,njd->nj", p, p) * valid).sum(axis=1)
    return np.divide(num, den, out=np.ones_like(den), where=den > 0)


#: Per-sample scale estimators ``(pred, gt, valid) -> (N,)``, applied about the root joint:
#: ``"bone"``: total length of the 20 bones (:data:`~recurnet_hand.joints.PARENTS`) whose
#: two ends are valid, ground truth over prediction; ``"lstsq"``: the least-squares
#: ``s = <p, g> / <p, p>`` over valid root-relative joints, minimising ``||s p - g||^2``.
SCALE_ALIGNMENTS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "bone": _bone_scale,
    "lstsq": _lstsq_scale,
}


def align_scale(pred, gt, method: str = "bone", valid=None) -> np.ndarray:
    """Rescale each predicted hand about its root joint (joint 0) to the ground truth's size.

    Args:
        pred: ``(N, 21, D)`` predictions.
        gt: ``(N, 21, D)`` ground truth, same units.
        method: a key of :data:`SCALE_ALIGNMENTS`.
        valid: ``(N,)`` or ``(N, 21)`` bool; only valid joints inform the scale.

    Returns:
        ``(N, 21, D)`` float64: ``root + s * (pred - root)`` per sample (``s = 1`` when
        the prediction is degenerate).

    Examples:
        >>> gt = np.zeros((1, 21, 3)); gt[0, 1:, 0] = np.arange(1, 21)
        >>> float(align_scale(gt / 2, gt, "lstsq")[0, 20, 0])
        20.0
    """
    if method not in SCALE_ALIGNMENTS:
        raise ValueError(f"unknown scale alignment {method!r}; choose from {sorted(SCALE_ALIGNMENTS)}")
    pred, gt = _numpy(pred, "pred"), _numpy(gt, "gt")
    _check_pair(pred, gt)
    if pred.shape[1] != len(PARENTS):
        raise ValueError(f"scale alignment needs the {len(PARENTS)}-joint skeleton, got {pred.shape[1]} joints")
    s = SCALE_ALIGNMENTS[method](pred, gt, _valid_mask(valid, pred.shape[:2]))
    root = pred[:, :1]
    return root + s[:, None, None] * (pred - root)


def end_point_error(pred, gt) -> np.ndarray:
    """Per-joint Euclidean error ``(N, J)`` of ``(N, J, D)`` predictions (units of the input).

    Examples:
        >>> end_point_error(np.array([[[3.0, 4.0]]]), np.zeros((1, 1, 2))).tolist()
        [[5.0]]
    """
    pred, gt = _numpy(pred, "pred"), _numpy(gt, "gt")
    _check_pair(pred, gt)
    return np.linalg.norm(pred - gt, axis=-1)


def pck_curve(errors, thresholds, valid=None) -> np.ndarray:
    """Mean over joints of the fraction of valid samples with error ``<= t``.

    Args:
        errors: ``(N, J)`` end-point errors.
        thresholds: ``(T,)`` thresholds, same unit.
        valid: ``(N,)`` or ``(N, J)`` bool; joints with no valid sample are left out.

    Returns:
        ``(T,)`` float64 in ``[0, 1]``.

    Examples:
        >>> pck_curve(np.array([[1.0, 3.0]]), [0.0, 2.0, 4.0]).tolist()
        [0.0, 0.5, 1.0]
    """
    errors = _numpy(errors, "errors")
    if errors.ndim != 2:
        raise ValueError(f"errors must be (N, J), got {errors.shape}")
    thresholds = _numpy(thresholds, "thresholds").reshape(-1)
    mask = _valid_mask(valid, errors.shape)
    counts = mask.sum(axis=0)
    if not counts.any():
        raise ValueError("no valid joints to evaluate")
    hits = ((errors[None] <= thresholds[:, None, None]) & mask[None]).sum(axis=1)  # (T, J)
    return (hits[:, counts > 0] / counts[counts > 0]).mean(axis=1)


def auc(thresholds, values) -> float:
    """Normalised trapezoid area: ``integral(values d thresholds) / (max - min)``.

    Examples:
        >>> auc([0.0, 1.0, 2.0], [0.0, 1.0, 1.0])
        0.75
    """
    x = _numpy(thresholds, "thresholds").reshape(-1)
    y = _numpy(values, "values").reshape(-1)
    if x.shape != y.shape or x.size < 2 or not np.all(np.diff(x) > 0):
        raise ValueError("auc needs >= 2 strictly increasing thresholds and one value per threshold")
    area = float(np.sum((y[1:] + y[:-1]) / 2.0 * np.diff(x)))
    return area / float(x[-1] - x[0])


@dataclass(frozen=True)
class EvalConfig:
    """How :class:`PoseEvaluator` measures.

    Attributes:
        threshold_range: ``(lo, hi)`` of the PCK thresholds (px or mm), e.g. ``(20, 50)``
            for STB 3D, ``(0, 50)`` for FPHA.
        steps: number of thresholds, ``linspace(lo, hi, steps)``.
        root_relative: subtract joint 0 from prediction and ground truth first.
        scale_align: None, or a key of :data:`SCALE_ALIGNMENTS` (applied after the
            root subtraction).
        unit: label of the error unit, ``"mm"`` or ``"px"``.
    """

    threshold_range: tuple[float, float] = (0.0, 50.0)
    steps: int = 20
    root_relative: bool = False
    scale_align: str | None = None
    unit: str = "mm"

    def __post_init__(self) -> None:
        lo, hi = self.threshold_range
        if not hi > lo or self.steps < 2:
            raise ValueError(f"need threshold_range lo < hi and steps >= 2, got {self.threshold_range}, {self.steps}")
        if self.scale_align is not None and self.scale_align not in SCALE_ALIGNMENTS:
            raise ValueError(f"unknown scale_align {self.scale_align!r}; choose from {sorted(SCALE_ALIGNMENTS)}")

    @property
    def thresholds(self) -> np.ndarray:
        """``(steps,)`` float64 thresholds."""
        return np.linspace(self.threshold_range[0], self.threshold_range[1], self.steps)


@dataclass(frozen=True, eq=False)
class PoseMetrics:
    """Summary of one evaluation.

    Attributes:
        count: number of samples.
        epe_mean: mean over joints of the per-joint mean EPE.
        epe_median: mean over joints of the per-joint median EPE.
        per_joint_epe: ``(J,)`` per-joint mean EPE (NaN for a joint never valid).
        thresholds: ``(T,)`` PCK thresholds.
        pck: ``(T,)`` PCK curve.
        auc: normalised area under ``pck``.
        unit: ``"mm"`` or ``"px"``.
    """

    count: int
    epe_mean: float
    epe_median: float
    per_joint_epe: np.ndarray
    thresholds: np.ndarray
    pck: np.ndarray
    auc: float
    unit: str


def _summarise(errors: np.ndarray, valid: np.ndarray, config: EvalConfig) -> PoseMetrics:
    if errors.shape[0] == 0 or not valid.any():
        raise ValueError("no valid samples to evaluate")
    masked = np.where(valid, errors, np.nan)
    seen = valid.any(axis=0)
    per_joint = np.full(errors.shape[1], np.nan)
    per_joint[seen] = np.nanmean(masked[:, seen], axis=0)
    medians = np.nanmedian(masked[:, seen], axis=0)
    thresholds = config.thresholds
    curve = pck_curve(errors, thresholds, valid)
    return PoseMetrics(
        count=int(errors.shape[0]),
        epe_mean=float(per_joint[seen].mean()),
        epe_median=float(medians.mean()),
        per_joint_epe=per_joint,
        thresholds=thresholds,
        pck=curve,
        auc=auc(thresholds, curve),
        unit=config.unit,
    )


class PoseEvaluator:
    """Accumulates errors over batches and summarises them as :class:`PoseMetrics`.

    Args:
        config: measuring options; the default is absolute errors, thresholds 0-50.

    Examples:
        >>> ev = PoseEvaluator(EvalConfig(threshold_range=(0.0, 10.0), steps=11))
        >>> gt = np.zeros((2, 21, 3))
        >>> ev.update(gt + [3.0, 4.0, 0.0], gt)
        >>> m = ev.compute()
        >>> m.epe_mean, round(m.auc, 3)
        (5.0, 0.55)
    """

    def __init__(self, config: EvalConfig | None = None) -> None:
        self.config = config if config is not None else EvalConfig()
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._errors: list[np.ndarray] = []
        self._valid: list[np.ndarray] = []

    def errors(self, pred, gt, valid=None) -> tuple[np.ndarray, np.ndarray]:
        """Per-joint errors of one batch under this evaluator's options.

        Args:
            pred: ``(N, J, D)`` array or tensor.
            gt: ``(N, J, D)``.
            valid: None, ``(N,)`` or ``(N, J)`` bool.

        Returns:
            ``(errors (N, J), valid (N, J))``.
        """
        pred, gt = _numpy(pred, "pred"), _numpy(gt, "gt")
        _check_pair(pred, gt)
        mask = _valid_mask(valid, pred.shape[:2])
        if self.config.root_relative:
            pred, gt = root_relative(pred), root_relative(gt)
        if self.config.scale_align is not None:
            pred = align_scale(pred, gt, self.config.scale_align, mask)
        return end_point_error(pred, gt), mask

    def update(self, pred, gt, valid=None) -> None:
        """Add a batch of ``(N, J, D)`` predictions and ground truth (numpy or torch)."""
        errors, mask = self.errors(pred, gt, valid)
        if self._errors and errors.shape[1] != self._errors[0].shape[1]:
            raise ValueError(f"batch has {errors.shape[1]} joints, earlier batches {self._errors[0].shape[1]}")
        self._errors.append(errors)
        self._valid.append(mask)

    def compute(self) -> PoseMetrics:
        """Summarise all batches added since the last :meth:`reset`."""
        if not self._errors:
            raise ValueError("PoseEvaluator.compute() called before any update()")
        return _summarise(np.concatenate(self._errors), np.concatenate(self._valid), self.config)


@dataclass(frozen=True, eq=False)
class LoopMetrics:
    """Metrics of a looped model.

    Attributes:
        per_loop: metrics of every sample's prediction after ``l`` loops, ``l = 0..L-1``.
        at_exit: metrics of each sample's prediction at its own exit step.
        by_exit_step: exit step -> metrics (at that step) of the samples that exited there.
        exit_counts: ``(L,)`` number of samples per exit step.
    """

    per_loop: tuple[PoseMetrics, ...]
    at_exit: PoseMetrics | None
    by_exit_step: dict[int, PoseMetrics]
    exit_counts: np.ndarray | None


def evaluate_loops(preds, gt, exit_steps=None, valid=None, config: EvalConfig | None = None) -> LoopMetrics:
    """Evaluate the prediction of every loop, and at and grouped by each sample's exit step.

    Args:
        preds: ``(L, N, J, D)``; ``preds[l]`` is the prediction after ``l`` loops.
        gt: ``(N, J, D)``.
        exit_steps: ``(N,)`` ints in ``[0, L)``, or None to evaluate loops only.
        valid: None, ``(N,)`` or ``(N, J)`` bool.
        config: measuring options shared by every evaluation.

    Returns:
        :class:`LoopMetrics` (``at_exit``/``exit_counts`` None without ``exit_steps``).
    """
    preds, gt = _numpy(preds, "preds"), _numpy(gt, "gt")
    if preds.ndim != 4 or preds.shape[1:] != gt.shape:
        raise ValueError(f"preds must be (L, N, J, D) matching gt (N, J, D), got {preds.shape} and {gt.shape}")
    evaluator = PoseEvaluator(config)
    mask = _valid_mask(valid, gt.shape[:2])
    errors = np.stack([evaluator.errors(p, gt, mask)[0] for p in preds])  # (L, N, J)
    per_loop = tuple(_summarise(e, mask, evaluator.config) for e in errors)
    if exit_steps is None:
        return LoopMetrics(per_loop, None, {}, None)
    steps = _exit_steps(exit_steps, gt.shape[0], preds.shape[0])
    chosen = errors[steps, np.arange(gt.shape[0])]
    groups = {int(l): _summarise(chosen[steps == l], mask[steps == l], evaluator.config)
              for l in np.unique(steps) if mask[steps == l].any()}
    return LoopMetrics(per_loop, _summarise(chosen, mask, evaluator.config), groups,
                       np.bincount(steps, minlength=preds.shape[0]))


def _exit_steps(exit_steps, n: int, num_loops: int | None) -> np.ndarray:
    raw = _numpy(exit_steps, "exit_steps").reshape(-1)
    steps = raw.astype(np.int64)
    if raw.shape != (n,) or np.any(steps != raw) or np.any(steps < 0):
        raise ValueError(f"exit_steps must be {n} non-negative integers, got shape {raw.shape}")
    if num_loops is not None and np.any(steps >= num_loops):
        raise ValueError(f"exit_steps must be < {num_loops} (number of predictions), got max {steps.max()}")
    return steps


@dataclass(frozen=True, eq=False)
class CostSummary:
    """Compute spent by a looped model over a set of samples.

    Attributes:
        count: number of samples.
        mean_loops: mean exit step (= refinement loops run).
        loop_histogram: ``(max_step + 1,)`` samples per exit step.
        mean_macs: mean multiply-adds per sample.
        mean_gmacs: ``mean_macs / 1e9``; the unit the DIR-Net paper calls "GFLOPs".
    """

    count: int
    mean_loops: float
    loop_histogram: np.ndarray
    mean_macs: float
    mean_gmacs: float


def summarize_cost(exit_steps, macs) -> CostSummary:
    """Mean loops and mean multiply-adds from per-sample exit steps and costs.

    Args:
        exit_steps: ``(N,)`` non-negative ints.
        macs: ``(N,)`` multiply-adds spent on each sample (e.g. counted per exit step).

    Examples:
        >>> c = summarize_cost([0, 2, 4], [1e9, 2e9, 3e9])
        >>> c.mean_loops, c.mean_gmacs, c.loop_histogram.tolist()
        (2.0, 2.0, [1, 0, 1, 0, 1])
    """
    macs = _numpy(macs, "macs").reshape(-1)
    steps = _exit_steps(exit_steps, macs.shape[0], None)
    if macs.size == 0:
        raise ValueError("summarize_cost needs at least one sample")
    if np.any(macs < 0) or not np.all(np.isfinite(macs)):
        raise ValueError("macs must be finite and non-negative")
    mean_macs = float(macs.mean())
    return CostSummary(int(macs.size), float(steps.mean()), np.bincount(steps), mean_macs, mean_macs / 1e9)
