"""Task losses with learned uncertainty, summed over the iterations of a looped network.

The network predicts, next to every output ``y``, a log-variance ``a = log sigma^2``
(:class:`recurnet.heads.UncertaintyHead`). Two uncertainty losses turn a task
loss into the negative log-likelihood of a distribution with that variance:

- :func:`gaussian_uncertainty_loss`, the paper's Eq. 8 for an L2 task loss
  (squared error ``L``): ``e^-a / 2 * L + a / 2``.
- :func:`l1_uncertainty_loss`, the paper's Eq. 9 for an L1 task loss
  (absolute error ``d``): ``e^-a * (d - 1/2) + a / 2``. Eq. 9 comes from the
  KL loss of He et al. (CVPR 2019), where it is the branch for ``d > 1``; for
  ``d <= 1`` that loss uses the quadratic ``e^-a / 2 * d^2 + a / 2``. We do the
  same: taken literally for small errors, ``e^-a (d - 1/2)`` is negative and the
  loss is unbounded below in ``a`` (it drives ``a -> -inf``). Both branches
  together equal ``e^-a * smooth_l1(d) + a / 2`` with ``beta = 1``.

Extreme log-variances are safe (half-precision inputs are computed in float32):
the value is computed with ``a`` clamped to ``[-bound, bound]`` (``bound`` =
:data:`LOG_VAR_BOUND` = 20 by default, i.e. ``sigma^2`` between ``2e-9`` and ``5e8``
in the squared units of the output), while the gradient passes through the clamp unchanged (straight-through), so
an out-of-range prediction still gets a finite gradient that pulls it back.
For any finite ``a`` value and gradient are finite.

:class:`LoopLoss` assembles the total of the paper's Eq. 12 from named
:class:`LossTerm` entries over every iteration of a :class:`recurnet.LoopOutput`::

    L_total = sum_l w_l * sum_terms (gamma * L_task^l + gamma_var * L_var^l)

Task-loss kinds live in a registry (:data:`TASK_LOSSES`): ``"l2"`` (squared
error, variance term Eq. 8), ``"l1"`` and ``"smooth_l1"`` (variance term Eq. 9),
``"cross_entropy"`` (variance term ``e^-a CE + a/2``, the uncertainty weighting
of Kendall et al. 2018, with one log-variance per sample). Add kinds with
:func:`register_task_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from .output import LoopOutput
from .registry import Registry

__all__ = [
    "LOG_VAR_BOUND",
    "gaussian_uncertainty_loss",
    "l1_uncertainty_loss",
    "GaussianUncertaintyLoss",
    "L1UncertaintyLoss",
    "TaskLoss",
    "TASK_LOSSES",
    "register_task_loss",
    "LossTerm",
    "LoopLoss",
    "LoopLossOutput",
]

#: Default bound on ``|a|`` (``a = log sigma^2``) used to compute the uncertainty losses' values.
LOG_VAR_BOUND = 20.0

_REDUCTIONS = ("mean", "sum", "none")


def _bounded(log_var: torch.Tensor, bound: float) -> torch.Tensor:
    """``log_var`` clamped to ``[-bound, bound]`` in value, identity in gradient."""
    # a - a.detach() is exactly zero for finite a, so the value is exactly the clamped one.
    return log_var.detach().clamp(-bound, bound) + (log_var - log_var.detach())


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are computed in float32: ``e^-a`` overflows float16 beyond ``|a| > 11``."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_bound(bound: float) -> float:
    bound = float(bound)
    if not 0 < bound <= 80:  # exp(80) is still finite in float32 (max ~3.4e38 ~ exp(88.7))
        raise ValueError(f"bound must be in (0, 80], got {bound}")
    return bound


def gaussian_uncertainty_loss(
    squared_error: torch.Tensor, log_var: torch.Tensor, *, bound: float = LOG_VAR_BOUND
) -> torch.Tensor:
    """Gaussian negative log-likelihood of a squared error under variance ``e^a`` (paper Eq. 6, 8).

    ``e^-a / 2 * L + a / 2`` element-wise (constant ``log(2 pi) / 2`` dropped).

    Args:
        squared_error: ``(*)`` squared error ``L = (y - y_gt)^2`` (or a sum of them), >= 0.
        log_var: ``a = log sigma^2``, broadcastable to ``squared_error``.
        bound: ``a`` is clamped to ``[-bound, bound]`` for the value; gradients pass through.

    Returns:
        The element-wise loss, broadcast shape of the inputs.

    Examples:
        >>> gaussian_uncertainty_loss(torch.tensor([4.0]), torch.tensor([0.0]))
        tensor([2.])
        >>> gaussian_uncertainty_loss(torch.tensor([1.0]), torch.tensor([-1e4])).isfinite().all()
        tensor(True)
    """
    a = _bounded(_upcast(log_var), _check_bound(bound))
    return 0.5 * torch.exp(-a) * _upcast(squared_error) + 0.5 * a


def l1_uncertainty_loss(
    abs_error: torch.Tensor, log_var: torch.Tensor, *, bound: float = LOG_VAR_BOUND
) -> torch.Tensor:
    """Uncertainty loss for an L1 / smooth-L1 task loss (paper Eq. 9, with its small-error branch).

    ``e^-a (d - 1/2) + a / 2`` for ``d > 1`` (Eq. 9) and ``e^-a d^2 / 2 + a / 2`` for
    ``d <= 1``; together ``e^-a * smooth_l1(d) + a / 2`` (``beta = 1``). The quadratic
    branch keeps the loss bounded below in ``a`` for small errors.

    Args:
        abs_error: ``(*)`` absolute error ``d = |y - y_gt|``, >= 0 (units of the output).
        log_var: ``a = log sigma^2``, broadcastable to ``abs_error``.
        bound: ``a`` is clamped to ``[-bound, bound]`` for the value; gradients pass through.

    Returns:
        The element-wise loss, broadcast shape of the inputs.

    Examples:
        >>> l1_uncertainty_loss(torch.tensor([3.0, 0.5]), torch.tensor([0.0, 0.0]))
        tensor([2.5000, 0.1250])
    """
    a = _bounded(_upcast(log_var), _check_bound(bound))
    abs_error = _upcast(abs_error)
    smooth = torch.where(abs_error > 1, abs_error - 0.5, 0.5 * abs_error * abs_error)
    return torch.exp(-a) * smooth + 0.5 * a


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


class _UncertaintyModule(nn.Module):
    def __init__(self, reduction: str = "mean", bound: float = LOG_VAR_BOUND):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.bound = _check_bound(bound)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, bound={self.bound}"


class GaussianUncertaintyLoss(_UncertaintyModule):
    """Module form of :func:`gaussian_uncertainty_loss` on predictions and targets.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over elements.
        bound: clamp of ``a`` for the value.

    Shapes:
        ``pred``, ``target`` ``(B, *)``; ``log_var`` broadcastable to them.

    Examples:
        >>> GaussianUncertaintyLoss()(torch.ones(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
        tensor(0.5000)
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        return _reduce(gaussian_uncertainty_loss((pred - target).square(), log_var, bound=self.bound), self.reduction)


class L1UncertaintyLoss(_UncertaintyModule):
    """Module form of :func:`l1_uncertainty_loss` on predictions and targets.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over elements.
        bound: clamp of ``a`` for the value.

    Shapes:
        ``pred``, ``target`` ``(B, *)``; ``log_var`` broadcastable to them.

    Examples:
        >>> L1UncertaintyLoss()(torch.full((2, 3), 3.0), torch.zeros(2, 3), torch.zeros(2, 3))
        tensor(2.5000)
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        return _reduce(l1_uncertainty_loss((pred - target).abs(), log_var, bound=self.bound), self.reduction)


# ---------------------------------------------------------------------- task-loss kinds


@dataclass(frozen=True)
class TaskLoss:
    """A task-loss kind for :class:`LossTerm`.

    Attributes:
        elementwise: ``(pred, target) -> loss`` per target element (shape of ``target``).
        uncertainty: ``(pred, target, log_var) -> loss`` per target element, with ``log_var``
            already broadcast to the target's shape.
        regression: True when ``pred`` and ``target`` must have the same shape.
    """

    elementwise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    uncertainty: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    regression: bool = True


#: Registry of task-loss kinds by name (``"l2"``, ``"l1"``, ``"smooth_l1"``, ``"cross_entropy"``).
TASK_LOSSES: Registry[TaskLoss] = Registry("task loss")


def register_task_loss(name: str, kind: TaskLoss, *, overwrite: bool = False) -> TaskLoss:
    """Register a :class:`TaskLoss` under ``name`` for :class:`LossTerm`'s ``kind``.

    Returns:
        ``kind`` itself.
    """
    TASK_LOSSES.register(name, overwrite=overwrite)(lambda: kind)
    return kind


def _smooth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nnf.smooth_l1_loss(pred, target, reduction="none", beta=1.0)


register_task_loss(
    "l2",
    TaskLoss(
        lambda p, t: (p - t).square(),
        lambda p, t, a: gaussian_uncertainty_loss((p - t).square(), a),
    ),
)
register_task_loss(
    "l1",
    TaskLoss(lambda p, t: (p - t).abs(), lambda p, t, a: l1_uncertainty_loss((p - t).abs(), a)),
)
register_task_loss(
    "smooth_l1",
    TaskLoss(_smooth_l1, lambda p, t, a: l1_uncertainty_loss((p - t).abs(), a)),
)


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nnf.cross_entropy(logits, target, reduction="none")


def _cross_entropy_uncertainty(logits: torch.Tensor, target: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    a = _bounded(log_var, LOG_VAR_BOUND)
    return torch.exp(-a) * _cross_entropy(logits, target) + 0.5 * a


register_task_loss("cross_entropy", TaskLoss(_cross_entropy, _cross_entropy_uncertainty, regression=False))


# ---------------------------------------------------------------------- loop loss


@dataclass(frozen=True)
class LossTerm:
    """One supervised output of the looped network, compared with one batch entry.

    Attributes:
        output: output name in ``LoopOutput.iterations[l]`` (and ``log_variance[l]``).
        target: batch key of the target, ``(B, ...)``; class indices ``(B,)`` for cross-entropy.
        kind: a :data:`TASK_LOSSES` name: ``"l2"``, ``"l1"``, ``"smooth_l1"``, ``"cross_entropy"``.
        weight: ``gamma`` of the task loss (Eq. 12).
        variance_weight: ``gamma_var`` of the uncertainty loss; 0 leaves the log-variance unused.
        mask: batch key of a per-sample ``(B,)`` (or per-element ``(B, d1, ...)``, a leading
            part of the target's shape) mask: bool, or non-negative weights. Masked-out
            elements contribute zero and their targets may hold anything (NaN included);
            means are taken over valid elements only. None: every element is valid.
        name: name in logs and results (default: ``output``).
        scale: prediction and target are divided by this before the loss (regression kinds):
            the loss, and the log-variance, are in units of ``scale`` (e.g. 100 mm), so terms
            of different units weigh alike and the log-variance starts near its range.
        detach_variance: the uncertainty loss sees the error with its gradient stopped, so
            it trains the log-variance only and never re-weights the task loss's gradient
            (the task term alone then drives the prediction).
    """

    output: str
    target: str
    kind: str = "l2"
    weight: float = 1.0
    variance_weight: float = 0.0
    mask: str | None = None
    name: str | None = None
    scale: float = 1.0
    detach_variance: bool = False

    def __post_init__(self):
        TASK_LOSSES.get(self.kind)  # unknown kinds fail here, listing the known ones
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"LossTerm {self.label!r}: scale must be a finite number > 0, got {self.scale}")
        for attr in ("weight", "variance_weight"):
            value = getattr(self, attr)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"LossTerm {self.label!r}: {attr} must be a finite number >= 0, got {value}")

    @property
    def label(self) -> str:
        """The term's name in logs."""
        return self.name or self.output


@dataclass(frozen=True)
class LoopLossOutput:
    """Result of :class:`LoopLoss`: the total and every term per iteration.

    Attributes:
        total: scalar, the weighted sum over iterations and terms (Eq. 12), with gradients.
        task: term name -> ``(L + 1,)`` mean task loss per iteration (``gamma`` not applied).
        variance: term name -> ``(L + 1,)`` mean uncertainty loss per iteration, for terms with
            ``variance_weight > 0`` (``gamma_var`` not applied).
        task_per_sample: term name -> ``(L + 1, B)`` per-sample task loss (mean over the sample's
            valid elements; 0 for samples with none).
        valid: term name -> ``(B,)`` bool, whether the sample has any valid element for the term.
        weights: term name -> ``gamma``.
        loop_weights: ``(L + 1,)`` the iteration weights ``w_l`` that were applied.
    """

    total: torch.Tensor
    task: dict[str, torch.Tensor]
    variance: dict[str, torch.Tensor]
    task_per_sample: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    weights: dict[str, float]
    loop_weights: torch.Tensor

    def weighted_task_per_sample(self) -> torch.Tensor:
        """``(L + 1, B)`` per-sample ``sum_terms gamma * L_task`` per iteration (the gate's loss signal)."""
        return sum(self.weights[k] * v for k, v in self.task_per_sample.items())

    def scalars(self) -> dict[str, float]:
        """Plain numbers for logs: ``loss``, ``<term>/task/l<l>`` and ``<term>/var/l<l>``."""
        out = {"loss": float(self.total.detach())}
        for prefix, table in (("task", self.task), ("var", self.variance)):
            for name, per_loop in table.items():
                for l, value in enumerate(per_loop.detach().tolist()):
                    out[f"{name}/{prefix}/l{l}"] = value
        return out

    def nonfinite(self) -> list[str]:
        """Descriptions such as ``"joints/task at loop 2 = nan"`` for every non-finite part."""
        found = []
        for prefix, table in (("task", self.task), ("var", self.variance)):
            for name, per_loop in table.items():
                for l, value in enumerate(per_loop.detach().tolist()):
                    if not math.isfinite(value):
                        found.append(f"{name}/{prefix} at loop {l} = {value}")
        return found


def _expand_mask(mask: torch.Tensor, shape: torch.Size, term: LossTerm) -> torch.Tensor:
    if mask.shape[0] != shape[0] or tuple(mask.shape) != tuple(shape[: mask.dim()]):
        raise ValueError(
            f"LossTerm {term.label!r}: mask {term.mask!r} has shape {tuple(mask.shape)}; it must be a leading part "
            f"of the loss shape {tuple(shape)}, e.g. ({shape[0]},)"
        )
    mask = mask.to(torch.float32) if mask.dtype == torch.bool else mask.float()
    return mask.reshape(*mask.shape, *([1] * (len(shape) - mask.dim()))).expand(shape)


def _align_log_var(log_var: torch.Tensor, shape: torch.Size, term: LossTerm) -> torch.Tensor:
    b = shape[0]
    if log_var.shape[0] != b:
        raise ValueError(f"LossTerm {term.label!r}: log-variance batch {log_var.shape[0]} != {b}")
    per_sample = log_var[0].numel()
    if per_sample == 1:  # one variance per sample, broadcast over all its elements
        return log_var.reshape(b, *([1] * (len(shape) - 1))).expand(shape)
    if log_var.dim() == len(shape):
        try:
            return log_var.expand(shape)
        except RuntimeError:
            pass  # reported below with the term's name
    raise ValueError(
        f"LossTerm {term.label!r}: log-variance of shape {tuple(log_var.shape)} does not broadcast to the "
        f"loss shape {tuple(shape)}; predict one per element, per sample (1,), or with size-1 dims"
    )


class LoopLoss(nn.Module):
    """Eq. 12: task and uncertainty losses of named outputs, summed over the iterations.

    Args:
        terms: the :class:`LossTerm` list; names must be unique.
        loop_weights: ``w_l`` for iterations ``0, 1, ...``; needs at least ``L + 1`` entries
            (extra ones are ignored, so one list serves every phase of progressive training).
            Default: 1 for every iteration, as in Eq. 12.

    Call it as ``loss(output, batch)`` with a :class:`recurnet.LoopOutput` and a mapping of
    batch tensors; returns :class:`LoopLossOutput`.

    Examples:
        >>> from recurnet.output import LoopOutput
        >>> out = LoopOutput([{"y": torch.ones(2, 1)}], [{}], [None], torch.zeros(2, dtype=torch.long),
        ...                  torch.ones(1, 2, dtype=torch.bool))
        >>> LoopLoss([LossTerm("y", "target")])(out, {"target": torch.zeros(2, 1)}).total
        tensor(1.)
    """

    def __init__(self, terms: Sequence[LossTerm], loop_weights: Sequence[float] | None = None):
        super().__init__()
        terms = list(terms)
        if not terms:
            raise ValueError("LoopLoss needs at least one LossTerm")
        for t in terms:
            if not isinstance(t, LossTerm):
                raise TypeError(f"terms must be LossTerm instances, got {type(t).__name__}")
        labels = [t.label for t in terms]
        duplicates = sorted({n for n in labels if labels.count(n) > 1})
        if duplicates:
            raise ValueError(f"LossTerm names must be unique; repeated: {duplicates} (set name=...)")
        if loop_weights is not None:
            loop_weights = [float(w) for w in loop_weights]
            if any(not math.isfinite(w) or w < 0 for w in loop_weights):
                raise ValueError(f"loop_weights must be finite and >= 0, got {loop_weights}")
        self.terms = tuple(terms)
        self.loop_weights = None if loop_weights is None else tuple(loop_weights)

    def _weights(self, n: int, device: torch.device) -> torch.Tensor:
        if self.loop_weights is None:
            return torch.ones(n, device=device)
        if len(self.loop_weights) < n:
            raise ValueError(f"loop_weights has {len(self.loop_weights)} entries but the output has {n} iterations")
        return torch.tensor(self.loop_weights[:n], device=device)

    def _term(self, term: LossTerm, output: LoopOutput, batch: Mapping[str, torch.Tensor]):
        kind = TASK_LOSSES.build(term.kind)
        if term.target not in batch:
            raise KeyError(f"LossTerm {term.label!r}: batch has no target {term.target!r}; keys: {sorted(batch)}")
        target = batch[term.target]
        if term.output not in output.iterations[0]:
            raise KeyError(
                f"LossTerm {term.label!r}: the network has no output {term.output!r}; "
                f"outputs: {sorted(output.iterations[0])}"
            )
        pred0 = output.iterations[0][term.output]
        if kind.regression and tuple(pred0.shape) != tuple(target.shape):
            raise ValueError(
                f"LossTerm {term.label!r}: output {term.output!r} has shape {tuple(pred0.shape)} but target "
                f"{term.target!r} has {tuple(target.shape)}"
            )
        mask = None
        if term.mask is not None:
            if term.mask not in batch:
                raise KeyError(f"LossTerm {term.label!r}: batch has no mask {term.mask!r}; keys: {sorted(batch)}")
            mask = _expand_mask(batch[term.mask].to(target.device), target.shape, term)
            valid = mask > 0
            # Replace masked targets before the loss so NaN placeholders cannot reach values or gradients.
            target = torch.where(valid, target, torch.zeros_like(target))
        use_var = term.variance_weight > 0
        if use_var and any(term.output not in lv for lv in output.log_variance):
            raise KeyError(
                f"LossTerm {term.label!r} has variance_weight > 0 but the network predicts no log-variance for "
                f"{term.output!r}; build it with uncertainty=... covering that output, or set variance_weight=0"
            )
        if term.scale != 1.0 and kind.regression:
            target = target / term.scale
        task_rows, var_rows = [], []
        for l, predictions in enumerate(output.iterations):
            pred = predictions[term.output]
            if term.scale != 1.0 and kind.regression:
                pred = pred / term.scale
            task_rows.append(kind.elementwise(pred, target))
            if use_var:
                log_var = _align_log_var(output.log_variance[l][term.output], target.shape, term)
                var_rows.append(kind.uncertainty(pred.detach() if term.detach_variance else pred, target, log_var))
        task = torch.stack(task_rows)  # (L+1, B, ...)
        var = torch.stack(var_rows) if use_var else None
        return task, var, mask

    def forward(self, output: LoopOutput, batch: Mapping[str, torch.Tensor]) -> LoopLossOutput:
        if not isinstance(output, LoopOutput):
            raise TypeError(f"LoopLoss expects a LoopOutput, got {type(output).__name__}")
        n = output.num_iterations
        device = output.exit_step.device
        w = self._weights(n, device)
        total = torch.zeros((), device=device)
        task_means, var_means, per_sample, valid_samples, gammas = {}, {}, {}, {}, {}
        for term in self.terms:
            task, var, mask = self._term(term, output, batch)
            flat_task = task.reshape(task.shape[0], task.shape[1], -1)  # (L+1, B, E)
            b = flat_task.shape[1]
            if mask is None:
                m = torch.ones_like(flat_task[0])
            else:
                m = mask.reshape(b, -1)
            # where() rather than a product keeps masked-out NaN/inf out of the result.
            masked_task = torch.where(m > 0, flat_task * m, torch.zeros_like(flat_task))
            count = m.sum()
            task_mean = masked_task.sum(dim=(1, 2)) / count.clamp_min(1e-12)
            sample_count = m.sum(dim=1)
            per_sample[term.label] = masked_task.sum(dim=2) / sample_count.clamp_min(1e-12)
            valid_samples[term.label] = sample_count > 0
            task_means[term.label] = task_mean
            gammas[term.label] = term.weight
            total = total + term.weight * (w * task_mean).sum()
            if var is not None:
                flat_var = var.reshape(flat_task.shape)
                masked_var = torch.where(m > 0, flat_var * m, torch.zeros_like(flat_var))
                var_mean = masked_var.sum(dim=(1, 2)) / count.clamp_min(1e-12)
                var_means[term.label] = var_mean
                total = total + term.variance_weight * (w * var_mean).sum()
        return LoopLossOutput(total, task_means, var_means, per_sample, valid_samples, gammas, w)

    @property
    def uses_feedback(self) -> bool:
        """Whether the loss reads ``output.feedback``; the trainer then runs the network with
        ``return_feedback=True``. False here: a subclass with a term on the feedback signals
        (an attention-map target, say) returns True."""
        return False

    def extra_repr(self) -> str:
        return f"terms={[t.label for t in self.terms]}, loop_weights={self.loop_weights}"
