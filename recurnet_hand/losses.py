"""DIR-Net's training loss: Eq. 12 with the hand's 2D, 3D, uncertainty and regulariser terms.

Per iteration ``l`` (summed over ``l = 0..L``, :class:`recurnet.losses.LoopLoss`):

- ``L_2D``: smooth-L1 between predicted and labelled 2D joints (crop px), with
  the uncertainty term of Eq. 9 on the per-joint 2D log-variance;
- ``L_3D``: squared error between predicted and labelled root-relative 3D
  joints (mm), with the uncertainty term of Eq. 8;
- pose and shape regularisers: squared MANO ``theta`` and ``beta``, pulling
  towards the mean hand (MANO head only).

Samples without 3D labels (PANOPTIC) train the 2D terms only (``has_3d`` mask).
The default weights balance the terms' scales (px vs mm^2); the uncertainty
terms are scale-free by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from recurnet.losses import LoopLoss, LoopLossOutput, LossTerm
from recurnet.output import LoopOutput

__all__ = ["LossConfig", "HandLoss", "add_hand_targets"]


@dataclass(frozen=True)
class LossConfig:
    """Weights of the hand loss terms (the paper's ``gamma``).

    Attributes:
        weight_2d: ``gamma_2D`` on the smooth-L1 2D loss (px).
        weight_3d: ``gamma_3D`` on the squared 3D error (mm^2).
        weight_var: ``gamma_var`` on each uncertainty term.
        weight_pose: weight of the ``theta`` regulariser.
        weight_shape: weight of the ``beta`` regulariser.
    """

    weight_2d: float = 0.05
    weight_3d: float = 0.002
    weight_var: float = 0.1
    weight_pose: float = 0.01
    weight_shape: float = 0.01


def add_hand_targets(batch: Mapping[str, torch.Tensor], output: LoopOutput | None = None) -> dict[str, torch.Tensor]:
    """The batch plus the derived targets the loss needs.

    Adds ``joints3d_rel`` ``(B, 21, 3)`` (labels minus the root joint, mm) and, when the
    output has MANO parameters, zero targets ``pose_zero`` / ``shape_zero`` for the regularisers.
    """
    out = dict(batch)
    j3d = batch["joints3d"]
    out["joints3d_rel"] = j3d - j3d[:, :1]
    if output is not None:
        for name in ("pose", "shape"):
            if name in output.iterations[0]:
                out[f"{name}_zero"] = torch.zeros_like(output.iterations[0][name])
    return out


class HandLoss(nn.Module):
    """Eq. 12 for DIR-Net; call as ``loss(output, batch)``.

    Args:
        config: term weights.
        mano_regularisers: add the ``theta``/``beta`` regularisers (needs the MANO head).
        loop_weights: per-iteration weights ``w_l`` (default 1 each).

    Returns (forward): :class:`recurnet.losses.LoopLossOutput` with terms ``2d``, ``3d``
        (and ``pose``, ``shape``).
    """

    def __init__(self, config: LossConfig = LossConfig(), *, mano_regularisers: bool = True, loop_weights=None):
        super().__init__()
        terms = [
            LossTerm("joints2d", "joints2d", "smooth_l1", config.weight_2d, config.weight_var, "has_2d", name="2d"),
            LossTerm("joints3d", "joints3d_rel", "l2", config.weight_3d, config.weight_var, "has_3d", name="3d"),
        ]
        if mano_regularisers:
            terms += [
                LossTerm("pose", "pose_zero", "l2", config.weight_pose, name="pose"),
                LossTerm("shape", "shape_zero", "l2", config.weight_shape, name="shape"),
            ]
        self.config = config
        self.loop_loss = LoopLoss(terms, loop_weights)

    def forward(self, output: LoopOutput, batch: Mapping[str, torch.Tensor]) -> LoopLossOutput:
        return self.loop_loss(output, add_hand_targets(batch, output))
