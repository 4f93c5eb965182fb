"""An exponential moving average of a network's weights, kept during each training phase.

Evaluating the average of the last few hundred optimizer steps, rather than the
last step, removes much of the noise a high learning rate leaves in the weights.
:class:`WeightAverage` keeps that average for the tensors a phase trains: the
trainable parameters and the running statistics of the norms in training mode.
The trainer (``TrainConfig.ema``) starts one at the start of every phase,
updates it after every optimizer step and writes it into the network when the
phase ends, so the next phase, the gate and evaluation start from the average.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage"]


def _tracked(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor of what training changes: trainable parameters, train-mode norm statistics."""
    out = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.training:
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and buffer.is_floating_point():
                    out[f"{module_name}.{name}" if module_name else name] = buffer
    return out


class WeightAverage:
    """Exponential moving average of the tensors of ``model`` that training changes.

    After update ``t`` (from 1) the average moves towards the current weights by
    ``1 - d_t`` with ``d_t = min(decay, (1 + t) / (10 + t))``: the short warm-up
    lets the average follow the fast early changes instead of remembering the
    weights it started from.

    Args:
        model: the network, with ``requires_grad`` and ``train()``/``eval()`` set as the phase
            trains it. What is tracked is fixed here, and the average keeps references to those
            tensors: optimizer steps and ``load_state_dict`` change them in place, which
            :meth:`update` then sees; moving the network to another device or memory format
            replaces them, so build the average after that.
        decay: the largest ``d_t``, in ``(0, 1)``; ``0.999`` averages about the last 1000 steps.

    Examples:
        >>> net = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.bias.fill_(0.0)
        >>> avg = WeightAverage(net, decay=0.9)
        >>> with torch.no_grad():
        ...     _ = net.bias.fill_(1.0)
        >>> avg.update()  # the first update moves 1 - 2/11 of the way
        >>> avg.copy_to()
        >>> round(net.bias.item(), 3)
        0.818
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.steps = 0
        tracked = _tracked(model)
        self.names = sorted(tracked)
        self._current = [tracked[name] for name in self.names]
        self.average = {name: t.detach().clone() for name, t in zip(self.names, self._current)}
        self._averages = [self.average[name] for name in self.names]

    def rate(self) -> float:
        """The decay ``d_t`` the next update uses."""
        t = self.steps + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the network's current weights (after an optimizer step)."""
        if self._current:
            torch._foreach_lerp_(self._averages, self._current, 1.0 - self.rate())
        self.steps += 1

    @torch.no_grad()
    def copy_to(self) -> None:
        """Write the average into the network's tensors (in place, keeping their memory formats)."""
        if self._current:
            torch._foreach_copy_(self._current, self._averages)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores to continue the average exactly."""
        return {"decay": self.decay, "steps": self.steps, "average": dict(self.average)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises ValueError when it tracks other tensors."""
        average = state["average"]
        if sorted(average) != self.names:
            missing = sorted(set(self.names) - set(average))
            extra = sorted(set(average) - set(self.names))
            raise ValueError(f"the stored weight average tracks other tensors (missing {missing[:4]}, "
                             f"unexpected {extra[:4]})")
        for name in self.names:
            if average[name].shape != self.average[name].shape:
                raise ValueError(f"the stored weight average of {name} has shape {tuple(average[name].shape)}, "
                                 f"the network's is {tuple(self.average[name].shape)}")
            self.average[name].copy_(average[name])
        self.decay = float(state["decay"])
        self.steps = int(state["steps"])
