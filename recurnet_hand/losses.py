"""DIR-Net's training loss: Eq. 12 with the hand's 2D, 3D, uncertainty and regulariser terms.

Per iteration ``l`` (summed over ``l = 0..L``, :class:`recurnet.losses.LoopLoss`):

- ``L_2D``: smooth-L1 between predicted and labelled 2D joints (crop px), with
  the uncertainty term of Eq. 9 on the per-joint 2D log-variance;
- ``L_3D``: error between predicted and labelled root-relative 3D joints (mm):
  squared in the paper, L1 by default here (``LossConfig.kind_3d``), with the
  matching uncertainty term (Eq. 8 for the squared error);
- pose and shape regularisers: squared MANO ``theta`` and ``beta``, pulling
  towards the mean hand (MANO head only).

Samples without 3D labels (PANOPTIC) train the 2D terms only (``has_3d`` mask).
Errors are normalised before the losses (3D in units of 100 mm, 2D in eighths
of the crop side), so the terms weigh alike and the log-variances start in
range; the uncertainty terms train the variances without re-weighting the task
gradients. Where the data know the hand's global rotation (synthetic hands), a
squared error on the rotation matrix can supervise the orientation and an
articulation term the joints in the hand's own frame, apart from the orientation
(the articulation term is on by default, the rotation term off).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from recurnet.losses import LoopLoss, LoopLossOutput, LossTerm
from recurnet.output import LoopOutput

from .joints import NUM_JOINTS

__all__ = ["LossConfig", "HandLoss", "add_hand_targets", "joint_heatmaps"]

_REGRESSION_KINDS = ("l1", "l2", "smooth_l1")


@dataclass(frozen=True)
class LossConfig:
    """Weights and units of the hand loss terms (the paper's ``gamma``).

    Errors are measured in normalised units before any loss: 3D joints in units of
    ``unit_3d_mm`` (root-relative, so a hand is O(1) long), 2D joints in units of
    ``unit_2d`` crop sides. The log-variances predicted by the uncertainty heads are of
    these normalised errors (``sigma_mm = unit_3d_mm * exp(a / 2)``).

    Attributes:
        weight_2d: ``gamma_2D`` on the smooth-L1 2D loss.
        weight_3d: ``gamma_3D`` on the squared 3D error.
        weight_var: ``gamma_var`` on each uncertainty term.
        weight_rotation: squared error of the predicted global rotation matrix, where the
            data know it (synthetic hands; MANO head only). 0 (the default) disables it: in
            the recipe ablation it did not help once the heatmap head and the higher learning
            rate were in.
        weight_heatmap: squared error of the training-only 2D heatmaps (summed over each
            map, averaged over joints), when the model has the heatmap head.
        heatmap_sigma: standard deviation of the target Gaussians, in heatmap cells.
        weight_location: squared error (in 3D units) of the training-only location maps, when
            the model has them: each joint's root-relative 3D position, read around the joint
            with its target heatmap as the weight (summed over the map, averaged over joints and
            over the samples that have both 2D and 3D labels).
        weight_articulation: error (of ``kind_3d``) of the predicted joints in the hand's own
            frame (before the global rotation, MANO head only) against the labels turned into
            that frame by the labelled rotation, where the data know it (synthetic hands). It
            supervises the finger pose apart from the hand's orientation; data without the
            rotation label skip it. 0 disables it.
        weight_attention: squared error of the attention maps that feed loops 1 and later
            against the labels' 2D joints (training only; needs attention feedback). 0 (the
            default) leaves the maps unsupervised, as the paper trains them.
        attention_target: what the supervised maps should show: ``joints``, the first 21
            channels each a Gaussian at one joint (the feedback then tells the next loop
            where the joints are), or ``hand``, the channel mean a map that is 1 at the joints
            (the feedback then points at the hand).
        attention_sigma: standard deviation of those Gaussians, in feature-map cells.
        weight_pose: weight of the ``theta`` regulariser.
        weight_shape: weight of the ``beta`` regulariser.
        unit_3d_mm: millimetres per 3D unit.
        unit_2d: crop sides per 2D unit (``1 / crop_size`` measures in pixels).
        detach_variance: the uncertainty terms train the log-variances only; the task
            terms alone drive the predictions (see :class:`recurnet.losses.LossTerm`).
        kind_2d: task-loss kind of the 2D term (a :data:`recurnet.losses.TASK_LOSSES` regression
            kind: ``smooth_l1``, the paper's, ``l1`` or ``l2``); its uncertainty term follows the kind.
        kind_3d: the same for the 3D term (``l2``, the paper's squared error, ``l1`` or ``smooth_l1``).

    The defaults differ from the paper's weights (1 each) and squared 3D error where the
    recipe ablation measured better: an L1 3D error (the mean joint distance the results
    report is a sum of norms, not of squares), the 2D term at 0.3 and the articulation term
    on.
    """

    weight_2d: float = 0.3
    weight_3d: float = 1.0
    weight_var: float = 0.1
    weight_rotation: float = 0.0
    weight_heatmap: float = 3.0
    heatmap_sigma: float = 1.0
    weight_location: float = 1.0
    weight_articulation: float = 1.0
    weight_attention: float = 0.0
    attention_target: str = "joints"
    attention_sigma: float = 1.0
    weight_pose: float = 0.001
    weight_shape: float = 0.001
    unit_3d_mm: float = 100.0
    unit_2d: float = 0.125
    detach_variance: bool = True
    kind_2d: str = "smooth_l1"
    kind_3d: str = "l1"

    def __post_init__(self) -> None:
        for name in ("kind_2d", "kind_3d"):
            if getattr(self, name) not in _REGRESSION_KINDS:
                raise ValueError(f"loss.{name} must be one of {_REGRESSION_KINDS}, got {getattr(self, name)!r}")
        if self.attention_target not in _ATTENTION_TARGETS:
            raise ValueError(f"loss.attention_target must be one of {_ATTENTION_TARGETS}, "
                             f"got {self.attention_target!r}")
        for name in ("unit_3d_mm", "unit_2d", "heatmap_sigma", "attention_sigma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"loss.{name} must be a finite number > 0, got {value}")
        for name in ("weight_heatmap", "weight_location", "weight_articulation", "weight_attention"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {value}")


_IDENTITY = torch.eye(3)
_ATTENTION_TARGETS = ("joints", "hand")


def _map_error(maps: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Squared error of maps ``(B, J, h, w)`` summed over each map, averaged over the maps of
    the ``valid`` samples ``(B,)`` (bool); rows of the others count nothing, NaN included."""
    per_map = torch.where(valid.view(-1, 1, 1, 1), maps - target, torch.zeros_like(maps)).square().sum((-1, -2))
    return per_map.sum() / (valid.sum() * per_map.shape[1]).clamp_min(1)


def joint_heatmaps(joints2d: torch.Tensor, crop_size: int, shape: tuple[int, int], sigma: float = 1.0) -> torch.Tensor:
    """Gaussian target heatmaps ``(B, J, h, w)`` for 2D joints ``(B, J, 2)`` in crop pixels.

    Cell ``(i, j)`` of an ``h x w`` map over an ``S x S`` crop is centred at crop pixel
    ``((j + 0.5) S / w - 0.5, (i + 0.5) S / h - 0.5)``; each map is
    ``exp(-d^2 / (2 sigma^2))`` with ``d`` in cells, 1 at the joint.

    Examples:
        >>> maps = joint_heatmaps(torch.tensor([[[12.0, 4.0]]]), 16, (4, 4))
        >>> maps.shape, maps[0, 0].argmax().item()  # row 1, column 3
        (torch.Size([1, 1, 4, 4]), 7)
    """
    h, w = shape
    cell_x, cell_y = crop_size / w, crop_size / h
    xs = (torch.arange(w, device=joints2d.device, dtype=joints2d.dtype) + 0.5) * cell_x - 0.5
    ys = (torch.arange(h, device=joints2d.device, dtype=joints2d.dtype) + 0.5) * cell_y - 0.5
    dx = (xs.view(1, 1, 1, w) - joints2d[..., 0, None, None]) / cell_x
    dy = (ys.view(1, 1, h, 1) - joints2d[..., 1, None, None]) / cell_y
    return torch.exp(-(dx.square() + dy.square()) / (2.0 * sigma * sigma))


def add_hand_targets(batch: Mapping[str, torch.Tensor], output: LoopOutput | None = None) -> dict[str, torch.Tensor]:
    """The batch plus the derived targets the loss needs.

    Adds ``joints3d_rel`` ``(B, 21, 3)`` (labels minus the root joint, mm); ``rotation`` and
    ``has_rotation`` (identity and False) when the data have no rotation label;
    ``articulation_target`` ``(B, 21, 3)``, the root-relative labels in the hand's frame
    (``joints3d_rel @ rotation``, meaningful where ``has_rotation``); and, when
    the output has MANO parameters, zero targets ``pose_zero`` / ``shape_zero`` for the regularisers.
    """
    out = dict(batch)
    j3d = batch["joints3d"]
    out["joints3d_rel"] = j3d - j3d[:, :1]
    if "rotation" not in out:
        out["rotation"] = _IDENTITY.to(j3d).expand(j3d.shape[0], 3, 3)
        out["has_rotation"] = torch.zeros(j3d.shape[0], dtype=torch.bool, device=j3d.device)
    out["articulation_target"] = out["joints3d_rel"] @ out["rotation"].to(j3d)
    if output is not None:
        for name in ("pose", "shape"):
            if name in output.iterations[0]:
                out[f"{name}_zero"] = torch.zeros_like(output.iterations[0][name])
    return out


class HandLoss(nn.Module):
    """Eq. 12 for DIR-Net; call as ``loss(output, batch)``.

    Args:
        config: term weights and units.
        mano_regularisers: add the ``theta``/``beta`` regularisers and the articulation and
            rotation terms (needs the MANO head).
        loop_weights: per-iteration weights ``w_l`` (default 1 each).
        crop_size: crop side in pixels (sets the 2D unit).

    Returns (forward): :class:`recurnet.losses.LoopLossOutput` with terms ``2d``, ``3d``
        (and ``articulation``, ``rotation``, ``pose``, ``shape``, ``heatmap``).
    """

    def __init__(self, config: LossConfig = LossConfig(), *, mano_regularisers: bool = True, loop_weights=None,
                 crop_size: int = 224):
        super().__init__()
        c = config
        detach = c.detach_variance
        terms = [
            LossTerm("joints2d", "joints2d", c.kind_2d, c.weight_2d, c.weight_var, "has_2d", name="2d",
                     scale=c.unit_2d * crop_size, detach_variance=detach),
            LossTerm("joints3d", "joints3d_rel", c.kind_3d, c.weight_3d, c.weight_var, "has_3d", name="3d",
                     scale=c.unit_3d_mm, detach_variance=detach),
        ]
        if mano_regularisers:
            if c.weight_articulation > 0:
                terms.append(LossTerm("articulation", "articulation_target", c.kind_3d, c.weight_articulation,
                                      mask="has_rotation", name="articulation", scale=c.unit_3d_mm))
            if c.weight_rotation > 0:
                terms.append(LossTerm("rotation", "rotation", "l2", c.weight_rotation, mask="has_rotation",
                                      name="rotation"))
            terms += [
                LossTerm("pose", "pose_zero", "l2", c.weight_pose, name="pose"),
                LossTerm("shape", "shape_zero", "l2", c.weight_shape, name="shape"),
            ]
        self.config = config
        self.crop_size = int(crop_size)
        self.loop_loss = LoopLoss(terms, loop_weights)

    def forward(self, output: LoopOutput, batch: Mapping[str, torch.Tensor]) -> LoopLossOutput:
        targets = add_hand_targets(batch, output)
        result = self.loop_loss(output, targets)
        c = self.config
        maps = output.auxiliary.get("heatmaps")
        if maps is not None and c.weight_heatmap > 0:
            result = self._add(result, "heatmap", c.weight_heatmap, self._heatmap_error(maps, batch))
        if self.uses_feedback:
            maps = [signal for signal in output.feedback[1:] if signal is not None]
            if output.num_iterations > 1 and not maps:
                raise ValueError("loss.weight_attention > 0 needs feedback maps from loops 1 and later, but the "
                                 "network returned none (build it with feedback='attention', and run it with "
                                 "return_feedback=True)")
            if maps:
                error = sum(self._attention_error(signal, batch) for signal in maps) / len(maps)
                result = self._add(result, "attention", c.weight_attention, error)
        locations = output.auxiliary.get("location_maps")
        if locations is not None and c.weight_location > 0:
            result = self._add(result, "location", c.weight_location, self._location_error(locations, targets))
        return result

    @property
    def uses_feedback(self) -> bool:
        """Whether the loss reads the feedback signals (the trainer then asks the network for them)."""
        return self.config.weight_attention > 0

    @staticmethod
    def _add(result: LoopLossOutput, name: str, weight: float, value: torch.Tensor) -> LoopLossOutput:
        task = {**result.task, name: value.detach().reshape(1)}
        return replace(result, total=result.total + weight * value, task=task)

    def _targets(self, batch, shape: tuple[int, int], dtype: torch.dtype):
        """Target heatmaps ``(B, J, h, w)`` and which samples have 2D labels ``(B,)``."""
        target = joint_heatmaps(batch["joints2d"].to(dtype), self.crop_size, shape, self.config.heatmap_sigma)
        return target, batch["has_2d"].to(target.device).bool()

    def _heatmap_error(self, maps: torch.Tensor, batch) -> torch.Tensor:
        target, valid = self._targets(batch, tuple(maps.shape[-2:]), maps.dtype)
        return _map_error(maps, target, valid)

    def _attention_error(self, signal: torch.Tensor, batch) -> torch.Tensor:
        c = self.config
        if signal.dim() != 4 or (c.attention_target == "joints" and signal.shape[1] < NUM_JOINTS):
            raise ValueError(f"loss.weight_attention needs attention maps (B, C >= {NUM_JOINTS}, H, W), "
                             f"got feedback of shape {tuple(signal.shape)}")
        signal = signal.float()
        target = joint_heatmaps(batch["joints2d"].to(signal), self.crop_size, tuple(signal.shape[-2:]),
                                c.attention_sigma)
        valid = batch["has_2d"].to(signal.device).bool()
        if c.attention_target == "joints":
            maps = signal[:, :NUM_JOINTS]
        else:
            maps, target = signal.mean(1, keepdim=True), target.amax(1, keepdim=True)
        return _map_error(maps, target, valid)

    def _location_error(self, locations: torch.Tensor, targets) -> torch.Tensor:
        locations = locations.float()
        weight, valid = self._targets(targets, tuple(locations.shape[-2:]), locations.dtype)
        valid = valid & targets["has_3d"].to(valid.device).bool()
        truth = targets["joints3d_rel"].to(locations) / self.config.unit_3d_mm  # (B, J, 3)
        error = (locations - truth[..., None, None]).square().sum(2)  # (B, J, h, w)
        per_joint = torch.where(valid.view(-1, 1, 1, 1), weight * error, torch.zeros_like(error)).sum((-1, -2))
        return per_joint.sum() / (valid.sum() * per_joint.shape[1]).clamp_min(1)
