"""Feedback from one iteration's refiner output to the next iteration's input.

A feedback module looks at the refiner output of iteration ``l`` as a map
``h (B, C_h, H_h, W_h)`` and produces a *signal*; :meth:`Feedback.combine`
merges the signal with the extractor features ``F (B, C_f, H_f, W_f)`` into
the refiner input of iteration ``l + 1``:

- ``"attention"``: :class:`AttentionFeedback`, the paper's Attention Map
  Generator: pixel-shuffle upsampling to ``F``'s size, a sigmoid, and
  ``x = F * A``.
- ``"features"``: :class:`FeatureFeedback`, the paper's "iterations without
  AMG" ablation: ``h`` itself, rearranged by pixel shuffle and upsampled to
  ``F``'s size (parameter-free when the channels allow), added to ``F``.
- ``"none"``: :class:`NoFeedback`, plain recursion on ``F``; iterations differ
  only by their norms.

Users add their own with :func:`register_feedback`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as nnf
from torch import nn

from .registry import Registry

__all__ = [
    "Feedback",
    "AttentionFeedback",
    "FeatureFeedback",
    "NoFeedback",
    "FEEDBACK",
    "register_feedback",
    "build_feedback",
]

#: Registry of feedback factories ``factory(refined_channels, feature_channels, scale, **kwargs)``.
FEEDBACK: Registry[nn.Module] = Registry("feedback")


def register_feedback(name: str, *, overwrite: bool = False) -> Callable:
    """Register a feedback factory under ``name`` for ``loopify(feedback=name)``.

    The factory is called as ``factory(refined_channels, feature_channels, scale, **kwargs)``
    and must return a :class:`Feedback`.
    """
    return FEEDBACK.register(name, overwrite=overwrite)


def build_feedback(name: str, refined_channels: int, feature_channels: int, scale: int, **kwargs) -> "Feedback":
    """Build the feedback registered as ``name``."""
    return FEEDBACK.build(name, refined_channels, feature_channels, scale, **kwargs)


class Feedback(nn.Module):
    """Base class: ``signal = feedback(h_map, size)``; ``x_next = feedback.combine(F_map, signal)``."""

    def forward(self, refined: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
        """Map refiner output ``(B, C_h, H_h, W_h)`` to a signal at spatial ``size``."""
        raise NotImplementedError

    def combine(self, features: torch.Tensor, signal: torch.Tensor | None) -> torch.Tensor:
        """Merge the extractor features ``(B, C_f, H_f, W_f)`` with the signal."""
        raise NotImplementedError


def _match_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Exact powers of two are handled by pixel shuffle; odd input sizes leave an off-by-a-few remainder.
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return nnf.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register_feedback("attention")
class AttentionFeedback(Feedback):
    """Attention map generator: upsample by pixel shuffle, squash with a sigmoid, multiply onto ``F``.

    Each ``x2`` step is ``PixelShuffle(2) -> conv3x3 -> BN -> ReLU``: the shuffle
    moves channels into space at no cost and the convolution mixes them. Step
    ``i`` of ``n`` outputs ``C_f * 4 ** (n - 1 - i)`` channels, so the next
    shuffle lands on ``C_f``'s multiple again; a final ``conv1x1`` to ``C_f`` and a
    sigmoid give the map. Channels not divisible by 4 are upsampled by nearest
    neighbour instead of shuffled; a non power-of-two scale ends with a
    bilinear resize.

    Args:
        refined_channels: ``C_h``, channels of the refiner output.
        feature_channels: ``C_f``, channels of the extractor output.
        scale: ``H_f / H_h`` (1 for token models: then only the ``conv1x1``).

    Shapes:
        ``refined (B, C_h, H_h, W_h)`` -> attention ``(B, C_f, H_f, W_f)`` in ``[0, 1]``.
    """

    def __init__(self, refined_channels: int, feature_channels: int, scale: int):
        super().__init__()
        steps = int(math.floor(math.log2(scale))) if scale >= 2 else 0
        layers: list[nn.Module] = []
        c = refined_channels
        for i in range(steps):
            if c % 4 == 0:
                layers.append(nn.PixelShuffle(2))
                c //= 4
            else:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            out = feature_channels * 4 ** (steps - 1 - i)
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        layers.append(nn.Conv2d(c, feature_channels, 1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, refined: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.sigmoid(_match_size(self.decoder(refined), size))

    def combine(self, features: torch.Tensor, signal: torch.Tensor | None) -> torch.Tensor:
        return features * signal


@register_feedback("features")
class FeatureFeedback(Feedback):
    """Direct feature feedback: the refiner output itself, brought to ``F``'s size and added to ``F``.

    The map is rearranged with ``PixelShuffle(2)`` while that keeps at least
    ``C_f`` channels, then upsampled (nearest) to ``F``'s size; a ``conv1x1``
    is added only when the channel count still differs from ``C_f``. With
    IR9's stage-2 cut (256 ch at 7x7 -> 64 ch at 28x28) it has no parameters.

    Shapes:
        ``refined (B, C_h, H_h, W_h)`` -> ``(B, C_f, H_f, W_f)``.
    """

    def __init__(self, refined_channels: int, feature_channels: int, scale: int):
        super().__init__()
        shuffles, c, s = 0, refined_channels, scale
        while s >= 2 and c % 4 == 0 and c // 4 >= feature_channels:
            shuffles, c, s = shuffles + 1, c // 4, s // 2
        self.shuffle = nn.Sequential(*[nn.PixelShuffle(2) for _ in range(shuffles)])
        self.project = nn.Identity() if c == feature_channels else nn.Conv2d(c, feature_channels, 1)

    def forward(self, refined: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.project(self.shuffle(refined))
        if tuple(x.shape[-2:]) != tuple(size):
            x = nnf.interpolate(x, size=size, mode="nearest")
        return x

    def combine(self, features: torch.Tensor, signal: torch.Tensor | None) -> torch.Tensor:
        return features + signal


@register_feedback("none")
class NoFeedback(Feedback):
    """No feedback: every iteration refines the extractor features again (only its norms differ)."""

    def __init__(self, refined_channels: int = 0, feature_channels: int = 0, scale: int = 1):
        super().__init__()

    def forward(self, refined: torch.Tensor, size: tuple[int, int]) -> None:
        return None

    def combine(self, features: torch.Tensor, signal: torch.Tensor | None) -> torch.Tensor:
        return features
